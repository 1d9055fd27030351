"""The H-consistency bound checked on trained models, K members at once.

For K trained hypotheses h_k with comp-sum parameters τ_k, scored on N inputs
x_i whose posteriors p(·|x_i) are known, and the family of all measurable
functions (both minimizability gaps 0), the comp-sum H-consistency bound reads

  E_x[ΔC_0-1(h_k, x)] ≤ Γ_τk(E_x[ΔC_τk(h_k, x)]),

  ΔC_0-1(h, x) = max_y p_y(x) − p_{h(x)}(x)         (zero-one excess)
  ΔC_τ(h, x)   = C_τ(h, x) − C*_τ(x)                (surrogate excess)

with Γ_τ = T_τ^{-1} capped at 1. :func:`member_bound_sides` evaluates both
sides for every member in one compiled call (vmapped over members, float64);
:func:`bound_check_summary` counts the violations of a history of checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax.theory import bounds, gaps

# Both sides are float64 means of O(1) quantities: a check fails when
# bound − zero_one_excess < −BOUND_TOLERANCE (float64 rounding is ~1e-13).
BOUND_TOLERANCE = 1e-9


class MemberBoundSides(NamedTuple):
  """Both sides of the bound per member, float64 NumPy arrays [K].

  Attributes:
    zero_one_excess: E_x[ΔC_0-1(h_k, x)].
    surrogate_excess: E_x[ΔC_τk(h_k, x)].
    bound: Γ_τk(E_x[ΔC_τk(h_k, x)]).
    slack: bound − zero_one_excess (≥ 0 iff the bound holds).
  """

  zero_one_excess: np.ndarray
  surrogate_excess: np.ndarray
  bound: np.ndarray
  slack: np.ndarray


@jax.jit
def _member_sides(logits: jax.Array, posteriors: jax.Array, taus: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  def one(member_logits, tau):
    sides = gaps.consistency_bound_sides(member_logits, posteriors, tau)
    return sides.zero_one_excess, sides.surrogate_excess, sides.bound

  return jax.vmap(one)(logits, taus)


def member_bound_sides(logits: np.ndarray | jax.Array,
                       posteriors: np.ndarray | jax.Array,
                       taus: Sequence[float]) -> MemberBoundSides:
  """Both sides of the H-consistency bound for K members, in float64.

  Args:
    logits: [K, N, n], member k's scores h_k(x_i, ·).
    posteriors: [N, n], exact p(·|x_i) (rows sum to 1).
    taus: the K members' τ_k ≥ 0.

  Returns:
    :class:`MemberBoundSides` of float64 arrays [K].

  Raises:
    ValueError: shapes disagree, or a τ is negative or not finite.
  """
  logits = np.asarray(logits, np.float64)
  posteriors = np.asarray(posteriors, np.float64)
  taus = np.asarray(taus, np.float64).reshape(-1)
  if posteriors.ndim != 2 or logits.ndim != 3 or (
      logits.shape != (taus.size, *posteriors.shape)):
    raise ValueError(f"logits must have shape [K={taus.size}, N, n] with "
                     f"posteriors [N, n]; got logits {logits.shape}, "
                     f"posteriors {posteriors.shape}")
  if not np.all(np.isfinite(taus) & (taus >= 0)):
    raise ValueError(f"taus must be finite and >= 0, got {taus.tolist()}")
  with jax.enable_x64(True):
    zero_one, surrogate, bound = jax.device_get(_member_sides(
        jnp.asarray(logits), jnp.asarray(posteriors), jnp.asarray(taus)))
  zero_one = np.asarray(zero_one, np.float64)
  bound = np.asarray(bound, np.float64)
  return MemberBoundSides(zero_one_excess=zero_one,
                          surrogate_excess=np.asarray(surrogate, np.float64),
                          bound=bound, slack=bound - zero_one)


def gamma_curve(surrogate_excess: np.ndarray | Sequence[float], tau: float,
                num_classes: int) -> np.ndarray:
  """Γ_τ(s) = min(1, T_τ^{-1}(s)) on a grid of s ≥ 0, float64 (for plots)."""
  with jax.enable_x64(True):
    return np.asarray(bounds.inverse_transform(
        jnp.asarray(surrogate_excess, jnp.float64), float(tau), num_classes))


def bound_check_summary(checks: Sequence[Mapping[str, Any]],
                        tolerance: float = BOUND_TOLERANCE
                        ) -> dict[str, Any]:
  """Counts of a history of bound checks, per τ and overall.

  Args:
    checks: one entry per member: ``tau``, ``slack`` (slack at each
      evaluation) and the final ``zero_one_excess``, ``surrogate_excess``,
      ``bound``.
    tolerance: a check fails when slack < −tolerance.

  Returns:
    {num_checks, num_violations, holds, min_slack, tolerance, per_tau: [{tau,
    num_checks, num_violations, min_slack, final_zero_one_excess,
    final_surrogate_excess, final_bound}]}, the finals being means over the
    members sharing τ, in order of first appearance of τ.
  """
  if not checks:
    raise ValueError("bound_check_summary needs at least one member, got none")
  taus = list(dict.fromkeys(float(c["tau"]) for c in checks))
  per_tau = []
  all_slacks: list[float] = []
  for tau in taus:
    group = [c for c in checks if float(c["tau"]) == tau]
    slacks = [float(s) for c in group for s in c["slack"]]
    all_slacks += slacks
    per_tau.append({
        "tau": tau, "num_checks": len(slacks),
        "num_violations": int(sum(s < -tolerance for s in slacks)),
        "min_slack": float(min(slacks)),
        "final_zero_one_excess": float(np.mean(
            [c["zero_one_excess"] for c in group], dtype=np.float64)),
        "final_surrogate_excess": float(np.mean(
            [c["surrogate_excess"] for c in group], dtype=np.float64)),
        "final_bound": float(np.mean([c["bound"] for c in group],
                                     dtype=np.float64))})
  violations = int(sum(s < -tolerance for s in all_slacks))
  return {"num_checks": len(all_slacks), "num_violations": violations,
          "holds": violations == 0, "min_slack": float(min(all_slacks)),
          "tolerance": tolerance, "per_tau": per_tau}
