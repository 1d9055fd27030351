"""Robust accuracy by a cascade of attacks, with AutoAttack-style sanity checks.

``robust_accuracy`` runs a list of attacks in order, each only on the points
that are still robust (correctly classified and not yet broken), as AutoAttack
does (Croce & Hein 2020, §5), and reports exact counts per stage and the
worst case. Early exit also holds inside an attack: an attack that makes
several separate runs (APGD restarts, APGD-T and FAB-T target classes)
declares them (:class:`~compsum_jax.attacks.presets.Attack`), and run j
attacks only the points that runs 0..j−1 left robust. The robust points are
compacted on the host into batches of ``batch_size`` plus one smaller bucket
(``batch_size``/2^k), so each attack compiles for a few shapes only. When
fewer than ``batch_size`` points are left, several consecutive runs share one
batch of (point, run) pairs; a point broken by run j keeps run j's result.
With ``early_exit=False`` every attack makes all its runs on every
clean-correct point (the exhaustive evaluation, same robust set). With
``run_all=True`` every attack runs on every clean-correct point, which also
gives each attack's own robust accuracy; the worst case is then the
per-point minimum over the attacks.

An attack's randomness depends only on (key, attack name, example index):
example i gets the key fold_in(fold_in(key, crc32(name)), i). So a point's
outcome does not depend on which other points share its batch, and the
cascade agrees point by point with running each attack alone.

A ``logits_fn`` given as a ``jax.tree_util.Partial`` (a function and its
parameters as pytree leaves, e.g. ``training.adversarial.inference_logits_fn``)
is passed to the compiled attacks as an argument: the parameters are inputs of
the programs, not constants folded into them, so with a shared ``jit_cache``
the cascade compiles once for every network of the same structure (one
compilation for all the runs of an experiment). A plain callable is closed
over (one compilation per callable).

Every returned adversarial point is checked to lie in the ε-ball and in
[0, 1]; a point that does not is not counted as broken, and a warning says so.

Sanity checks (as AutoAttack's ``checks.py``), reported and warned about:
  * the forward pass is deterministic: several passes on the first batch
    agree within a tolerance;
  * the outputs are logits, not probabilities (rows in [0, 1] summing to 1);
  * no evaluated point has an (almost) zero input gradient of the DLR loss
    (cross-entropy with fewer than 3 classes);
  * gradient masking: a gradient-free attack (Square) breaks points that the
    gradient-based attacks before it did not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import losses, validation
from compsum_jax.attacks import objectives, presets, threat_model

LogitsFn = Callable[[jax.Array], jax.Array]
AttackSpec = str | tuple[str, presets.AttackFn]

# Slack on the ε-ball check: float32 rounding of (x + δ) − x.
BALL_TOLERANCE = 1e-5
# A gradient whose ℓ1 norm is below this counts as zero.
ZERO_GRADIENT_THRESHOLD = 1e-10
# Forward passes compared by the determinism check, and their tolerance on
# max |z_k − z_1| / (1 + max |z_1|).
DETERMINISM_PASSES = 3
DETERMINISM_TOLERANCE = 1e-6
# Smallest padded bucket of the host-side compaction.
MIN_BUCKET = 8
# On a CPU host a chunk runs as P equal parts in P threads, P the largest
# power of two ≤ the number of cores with parts of at least this many rows:
# one XLA:CPU program keeps about one core busy (each convolution runs on one
# core). On 2 cores two halves ran 1.5-2× faster than the whole chunk at every
# size measured, 64 to 512 rows (benchmarks/results/autoattack.md).
CPU_MIN_ROWS_PER_THREAD = 2 * MIN_BUCKET


@dataclasses.dataclass
class SanityReport:
  """Outcome of :func:`sanity_checks`.

  Attributes:
    deterministic: every forward pass agreed with the first within the
      tolerance.
    max_abs_logit_difference: max |z_k − z_1| over the passes.
    looks_like_probabilities: every output row lies in [0, 1] and sums to 1.
    num_zero_gradient: points whose input gradient of ``gradient_objective``
      has ℓ1 norm below ``ZERO_GRADIENT_THRESHOLD``.
    num_forward_passes: passes compared by the determinism check.
    tolerance: its relative tolerance.
    num_gradient_points: points whose gradient was checked.
    gradient_objective: 'dlr' (or 'ce' with fewer than 3 classes).
    messages: human-readable warnings (empty when all checks pass).
  """
  deterministic: bool
  max_abs_logit_difference: float
  looks_like_probabilities: bool
  num_zero_gradient: int
  messages: list[str]
  num_forward_passes: int = DETERMINISM_PASSES
  tolerance: float = DETERMINISM_TOLERANCE
  num_gradient_points: int = 0
  gradient_objective: str = "dlr"

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields."""
    return dataclasses.asdict(self)


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
    description: the attack's complete configuration, human-readable.
    gradient_free: the attack declares it uses no gradient.
    num_runs: its separate runs (restarts × target classes).
    num_point_runs: Σ over runs of the points attacked (the work done).
    seconds: wall time of the stage (compilation included).
  """
  name: str
  num_attacked: int
  num_broken: int
  num_robust_after: int
  robust_accuracy_after: float
  num_outside_threat_model: int
  robust_after: np.ndarray
  description: str = ""
  gradient_free: bool = False
  num_runs: int = 1
  num_point_runs: int = 0
  seconds: float = 0.0

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (without the per-point array)."""
    return {"name": self.name, "description": self.description,
            "gradient_free": self.gradient_free, "num_runs": self.num_runs,
            "num_attacked": self.num_attacked, "num_broken": self.num_broken,
            "num_robust_after": self.num_robust_after,
            "robust_accuracy_after": self.robust_accuracy_after,
            "num_outside_threat_model": self.num_outside_threat_model,
            "num_point_runs": self.num_point_runs, "seconds": self.seconds}


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
    early_exit: whether runs and stages attacked only still-robust points.
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
  early_exit: bool = True

  @property
  def attack_configuration(self) -> list[str]:
    """'name: description' per stage, the exact attacks behind the number."""
    return [f"{s.name}: {s.description}" for s in self.stages]

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready summary: counts, stages with their configuration, checks."""
    return {
        "num_examples": self.num_examples,
        "num_clean_correct": self.num_clean_correct,
        "clean_accuracy": self.clean_accuracy,
        "num_robust": self.num_robust,
        "robust_accuracy": self.robust_accuracy,
        "eps": self.eps, "norm": self.norm, "early_exit": self.early_exit,
        "attack_configuration": self.attack_configuration,
        "stages": [s.to_dict() for s in self.stages],
        "sanity": None if self.sanity is None else self.sanity.to_dict(),
        "gradient_masking_suspected": self.gradient_masking_suspected,
        "num_broken_only_by_gradient_free":
            self.num_broken_only_by_gradient_free,
        "messages": list(self.messages),
    }

  def summary(self) -> str:
    """A markdown table of the stages and the worst case, then the attacks."""
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
    lines += [""] + [f"- {c}" for c in self.attack_configuration]
    if self.messages:
      lines += [""] + [f"- {m}" for m in self.messages]
    return "\n".join(lines)


def bucket_size(count: int, batch_size: int) -> int:
  """Smallest of batch_size, batch_size/2, batch_size/4, … (≥ MIN_BUCKET)
  that holds ``count`` points (count ≤ batch_size)."""
  size = batch_size
  while size // 2 >= max(count, MIN_BUCKET):
    size //= 2
  return size


def padded_rows(count: int, batch_size: int) -> int:
  """Rows that :func:`_batched` computes for ``count`` points: full batches
  plus the last chunk padded to its bucket."""
  full, rest = divmod(count, batch_size)
  return full * batch_size + (bucket_size(rest, batch_size) if rest else 0)


def runs_per_batch(num_points: int, runs_left: int, batch_size: int) -> int:
  """How many consecutive runs of an attack share one pass over
  ``num_points`` points: the g ≤ runs_left with g·num_points ≤ batch_size
  (at least 1) that computes the fewest padded rows per run, the largest
  such g on ties (bigger batches use the cores better)."""
  most = max(1, min(runs_left, batch_size // max(num_points, 1)))
  return min(range(1, most + 1),
             key=lambda g: (padded_rows(g * num_points, batch_size) / g, -g))


def cpu_thread_parts(rows: int, num_cores: int | None = None) -> int:
  """Equal parts a chunk of ``rows`` rows runs as on a CPU host: the largest
  power of two P ≤ ``num_cores`` (default: this host's) dividing ``rows``
  with rows / P ≥ CPU_MIN_ROWS_PER_THREAD; 1 off CPU."""
  if num_cores is None:
    if jax.default_backend() != "cpu":
      return 1
    num_cores = os.cpu_count() or 1
  parts = 1
  while (2 * parts <= num_cores and rows % (2 * parts) == 0
         and rows // (2 * parts) >= CPU_MIN_ROWS_PER_THREAD):
    parts *= 2
  return parts


def _run_chunk(fn: Callable[..., jax.Array], chunk: list[np.ndarray]
               ) -> np.ndarray:
  """``fn(*chunk)`` as a NumPy array; on a multi-core CPU host the chunk runs
  as :func:`cpu_thread_parts` equal parts in as many threads (XLA:CPU keeps
  about one core busy per program; the examples are independent, so the
  result is the same)."""
  rows = chunk[0].shape[0]
  parts = cpu_thread_parts(rows)
  if parts == 1:
    return np.asarray(fn(*chunk))
  size = rows // parts
  pieces = [[c[i * size:(i + 1) * size] for c in chunk] for i in range(parts)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=parts - 1) as pool:
    rest = [pool.submit(lambda p=p: np.asarray(fn(*p))) for p in pieces[1:]]
    first = np.asarray(fn(*pieces[0]))
    return np.concatenate([first] + [r.result() for r in rest], axis=0)


def _batched(fn: Callable[..., jax.Array], arrays: Sequence[np.ndarray],
             batch_size: int) -> np.ndarray:
  """Applies ``fn`` to fixed-size chunks and concatenates.

  Full chunks have ``batch_size`` rows; the last one is padded (repeating its
  last row) to :func:`bucket_size`, so ``fn`` compiles for a few shapes only.
  """
  total = arrays[0].shape[0]
  outs = []
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    size = bucket_size(stop - start, batch_size)
    chunk = []
    for a in arrays:
      c = a[start:stop]
      if stop - start < size:
        pad = np.repeat(c[-1:], size - (stop - start), axis=0)
        c = np.concatenate([c, pad], axis=0)
      chunk.append(c)
    outs.append(_run_chunk(fn, chunk)[:stop - start])
  return np.concatenate(outs, axis=0)


def _is_parametrised(logits_fn: Any) -> bool:
  """Whether ``logits_fn`` carries its parameters as pytree leaves."""
  return isinstance(logits_fn, jax.tree_util.Partial)


@jax.jit
def _parametrised_logits(logits_fn: jax.tree_util.Partial, x: jax.Array
                         ) -> jax.Array:
  return logits_fn(x)


def _input_gradient_l1(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                       objective_name: str) -> jax.Array:
  """‖∇_x objective‖₁ per example (DLR, or cross-entropy for 2 classes)."""
  def total(xa):
    z = logits_fn(xa)
    if objective_name == "dlr":
      return jnp.sum(objectives.dlr(z, labels))
    return jnp.sum(losses.comp_sum_loss(z, labels, 1.0))
  g = jax.grad(total)(x)
  return jnp.sum(jnp.abs(g.reshape(g.shape[0], -1)), axis=-1)


_parametrised_gradient_l1 = jax.jit(_input_gradient_l1,
                                    static_argnames="objective_name")


def sanity_checks(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, *,
                  batch_size: int = 256,
                  num_passes: int = DETERMINISM_PASSES,
                  tolerance: float = DETERMINISM_TOLERANCE,
                  jit_cache: dict[Any, Any] | None = None) -> SanityReport:
  """AutoAttack-style checks on ``logits_fn`` at x [B, ...], labels [B].

  Determinism: ``num_passes`` forward passes on the first ``batch_size``
  points must agree, max |z_k − z_1| ≤ tolerance·(1 + max |z_1|). Zero
  gradients: the input gradient of the DLR loss (Croce & Hein 2020, eq. 5;
  cross-entropy with fewer than 3 classes) at every given point, in batches.

  A ``jit_cache`` dict (as in :func:`robust_accuracy`) keeps the compiled
  gradient of a plain callable ``logits_fn`` for later calls.

  Returns:
    A :class:`SanityReport`; its ``messages`` say what failed and why it
    matters for the evaluation.
  """
  threat_model.check_positive_int(num_passes, "num_passes")
  if num_passes < 2:
    raise ValueError(f"num_passes must be >= 2 to compare passes, got "
                     f"num_passes={num_passes}")
  threat_model.check_eps(tolerance, "tolerance")
  x_np, y_np = np.asarray(x), np.asarray(labels)
  num = x_np.shape[0]
  if not num:
    raise ValueError("sanity_checks needs at least one point, got x of shape "
                     f"{x_np.shape}")
  parametrised = _is_parametrised(logits_fn)
  forward = ((lambda xb: _parametrised_logits(logits_fn, xb)) if parametrised
             else logits_fn)
  first = jnp.asarray(x_np[:min(batch_size, num)])
  z1 = np.asarray(forward(first), np.float64)
  diff = 0.0
  for _ in range(num_passes - 1):
    zk = np.asarray(forward(first), np.float64)
    if z1.size:
      diff = max(diff, float(np.max(np.abs(zk - z1))))
  scale = 1.0 + (float(np.max(np.abs(z1))) if z1.size else 0.0)
  deterministic = diff <= tolerance * scale
  probs_like = bool(np.all((z1 >= 0) & (z1 <= 1))
                    and np.allclose(z1.sum(-1), 1.0, atol=1e-5))
  num_classes = z1.shape[-1]
  objective_name = "dlr" if num_classes >= 3 else "ce"

  if parametrised:  # one compilation for every parameter value
    def gradient_l1(xb, yb):
      return _parametrised_gradient_l1(logits_fn, xb, yb,
                                       objective_name=objective_name)
  else:
    cache = {} if jit_cache is None else jit_cache
    cache_key = (logits_fn, "sanity_gradient_l1", objective_name)
    if cache_key not in cache:
      cache[cache_key] = jax.jit(lambda xb, yb: _input_gradient_l1(
          logits_fn, xb, yb, objective_name))
    gradient_l1 = cache[cache_key]

  zero = 0
  if num:
    l1 = _batched(gradient_l1, [x_np, y_np], batch_size)
    zero = int(np.sum(l1 < ZERO_GRADIENT_THRESHOLD))
  messages = []
  if not deterministic:
    messages.append(f"the forward pass is not deterministic (max logit "
                    f"difference {diff:.3g} over {num_passes} passes, "
                    f"tolerance {tolerance:g}·(1 + max|z|)): randomized "
                    f"defenses need EOT attacks; results may be unreliable")
  if probs_like:
    messages.append("logits_fn seems to return probabilities (rows in [0, 1] "
                    "summing to 1); attacks expect logits, and the CE/DLR "
                    "gradients are then distorted")
  if zero:
    messages.append(f"{zero} of {num} points have zero input gradient of the "
                    f"{objective_name.upper()} loss: gradient-based attacks "
                    f"cannot move them (possible gradient masking)")
  return SanityReport(deterministic, diff, probs_like, zero, messages,
                      num_forward_passes=num_passes, tolerance=tolerance,
                      num_gradient_points=num,
                      gradient_objective=objective_name)


def _example_keys(key: jax.Array, name: str, num: int, offset: int = 0
                  ) -> np.ndarray:
  """Per-example keys fold_in(fold_in(key, crc32(name)), offset + i),
  i = 0..num−1."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # raw uint32 key
  return np.asarray(_folded_keys(key, zlib.crc32(name.encode()) & 0x7FFFFFFF,
                                 offset, num))


@functools.partial(jax.jit, static_argnums=3)
def _folded_keys(key: jax.Array, salt: int, offset: int, num: int
                 ) -> jax.Array:
  """Key data of fold_in(fold_in(key, salt), offset + i), i < num (one
  compiled call instead of a dispatch per operation)."""
  attack_key = jax.random.fold_in(key, salt)
  keys = jax.vmap(lambda i: jax.random.fold_in(attack_key, i))(
      offset + jnp.arange(num))
  return jax.random.key_data(keys)


@dataclasses.dataclass(frozen=True)
class _Stage:
  """One resolved attack of the evaluation and what it declares."""
  name: str
  attack: Any  # presets.Attack or a custom attack_fn
  eps: float | None
  norm: str | None
  description: str
  gradient_free: bool
  # What identifies its compiled program: the configuration of a preset,
  # the object itself for a custom attack.
  cache_key: tuple[Any, ...] = ()

  def num_runs(self, num_classes: int) -> int:
    runs = getattr(self.attack, "num_runs", None)
    return int(runs(num_classes)) if callable(runs) else 1

  @property
  def attack_runs_alone(self) -> bool:
    """Whether its runs can be made one at a time (``Attack.run``)."""
    kind = getattr(self.attack, "kind", None)
    return (isinstance(self.attack, presets.Attack)
            and getattr(kind, "single_run", None) is not None)


def _resolve_attacks(attacks: str | Sequence[AttackSpec],
                     overrides: dict[str, Any]) -> list[_Stage]:
  """One :class:`_Stage` per attack (cascades expanded)."""
  if isinstance(attacks, str):
    names = list(presets.get_preset(attacks)["cascade"]) if presets.is_cascade(
        attacks) else [attacks]
    attacks = names
  out: list[_Stage] = []
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
      attack = presets.build_attack(
          spec, **presets.member_overrides(spec, overrides))
      out.append(_Stage(spec, attack, attack.eps, attack.norm,
                        attack.describe(), attack.gradient_free,
                        ("preset", attack.describe())))
    elif (isinstance(spec, tuple) and len(spec) == 2
          and isinstance(spec[0], str) and callable(spec[1])):
      # A custom attack carries its properties if it has them (an Attack).
      fn = spec[1]
      describe = getattr(fn, "describe", None)
      out.append(_Stage(
          spec[0], fn, getattr(fn, "eps", None), getattr(fn, "norm", None),
          describe() if callable(describe) else f"custom attack {spec[0]!r}",
          bool(getattr(fn, "gradient_free", False)), ("custom", fn)))
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
                    early_exit: bool = True, run_checks: bool = True,
                    overrides: dict[str, Any] | None = None,
                    jit_cache: dict[Any, Any] | None = None,
                    example_offset: int = 0) -> RobustAccuracyReport:
  """Robust accuracy under a cascade of attacks, with exact counts.

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n]; pure and deterministic
      (it is jitted per attack), examples independent.
    x: clean inputs in [0, 1], [N, ...].
    labels: integer [N].
    key: PRNG key.
    attacks: a preset name (a cascade such as 'aa_standard' or a single
      attack), or a sequence of preset names and ``(name, attack_fn)`` pairs
      with ``attack_fn(logits_fn, x, labels, key) -> x_adv`` (an
      :class:`~compsum_jax.attacks.presets.Attack` keeps its properties).
    eps: the threat model's ε; overrides the presets' ε. Required when a
      custom attack is given; otherwise all presets must agree on ε.
    norm: 'linf' or 'l2'; overrides the presets' norm (Square and FAB-T are
      ℓ∞ only).
    batch_size: examples per compiled call (the last chunk is padded to a
      bucket of batch_size/2^k rows).
    run_all: run every attack on every clean-correct point (per-attack robust
      accuracy) instead of only on the points still robust.
    early_exit: attack only still-robust points between the runs of an
      attack (restarts, target classes) and between attacks; False runs
      every attack in full on every clean-correct point (same robust set,
      more work).
    run_checks: run :func:`sanity_checks` (on the clean-correct points).
    overrides: further keyword overrides for every preset attack (e.g.
      ``{'num_steps': 20}``).
    jit_cache: a dict owned by the caller: the jitted attacks are kept there
      (keyed by logits_fn and the attack's configuration), so later calls
      with the same dict and logits_fn reuse their compilations; with a
      ``jax.tree_util.Partial`` logits_fn the key is its function and tree
      structure, so other parameter values reuse them too (module doc).
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
  eps_set = {r.eps for r in resolved if r.eps is not None}
  norm_set = {r.norm for r in resolved if r.norm is not None}
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
  cache = {} if jit_cache is None else jit_cache

  def cached_jit(key_parts: tuple[Any, ...],
                 make: Callable[[LogitsFn], Callable]) -> Callable:
    """``make(logits_fn)`` jitted, from ``cache`` when compiled before."""
    if _is_parametrised(logits_fn):
      # Keyed by the function and the parameters' tree structure (shapes and
      # dtypes are jit's own cache key): the parameters are an argument.
      full_key = (jax.tree_util.tree_structure(logits_fn),) + key_parts
      if full_key not in cache:
        cache[full_key] = jax.jit(lambda lf, *arrays: make(lf)(*arrays))
      compiled = cache[full_key]
      return lambda *arrays: compiled(logits_fn, *arrays)
    full_key = (logits_fn,) + key_parts
    if full_key not in cache:
      cache[full_key] = jax.jit(make(logits_fn))
    return cache[full_key]

  logits_jit = cached_jit(("logits",), lambda lf: lf)
  clean_logits = _batched(logits_jit, [x_np], batch_size)
  threat_model.check_logits_fn_output(jnp.asarray(clean_logits[:1]),
                                      jnp.asarray(y_np[:1]))
  validation.check_labels(y_np, clean_logits.shape)
  num_classes = clean_logits.shape[-1]
  correct = clean_logits.argmax(-1) == y_np
  messages: list[str] = []
  sanity = None
  if run_checks:
    # On the evaluated (clean-correct) points; on all if there are none.
    checked = correct if correct.any() else np.ones(num, bool)
    sanity = sanity_checks(
        logits_fn if _is_parametrised(logits_fn) else logits_jit,
        x_np[checked], y_np[checked], batch_size=batch_size, jit_cache=cache)
    messages += sanity.messages

  def attack_points(fn, points: np.ndarray, keys: np.ndarray,
                    run_index: np.ndarray | None = None):
    """(x_att, fooled, inside) of ``fn`` on the points with these indices
    (point ``points[i]`` making run ``run_index[i]``)."""
    arrays = [x_np[points], y_np[points], keys[points]]
    if run_index is not None:  # an array: one compilation for every run
      arrays.append(run_index.astype(np.int32))
    x_att = _batched(fn, arrays, batch_size)
    pred = _batched(logits_jit, [x_att], batch_size).argmax(-1)
    dist = np.asarray(threat_model.per_example_norm(
        jnp.asarray(x_att - x_np[points]), norm))
    flat = x_att.reshape(points.size, -1)
    inside = ((dist <= eps + BALL_TOLERANCE) & (flat.min(-1) >= 0.0)
              & (flat.max(-1) <= 1.0))
    return x_att, (pred != y_np[points]) & inside, inside

  robust = correct.copy()
  broken_by = np.where(correct, -1, -2)
  x_adv_all = x_np.copy()
  stages = []
  gradient_based_robust = None  # robust to the gradient-based attacks so far
  num_gradient_free_only = 0
  for index, stage in enumerate(resolved):
    start_time = time.perf_counter()
    name = stage.name
    todo = np.nonzero(robust if (early_exit and not run_all) else correct)[0]
    keys = (_example_keys(key, name, num, int(example_offset)) if todo.size
            else None)  # nothing to attack
    runs = stage.num_runs(num_classes)
    fooled = np.zeros(todo.size, bool)
    x_att = x_np[todo].copy()
    outside = 0
    point_runs = 0
    if early_exit and stage.attack_runs_alone:
      # Run j only on the points that runs 0..j−1 left robust. When fewer
      # than batch_size points are left, the next g runs share one batch
      # of g·left ≤ batch_size pairs (point, run): a point broken by run j
      # keeps run j's point, as if the later runs had skipped it, so the
      # outcome is that of one run at a time (module doc).
      run_jit = cached_jit(
          ("run", stage.name) + stage.cache_key,
          lambda lf, a=stage.attack: lambda xb, yb, kb, jb: a.run(
              lf, xb, yb, jax.random.wrap_key_data(kb), jb))
      j = 0
      while j < runs:
        left = np.nonzero(~fooled)[0]
        if not left.size:
          break
        group = runs_per_batch(left.size, runs - j, batch_size)
        pair_points = np.tile(todo[left], group)
        pair_runs = np.repeat(np.arange(j, j + group), left.size)
        point_runs += pair_points.size
        x_j, fooled_j, inside_j = attack_points(run_jit, pair_points, keys,
                                                pair_runs)
        outside += int(np.sum(~inside_j))
        fooled_j = fooled_j.reshape(group, left.size)
        x_j = x_j.reshape((group, left.size) + x_j.shape[1:])
        hit = fooled_j.any(axis=0)
        first = fooled_j.argmax(axis=0)  # the earliest run that broke it
        x_att[left[hit]] = x_j[first[hit], np.nonzero(hit)[0]]
        fooled[left[hit]] = True
        j += group
    elif todo.size:
      point_runs = todo.size * runs
      jitted = cached_jit(
          ("full", stage.name) + stage.cache_key,
          lambda lf, f=stage.attack: lambda xb, yb, kb: f(
              lf, xb, yb, jax.random.wrap_key_data(kb)))
      x_att, fooled, inside = attack_points(jitted, todo, keys)
      outside = int(np.sum(~inside))
    if outside:
      messages.append(f"{name}: {outside} returned points lie outside the "
                      f"{norm} ball of radius {eps} or [0, 1]; they were not "
                      f"counted as broken")
    newly = todo[fooled & robust[todo]]
    broken_by[newly] = index
    x_adv_all[newly] = x_att[fooled & robust[todo]]
    if stage.gradient_free and gradient_based_robust is not None:
      only_here = todo[fooled & gradient_based_robust[todo]]
      num_gradient_free_only += only_here.size
    if not stage.gradient_free:
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
    stages.append(AttackStage(
        name, int(todo.size), int(np.sum(fooled)), after, after / num,
        outside, robust_after, description=stage.description,
        gradient_free=stage.gradient_free, num_runs=runs,
        num_point_runs=int(point_runs),
        seconds=time.perf_counter() - start_time))

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
      messages=messages, early_exit=early_exit)
