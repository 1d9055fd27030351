"""Robust accuracy by a cascade of attacks, with AutoAttack-style sanity checks.

``robust_accuracy`` runs a list of attacks in order, each only on the points
that are still robust (correctly classified and not yet broken), as AutoAttack
does (Croce & Hein 2020, §5), and reports exact counts per stage and the
worst case. With ``run_all=True`` every attack runs on every clean-correct
point instead, which also gives each attack's own robust accuracy; the worst
case is then the per-point minimum over the attacks.

An attack's randomness depends only on (key, attack name, example index):
example i gets the key fold_in(fold_in(key, crc32(name)), i). So a point's
outcome does not depend on which other points share its batch, and the
cascade agrees point by point with running each attack alone.

Every returned adversarial point is checked to lie in the ε-ball and in
[0, 1]; a point that does not is not counted as broken, and a warning says so.

Sanity checks (as AutoAttack's ``checks.py``), reported and warned about:
  * the forward pass is deterministic (two calls give the same logits);
  * the outputs are logits, not probabilities (rows in [0, 1] summing to 1);
  * no point has an (almost) zero input gradient of the cross-entropy;
  * gradient masking: the gradient-free Square attack breaks points that the
    gradient-based attacks before it did not.
"""

from __future__ import annotations

import dataclasses
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import losses, validation
from compsum_jax.attacks import presets, threat_model

LogitsFn = Callable[[jax.Array], jax.Array]
AttackSpec = str | tuple[str, presets.AttackFn]

# Slack on the ε-ball check: float32 rounding of (x + δ) − x.
BALL_TOLERANCE = 1e-5
# A gradient whose ℓ1 norm is below this counts as zero (AutoAttack's value).
ZERO_GRADIENT_THRESHOLD = 1e-10
# Attacks that use no gradient (their successes flag gradient masking).
GRADIENT_FREE = frozenset({"square"})


@dataclasses.dataclass
class SanityReport:
  """Outcome of :func:`sanity_checks`.

  Attributes:
    deterministic: two forward passes gave identical logits.
    max_abs_logit_difference: max |z₁ − z₂| over the two passes.
    looks_like_probabilities: every output row lies in [0, 1] and sums to 1.
    num_zero_gradient: points whose cross-entropy input gradient has ℓ1 norm
      below ``ZERO_GRADIENT_THRESHOLD``.
    messages: human-readable warnings (empty when all checks pass).
  """
  deterministic: bool
  max_abs_logit_difference: float
  looks_like_probabilities: bool
  num_zero_gradient: int
  messages: list[str]


@dataclasses.dataclass
class AttackStage:
  """One attack of the evaluation.

  Attributes:
    name: attack (preset) name.
    num_attacked: points given to the attack.
    num_broken: of those, points it misclassified (inside the threat model).
    num_robust_after: points robust after this stage (cascade: cumulative;
      ``run_all``: robust to this attack alone).
    robust_accuracy_after: num_robust_after / number of examples.
    num_outside_threat_model: returned points outside the ball or box.
    robust_after: per-point robustness after this stage, bool [N] (cascade:
      robust to this and every earlier attack; ``run_all``: to this attack
      alone); clean-misclassified points are False.
  """
  name: str
  num_attacked: int
  num_broken: int
  num_robust_after: int
  robust_accuracy_after: float
  num_outside_threat_model: int
  robust_after: np.ndarray


