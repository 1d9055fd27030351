"""H-consistency bound functions T_τ, Γ_τ = T_τ^{-1} and the adversarial constant.

Reference: Mao, Mohri & Zhong, ICML 2023 (arXiv 2304.07288); paper notes §3.1,
§3.2 and §5.2. For a symmetric complete family and every τ ≥ 0 the pointwise
inequality T_τ(ΔC_{0-1}(h, x)) ≤ ΔC_τ(h, x) holds, hence (Jensen, Γ_τ concave)

  R_{0-1}(h) − R*_{0-1}(H) ≤ Γ_τ(R_τ(h) − R*_τ(H) + M_τ(H)) − M_{0-1}(H).

With A_τ(t) = (((1+t)^{1/(2−τ)} + (1−t)^{1/(2−τ)})/2)^{2−τ}:

  T_τ(t) = 2^{1−τ}/(1−τ)·[1 − A_τ(t)]                   τ ∈ [0, 1)
         = ((1+t)log(1+t) + (1−t)log(1−t))/2             τ = 1
         = [A_τ(t) − 1]/((τ−1)·n^{τ−1})                   τ ∈ (1, 2)
         = t/((τ−1)·n^{τ−1})                              τ ≥ 2.

The τ ∈ (1, 2) branch is only a valid lower bound (tight at n = 2). All four
branches are one formula here: with θ = (τ−1)/(2−τ) and the two-point
distribution w = ((1+t)/2, (1−t)/2) on L = (log(1+t), log(1−t)),
log A_τ(t) = (τ−1)·g(θ), g(θ) = log(E_w e^{θL})/θ, so for τ < 2

  T_τ(t) = 2^{1−τ}·(2/n)^{max(τ−1, 0)}·g(θ)·expm1((τ−1)g(θ))/((τ−1)g(θ)),

which is smooth in τ across 1 (g(0) = T_1(t)) and tends to t/n as τ → 2.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_derivatives

from compsum_jax import validation
from compsum_jax.losses import phi_tau
from compsum_jax.theory import _numerics

_INVERSION_STEPS = 64


def _check_unit_interval(value, name: str) -> None:
  v = validation.concrete_value(value)
  if v is None:
    return
  v = np.asarray(v, dtype=np.float64)
  bad = np.isnan(v) | (v < 0) | (v > 1)
  if np.any(bad):
    raise ValueError(f"{name} must lie in [0, 1], got {name}="
                     f"{v[bad].reshape(-1)[:6]}")


def check_num_classes(num_classes) -> None:
  """num_classes must be an integer ≥ 2 (checked when concrete)."""
  v = validation.concrete_value(num_classes)
  if v is None:
    return
  v = np.asarray(v)
  if (not (np.issubdtype(v.dtype, np.integer) or np.all(v == np.round(v)))
      or np.any(v < 2)):
    raise ValueError(f"num_classes must be an integer >= 2, got "
                     f"num_classes={v.reshape(-1)[:6]}")


def _dtype(*xs) -> jnp.dtype:
  return jnp.result_type(
      *[validation.compute_dtype(jnp.asarray(x)) for x in xs])


def _entropy_gap_two_point(t: jax.Array) -> jax.Array:
  """T_1(t) = ((1+t)log(1+t) + (1−t)log(1−t))/2 (notes §3.1), series near 0."""
  small = t < 0.1
  t_small = jnp.where(small, t, 0.0)
  t2 = t_small * t_small
  series = jnp.zeros_like(t)
  for k in range(9, 0, -1):  # Σ_{k≥1} t^{2k}/((2k−1)·2k), Horner in t².
    series = (series + 1.0 / ((2 * k - 1) * (2 * k))) * t2
  one_minus = 1.0 - t
  minus_term = jnp.where(one_minus > 0,
                         one_minus * jnp.log1p(-jnp.where(t < 1, t, 0.0)), 0.0)
  closed = 0.5 * ((1.0 + t) * jnp.log1p(t) + minus_term)
  return jnp.where(small, series, closed)


# T_τ for small t (τ < 2) comes from the binomial series of B below: used when
# t ≤ _T_SERIES_MAX and a·t ≤ _T_SERIES_MAX_AT, with _T_SERIES_TERMS terms
# (each term is at most max(t, a·t/2)² times the previous one, so the
# truncation error is < 1e-16 relative there).
_T_SERIES_MAX = 0.45
_T_SERIES_MAX_AT = 2.0
_T_SERIES_TERMS = 24


def _log1p_ratio(x: jax.Array) -> jax.Array:
  """log1p(x)/x with value 1 at x = 0 (series for |x| < 0.05, 14 terms)."""
  small = jnp.abs(x) < 0.05
  x_safe = jnp.where(small, jnp.ones_like(x), x)
  closed = jnp.log1p(x_safe) / x_safe
  x_small = jnp.where(small, x, jnp.zeros_like(x))
  series = jnp.zeros_like(x)
  for k in range(14, 0, -1):  # Σ_{k≥1} (−x)^{k−1}/k, Horner form.
    series = series * (-x_small) + 1.0 / k
  return jnp.where(small, series, closed)


def _binomial_excess_over_theta(t: jax.Array, a: jax.Array) -> jax.Array:
  """b = (B − 1)/θ, B = ((1+t)^a + (1−t)^a)/2, θ = a − 1, as a series in t².

  B − 1 = Σ_{k≥1} C(a, 2k) t^{2k} and C(a, 2k) carries the factor a − 1, so
  b = Σ_{k≥1} d_k t^{2k} with d_1 = a/2 and
  d_{k+1} = d_k (a − 2k)(a − 2k − 1)/((2k + 1)(2k + 2)): smooth across θ = 0.
  """
  t2 = t * t
  term = 0.5 * a * t2
  total = term
  for k in range(1, _T_SERIES_TERMS):
    term = term * ((a - 2 * k) * (a - 2 * k - 1) / ((2 * k + 1) * (2 * k + 2))
                   ) * t2
    total = total + term
  return total


def _class_factor(tau_lt2: jax.Array, num_classes: jax.Array) -> jax.Array:
  """2^{1−τ}(2/n)^{(τ−1)+}; at τ = 1 its τ-derivative is the left one."""
  excess = jnp.where(tau_lt2 > 1.0, tau_lt2 - 1.0, 0.0)
  return jnp.exp2(1.0 - tau_lt2) * jnp.exp(excess * jnp.log(2.0 / num_classes))


def _log_b_over_theta(t_inner: jax.Array, tau_lt2: jax.Array) -> jax.Array:
  """g(θ) = log(B)/θ = log(E_w e^{θL})/θ for t ≤ 1, τ < 2 (module docstring)."""
  a = 1.0 / (2.0 - tau_lt2)
  theta = (tau_lt2 - 1.0) / (2.0 - tau_lt2)  # θ = a − 1
  # Small t: g = b·log1p(θb)/(θb), b = (B − 1)/θ from the binomial series.
  use_series = (t_inner <= _T_SERIES_MAX) & (a * t_inner <= _T_SERIES_MAX_AT)
  t_series = jnp.where(use_series, t_inner, 0.0)
  b = _binomial_excess_over_theta(t_series, a)
  g_series = b * _log1p_ratio(theta * b)
  # Otherwise: cumulant series (small θ) or log-sum-exp (_numerics).
  t_closed = jnp.where(use_series, 0.5, t_inner)
  log_values = jnp.stack(
      [jnp.log1p(t_closed),
       jnp.log1p(-jnp.where(t_closed < 1, t_closed, 0.0))], axis=-1)
  log_values = log_values.at[..., 1].set(
      jnp.where(t_closed < 1, log_values[..., 1], -jnp.inf))
  weights = jnp.stack([(1.0 + t_closed) / 2, (1.0 - t_closed) / 2], axis=-1)
  mean = _entropy_gap_two_point(t_closed)  # κ1 = E_w[L] = T_1(t)
  cumulants, spread = _numerics.weighted_log_cumulants(
      log_values, weights, mean=mean)
  g_closed = _numerics.cgf_over_theta(theta, log_values, weights, cumulants,
                                      spread)
  return jnp.where(use_series, g_series, g_closed)


def _transform_raw(t: jax.Array, tau: jax.Array,
                   num_classes: jax.Array) -> jax.Array:
  """T_τ(t) for broadcast t, τ, n (module docstring); plain autodiff."""
  below_two = tau < 2.0
  tau_lt2 = jnp.where(below_two, tau, 0.0)
  g = _log_b_over_theta(jnp.minimum(t, 1.0), tau_lt2)
  # T_τ = 2^{1−τ}(2/n)^{(τ−1)+} g·φ((τ−1)g), φ(x) = expm1(x)/x
  smooth = (_class_factor(tau_lt2, num_classes) * g *
            _numerics.expm1_ratio((tau_lt2 - 1.0) * g))
  tau_ge2 = jnp.where(below_two, 2.0, tau)
  # T_τ(t) = t/((τ−1)n^{τ−1}) for τ ≥ 2
  linear = t / ((tau_ge2 - 1.0) * jnp.power(num_classes, tau_ge2 - 1.0))
  return jnp.where(below_two, smooth, linear)


def _transform_derivative_t(t: jax.Array, tau: jax.Array,
                            num_classes: jax.Array) -> jax.Array:
  """∂T_τ/∂t, closed form; +inf at t = 1 for τ ≤ 1 (left derivative there).

  For τ < 2, with a = 1/(2−τ), θ = a − 1, B = ((1+t)^a + (1−t)^a)/2 and
  D = log((1+t)/(1−t)):

    T'(t) = 2^{1−τ}(2/n)^{(τ−1)+}·B^{1−τ}·a·(1+t)^θ·(1 − e^{−θD})/(2θ),

  where (1 − e^{−θD})/θ → D as θ → 0 (τ = 1: T'(t) = atanh t). For τ ≥ 2,
  T'(t) = 1/((τ−1)n^{τ−1}).
  """
  below_two = tau < 2.0
  tau_lt2 = jnp.where(below_two, tau, 0.0)
  t_inner = jnp.minimum(t, 1.0)
  a = 1.0 / (2.0 - tau_lt2)
  theta = (tau_lt2 - 1.0) / (2.0 - tau_lt2)
  log_b = theta * _log_b_over_theta(t_inner, tau_lt2)  # log B = θ·g
  spread = 2.0 * jnp.arctanh(t_inner)  # D = log((1+t)/(1−t)), +inf at t = 1
  x = theta * jnp.where(theta == 0.0, 0.0, spread)
  large = jnp.abs(x) > 0.5
  theta_safe = jnp.where(large, theta, 1.0)
  # (1 − e^{−θD})/θ: closed form for |θD| > 0.5, else D·φ(−θD)
  difference = jnp.where(
      theta == 0.0, spread,
      jnp.where(large, -jnp.expm1(-jnp.where(large, x, 0.0)) / theta_safe,
                spread * _numerics.expm1_ratio(-jnp.where(large, 0.0, x))))
  smooth = (_class_factor(tau_lt2, num_classes) *
            jnp.exp((1.0 - tau_lt2) * log_b + theta * jnp.log1p(t_inner)) *
            a * 0.5 * difference)
  tau_ge2 = jnp.where(below_two, 2.0, tau)
  linear = 1.0 / ((tau_ge2 - 1.0) * jnp.power(num_classes, tau_ge2 - 1.0))
  return jnp.where(below_two, smooth, jnp.broadcast_to(linear, smooth.shape))


def _is_symbolic_zero(tangent: Any) -> bool:
  return isinstance(tangent, custom_derivatives.SymbolicZero)


def _instantiate(tangent: Any, like: jax.Array) -> jax.Array:
  return jnp.zeros_like(like) if _is_symbolic_zero(tangent) else tangent


def _param_tangent(t: jax.Array, tau: jax.Array, num_classes: jax.Array,
                   tau_dot: Any, n_dot: Any) -> jax.Array | None:
  """∂_τT·τ̇ + ∂_nT·ṅ at fixed t (plain autodiff), or None if both are zero."""
  if _is_symbolic_zero(tau_dot) and _is_symbolic_zero(n_dot):
    return None
  _, out = jax.jvp(lambda tau, n: _transform_raw(t, tau, n), (tau, num_classes),
                   (_instantiate(tau_dot, tau),
                    _instantiate(n_dot, num_classes)))
  return out


@jax.custom_jvp
def _transform_core(t: jax.Array, tau: jax.Array,
                    num_classes: jax.Array) -> jax.Array:
  return _transform_raw(t, tau, num_classes)


def _transform_core_jvp(primals, tangents):
  t, tau, num_classes = primals
  t_dot, tau_dot, n_dot = tangents
  value = _transform_raw(t, tau, num_classes)
  tangent = jnp.zeros_like(value)
  if not _is_symbolic_zero(t_dot):
    tangent = tangent + _transform_derivative_t(t, tau, num_classes) * t_dot
  param = _param_tangent(t, tau, num_classes, tau_dot, n_dot)
  if param is not None:
    tangent = tangent + param
  return value, tangent


_transform_core.defjvp(_transform_core_jvp, symbolic_zeros=True)


@jax.jit
def _transform_unchecked(t: jax.Array, tau: jax.Array,
                         num_classes: jax.Array) -> jax.Array:
  """T_τ(t) without input checks; t, τ, n broadcast (see module docstring).

  Derivatives: ∂/∂t in closed form (:func:`_transform_derivative_t`, +inf at
  t = 1 for τ ≤ 1), ∂/∂τ and ∂/∂n by autodiff of the value.
  """
  return _transform_core(*jnp.broadcast_arrays(t, tau, num_classes))


def transform(t: jax.Array | float, tau: jax.Array | float,
              num_classes: int | jax.Array) -> jax.Array:
  """T_τ(t): the convex function with T_τ(ΔC_{0-1}) ≤ ΔC_τ (notes §3.1).

  Args:
    t: zero-one conditional regret(s) in [0, 1], any shape.
    tau: τ ≥ 0, float or array broadcastable with ``t`` (may be traced).
    num_classes: n ≥ 2 (only used for τ > 1).

  Returns:
    T_τ(t), broadcast shape of the inputs, float32 or wider. Accurate to
    ~1e-11 relative in float64 for all t ∈ [0, 1] and τ ≥ 0, continuous in τ
    (including τ → 1 and τ → 2).

  Raises:
    ValueError: concrete t outside [0, 1], τ < 0, or n not an integer ≥ 2.
  """
  _check_unit_interval(t, "t")
  validation.check_tau(tau)
  check_num_classes(num_classes)
  dtype = _dtype(t, tau)
  return _transform_unchecked(jnp.asarray(t, dtype), jnp.asarray(tau, dtype),
                              jnp.asarray(num_classes, dtype))


def _quadratic_coefficient(tau: jax.Array, num_classes: jax.Array
                           ) -> jax.Array:
  """c2 with T_τ(t) = c2·t² + O(t⁴) for τ < 2: 2^{−τ}/(2−τ)·(2/n)^{(τ−1)+}."""
  return (jnp.exp2(-tau) / (2.0 - tau) *
          jnp.exp(jnp.maximum(tau - 1.0, 0.0) * jnp.log(2.0 / num_classes)))


def _inverse_raw(s: jax.Array, tau: jax.Array,
                 num_classes: jax.Array) -> jax.Array:
  """Γ_τ(s) for broadcast s, τ, n: closed forms and bisection (no gradient)."""
  dtype = s.dtype
  below_two = tau < 2.0
  tau_lt2 = jnp.where(below_two, tau, 0.0)
  t_max = _transform_unchecked(jnp.ones_like(s), tau_lt2, num_classes)
  saturated = s >= t_max
  # Bisection on u = log t ∈ [log t_min, 0]: T_τ is increasing on [0, 1].
  t_min = 1e-150 if dtype == jnp.float64 else 1e-18
  lo = jnp.full_like(s, np.log(t_min))
  hi = jnp.zeros_like(s)

  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    above = _transform_unchecked(jnp.exp(mid), tau_lt2, num_classes) > s
    return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

  lo, hi = jax.lax.fori_loop(0, _INVERSION_STEPS, body, (lo, hi))
  bisected = jnp.exp(0.5 * (lo + hi))
  # Below T_τ(t_min) the quadratic term dominates: Γ_τ(s) = sqrt(s/c2).
  tiny = s < _transform_unchecked(jnp.full_like(s, t_min), tau_lt2,
                                  num_classes)
  coefficient = _quadratic_coefficient(tau_lt2, num_classes)
  numeric = jnp.where(tiny, jnp.sqrt(jnp.maximum(s, 0.0) / coefficient),
                      bisected)
  numeric = jnp.where(saturated, 1.0, numeric)
  s_unit = jnp.minimum(s, 1.0)
  # Γ_0(s) = sqrt(2s − s²) for s ≤ 1, else 1   (notes §3.2)
  sum_exp = jnp.sqrt(jnp.maximum(s_unit * (2.0 - s_unit), 0.0))
  tau_ge2 = jnp.where(below_two, 2.0, tau)
  # Γ_τ(s) = min(1, (τ−1)n^{τ−1}s) for τ ≥ 2   (notes §3.2)
  linear = jnp.minimum(
      1.0, (tau_ge2 - 1.0) * jnp.power(num_classes, tau_ge2 - 1.0) * s)
  out = jnp.where(tau == 0.0, sum_exp, numeric)
  out = jnp.where(below_two, out, linear)
  return jnp.where(s <= 0.0, jnp.zeros_like(out), out)


@jax.custom_jvp
def _inverse_core(s: jax.Array, tau: jax.Array,
                  num_classes: jax.Array) -> jax.Array:
  return _inverse_raw(s, tau, num_classes)


def _inverse_core_jvp(primals, tangents):
  """Inverse-function theorem at t = Γ_τ(s) < 1 (T_τ(t) = s):

    dΓ/ds = 1/∂_tT(t),   dΓ/dτ = −∂_τT(t)/∂_tT(t)   (likewise for n).

  At s = 0 (t = 0): dΓ/ds = 1/T'(0) (+inf for τ < 2), dΓ/dτ = 0. Where
  Γ = 1 (capped, s ≥ T_τ(1)) every derivative is 0 (the right derivative).
  """
  s, tau, num_classes = primals
  s_dot, tau_dot, n_dot = tangents
  t = jax.lax.stop_gradient(_inverse_raw(s, tau, num_classes))
  capped = t >= 1.0
  interior = (t > 0.0) & ~capped
  slope = _transform_derivative_t(t, tau, num_classes)
  tangent = jnp.zeros_like(t)
  if not _is_symbolic_zero(s_dot):
    # 1/T'(0) = +inf for τ < 2: the one-sided derivative at s = 0.
    tangent = tangent + jnp.where(capped, 0.0, 1.0 / slope) * s_dot
  param = _param_tangent(t, tau, num_classes, tau_dot, n_dot)
  if param is not None:
    safe_slope = jnp.where(interior, slope, 1.0)
    tangent = tangent - jnp.where(interior, 1.0 / safe_slope, 0.0) * param
  return t, tangent


_inverse_core.defjvp(_inverse_core_jvp, symbolic_zeros=True)


@jax.jit
def _inverse_transform_unchecked(s: jax.Array, tau: jax.Array,
                                 num_classes: jax.Array) -> jax.Array:
  """Γ_τ(s) without input checks; exact derivatives (:func:`_inverse_core_jvp`)."""
  return _inverse_core(*jnp.broadcast_arrays(s, tau, num_classes))


def inverse_transform(s: jax.Array | float, tau: jax.Array | float,
                      num_classes: int | jax.Array) -> jax.Array:
  """Γ_τ(s) = T_τ^{-1}(s), capped at 1 (notes §3.1–3.2).

  Closed forms for τ = 0 (sqrt(2s − s²)) and τ ≥ 2 ((τ−1)n^{τ−1}s); elsewhere
  a 64-step bisection on log t (relative accuracy ~1e-15 in float64, jit- and
  vmap-able, τ may be traced). For s ≥ T_τ(1) the value is 1: a zero-one
  regret never exceeds 1, and min(1, Γ_τ) is still concave and increasing, so
  the H-consistency bound stays valid.

  Args:
    s: surrogate regret(s) s ≥ 0, any shape.
    tau: τ ≥ 0, broadcastable with ``s``.
    num_classes: n ≥ 2.

  Returns:
    Γ_τ(s) ∈ [0, 1], broadcast shape.

  Raises:
    ValueError: concrete s < 0 or NaN, τ < 0, n not an integer ≥ 2.
  """
  validation.check_nonnegative(s, "s")
  validation.check_tau(tau)
  check_num_classes(num_classes)
  dtype = _dtype(s, tau)
  return _inverse_transform_unchecked(
      jnp.asarray(s, dtype), jnp.asarray(tau, dtype),
      jnp.asarray(num_classes, dtype))


def zero_one_bound(surrogate_excess: jax.Array | float,
                   tau: jax.Array | float, num_classes: int | jax.Array,
                   surrogate_gap: jax.Array | float = 0.0,
                   zero_one_gap: jax.Array | float = 0.0) -> jax.Array:
  """Right-hand side of the comp-sum H-consistency bound (notes §3.1).

    R_{0-1}(h) − R*_{0-1}(H) ≤ Γ_τ(R_τ(h) − R*_τ(H) + M_τ(H)) − M_{0-1}(H)

  Args:
    surrogate_excess: R_τ(h) − R*_τ(H) ≥ 0, any shape.
    tau: τ ≥ 0.
    num_classes: n ≥ 2.
    surrogate_gap: minimizability gap M_τ(H) ≥ 0 (0 for the family of all
      measurable functions).
    zero_one_gap: M_{0-1}(H) ≥ 0.

  Returns:
    The bound on the zero-one excess risk, broadcast shape.

  Raises:
    ValueError: concrete negative excess or gaps, τ < 0, bad n.
  """
  validation.check_nonnegative(surrogate_excess, "surrogate_excess")
  validation.check_nonnegative(surrogate_gap, "surrogate_gap")
  validation.check_nonnegative(zero_one_gap, "zero_one_gap")
  return (inverse_transform(jnp.asarray(surrogate_excess) + surrogate_gap,
                            tau, num_classes) - zero_one_gap)


def adversarial_constant(tau: jax.Array | float) -> jax.Array:
  """Φ^τ(1) = (2^{1−τ} − 1)/(1 − τ), log 2 at τ = 1 (notes §5.2).

  The slope of the linear adversarial bound: ΔC_{ℓ̃τ,ρ} ≥ Φ^τ(1)·ΔC_{ℓγ}.
  """
  validation.check_tau(tau)
  return phi_tau(jnp.ones_like(jnp.asarray(tau, _dtype(tau))), tau)


def adversarial_zero_one_bound(surrogate_excess: jax.Array | float,
                               tau: jax.Array | float,
                               surrogate_gap: jax.Array | float = 0.0,
                               zero_one_gap: jax.Array | float = 0.0
                               ) -> jax.Array:
  """Linear adversarial H-consistency bound (notes §5.2, RECONSTRUCTED).

    R_{ℓγ}(h) − R*_{ℓγ}(H) ≤ (R_{ℓ̃}(h) − R*_{ℓ̃}(H) + M_{ℓ̃}(H))/Φ^τ(1)
                                − M_{ℓγ}(H)

  for symmetric, locally ρ-consistent H, with ℓ̃ = ℓ̃_{τ,ρ} the adversarial
  comp-sum ρ-margin loss and ℓγ the adversarial zero-one loss.

  Args:
    surrogate_excess: R_{ℓ̃}(h) − R*_{ℓ̃}(H) ≥ 0.
    tau: τ ≥ 0.
    surrogate_gap: M_{ℓ̃}(H) ≥ 0.
    zero_one_gap: M_{ℓγ}(H) ≥ 0.

  Returns:
    The bound on the adversarial zero-one excess risk (not capped at 1).
  """
  validation.check_nonnegative(surrogate_excess, "surrogate_excess")
  validation.check_nonnegative(surrogate_gap, "surrogate_gap")
  validation.check_nonnegative(zero_one_gap, "zero_one_gap")
  return ((jnp.asarray(surrogate_excess) + surrogate_gap) /
          adversarial_constant(tau) - zero_one_gap)
