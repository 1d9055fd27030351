"""The comp-sum loss family ℓ_τ and its named members.

Reference: A. Mao, M. Mohri, Y. Zhong, "Cross-Entropy Loss Functions: Theoretical
Analysis and Applications", ICML 2023 (arXiv 2304.07288). Formulas (the
family, its softmax and log-space forms, the named members): docs/math.md
(2.1)–(3.5).

    Φ^τ(u) = ((1 + u)^{1-τ} − 1) / (1 − τ)   (τ ≠ 1),   log(1 + u)   (τ = 1)
    ℓ_τ(h, x, y) = Φ^τ( Σ_{y'≠y} exp(h(x, y') − h(x, y)) )
                 = expm1((1 − τ)·CE) / (1 − τ),   CE = logsumexp(h) − h_y

Everything is computed in log space from CE, so no exponential of a score is
formed. With a = 1 − τ and c = CE, ℓ_τ = c·g(a·c) where g(x) = expm1(x)/x is
evaluated by its Taylor series near x = 0: value and gradients (in the logits and
in τ) are finite and continuous across τ = 1, and τ may be a traced array
(``jax.vmap`` over τ works).

Conventions (optax style): per-example values, the caller reduces; ``logits`` has
shape [..., n] and ``labels`` shape [...]; float16/bfloat16 inputs are computed
and returned in float32.

Overflow: for τ < 1 the loss grows like exp((1 − τ)·CE) and is unbounded; it is
+inf exactly when the true value exceeds the float range (e.g. τ = 0 and a margin
below about −88 in float32), never NaN. For τ ≥ 1 values and gradients are finite
for every finite input.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from compsum_jax import validation

# |x| below this uses the Taylor series of g(x) = expm1(x)/x, truncated after
# x^10/11! (relative truncation error < 1e-17 there, so float64 callers such as
# the theory module get full precision; the closed form is accurate above it).
_SERIES_THRESHOLD = 0.1
_SERIES_TERMS = 10


def expm1_ratio(x: jax.Array) -> jax.Array:
  """g(x) = expm1(x)/x with g(0) = 1, smooth in x (double-where safe for grads)."""
  small = jnp.abs(x) < _SERIES_THRESHOLD
  x_safe = jnp.where(small, jnp.ones_like(x), x)
  closed = jnp.expm1(x_safe) / x_safe
  x_small = jnp.where(small, x, jnp.zeros_like(x))
  # g(x) = Σ_{k≥0} x^k/(k+1)!, Horner form.
  series = jnp.full_like(x, 1.0 / math.factorial(_SERIES_TERMS + 1))
  for k in range(_SERIES_TERMS - 1, -1, -1):
    series = series * x_small + 1.0 / math.factorial(k + 1)
  return jnp.where(small, series, closed)


def _phi_of_log1p(log1p_u: jax.Array, tau: float | jax.Array) -> jax.Array:
  """Φ^τ written in terms of c = log(1 + u): expm1((1 − τ)c)/(1 − τ) = c·g((1−τ)c).

  A Python-number τ is specialised at trace time (no τ-gradient is needed, so
  the closed form is exact for τ ≠ 1 and τ = 1 is plain c); an array τ takes the
  series-guarded path whose value and τ-gradient are smooth across τ = 1.
  """
  if isinstance(tau, (int, float)):
    if tau == 1.0:
      return log1p_u  # Φ^1(u) = log(1 + u)
    a = 1.0 - float(tau)
    return jnp.expm1(a * log1p_u) / a  # expm1((1−τ)c)/(1−τ), docs/math.md (2.6)
  a = 1.0 - tau
  return log1p_u * expm1_ratio(a * log1p_u)


def _as_tau(tau, dtype) -> float | jax.Array:
  """Validates τ; Python numbers stay static, anything else becomes an array."""
  validation.check_tau(tau)
  if isinstance(tau, (int, float)) and not isinstance(tau, bool):
    return float(tau)
  return jnp.asarray(tau, dtype=dtype)


def phi_tau(u: jax.Array, tau: float | jax.Array) -> jax.Array:
  """Φ^τ(u) = ((1 + u)^{1−τ} − 1)/(1 − τ), log(1 + u) at τ = 1.

  docs/math.md (2.2), evaluated as in (2.6).

  Args:
    u: values u ≥ 0 (any shape; u > −1 is accepted), e.g. Σ_{y'≠y} e^{h_{y'}−h_y}.
    tau: τ ≥ 0, a Python float or an array broadcastable with ``u``.

  Returns:
    Φ^τ(u), same shape as the broadcast of ``u`` and ``tau``, float32 or wider.
  """
  dtype = validation.compute_dtype(u)
  u = jnp.asarray(u, dtype)
  v = validation.concrete_value(u)
  if v is not None and (v <= -1).any():
    raise ValueError(f"phi_tau needs u > -1, got u={v[v <= -1].min()!r}")
  return _phi_of_log1p(jnp.log1p(u), _as_tau(tau, dtype))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """CE = logsumexp(h) − h_y ≥ 0, computed stably; logits [..., n], labels [...]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jnp.maximum(lse - label_logit, 0.0)


def _prepare(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array,
                                                            jax.Array]:
  validation.check_logits(logits)
  logits = jnp.asarray(logits, validation.compute_dtype(logits))
  validation.check_labels(labels, logits.shape)
  return logits, jnp.asarray(labels)


