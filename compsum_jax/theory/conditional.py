"""Conditional risks of comp-sum and zero-one losses; complete-family C* (§1, §4.1).

Notation (paper notes §1): for a distribution p over n classes at a point x and
a score vector h(x, ·) = scores,

  C_τ(h, x)  = Σ_y p_y ℓ_τ(h, x, y)                      (conditional risk)
  C*_τ(H, x) = inf_{h ∈ H} C_τ(h, x)                     (best-in-class value)
  ΔC_τ(h, x) = C_τ(h, x) − C*_τ(H, x)                     (conditional regret)
  ΔC_{0-1}(h, x) = max_y p_y − p_{h(x)}                   (symmetric complete H)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compsum_jax import validation
from compsum_jax.losses import comp_sum_loss_soft
from compsum_jax.theory import _inputs, _numerics


def conditional_risk(scores: jax.Array, probs: jax.Array,
                     tau: jax.Array | float) -> jax.Array:
  """C_τ(h, x) = Σ_y p_y ℓ_τ(h, x, y) (notes §1).

  Args:
    scores: h(x, ·), shape [..., n].
    probs: p(·|x), shape [..., n], on the simplex (checked when concrete).
    tau: τ ≥ 0, broadcastable to the batch shape [...].

  Returns:
    Conditional risks, shape [...].

  Raises:
    ValueError: concrete NaN/inf scores or probabilities, probs off the
      simplex, τ < 0.
  """
  _inputs.check_scores_and_probs(scores, probs)
  return comp_sum_loss_soft(jnp.asarray(scores), jnp.asarray(probs), tau)


def zero_one_conditional_regret(scores: jax.Array,
                                probs: jax.Array) -> jax.Array:
  """ΔC_{0-1}(h, x) = max_y p_y − p_{h(x)} for symmetric complete H (notes §1).

  h(x) = argmax_y scores_y with ties to the lowest index (``jnp.argmax``), the
  same tie-break as :func:`compsum_jax.losses.zero_one_loss`.

  Args:
    scores: shape [..., n].
    probs: shape [..., n], on the simplex (checked when concrete).

  Returns:
    Regrets in [0, 1], shape [...].
  """
  validation.check_logits(scores, "scores")
  validation.check_probs(probs, jnp.shape(scores))
  _inputs.check_scores_and_probs(scores, probs)
  probs = jnp.asarray(probs, validation.compute_dtype(probs))
  predicted = jnp.argmax(scores, axis=-1)
  p_predicted = jnp.take_along_axis(probs, predicted[..., None], axis=-1)
  return jnp.max(probs, axis=-1) - p_predicted[..., 0]


def zero_one_best_conditional_risk(probs: jax.Array) -> jax.Array:
  """C*_{0-1}(H, x) = 1 − max_y p_y for symmetric complete H (notes §1)."""
  validation.check_probs(probs)
  probs = jnp.asarray(probs, validation.compute_dtype(probs))
  return 1.0 - jnp.max(probs, axis=-1)


@jax.jit
def complete_best_conditional_risk_unchecked(probs: jax.Array,
                                             tau: jax.Array) -> jax.Array:
  """C*_τ(H_all, x) of notes §4.1, no input checks (probs [..., n], τ [...]).

  With a = 1/(2−τ), θ = a − 1 and g(θ) = log(Σ_y p_y^a)/θ (= −entropy at θ = 0),
  (Σ p^a)^{2−τ} = exp((τ−1)g), so for τ < 2

    C* = ((Σ_y p_y^{1/(2−τ)})^{2−τ} − 1)/(1 − τ) = −g·expm1((τ−1)g)/((τ−1)g),

  smooth across τ = 1 where it equals the entropy −Σ p log p; and
  C* = (1 − max_y p_y)/(τ − 1) for τ ≥ 2.
  """
  tau = jnp.broadcast_to(tau, probs.shape[:-1])
  below_two = tau < 2.0
  tau_lt2 = jnp.where(below_two, tau, 0.0)
  support = probs > 0
  log_probs = jnp.where(support, jnp.log(jnp.where(support, probs, 1.0)),
                        -jnp.inf)
  cumulants, spread = _numerics.weighted_log_cumulants(log_probs, probs)
  theta = (tau_lt2 - 1.0) / (2.0 - tau_lt2)
  g = _numerics.cgf_over_theta(theta, log_probs, probs, cumulants, spread)
  # C* = ((Σ p^a)^{2−τ} − 1)/(1 − τ) = −g φ((τ−1)g)   (notes §4.1)
  smooth = -g * _numerics.expm1_ratio((tau_lt2 - 1.0) * g)
  tau_ge2 = jnp.where(below_two, 2.0, tau)
  # C* = (1 − max_y p_y)/(τ − 1) for τ ≥ 2   (notes §4.1)
  linear = (1.0 - jnp.max(probs, axis=-1)) / (tau_ge2 - 1.0)
  return jnp.where(below_two, smooth, linear)


def complete_best_conditional_risk(probs: jax.Array,
                                   tau: jax.Array | float) -> jax.Array:
  """C*_τ(H, x) for a symmetric complete family (closed form, notes §4.1).

  Attained (or approached, τ ≥ 2) by softmax(scores) ∝ p^{1/(2−τ)}.

  Args:
    probs: shape [..., n] on the simplex.
    tau: τ ≥ 0 broadcastable to [...].

  Returns:
    C*, shape [...].
  """
  validation.check_probs(probs)
  validation.check_tau(tau)
  dtype = validation.compute_dtype(probs)
  return complete_best_conditional_risk_unchecked(
      jnp.asarray(probs, dtype), jnp.asarray(tau, dtype))
