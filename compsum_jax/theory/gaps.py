"""Minimizability gaps and both sides of the H-consistency bound (§1, §3.1, §4).

For a distribution given by samples x_1..x_m with known posteriors p(·|x_i)
(rows of ``probs``, shape [m, n]) and optional sample weights:

  E_x[C*_τ(H, x)]                          pointwise best risk
  M_τ(H) = R*_τ(H) − E_x[C*_τ(H, x)] ≥ 0    minimizability gap (notes §1)
  M_τ(H_Λ) = R*_τ(H_Λ) − Φ^τ((n−1)e^{−2Λ})  deterministic labels (notes §4.2)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from compsum_jax import validation
from compsum_jax.losses import phi_tau
from compsum_jax.theory import _inputs, bounds, conditional, regret


def _mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  """Weighted mean over the last axis (samples)."""
  if weights is None:
    return jnp.mean(values, axis=-1)
  validation.check_nonnegative(weights, "weights")
  weights = jnp.asarray(weights, values.dtype)
  return jnp.sum(weights * values, axis=-1) / jnp.sum(weights, axis=-1)


def pointwise_best_risk(probs: jax.Array, tau: jax.Array | float,
                        score_bound: jax.Array | float | None = None, *,
                        family: Any = None,
                        weights: jax.Array | None = None) -> jax.Array:
  """E_x[C*_τ(H, x)] over samples (notes §1).

  Args:
    probs: posteriors p(·|x_i), shape [m, n].
    tau: scalar τ ≥ 0 (or an array broadcastable to [m]).
    score_bound: Λ or None (complete family); see ``best_conditional_risk``.
    family: a family pytree instead of ``score_bound``.
    weights: sample weights ≥ 0, shape [m]; default uniform.

  Returns:
    Scalar E_x[C*].
  """
  best = regret.best_conditional_risk(probs, tau, score_bound, family=family)
  return _mean(best, weights)


def minimizability_gap(best_in_class_risk: jax.Array | float,
                       probs: jax.Array, tau: jax.Array | float,
                       score_bound: jax.Array | float | None = None, *,
                       family: Any = None,
                       weights: jax.Array | None = None) -> jax.Array:
  """M_τ(H) = R*_τ(H) − E_x[C*_τ(H, x)] (notes §1).

  Args:
    best_in_class_risk: R*_τ(H) = inf_{h∈H} R_τ(h) (computed by the caller,
      e.g. by training within H).
    probs: posteriors, shape [m, n].
    tau: τ ≥ 0.
    score_bound: Λ or None; the family H's pointwise score set.
    family: a family pytree instead of ``score_bound``.
    weights: sample weights, shape [m].

  Returns:
    Scalar gap (≥ 0 when R*_τ(H) is exact; a negative value means the given
    R* is below the pointwise infimum, i.e. it is not a valid best-in-class
    risk for this family).
  """
  return best_in_class_risk - pointwise_best_risk(
      probs, tau, score_bound, family=family, weights=weights)


def zero_one_minimizability_gap(best_in_class_risk: jax.Array | float,
                                probs: jax.Array,
                                weights: jax.Array | None = None
                                ) -> jax.Array:
  """M_{0-1}(H) = R*_{0-1}(H) − E_x[1 − max_y p(y|x)] (notes §1, symmetric H)."""
  return best_in_class_risk - _mean(
      conditional.zero_one_best_conditional_risk(probs), weights)


def deterministic_best_conditional_risk(tau: jax.Array | float,
                                        num_classes: int | jax.Array,
                                        score_bound: jax.Array | float
                                        ) -> jax.Array:
  """C*_τ(H_Λ, x) = Φ^τ((n−1)e^{−2Λ}) for a deterministic p (notes §4.2).

  Args:
    tau: τ ≥ 0.
    num_classes: n ≥ 2.
    score_bound: Λ > 0.

  Returns:
    Broadcast of the inputs' shapes.
  """
  validation.check_tau(tau)
  bounds.check_num_classes(num_classes)
  _inputs.check_score_bound(score_bound)
  bound = jnp.asarray(score_bound, validation.compute_dtype(
      jnp.asarray(score_bound)))
  # C* = Φ^τ((n − 1)e^{−2Λ})   (notes §4.2)
  return phi_tau((num_classes - 1) * jnp.exp(-2.0 * bound), tau)


def deterministic_minimizability_gap(best_in_class_risk: jax.Array | float,
                                     tau: jax.Array | float,
                                     num_classes: int | jax.Array,
                                     score_bound: jax.Array | float
                                     ) -> jax.Array:
  """M_τ(H_Λ) = R*_τ(H_Λ) − Φ^τ((n−1)e^{−2Λ}), deterministic labels (§4.2)."""
  return best_in_class_risk - deterministic_best_conditional_risk(
      tau, num_classes, score_bound)


def constant_score_zero_one_bound(surrogate_excess: jax.Array | float,
                                  tau: jax.Array | float, probs: jax.Array,
                                  score_bound: jax.Array | float,
                                  weights: jax.Array | None = None
                                  ) -> jax.Array:
  """Zero-one H-consistency bound of the constant-score family H_Λ.

  H_Λ = constant score vectors in [−Λ, Λ]^n; the distribution is given by
  samples x_i with posteriors p(·|x_i) (rows of ``probs``) and weights. A
  constant h has R_τ(h) = C_τ(h, p̄), p̄ = E_x p(·|x), so

    R*_τ(H_Λ) = C*_τ(H_Λ, p̄),  M_τ(H_Λ) = C*_τ(H_Λ, p̄) − E_x C*_τ(H_Λ, x),
    M_{0-1}(H_Λ) = (1 − max_y p̄_y) − E_x(1 − max_y p(y|x)),

  (C* by the exact score-bounded solve) and the comp-sum H-consistency bound
  with minimizability gaps reads

    R_{0-1}(h) − R*_{0-1}(H_Λ) ≤ Γ_τ(ε + M_τ(H_Λ)) − M_{0-1}(H_Λ),

  ε = R_τ(h) − R*_τ(H_Λ). Differentiable in ε, τ and Λ (exact derivatives of
  Γ_τ and, by the envelope theorem, of C*), so τ can be chosen by gradient
  descent.

  Args:
    surrogate_excess: ε ≥ 0, the estimation error of the surrogate.
    tau: scalar τ ≥ 0.
    probs: posteriors p(·|x_i), shape [m, n].
    score_bound: Λ > 0, finite (scalar).
    weights: sample weights [m]; default uniform.

  Returns:
    The bound (scalar).
  """
  validation.check_nonnegative(surrogate_excess, "surrogate_excess")
  validation.check_probs(probs)
  validation.check_tau(tau)
  _inputs.check_score_bound(score_bound)
  dtype = validation.compute_dtype(jnp.asarray(probs))
  probs = jnp.asarray(probs, dtype)
  if probs.ndim != 2:
    raise ValueError(f"probs must have shape [m, n], got shape {probs.shape}")
  m, n = probs.shape
  tau = jnp.asarray(tau, dtype)
  if weights is None:
    weights = jnp.full((m,), 1.0 / m, dtype)
  else:
    validation.check_nonnegative(weights, "weights")
    weights = jnp.asarray(weights, dtype) / jnp.sum(weights)
  mean_probs = weights @ probs  # p̄ = E_x p(·|x)
  best_in_class = regret.best_conditional_risk(mean_probs, tau, score_bound)
  pointwise = weights @ regret.best_conditional_risk(
      probs, jnp.broadcast_to(tau, (m,)), score_bound)
  # M_τ = R*_τ − E_x C*_τ ≥ 0 (clamped against rounding)
  surrogate_gap = jnp.maximum(best_in_class - pointwise, 0.0)
  # M_{0-1} = (1 − max p̄) − E_x(1 − max p(·|x))
  zero_one_gap = (1.0 - jnp.max(mean_probs)) - weights @ (
      1.0 - jnp.max(probs, axis=-1))
  return bounds.inverse_transform(
      jnp.asarray(surrogate_excess, dtype) + surrogate_gap, tau,
      n) - zero_one_gap


class BoundSides(NamedTuple):
  """Both sides of the H-consistency bound for one hypothesis (notes §3.1).

  Attributes:
    zero_one_excess: left side R_{0-1}(h) − R*_{0-1}(H).
    bound: right side Γ_τ(R_τ(h) − R*_τ(H) + M_τ(H)) − M_{0-1}(H).
    surrogate_excess: R_τ(h) − R*_τ(H).
    surrogate_gap: M_τ(H).
    zero_one_gap: M_{0-1}(H).
  """

  zero_one_excess: jax.Array
  bound: jax.Array
  surrogate_excess: jax.Array
  surrogate_gap: jax.Array
  zero_one_gap: jax.Array


def consistency_bound_sides(scores: jax.Array, probs: jax.Array,
                            tau: float | jax.Array,
                            surrogate_best_risk: jax.Array | float | None =
                            None,
                            zero_one_best_risk: jax.Array | float | None =
                            None,
                            weights: jax.Array | None = None) -> BoundSides:
  """Both sides of the comp-sum H-consistency bound (notes §3.1).

  For a symmetric complete family H and a hypothesis h given by its scores on
  samples x_i with known posteriors. Risks are exact expectations over y given
  each x_i (no label sampling): R_τ(h) = E_x C_τ(h, x), R_{0-1}(h) =
  E_x[1 − p_{h(x)}]. The surrogate argument of Γ_τ is computed as
  E_x[ΔC_τ(h, x)] = R_τ(h) − R*_τ(H) + M_τ(H), the identity of notes §1.

  Args:
    scores: h(x_i, ·), shape [m, n].
    probs: p(·|x_i), shape [m, n].
    tau: τ ≥ 0 (scalar).
    surrogate_best_risk: R*_τ(H); default E_x C*_τ (all measurable
      functions, so M_τ = 0).
    zero_one_best_risk: R*_{0-1}(H); default E_x[1 − max p] (M_{0-1} = 0).
    weights: sample weights [m]; default uniform.

  Returns:
    :class:`BoundSides` of scalars; the bound holds iff
    ``zero_one_excess <= bound``.
  """
  n = jnp.shape(scores)[-1]
  risk = _mean(conditional.conditional_risk(scores, probs, tau), weights)
  pointwise = pointwise_best_risk(probs, tau, weights=weights)
  zero_one_pointwise = _mean(
      conditional.zero_one_best_conditional_risk(probs), weights)
  zero_one_risk = zero_one_pointwise + _mean(
      conditional.zero_one_conditional_regret(scores, probs), weights)
  if surrogate_best_risk is None:
    surrogate_best_risk = pointwise
  if zero_one_best_risk is None:
    zero_one_best_risk = zero_one_pointwise
  surrogate_gap = surrogate_best_risk - pointwise
  zero_one_gap = zero_one_best_risk - zero_one_pointwise
  mean_regret = jnp.maximum(risk - pointwise, 0.0)  # E_x ΔC_τ ≥ 0
  bound = (bounds.inverse_transform(mean_regret, tau, n) - zero_one_gap)
  return BoundSides(zero_one_excess=zero_one_risk - zero_one_best_risk,
                    bound=bound,
                    surrogate_excess=risk - surrogate_best_risk,
                    surrogate_gap=surrogate_gap, zero_one_gap=zero_one_gap)
