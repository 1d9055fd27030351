"""Best conditional risk and conditional regret for any hypothesis family (§1)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from compsum_jax import validation
from compsum_jax.theory import _inputs, conditional, families


def best_conditional_risk(probs: jax.Array, tau: jax.Array | float,
                          score_bound: jax.Array | float | None = None, *,
                          family: Any = None) -> jax.Array:
  """C*_τ(H, x) = inf_{h ∈ H} Σ_y p_y ℓ_τ(h, x, y) (notes §1, §4).

  ``score_bound=None`` (default) is the symmetric complete family (closed
  forms of notes §4.1); a finite Λ is the family whose scores at x range over
  [−Λ, Λ]^n (exact solve, see :mod:`compsum_jax.theory.families`; use
  :func:`~compsum_jax.theory.families.solve_score_bounded` for the minimiser
  and its certificate). Any other family is passed as ``family=``. All
  arguments may be traced: ``jax.vmap`` over p, τ and Λ (or the family's
  leaves) works.

  Args:
    probs: p(·|x), shape [..., n], on the simplex.
    tau: τ ≥ 0, broadcastable to [...].
    score_bound: Λ > 0 or None; broadcastable to [...].
    family: a hypothesis family pytree (exclusive with ``score_bound``).

  Returns:
    C*, shape [...].

  Raises:
    ValueError: concrete probs negative/unnormalised, τ < 0, Λ ≤ 0.
  """
  validation.check_probs(probs)
  _inputs.check_finite(probs, "probs")
  validation.check_tau(tau)
  family = families.resolve_family(score_bound, family)
  dtype = validation.compute_dtype(probs)
  probs = jnp.asarray(probs, dtype)
  tau = jnp.broadcast_to(jnp.asarray(tau, dtype), probs.shape[:-1])
  return family.best_conditional_risk(probs, tau)


def conditional_regret(scores: jax.Array, probs: jax.Array,
                       tau: jax.Array | float,
                       score_bound: jax.Array | float | None = None, *,
                       family: Any = None) -> jax.Array:
  """ΔC_τ(h, x) = C_τ(h, x) − C*_τ(H, x) ≥ 0 (notes §1).

  Args:
    scores: h(x, ·), shape [..., n] (should lie in the family).
    probs: shape [..., n].
    tau: τ ≥ 0 broadcastable to [...].
    score_bound: Λ > 0 or None (complete family).
    family: a family pytree (exclusive with ``score_bound``).

  Returns:
    Regrets, shape [...].
  """
  return (conditional.conditional_risk(scores, probs, tau) -
          best_conditional_risk(probs, tau, score_bound, family=family))