@dataclasses.dataclass
class RobustAccuracyReport:
  """Outcome of :func:`robust_accuracy`; counts are exact.

  Attributes:
    num_examples: N.
    num_clean_correct: correctly classified clean points.
    clean_accuracy: num_clean_correct / N.
    stages: one :class:`AttackStage` per attack, in order.
    num_robust: points robust to every attack (worst case).
    robust_accuracy: num_robust / N.
    robust: per-point worst-case robustness, bool [N].
    broken_by: index of the first attack that broke each point; −1 for robust
      points, −2 for points misclassified clean, int [N].
    x_adv: [N, ...]: the breaking point where broken, else x.
    eps, norm: the threat model checked.
    sanity: the :class:`SanityReport` (None if checks were skipped).
    gradient_masking_suspected: a gradient-free attack broke points that the
      gradient-based attacks run before it did not.
    num_broken_only_by_gradient_free: how many such points.
    messages: warnings raised during the evaluation.
  """
  num_examples: int
  num_clean_correct: int
  clean_accuracy: float
  stages: list[AttackStage]
  num_robust: int
  robust_accuracy: float
  robust: np.ndarray
  broken_by: np.ndarray
  x_adv: np.ndarray
  eps: float
  norm: str
  sanity: SanityReport | None
  gradient_masking_suspected: bool
  num_broken_only_by_gradient_free: int
  messages: list[str]

  def summary(self) -> str:
    """A markdown table of the stages and the worst case."""
    n = self.num_examples
    lines = [f"threat model: {self.norm} eps={self.eps:.6g}; N={n}", "",
             "| stage | attacked | broken | robust after | robust acc |",
             "|---|---|---|---|---|",
             f"| clean | {n} | {n - self.num_clean_correct} | "
             f"{self.num_clean_correct} | {self.clean_accuracy:.2%} |"]
    for s in self.stages:
      lines.append(f"| {s.name} | {s.num_attacked} | {s.num_broken} | "
                   f"{s.num_robust_after} | {s.robust_accuracy_after:.2%} |")
    lines.append(f"| worst case | | | {self.num_robust} | "
                 f"{self.robust_accuracy:.2%} |")
    if self.messages:
      lines += [""] + [f"- {m}" for m in self.messages]
    return "\n".join(lines)


def _batched(fn: Callable[..., jax.Array], arrays: Sequence[np.ndarray],
             batch_size: int) -> np.ndarray:
  """Applies ``fn`` to fixed-size chunks (the last one padded) and concatenates.

  Padding repeats the last row, so ``fn`` compiles for one batch shape only.
  """
  total = arrays[0].shape[0]
  outs = []
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    chunk = []
    for a in arrays:
      c = a[start:stop]
      if stop - start < batch_size:
        pad = np.repeat(c[-1:], batch_size - (stop - start), axis=0)
        c = np.concatenate([c, pad], axis=0)
      chunk.append(c)
    outs.append(np.asarray(fn(*chunk))[:stop - start])
  return np.concatenate(outs, axis=0)


def sanity_checks(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array
                  ) -> SanityReport:
  """AutoAttack-style checks on ``logits_fn`` at a batch x [B, ...], labels [B].

  Returns:
    A :class:`SanityReport`; its ``messages`` say what failed and why it
    matters for the evaluation.
  """
  z1 = np.asarray(logits_fn(x), np.float64)
  z2 = np.asarray(logits_fn(x), np.float64)
  diff = float(np.max(np.abs(z1 - z2))) if z1.size else 0.0
  probs_like = bool(np.all((z1 >= 0) & (z1 <= 1))
                    and np.allclose(z1.sum(-1), 1.0, atol=1e-5))

  def ce_sum(xa):
    return jnp.sum(losses.comp_sum_loss(logits_fn(xa), labels, 1.0))

  grad = np.asarray(jax.grad(ce_sum)(x)).reshape(x.shape[0], -1)
  zero = int(np.sum(np.abs(grad).sum(-1) < ZERO_GRADIENT_THRESHOLD))
  messages = []
  if diff > 0:
    messages.append(f"the forward pass is not deterministic (max logit "
                    f"difference {diff:.3g} between two calls): randomized "
                    f"defenses need EOT attacks; results may be unreliable")
  if probs_like:
    messages.append("logits_fn seems to return probabilities (rows in [0, 1] "
                    "summing to 1); attacks expect logits, and the CE/DLR "
                    "gradients are then distorted")
  if zero:
    messages.append(f"{zero} of {x.shape[0]} points have zero input gradient "
                    f"of the cross-entropy: gradient-based attacks cannot "
                    f"move them (possible gradient masking)")
  return SanityReport(diff == 0.0, diff, probs_like, zero, messages)


