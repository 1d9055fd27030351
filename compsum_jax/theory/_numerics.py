"""Numerical helpers shared by the theory modules (private).

The closed forms of T_τ (paper notes §3.1) and of C*_τ (§4.1) both have the
shape (E_w[e^{θL}])^{…} with θ = a − 1 = (τ − 1)/(2 − τ), which is 0/0 at τ = 1.
They are evaluated through the cumulant generating function K(θ) = log E_w e^{θL}
divided by θ, g(θ) = K(θ)/θ, which is smooth in θ with g(0) = E_w[L]:

* |θ|·spread(L) small: g(θ) = Σ_k κ_k θ^{k−1}/k!  (cumulant series, κ1..κ6);
* |θ|·max|L| ≤ 1: g(θ) = log1p(E_w[e^{θL} − 1])/θ (no cancellation near 0);
* otherwise: g(θ) = logsumexp(θL + log w)/θ (no overflow for large θ).

With the threshold below the truncation error of the series is < 1e-11 relative
and the closed form loses at most ~1e3·eps, so g is accurate to ~1e-11 relative
in float64 for every θ, including θ → 0 (τ → 1) and θ → ∞ (τ → 2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# g(x) = expm1(x)/x, shared with the loss family (used as _numerics.expm1_ratio).
from compsum_jax.losses.comp_sum import expm1_ratio  # noqa: F401

# Use the cumulant series when |θ|·spread(L) is below this.
_SERIES_THRESHOLD = 0.05


def cumulants_from_central(mean: jax.Array, central: list[jax.Array]
                           ) -> list[jax.Array]:
  """κ1..κ6 from the mean and central moments μ2..μ6 (standard identities)."""
  m2, m3, m4, m5, m6 = central
  return [
      mean,
      m2,
      m3,
      m4 - 3.0 * m2**2,
      m5 - 10.0 * m3 * m2,
      m6 - 15.0 * m4 * m2 - 10.0 * m3**2 + 30.0 * m2**3,
  ]


def cgf_over_theta(theta: jax.Array, log_values: jax.Array,
                   weights: jax.Array, cumulants: list[jax.Array],
                   spread: jax.Array) -> jax.Array:
  """g(θ) = K(θ)/θ, K(θ) = log Σ_i w_i e^{θ L_i}, g(0) = κ1.

  Args:
    theta: θ, shape [...].
    log_values: L_i, shape [..., m]; entries with w_i = 0 are ignored (may be
      −inf).
    weights: w_i ≥ 0 summing to 1, shape [..., m].
    cumulants: κ1..κ6 of L under w, each of shape [...].
    spread: max L − min L over the support of w, shape [...].

  Returns:
    g(θ), shape [...].
  """
  small = jnp.abs(theta) * spread <= _SERIES_THRESHOLD
  theta_closed = jnp.where(small, jnp.ones_like(theta), theta)
  support = weights > 0
  exponent = jnp.where(
      support,
      theta_closed[..., None] * jnp.where(support, log_values, 0.0) +
      jnp.log(jnp.where(support, weights, 1.0)), -jnp.inf)
  closed_lse = jax.nn.logsumexp(exponent, axis=-1) / theta_closed
  # When |θ|·max|L| ≤ 1, K = log1p(Σ w (e^{θL} − 1)) avoids the cancellation
  # of log-sum-exp near K = 0 (float32: relative error ~eps instead of
  # ~eps/|K|).
  safe_log = jnp.where(support, log_values, 0.0)
  max_abs = jnp.max(jnp.abs(safe_log), axis=-1)
  near_zero = jnp.abs(theta_closed) * max_abs <= 1.0
  theta_near = jnp.where(near_zero, theta_closed, 0.0)
  mean_expm1 = jnp.sum(
      jnp.where(support, weights * jnp.expm1(theta_near[..., None] * safe_log),
                0.0), axis=-1)
  closed = jnp.where(near_zero, jnp.log1p(mean_expm1) / theta_closed,
                     closed_lse)
  theta_series = jnp.where(small, theta, jnp.zeros_like(theta))
  series = jnp.zeros_like(theta)
  for k in range(len(cumulants), 0, -1):  # Σ κ_k θ^{k−1}/k!, Horner form.
    series = series * theta_series + cumulants[k - 1] / math.factorial(k)
  return jnp.where(small, series, closed)


def weighted_log_cumulants(log_values: jax.Array, weights: jax.Array,
                           mean: jax.Array | None = None
                           ) -> tuple[list[jax.Array], jax.Array]:
  """Cumulants κ1..κ6 and spread of L under weights w (w = 0 entries ignored).

  ``mean`` may be supplied when a more accurate value of E_w[L] is known.
  """
  support = weights > 0
  safe_log = jnp.where(support, log_values, 0.0)
  if mean is None:
    mean = jnp.sum(jnp.where(support, weights * safe_log, 0.0), axis=-1)
  centered = jnp.where(support, safe_log - mean[..., None], 0.0)
  central = [jnp.sum(weights * centered**k, axis=-1) for k in range(2, 7)]
  hi = jnp.max(jnp.where(support, safe_log, -jnp.inf), axis=-1)
  lo = jnp.min(jnp.where(support, safe_log, jnp.inf), axis=-1)
  return cumulants_from_central(mean, central), hi - lo
