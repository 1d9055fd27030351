"""float32 accuracy of T_τ and the theory's input checks (NaN/inf, Λ)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import theory


def test_float32_transform_relative_error():
  """float32 T_τ within 1e-5 relative of float64 on a dense (τ, t) grid.

  The float64 values are checked against independent closed forms in
  tests/test_theory_bounds.py; inputs are rounded to float32 first so that
  only the evaluation is compared.
  """
  taus = np.concatenate([np.linspace(0, 3, 151),
                         [1 - 1e-4, 1 + 1e-4, 1.96, 2 - 1e-3, 2 - 1e-4]])
  ts = np.concatenate([np.geomspace(1e-6, 1, 200), [1.06e-3],
                       1 - np.geomspace(1e-7, 1e-1, 20)])
  tau_grid, t_grid = np.meshgrid(taus, ts, indexing="ij")
  tau32 = tau_grid.astype(np.float32)
  t32 = t_grid.astype(np.float32)
  for n in [2, 10]:
    got = np.asarray(theory.transform(jnp.asarray(t32), jnp.asarray(tau32), n),
                     np.float64)
    with jax.enable_x64(True):
      want = np.asarray(theory.transform(
          jnp.asarray(t32, jnp.float64), jnp.asarray(tau32, jnp.float64), n))
    assert got.dtype == np.float64 and np.all(np.isfinite(got))
    normal = want > 1e-30
    relative = np.abs(got - want)[normal] / want[normal]
    assert relative.max() <= 1e-5, (n, relative.max())


def test_issue_repro_float32_near_tau_two():
  with jax.enable_x64(True):
    want = float(theory.transform(np.float64(np.float32(1.06e-3)),
                                  np.float64(np.float32(1.96)), 10))
  got = float(theory.transform(jnp.float32(1.06e-3), jnp.float32(1.96), 10))
  assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("bound", [np.inf, -np.inf, np.nan, 0.0, -1.0])
def test_score_bound_must_be_finite_and_positive(bound):
  p = np.array([0.5, 0.3, 0.2])
  with pytest.raises(ValueError, match="score_bound"):
    theory.best_conditional_risk(p, 2.5, bound)
  with pytest.raises(ValueError, match="score_bound"):
    theory.solve_score_bounded(p, 1.0, bound)
  with pytest.raises(ValueError, match="score_bound"):
    theory.deterministic_best_conditional_risk(1.0, 3, bound)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(bad):
  scores = np.array([0.0, bad, 1.0])
  p = np.array([0.2, 0.3, 0.5])
  with pytest.raises(ValueError, match="scores must be finite"):
    theory.zero_one_conditional_regret(scores, p)
  with pytest.raises(ValueError, match="scores must be finite"):
    theory.conditional_risk(scores, p, 1.0)
  with pytest.raises(ValueError, match="scores must be finite"):
    theory.bound_slack(scores, p, 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_probabilities_are_rejected(bad):
  p = np.array([0.5, bad, 0.5])
  with pytest.raises(ValueError, match="probs"):
    theory.best_conditional_risk(p, 1.0)
  with pytest.raises(ValueError, match="probs"):
    theory.best_conditional_risk(p, 1.0, 1.0)
  with pytest.raises(ValueError, match="probs"):
    theory.zero_one_conditional_regret(np.zeros(3), p)
