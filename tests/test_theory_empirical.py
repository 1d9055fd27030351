"""theory.empirical: the H-consistency bound on K trained members at once.

Expected values are NumPy float64 closed forms of the conditional risks
(softmax form of ℓ_τ, closed forms of C*_τ), Γ_τ by SciPy root finding of T_τ,
and hand counts of the slacks.
"""

import math

import numpy as np
import pytest
from scipy import optimize

from compsum_jax import theory


def np_transform(t, tau, n):
  """T_τ(t), the comp-sum bound function (closed form per τ range), float64."""
  if tau >= 2:
    return t / ((tau - 1) * n ** (tau - 1))
  if tau == 1:
    return sum(0.5 * (1 + s * t) * math.log1p(s * t) if 1 + s * t > 0 else 0.0
               for s in (1, -1))
  a = ((((1 + t) ** (1 / (2 - tau)) + (1 - t) ** (1 / (2 - tau))) / 2)
       ** (2 - tau))
  if tau < 1:
    return 2 ** (1 - tau) / (1 - tau) * (1 - a)
  return (a - 1) / ((tau - 1) * n ** (tau - 1))


def np_gamma(s, tau, n):
  """Γ_τ(s) = T_τ^{-1}(s), capped at 1, by Brent's method."""
  if s <= 0:
    return 0.0
  if s >= np_transform(1.0, tau, n):
    return 1.0
  return optimize.brentq(lambda t: np_transform(t, tau, n) - s, 0.0, 1.0,
                         xtol=1e-15, rtol=1e-14)


def np_bound_sides(logits, probs, tau):
  """E[ΔC_0-1], E[ΔC_τ] from softmax-form losses and C* closed forms."""
  z = logits - logits.max(-1, keepdims=True)
  softmax = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  if tau == 1:
    per_label = -np.log(softmax)  # ℓ_1 = −log s_y
    best = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), -1)
  else:
    per_label = (1 - softmax ** (tau - 1)) / (tau - 1)  # (1 − s_y^{τ−1})/(τ−1)
    if tau < 2:
      best = ((probs ** (1 / (2 - tau))).sum(-1) ** (2 - tau) - 1) / (1 - tau)
    else:
      best = (1 - probs.max(-1)) / (tau - 1)
  surrogate = np.mean((probs * per_label).sum(-1) - best)
  predicted = logits.argmax(-1)
  zero_one = np.mean(probs.max(-1) -
                     probs[np.arange(len(probs)), predicted])
  return zero_one, surrogate


@pytest.mark.slow
def test_member_bound_sides_match_numpy_closed_forms():
  rs = np.random.RandomState(0)
  taus = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
  n, m = 4, 300
  logits = rs.randn(len(taus), m, n).astype(np.float32) * 2.0
  probs = rs.dirichlet(np.ones(n) * 0.7, size=m)
  values = theory.member_bound_sides(logits, probs, taus)
  for k, tau in enumerate(taus):
    zero_one, surrogate = np_bound_sides(logits[k].astype(np.float64),
                                          probs, tau)
    np.testing.assert_allclose(values.zero_one_excess[k], zero_one,
                               rtol=1e-10)
    np.testing.assert_allclose(values.surrogate_excess[k], surrogate,
                               rtol=1e-8)
    np.testing.assert_allclose(values.bound[k], np_gamma(surrogate, tau, n),
                               rtol=1e-7, atol=1e-12)
    assert values.slack[k] == pytest.approx(
        values.bound[k] - values.zero_one_excess[k])
    assert values.slack[k] >= 0  # the theorem, on these random h and p


def test_bound_check_at_the_bayes_scores_is_tight_at_zero():
  # h = log p is pointwise optimal for τ = 1: both estimation errors vanish.
  rs = np.random.RandomState(1)
  probs = rs.dirichlet(np.ones(3), size=50)
  logits = np.log(probs)[None].astype(np.float32)
  values = theory.member_bound_sides(logits, probs, (1.0,))
  assert abs(values.zero_one_excess[0]) < 1e-12
  assert values.surrogate_excess[0] < 1e-6




@pytest.mark.slow
def test_member_bound_sides_vmapped_equals_one_member_at_a_time():
  rs = np.random.RandomState(2)
  taus = (0.0, 1.0, 1.7)
  logits = rs.randn(3, 40, 5) * 3.0
  probs = rs.dirichlet(np.ones(5), size=40)
  together = theory.member_bound_sides(logits, probs, taus)
  for k, tau in enumerate(taus):
    alone = theory.member_bound_sides(logits[k:k + 1], probs, (tau,))
    for a, b in zip(together, alone, strict=True):
      np.testing.assert_allclose(a[k], b[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("logits_shape, taus, pattern", [
    ((2, 10, 3), (1.0,), "shape"),
    ((1, 9, 3), (1.0,), "shape"),
    ((1, 10, 3), (-1.0,), "taus"),
    ((1, 10, 3), (math.nan,), "taus"),
])
def test_member_bound_sides_rejects_bad_input(logits_shape, taus, pattern):
  probs = np.full((10, 3), 1 / 3)
  with pytest.raises(ValueError, match=pattern):
    theory.member_bound_sides(np.zeros(logits_shape), probs, taus)


def test_gamma_curve_matches_scipy_inverse():
  grid = np.array([0.0, 1e-4, 0.01, 0.1, 0.5, 3.0])
  for tau in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
    expected = [np_gamma(s, tau, 4) for s in grid]
    np.testing.assert_allclose(theory.gamma_curve(grid, tau, 4), expected,
                               rtol=1e-7, atol=1e-12)


def test_bound_check_summary_counts_by_hand():
  checks = [
      {"tau": 0.0, "slack": [0.3, -1e-10, 0.2], "zero_one_excess": 0.1,
       "surrogate_excess": 0.5, "bound": 0.4},
      {"tau": 1.0, "slack": [0.1, -0.05], "zero_one_excess": 0.2,
       "surrogate_excess": 0.3, "bound": 0.25},
      {"tau": 0.0, "slack": [0.01], "zero_one_excess": 0.3,
       "surrogate_excess": 0.7, "bound": 0.6},
  ]
  summary = theory.bound_check_summary(checks, tolerance=1e-9)
  # -1e-10 is within the tolerance; -0.05 is a violation.
  assert summary["num_checks"] == 6 and summary["num_violations"] == 1
  assert summary["holds"] is False and summary["min_slack"] == -0.05
  by_tau = {row["tau"]: row for row in summary["per_tau"]}
  assert [row["tau"] for row in summary["per_tau"]] == [0.0, 1.0]
  assert by_tau[0.0]["num_checks"] == 4 and by_tau[0.0]["num_violations"] == 0
  assert by_tau[0.0]["min_slack"] == -1e-10
  assert by_tau[0.0]["final_zero_one_excess"] == pytest.approx(0.2)
  assert by_tau[0.0]["final_surrogate_excess"] == pytest.approx(0.6)
  assert by_tau[0.0]["final_bound"] == pytest.approx(0.5)
  assert by_tau[1.0]["num_violations"] == 1
  with pytest.raises(ValueError, match="at least one member"):
    theory.bound_check_summary([])