def comp_sum_loss(logits: jax.Array, labels: jax.Array,
                  tau: float | jax.Array) -> jax.Array:
  """Comp-sum loss ℓ_τ(h, x, y) = Φ^τ(Σ_{y'≠y} e^{h_{y'} − h_y}).

  Formulas: docs/math.md (2.3)–(2.7).

  Computed as expm1((1 − τ)·CE)/(1 − τ) with CE = logsumexp(h) − h_y; τ = 0 is
  the sum-exponential loss, τ = 1 cross-entropy, τ ∈ (1, 2) generalized
  cross-entropy with q = τ − 1, τ = 2 the mean absolute error 1 − softmax_y.

  Args:
    logits: scores h(x, ·), shape [..., n], n ≥ 2.
    labels: integer labels in [0, n), shape [...].
    tau: τ ≥ 0; a Python float or a (possibly traced) array broadcastable to
      ``labels.shape`` (so ``jax.vmap`` over τ works).

  Returns:
    Per-example losses, shape [...] (broadcast with τ), float32 or wider.

  Raises:
    ValueError: n < 2, mismatched shapes, non-integer labels; and, for concrete
      values, τ < 0 or NaN and labels outside [0, n). Under ``jit`` use
      :func:`compsum_jax.validation.with_runtime_checks` for the value checks.
  """
  logits, labels = _prepare(logits, labels)
  tau = _as_tau(tau, logits.dtype)
  return _phi_of_log1p(_cross_entropy(logits, labels), tau)


def comp_sum_loss_soft(logits: jax.Array, probs: jax.Array,
                       tau: float | jax.Array) -> jax.Array:
  """Soft-label comp-sum loss Σ_y p_y ℓ_τ(h, x, y): the conditional risk C_τ(h, x).

  Args:
    logits: scores, shape [..., n].
    probs: probabilities over the n classes, shape [..., n]; non-negative and
      summing to 1 within ``validation.PROBS_SUM_ATOL`` (checked when concrete).
    tau: τ ≥ 0, float or array broadcastable to the batch shape [...].

  Returns:
    Per-example values, shape [...].
  """
  validation.check_logits(logits)
  dtype = validation.compute_dtype(logits)
  logits = jnp.asarray(logits, dtype)
  validation.check_probs(probs, logits.shape)
  probs = jnp.asarray(probs, dtype)
  tau = _as_tau(tau, dtype)
  # CE for every candidate label: logsumexp(h) − h_y, shape [..., n].
  ce_all = jnp.maximum(
      jax.nn.logsumexp(logits, axis=-1, keepdims=True) - logits, 0.0)
  per_label = _phi_of_log1p(
      ce_all, tau if isinstance(tau, float) else jnp.expand_dims(tau, -1))
  # Σ_y p_y ℓ_τ(h, y); a zero-probability label contributes 0 even if ℓ = inf.
  return jnp.sum(jnp.where(probs > 0, probs * per_label, 0.0), axis=-1)


def sum_exponential_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Sum-exponential loss Σ_{y'≠y} e^{h_{y'} − h_y} = 1/s_y − 1 (ℓ_τ at τ = 0).

  Unbounded; +inf where the value exceeds the float range (see module doc).
  """
  return comp_sum_loss(logits, labels, 0.0)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy (logistic) loss −log softmax(h)_y = ℓ_τ at τ = 1."""
  return comp_sum_loss(logits, labels, 1.0)


def generalized_cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                                   q: float | jax.Array) -> jax.Array:
  """Generalized cross-entropy (1 − s_y^q)/q of Zhang & Sabuncu (2018), q ≥ 0.

  Equals ℓ_τ at τ = 1 + q (docs/math.md (3.3)); q → 0 recovers cross-entropy
  and q = 1 the mean absolute error 1 − s_y.
  """
  validation.check_nonnegative(q, "q")
  tau = 1.0 + q if isinstance(q, (int, float)) else jnp.asarray(q) + 1.0
  return comp_sum_loss(logits, labels, tau)


def mean_absolute_error_loss(logits: jax.Array,
                             labels: jax.Array) -> jax.Array:
  """Mean absolute error 1 − softmax(h)_y = ℓ_τ at τ = 2 (docs/math.md (3.4)).

  Convention: this is half the ℓ1 distance ‖e_y − softmax(h)‖₁ = 2(1 − s_y) that
  Ghosh et al. (2017) call MAE; multiply by 2 for their scale.
  """
  return comp_sum_loss(logits, labels, 2.0)


def zero_one_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Zero-one loss 1{argmax_y h(x, y) ≠ y}, float32, shape [...].

  Tie-break: among tied maximal scores the lowest class index is predicted
  (``jnp.argmax`` semantics), so a tie counts as correct only if the label is
  the lowest tied index.
  """
  logits, labels = _prepare(logits, labels)
  pred = jnp.argmax(logits, axis=-1)
  return (pred != labels).astype(jnp.float32)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Margin ρ_h(x, y) = h(x, y) − max_{y'≠y} h(x, y'), shape [...].

  docs/math.md (4.2).
  """
  logits, labels = _prepare(logits, labels)
  n = logits.shape[-1]
  is_label = jax.nn.one_hot(labels, n, dtype=jnp.bool_)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  other_max = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return label_logit - other_max