def _example_keys(key: jax.Array, name: str, num: int, offset: int = 0
                  ) -> np.ndarray:
  """Per-example keys fold_in(fold_in(key, crc32(name)), offset + i),
  i = 0..num−1."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # raw uint32 key
  attack_key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
  keys = jax.vmap(lambda i: jax.random.fold_in(attack_key, i))(
      offset + jnp.arange(num))
  return np.asarray(jax.random.key_data(keys))


def _resolve_attacks(attacks: str | Sequence[AttackSpec],
                     overrides: dict[str, Any]
                     ) -> list[tuple[str, presets.AttackFn, float | None,
                                     str | None, str | None]]:
  """(name, fn, ε, norm, config repr) per attack; None for custom callables."""
  if isinstance(attacks, str):
    names = list(presets.get_preset(attacks)["cascade"]) if presets.is_cascade(
        attacks) else [attacks]
    attacks = names
  out = []
  extra = {k: v for k, v in overrides.items()
           if k not in ("eps", "norm") and v is not None}
  named = [s for s in attacks if isinstance(s, str)]
  if extra and not named:
    raise ValueError(f"overrides {sorted(extra)} apply to preset attacks "
                     f"only, and no preset was given")
  if named:
    presets.check_overrides_used(named, extra)
  for spec in attacks:
    if isinstance(spec, str):
      if presets.is_cascade(spec):
        out += _resolve_attacks(spec, overrides)
        continue
      cfg = presets.resolve(spec, **presets.member_overrides(spec, overrides))
      eps, norm = presets.threat_model_of(cfg)
      out.append((spec, presets.build_attack(cfg), eps, norm, repr(cfg)))
    elif (isinstance(spec, tuple) and len(spec) == 2
          and isinstance(spec[0], str) and callable(spec[1])):
      out.append((spec[0], spec[1], None, None, None))
    else:
      raise ValueError(f"each attack must be a preset name or a (name, "
                       f"attack_fn) pair, got {spec!r}")
  if not out:
    raise ValueError("attacks must name at least one attack")
  return out


def robust_accuracy(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                    key: jax.Array,
                    attacks: str | Sequence[AttackSpec] = "aa_standard_like",
                    *, eps: float | None = None, norm: str | None = None,
                    batch_size: int = 256, run_all: bool = False,
                    run_checks: bool = True,
                    overrides: dict[str, Any] | None = None,
                    example_offset: int = 0) -> RobustAccuracyReport:
  """Robust accuracy under a cascade of attacks, with exact counts.

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n]; pure and deterministic
      (it is jitted per attack).
    x: clean inputs in [0, 1], [N, ...].
    labels: integer [N].
    key: PRNG key.
    attacks: a preset name (a cascade such as 'aa_standard_like' or a single
      attack), or a sequence of preset names and ``(name, attack_fn)`` pairs
      with ``attack_fn(logits_fn, x, labels, key) -> x_adv``.
    eps: the threat model's ε; overrides the presets' ε. Required when a
      custom attack is given; otherwise all presets must agree on ε.
    norm: 'linf' or 'l2'; overrides the presets' norm (Square is ℓ∞ only).
    batch_size: examples per compiled call (the last chunk is padded).
    run_all: run every attack on every clean-correct point (per-attack robust
      accuracy) instead of only on the points still robust.
    run_checks: run :func:`sanity_checks` on the first batch.
    overrides: further keyword overrides for every preset attack (e.g.
      ``{'num_steps': 20}``).
    example_offset: global index of ``x[0]`` when ``x`` is a contiguous share
      of a larger set (one process's share): example i's attack keys are
      those of example ``example_offset + i`` of the whole set, so the shares'
      counts add up to the whole set's.

  Returns:
    A :class:`RobustAccuracyReport`.

  Raises:
    ValueError: bad inputs (x outside [0, 1], labels), unknown presets, ε < 0,
      presets disagreeing on ε or norm, or a custom attack without ``eps``.
  """
  threat_model.check_inputs(x, labels)
  if eps is not None:
    threat_model.check_eps(eps)
  if norm is not None:
    threat_model.check_norm(norm)
  threat_model.check_positive_int(batch_size, "batch_size")
  if isinstance(example_offset, bool) or not isinstance(
      example_offset, (int, np.integer)) or example_offset < 0:
    raise ValueError(f"example_offset must be an integer >= 0, got "
                     f"example_offset={example_offset!r}")
  all_overrides = dict(overrides or {})
  all_overrides.update({"eps": eps, "norm": norm})
  resolved = _resolve_attacks(attacks, all_overrides)
  eps_set = {r[2] for r in resolved if r[2] is not None}
  norm_set = {r[3] for r in resolved if r[3] is not None}
  if eps is None:
    if len(eps_set) != 1:
      raise ValueError(f"eps must be given (custom attacks) or the presets "
                       f"must agree on it; got eps values {sorted(eps_set)}")
    eps = eps_set.pop()
  if norm is None:
    norm_set = norm_set or {"linf"}
    if len(norm_set) != 1:
      raise ValueError(f"the presets mix norms {sorted(norm_set)}; pass norm")
    norm = norm_set.pop()

  x_np = np.asarray(x)
  y_np = np.asarray(labels)
  num = x_np.shape[0]
  logits_jit = jax.jit(logits_fn)
  clean_logits = _batched(logits_jit, [x_np], batch_size)
  threat_model.check_logits_fn_output(jnp.asarray(clean_logits[:1]),
                                      jnp.asarray(y_np[:1]))
  validation.check_labels(y_np, clean_logits.shape)
  correct = clean_logits.argmax(-1) == y_np
  messages: list[str] = []
  sanity = None
  if run_checks:
    b = min(batch_size, num)
    sanity = sanity_checks(logits_jit, jnp.asarray(x_np[:b]),
                           jnp.asarray(y_np[:b]))
    messages += sanity.messages

  robust = correct.copy()
  broken_by = np.where(correct, -1, -2)
  x_adv_all = x_np.copy()
  stages = []
  gradient_based_robust = None  # robust to the gradient-based attacks so far
  num_gradient_free_only = 0
  for index, (name, attack_fn, _, _, _) in enumerate(resolved):
    todo = np.nonzero(correct if run_all else robust)[0]
    keys = _example_keys(key, name, num, int(example_offset))
    jitted = jax.jit(lambda xb, yb, kb, f=attack_fn: f(
        logits_fn, xb, yb, jax.random.wrap_key_data(kb)))
    if todo.size:
      x_att = _batched(jitted, [x_np[todo], y_np[todo], keys[todo]],
                       batch_size)
      pred = _batched(logits_jit, [x_att], batch_size).argmax(-1)
      dist = np.asarray(threat_model.per_example_norm(
          jnp.asarray(x_att - x_np[todo]), norm))
      inside = ((dist <= eps + BALL_TOLERANCE)
                & (x_att.reshape(todo.size, -1).min(-1) >= 0.0)
                & (x_att.reshape(todo.size, -1).max(-1) <= 1.0))
      fooled = (pred != y_np[todo]) & inside
    else:
      x_att = x_np[:0]
      inside = fooled = np.zeros(0, bool)
    outside = int(np.sum(~inside))
    if outside:
      messages.append(f"{name}: {outside} returned points lie outside the "
                      f"{norm} ball of radius {eps} or [0, 1]; they were not "
                      f"counted as broken")
    newly = todo[fooled & robust[todo]]
    broken_by[newly] = index
    x_adv_all[newly] = x_att[fooled & robust[todo]]
    if name in GRADIENT_FREE and gradient_based_robust is not None:
      only_here = todo[fooled & gradient_based_robust[todo]]
      num_gradient_free_only += only_here.size
    if name not in GRADIENT_FREE:
      if gradient_based_robust is None:
        gradient_based_robust = correct.copy()
      gradient_based_robust[todo[fooled]] = False
    robust[todo[fooled]] = False
    if run_all:
      robust_after = correct.copy()
      robust_after[todo[fooled]] = False
    else:
      robust_after = robust.copy()
    after = int(np.sum(robust_after))
    stages.append(AttackStage(name, int(todo.size), int(np.sum(fooled)),
                              after, after / num, outside, robust_after))

  if num_gradient_free_only:
    messages.append(f"gradient masking suspected: the gradient-free attack "
                    f"broke {num_gradient_free_only} points that the "
                    f"gradient-based attacks did not")
  for m in messages:
    warnings.warn(m, stacklevel=2)
  num_robust = int(np.sum(robust))
  return RobustAccuracyReport(
      num_examples=num, num_clean_correct=int(np.sum(correct)),
      clean_accuracy=float(np.mean(correct)) if num else 0.0, stages=stages,
      num_robust=num_robust, robust_accuracy=num_robust / num if num else 0.0,
      robust=robust, broken_by=broken_by, x_adv=x_adv_all, eps=float(eps),
      norm=norm, sanity=sanity,
      gradient_masking_suspected=num_gradient_free_only > 0,
      num_broken_only_by_gradient_free=num_gradient_free_only,
      messages=messages)
