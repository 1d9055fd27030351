"""Minimizability gaps and both sides of the H-consistency bound."""

import math

import jax
import numpy as np
import pytest
from scipy import optimize

from compsum_jax import theory

TAUS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _np_comp_sum(scores, labels, tau):
  z = scores - scores.max(-1, keepdims=True)
  log_q = z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_q, labels[:, None], -1)[:, 0]
  return ce if tau == 1 else np.expm1((1 - tau) * ce) / (1 - tau)


def _deterministic_sample(rng, m, n):
  labels = rng.choice(n, size=m, p=rng.dirichlet(np.ones(n) * 2))
  return labels, np.eye(n)[labels]


@pytest.mark.slow
def test_constant_scorer_family_gap_matches_scipy_and_is_monotone_in_tau():
  # H = {x ↦ s : s ∈ [−Λ, Λ]^n} (constant scores): with deterministic labels
  # R*_τ(H) = min_s (1/m) Σ_i ℓ_τ(s, y_i), found here by SciPy multi-start;
  # E_x C*(H_Λ, x) = Φ^τ((n−1)e^{−2Λ}) since at each x the best score vector
  # in the box is free (docs/math.md (5.11)), so M = R* − Φ^τ((n−1)e^{−2Λ}).
  rng = np.random.default_rng(0)
  n, m = 4, 400
  labels, onehot = _deterministic_sample(rng, m, n)
  marginal = onehot.mean(0)
  for bound in [0.5, 2.0]:
    gaps = []
    for tau in TAUS:
      best = np.inf
      for _ in range(6):
        res = optimize.minimize(
            lambda s, tau=tau: np.mean(_np_comp_sum(
                np.broadcast_to(s, (m, n)), labels, tau)),
            rng.uniform(-bound, bound, n), method="L-BFGS-B",
            bounds=[(-bound, bound)] * n,
            options={"ftol": 1e-15, "gtol": 1e-12})
        best = min(best, float(res.fun))
      exact = float(theory.best_conditional_risk(marginal, tau, bound))
      assert exact == pytest.approx(best, abs=1e-7)
      gap = float(theory.deterministic_minimizability_gap(exact, tau, n,
                                                          bound))
      same = float(theory.minimizability_gap(exact, onehot, tau, bound))
      assert gap == pytest.approx(same, abs=1e-12)
      assert gap >= -1e-12
      gaps.append(gap)
    # docs/math.md (7.6): M_τ(H) is non-increasing in τ.
    assert np.all(np.diff(gaps) <= 1e-12), gaps


@pytest.mark.slow
def test_pointwise_best_risk_weighted_mean():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(5), size=30)
  weights = rng.uniform(0, 2, size=30)
  for bound in [None, 1.0]:
    per_x = np.asarray(theory.best_conditional_risk(probs, 0.5, bound))
    got = float(theory.pointwise_best_risk(probs, 0.5, bound,
                                           weights=weights))
    assert got == pytest.approx(np.sum(weights * per_x) / weights.sum(),
                                rel=1e-12)
    assert float(theory.pointwise_best_risk(probs, 0.5, bound)) == (
        pytest.approx(per_x.mean(), rel=1e-12))


def test_zero_one_gap_and_deterministic_best_risk():
  probs = np.asarray([[0.6, 0.4], [0.1, 0.9]])
  assert float(theory.zero_one_minimizability_gap(0.4, probs)) == (
      pytest.approx(0.4 - 0.25))
  # Φ^τ((n − 1)e^{−2Λ}) at τ = 1 is log(1 + (n − 1)e^{−2Λ}).
  assert float(theory.deterministic_best_conditional_risk(1.0, 5, 0.7)) == (
      pytest.approx(math.log1p(4 * math.exp(-1.4)), rel=1e-12))


@pytest.mark.parametrize("tau", TAUS)
def test_consistency_bound_sides_hold_and_match_numpy(tau):
  rng = np.random.default_rng(int(10 * tau) + 3)
  m, n = 300, 4
  probs = rng.dirichlet(np.ones(n) * 0.7, size=m)
  for trial in range(5):
    noise = rng.normal(size=(m, n)) * [0.01, 0.3, 1.0, 3.0, 10.0][trial]
    scores = np.log(probs) / (2 - min(tau, 1.9)) + noise
    sides = theory.consistency_bound_sides(scores, probs, tau)
    pred = scores.argmax(-1)
    zero_one_excess = np.mean(probs.max(-1) - probs[np.arange(m), pred])
    assert float(sides.zero_one_excess) == pytest.approx(zero_one_excess,
                                                         abs=1e-12)
    assert float(sides.zero_one_excess) <= float(sides.bound) + 1e-12
    assert float(sides.surrogate_gap) == 0.0
    # With hypothetical best-in-class risks the gaps shift both sides.
    shifted = theory.consistency_bound_sides(
        scores, probs, tau,
        surrogate_best_risk=float(theory.pointwise_best_risk(probs, tau)) +
        0.01,
        zero_one_best_risk=float(np.mean(1 - probs.max(-1))) + 0.02)
    assert float(shifted.surrogate_gap) == pytest.approx(0.01, abs=1e-12)
    assert float(shifted.zero_one_gap) == pytest.approx(0.02, abs=1e-12)
    assert float(shifted.surrogate_excess + shifted.surrogate_gap) == (
        pytest.approx(float(sides.surrogate_excess), rel=1e-12, abs=1e-12))
    assert float(shifted.zero_one_excess) <= float(shifted.bound) + 1e-12


def test_bad_input():
  with pytest.raises(ValueError, match="score_bound"):
    theory.deterministic_best_conditional_risk(1.0, 3, 0.0)
  with pytest.raises(ValueError, match="num_classes"):
    theory.deterministic_best_conditional_risk(1.0, 1, 1.0)
  with pytest.raises(ValueError, match="weights"):
    theory.pointwise_best_risk(np.asarray([[0.5, 0.5]]), 1.0,
                               weights=np.asarray([-1.0]))
  with pytest.raises(ValueError, match="sum to 1"):
    theory.minimizability_gap(0.3, np.asarray([[0.5, 0.6]]), 1.0)
