"""Where the weight ν of ADV-COMP-SUM's smooth term makes the constant classifier win.

The ADV-COMP-SUM objective of a classifier h with logits z = h(x) is
(docs/math.md (10.4), (10.6), margin scale ρ > 0)

    L_ν(h) = E[ℓ_τ(z/ρ, y)] + (ν/ρ)·E[sup_{x' ∈ B(x, ε)} ‖v(x, x')‖₂],
    v = d − d_y·1,  d = h(x') − h(x).

Along the logit-scale path s ↦ s·h (s ≥ 0; s = 0 is the constant classifier
with all logits 0) the smooth term is linear in s (v scales with the logits,
and so does its sup over the ball), and ℓ_τ(s·z/ρ, y) = Φ^τ(n − 1)
− (s/ρ)·n^{1−τ}·(z_y − mean_i z_i) + O(s²) for every τ ≥ 0, because
Σ_{y'≠y} e^{s(z_{y'} − z_y)/ρ} = (n − 1) − (s/ρ)·n·(z_y − mean z) + O(s²) and
(Φ^τ)'(n − 1) = n^{−τ}. Hence the slope of s ↦ L_ν(s·h) at s = 0 is

    L_ν'(0) = (1/ρ)·(−n^{1−τ}·E[z_y − mean z] + ν·E[sup ‖v‖₂]),

negative exactly when ν < ν*(h) = n^{1−τ}·E[z_y − mean z] / E[sup ‖v‖₂]
(independent of ρ). For ν < ν*(h) some rescaling s > 0 of h beats the
constant classifier. For ν ≥ ν*(h) and τ ≤ 1 the path objective is convex in
s (ℓ_τ(s·z) = ((Σ_i e^{s(z_i − z_y)})^{1−τ} − 1)/(1 − τ) is an increasing
convex function of a log-sum-exp), so s = 0 beats EVERY rescaling; for τ > 1
s = 0 is only a local minimum of the path (ℓ_τ is bounded and not convex in s)
and :meth:`SmoothWeightThreshold.nu_constant_wins_on_grid` gives the smallest
ν for which s = 0 beats every scale of a grid.

The inner sup is approximated by PGD on the smooth term
(:func:`compsum_jax.attacks.pgd` with ``loss='smooth_comp_sum'``, uniform
random start, highest-term iterate), the inner maximisation of ADV-COMP-SUM
training. PGD finds a lower bound of the sup, so the estimated E[sup ‖v‖] is
low and the estimated ν*(h) is an OVER-estimate of the true threshold: a
configured ν above the estimate is certainly past it (up to sampling error).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import attacks, losses, validation
from compsum_jax.losses import adversarial as adversarial_losses

LogitsFn = Callable[[jax.Array], jax.Array]
PyTree = Any
AppliedLogitsFn = Callable[[PyTree, jax.Array], jax.Array]

NORMS = ("linf", "l2")


def label_gap(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """z_y − mean_i z_i per example, [..., n], [...] → [...].

  Minus the slope of ℓ_τ(s·z, y) at s = 0, divided by n^{1−τ}.
  """
  validation.check_logits(logits)
  logits = jnp.asarray(logits, validation.compute_dtype(logits))
  validation.check_labels(labels, logits.shape)
  label_logit = jnp.take_along_axis(logits, jnp.asarray(labels)[..., None],
                                    axis=-1)[..., 0]
  return label_logit - jnp.mean(logits, axis=-1)  # z_y − mean z


def _check_scales(scales: Sequence[float] | np.ndarray) -> np.ndarray:
  s = np.asarray(scales, dtype=np.float64)
  if s.ndim != 1 or s.size == 0:
    raise ValueError(f"scales must be a non-empty 1-D sequence of logit "
                     f"scales s >= 0, got shape {s.shape}")
  bad = ~np.isfinite(s) | (s < 0)
  if np.any(bad):
    raise ValueError(f"scales must be finite and >= 0, got scales="
                     f"{s[bad][:6]}")
  return s


def _check_per_example(logits: jax.Array, labels: jax.Array,
                       sup_smooth_term: jax.Array) -> None:
  validation.check_logits(logits)
  validation.check_labels(labels, jnp.shape(logits))
  if tuple(jnp.shape(sup_smooth_term)) != tuple(jnp.shape(labels)):
    raise ValueError(f"sup_smooth_term must have the shape of labels "
                     f"{tuple(jnp.shape(labels))}, got "
                     f"{tuple(jnp.shape(sup_smooth_term))}")
  validation.check_nonnegative(sup_smooth_term, "sup_smooth_term")


def logit_scale_objective(logits: jax.Array, labels: jax.Array,
                          sup_smooth_term: jax.Array,
                          scales: Sequence[float] | np.ndarray, *,
                          tau: float, nu: float, rho: float = 1.0
                          ) -> np.ndarray:
  """The ADV-COMP-SUM objective of s·h for every logit scale s of a grid.

      L_ν(s) = mean_i ℓ_τ(s·z_i/ρ, y_i) + (ν/ρ)·s·mean_i sup ‖v_i‖₂,

  exact given the per-example sup of the smooth term at s = 1 (the sup at
  scale s is s times it). L_ν(0) = Φ^τ(n − 1) is the constant classifier.

  Args:
    logits: clean logits z = h(x), [B, n].
    labels: y, integer [B].
    sup_smooth_term: sup_{x'} ‖v(x, x')‖₂ of h per example, [B], ≥ 0.
    scales: the grid of s ≥ 0, 1-D.
    tau: τ ≥ 0.
    nu: ν ≥ 0, weight of the smooth term.
    rho: ρ > 0, margin scale.

  Returns:
    L_ν(s) for every s, float64 [S].

  Raises:
    ValueError: bad shapes, labels, τ, ν, ρ, negative or non-finite scales.
  """
  validation.check_tau(tau)
  validation.check_nonnegative(nu, "nu")
  validation.check_nonnegative(rho, "rho", allow_zero=False)
  _check_per_example(logits, labels, sup_smooth_term)
  s = _check_scales(scales)
  z = jnp.asarray(logits, jnp.float32)
  natural = jax.vmap(
      lambda scale: jnp.mean(losses.comp_sum_loss(z * (scale / rho), labels,
                                                  tau)))(jnp.asarray(s))
  smooth = float(np.mean(np.asarray(sup_smooth_term, np.float64)))
  # L_ν(s) = E ℓ_τ(s z/ρ, y) + (ν/ρ)·s·E sup ‖v‖
  return np.asarray(natural, np.float64) + (nu / rho) * s * smooth


@dataclasses.dataclass(frozen=True)
class SmoothWeightThreshold:
  """ν*(h) and what it is made of, for one classifier h on one data sample.

  Attributes:
    nu_threshold: ν*(h) = n^{1−τ}·E[z_y − mean z] / E[sup ‖v‖₂]; +inf when
      E[sup ‖v‖] = 0 < E[z_y − mean z] (no ν makes s = 0 win to first order);
      ≤ 0 when E[z_y − mean z] ≤ 0 (h is no better than uniform to first
      order; 0 when both are 0).
    mean_label_gap: E[z_y − mean_i z_i].
    mean_sup_smooth_term: E[sup_{x'} ‖v‖₂], PGD's estimate (a lower bound).
    num_classes: n.
    tau: τ of the comp-sum loss.
    logits: clean logits z, float64 [B, n].
    labels: y, [B].
    sup_smooth_term: PGD's sup ‖v‖₂ per example, float64 [B].
  """

  nu_threshold: float
  mean_label_gap: float
  mean_sup_smooth_term: float
  num_classes: int
  tau: float
  logits: np.ndarray
  labels: np.ndarray
  sup_smooth_term: np.ndarray

  def slope_at_zero(self, nu: float, rho: float = 1.0) -> float:
    """d/ds L_ν(s·h) at s = 0: (1/ρ)(−n^{1−τ}E[z_y − mean z] + ν E[sup ‖v‖])."""
    validation.check_nonnegative(nu, "nu")
    validation.check_nonnegative(rho, "rho", allow_zero=False)
    n_factor = self.num_classes ** (1.0 - self.tau)
    return (-n_factor * self.mean_label_gap
            + nu * self.mean_sup_smooth_term) / rho

  def objective_path(self, scales: Sequence[float] | np.ndarray, nu: float,
                     rho: float = 1.0) -> np.ndarray:
    """L_ν(s·h) on a grid of s (:func:`logit_scale_objective`), float64 [S]."""
    return logit_scale_objective(self.logits, self.labels,
                                 self.sup_smooth_term, scales, tau=self.tau,
                                 nu=nu, rho=rho)

  def nu_constant_wins_on_grid(self, scales: Sequence[float] | np.ndarray
                               ) -> float:
    """Smallest ν ≥ 0 with L_ν(0) ≤ L_ν(s·h) for every s of the grid.

    ν_grid = max(0, max_{s>0} ρ(L_0(0) − L_0(s))/(s·E sup ‖v‖)), which does
    not depend on ρ when s is read as s/ρ; ρ = 1 here. For τ ≤ 1 (convex
    path) ν_grid ≤ ν*(h), and → ν*(h) as the grid's smallest s → 0; for
    τ > 1 it can exceed ν*(h). +inf when E sup ‖v‖ = 0 and some s beats 0.
    """
    s = _check_scales(scales)
    s = s[s > 0]
    if s.size == 0:
      return 0.0
    natural = self.objective_path(np.concatenate([[0.0], s]), nu=0.0)
    gain = natural[0] - natural[1:]  # L_0(0) − L_0(s)
    if self.mean_sup_smooth_term == 0.0:
      return math.inf if np.any(gain > 0) else 0.0
    # ν with L_0(0) ≤ L_0(s) + ν s E sup ‖v‖ for all s
    return float(max(0.0, np.max(gain / (s * self.mean_sup_smooth_term))))


def nu_threshold_value(num_classes: int, tau: float, mean_label_gap: float,
                       mean_sup_smooth_term: float) -> float:
  """ν* = n^{1−τ}·E[z_y − mean z] / E[sup ‖v‖₂] from the two means.

  With the limits of :class:`SmoothWeightThreshold`: +inf when
  E[sup ‖v‖] = 0 < E[z_y − mean z], 0 when both are 0; a NaN mean (a
  diverged network's logits) gives NaN. For means combined from several
  shares of the examples (e.g. one per process: sums and counts added, then
  divided).

  Raises:
    ValueError: n < 2, τ < 0 or E[sup ‖v‖] < 0, naming the value.
  """
  if (isinstance(num_classes, bool)
      or not isinstance(num_classes, (int, np.integer)) or num_classes < 2):
    raise ValueError(f"num_classes must be an integer >= 2, got "
                     f"num_classes={num_classes!r}")
  validation.check_tau(tau)
  if mean_sup_smooth_term < 0:
    raise ValueError(f"mean_sup_smooth_term must be >= 0 (a mean of norms), "
                     f"got mean_sup_smooth_term={mean_sup_smooth_term!r}")
  if math.isnan(mean_label_gap) or math.isnan(mean_sup_smooth_term):
    return math.nan
  numerator = num_classes ** (1.0 - tau) * mean_label_gap
  if mean_sup_smooth_term > 0.0:
    return numerator / mean_sup_smooth_term
  return math.inf if numerator > 0.0 else 0.0


def _ignore_variables(logits_fn: LogitsFn) -> AppliedLogitsFn:
  return lambda variables, x: logits_fn(x)


def _pgd_chunk_fn(apply_fn: AppliedLogitsFn, eps: float, norm: str,
                  step_size: float, num_steps: int, num_restarts: int
                  ) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """Jitted (variables, x, y, key) → (z, ‖v‖₂ at PGD's x') for one chunk."""

  @jax.jit
  def chunk(variables, x, y, key):
    logits_fn = functools.partial(apply_fn, variables)
    x_adv = attacks.pgd(logits_fn, x, y, key, eps=eps, step_size=step_size,
                        num_steps=num_steps, norm=norm,
                        loss="smooth_comp_sum", random_start="uniform",
                        num_restarts=num_restarts, select="loss")
    z = logits_fn(x)
    # ‖v‖₂, v = d − d_y·1, d = h(x') − h(x)
    term = adversarial_losses.smooth_adversarial_term(logits_fn(x_adv), z, y)
    return z, term

  return chunk


# Compiled once per (apply function, attack settings): repeated calls with new
# variables (every evaluation of a training run) reuse the program.
_cached_pgd_chunk_fn = functools.lru_cache(maxsize=16)(_pgd_chunk_fn)


def sup_smooth_term(logits_fn: LogitsFn, images: jax.Array,
                    labels: jax.Array, key: jax.Array, *, eps: float,
                    norm: str = "linf", step_size: float | None = None,
                    num_steps: int = 10, num_restarts: int = 1,
                    batch_size: int | None = None,
                    variables: PyTree | None = None,
                    example_offset: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Clean logits and PGD's sup_{x' ∈ B(x, ε) ∩ [0,1]^d} ‖v(x, x')‖₂ per example.

  The maximiser is :func:`compsum_jax.attacks.pgd` on the smooth term
  (``loss='smooth_comp_sum'``, uniform random start, ``select='loss'``: the
  iterate with the largest term); the term is then evaluated exactly
  (:func:`compsum_jax.losses.adversarial.smooth_adversarial_term`, no safe-norm
  ε) at that iterate, so it is ≥ 0 and a lower bound of the sup.

  Args:
    logits_fn: x [B, ...] → logits [B, n], examples independent (a model in
      evaluation mode with its parameters closed over); or, with
      ``variables``, ``logits_fn(variables, x)``.
    images: x in [0, 1], [B, ...].
    labels: y, integer [B].
    key: PRNG key of the random starts.
    eps: radius ε > 0 of the threat model.
    norm: 'linf' or 'l2'.
    step_size: PGD step α > 0; None: ε/4.
    num_steps: PGD steps per restart, ≥ 1.
    num_restarts: independent PGD runs, ≥ 1 (the best is kept).
    batch_size: examples per PGD call (None: all at once).
    variables: a pytree passed as ``logits_fn(variables, x)`` (e.g. the
      parameters and batch statistics); the compiled PGD program is then
      cached per ``logits_fn`` and reused for new variables of the same
      shapes (no recompilation at every evaluation of a training run).
    example_offset: None: chunk i of the examples draws its random starts
      from ``fold_in(key, i)``. An integer o ≥ 0: example j draws them from
      its own key ``fold_in(key, o + j)``, so its estimate does not depend on
      the chunking, and contiguous shares of a larger set (one per process,
      o = the share's first global index) give the whole set's values.

  Returns:
    (logits z float64 [B, n], sup ‖v‖₂ float64 [B]).

  Raises:
    ValueError: ε ≤ 0, bad norm, step size, step or restart counts, batch
      size or example offset, images outside [0, 1], labels not integer [B]
      or not in [0, n).
  """
  validation.check_nonnegative(eps, "eps", allow_zero=False)
  if step_size is None:
    step_size = float(eps) / 4.0
  validation.check_nonnegative(step_size, "step_size", allow_zero=False)
  for value, name in ((num_steps, "num_steps"),
                      (num_restarts, "num_restarts")):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {name}="
                       f"{value!r}")
  images = jnp.asarray(images)
  labels = jnp.asarray(labels)
  num_examples = images.shape[0] if images.ndim else 0
  if num_examples == 0 or tuple(labels.shape) != (num_examples,):
    raise ValueError(f"images must be [B, ...] with B >= 1 and labels [B], "
                     f"got images {tuple(images.shape)} and labels "
                     f"{tuple(labels.shape)}")
  if batch_size is None:
    batch_size = num_examples
  if (not isinstance(batch_size, int) or isinstance(batch_size, bool)
      or batch_size < 1):
    raise ValueError(f"batch_size must be an integer >= 1 or None, got "
                     f"batch_size={batch_size!r}")
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got norm={norm!r}")
  pixels = np.asarray(images, np.float64)
  if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 1:
    raise ValueError(f"images must lie in [0, 1], got values in "
                     f"[{pixels.min()!r}, {pixels.max()!r}]")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if example_offset is not None and (
      isinstance(example_offset, bool)
      or not isinstance(example_offset, (int, np.integer))
      or example_offset < 0):
    raise ValueError(f"example_offset must be None or an integer >= 0, got "
                     f"example_offset={example_offset!r}")

  if variables is None:
    chunk = _pgd_chunk_fn(_ignore_variables(logits_fn), float(eps), norm,
                          float(step_size), num_steps, num_restarts)
  else:
    chunk = _cached_pgd_chunk_fn(logits_fn, float(eps), norm,
                                 float(step_size), num_steps, num_restarts)

  example_key_array = None
  if example_offset is not None:
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)  # raw uint32 key
    # key of example j: fold_in(key, offset + j)
    example_key_array = jax.vmap(lambda j: jax.random.fold_in(key, j))(
        int(example_offset) + jnp.arange(num_examples))
  all_logits, all_terms = [], []
  for i, start in enumerate(range(0, num_examples, batch_size)):
    stop = min(start + batch_size, num_examples)
    chunk_key = (jax.random.fold_in(key, i) if example_key_array is None
                 else example_key_array[start:stop])
    z, term = chunk(variables, images[start:stop], labels[start:stop],
                    chunk_key)
    all_logits.append(np.asarray(z, np.float64))
    all_terms.append(np.asarray(term, np.float64))
  logits = np.concatenate(all_logits)
  # Label values against n (inside jit the attack cannot check them).
  validation.check_labels(np.asarray(labels), logits.shape)
  return logits, np.concatenate(all_terms)


def smooth_term_weight_threshold(
    logits_fn: LogitsFn, images: jax.Array, labels: jax.Array,
    key: jax.Array, *, tau: float, eps: float, norm: str = "linf",
    step_size: float | None = None, num_steps: int = 10,
    num_restarts: int = 1, batch_size: int | None = None,
    variables: PyTree | None = None,
    example_offset: int | None = None) -> SmoothWeightThreshold:
  """Estimates ν*(h) = n^{1−τ}·E[z_y − mean z] / E[sup_{x'} ‖v(x, x')‖₂].

  Above ν*(h) the ADV-COMP-SUM objective of s·h has a nonnegative slope at
  s = 0 (module docstring): for τ ≤ 1 the constant classifier then beats
  every rescaling of h, and training is pulled towards it. ν*(h) does not
  depend on the margin scale ρ. The expectations are means over the given
  examples; the sup is PGD's (:func:`sup_smooth_term`), a lower bound, so
  the estimate errs high.

  Args:
    logits_fn: x [B, ...] → logits [B, n] of h in evaluation mode.
    images: x in [0, 1], [B, ...] (e.g. the validation split).
    labels: y, integer [B].
    key: PRNG key of PGD's random starts.
    tau: τ ≥ 0 of the comp-sum loss.
    eps: radius ε > 0 of the threat model (the training attack's).
    norm: 'linf' or 'l2'.
    step_size: PGD step (None: ε/4).
    num_steps: PGD steps (≥ 1; the training attack's or more).
    num_restarts: PGD restarts (≥ 1).
    batch_size: examples per PGD call (None: all at once).
    variables: optional pytree, then ``logits_fn(variables, x)`` and the
      compiled program is reused across calls (:func:`sup_smooth_term`).
    example_offset: None (one key per chunk) or the global index of the
      first example (one key per example; :func:`sup_smooth_term`).

  Returns:
    A :class:`SmoothWeightThreshold` (also gives the slope at s = 0 and the
    objective along the logit-scale path for any ν, ρ).

  Raises:
    ValueError: τ < 0, and everything :func:`sup_smooth_term` rejects.
  """
  validation.check_tau(tau)
  logits, sup_term = sup_smooth_term(
      logits_fn, images, labels, key, eps=eps, norm=norm,
      step_size=step_size, num_steps=num_steps, num_restarts=num_restarts,
      batch_size=batch_size, variables=variables,
      example_offset=example_offset)
  labels_np = np.asarray(labels)
  # z_y − mean z, in float64
  gap = (np.take_along_axis(logits, labels_np[:, None], axis=-1)[:, 0]
         - logits.mean(axis=-1))
  mean_gap = float(np.mean(gap))
  mean_sup = float(np.mean(sup_term))
  n = logits.shape[-1]
  return SmoothWeightThreshold(
      nu_threshold=nu_threshold_value(n, float(tau), mean_gap, mean_sup),
      mean_label_gap=mean_gap, mean_sup_smooth_term=mean_sup, num_classes=n,
      tau=float(tau), logits=logits, labels=labels_np,
      sup_smooth_term=sup_term)
