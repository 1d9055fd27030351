"""The pointwise bound T_τ(ΔC_{0-1}) ≤ ΔC_τ: random, adversarial, tightness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import theory

VERIFY_TAUS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _np_slack(scores, probs, tau):
  """ΔC_τ − T_τ(ΔC_{0-1}) from NumPy formulas (docs/math.md (2.4)–(2.5), (7.2), (5.1))."""
  z = scores - scores.max(-1, keepdims=True)
  q = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  if tau == 1:
    loss = -np.log(q)
    best = -np.sum(np.where(probs > 0, probs * np.log(probs), 0), -1)
  else:
    loss = (1 - q ** (tau - 1)) / (tau - 1)
    if tau < 2:
      a = 1 / (2 - tau)
      best = (np.sum(probs**a, -1) ** (2 - tau) - 1) / (1 - tau)
    else:
      best = (1 - probs.max(-1)) / (tau - 1)
  regret = np.sum(probs * loss, -1) - best
  pred = np.argmax(scores, -1)
  t = probs.max(-1) - np.take_along_axis(probs, pred[:, None], -1)[:, 0]
  n = scores.shape[-1]
  t_val = np.asarray(theory.transform(np.clip(t, 0, 1), tau, n))
  return regret - t_val


@pytest.mark.slow
def test_bound_slack_matches_numpy_on_moderate_inputs():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(200, 4))
  probs = rng.dirichlet(np.ones(4), size=200)
  for tau in [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]:
    np.testing.assert_allclose(theory.bound_slack(scores, probs, tau),
                               _np_slack(scores, probs, tau), atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_pointwise_bound_holds_on_1e5_random_pairs(n):
  for i, tau in enumerate(VERIFY_TAUS):
    result = theory.verify_bound(jax.random.key(100 * n + i), tau, n,
                                 num_pairs=100_000, dtype=jnp.float64)
    assert result.num_checked == 100_000
    assert float(result.min_slack) >= -1e-12, (tau, n, result)


@pytest.mark.slow
def test_random_pairs_are_valid_probabilities_and_finite_scores():
  scores, probs = theory.random_pairs(jax.random.key(1), 1000, 7, 0.5,
                                      jnp.float64)
  assert scores.shape == probs.shape == (1000, 7)
  assert np.all(np.isfinite(np.asarray(scores)))
  assert np.all(np.asarray(probs) >= 0)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 10])
@pytest.mark.slow
def test_pointwise_bound_holds_on_adversarially_searched_pairs(n):
  for i, tau in enumerate(VERIFY_TAUS):
    result = theory.adversarial_slack_search(
        jax.random.key(7 * n + i), tau, n, num_starts=24, num_steps=200,
        dtype=jnp.float64)
    assert float(result.min_slack) >= -1e-10, (tau, n, result)
    # The search drives the slack close to 0 where the bound is tight
    # (τ ≤ 1: all n; τ ∈ (1, 2]: n = 2), so it is a real search.
    if tau <= 1 or (tau <= 2 and n == 2):
      assert float(result.min_slack) <= 1e-4, (tau, n, result)


@pytest.mark.slow
def test_adversarial_search_finds_violations_of_a_wrong_bound():
  # Sanity check of the search: a bound 10% steeper than T_1 is violated.
  probs = theory.constrained_probs({"z": jnp.zeros(0)}, jnp.asarray(0.3))
  regret = theory.min_surrogate_regret_given_prediction(probs, 1.0)
  assert float(regret) < 1.1 * float(theory.transform(0.3, 1.0, 2))


TS = np.asarray([0.02, 0.1, 0.3, 0.6, 0.9, 1.0])


@pytest.mark.parametrize("tau, n", [(0.0, 2), (0.5, 2), (1.0, 2),
                                    (0.0, 10), (0.5, 10), (1.0, 10),
                                    (1.25, 2), (1.5, 2), (1.75, 2),
                                    (2.0, 2)])
@pytest.mark.slow
def test_tightness_ratio_reaches_099(tau, n):
  ratios = np.asarray(theory.tightness_curve(tau, n, TS, num_starts=12,
                                             num_steps=250))
  assert np.all(ratios >= 0.99), ratios
  assert np.all(ratios <= 1 + 1e-9), ratios


@pytest.mark.parametrize("tau", [1.5, 2.0, 3.0])
def test_tightness_ratio_never_exceeds_one_for_tau_above_one(tau):
  # τ > 1 at n = 10: T_τ is a valid but not tight lower bound (docs/math.md (8.1)–(8.5)).
  ratios = np.asarray(theory.tightness_curve(tau, 10, TS, num_starts=12,
                                             num_steps=250))
  assert np.all(ratios <= 1 + 1e-9), ratios
  assert np.all(ratios > 0), ratios


def test_constrained_probs_have_the_requested_zero_one_regret():
  rng = np.random.default_rng(4)
  for t in [0.01, 0.3, 0.77, 1.0]:
    for _ in range(20):
      probs = theory.constrained_probs(
          {"z": jnp.asarray(rng.normal(size=6) * 4)}, jnp.asarray(t))
      probs = np.asarray(probs)
      assert probs.argmax() == 0 or probs[0] == probs.max()
      np.testing.assert_allclose(probs[0] - probs[1], t, atol=1e-12)
      np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.tightness_curve(1.0, 3, jnp.asarray([0.0, 0.5])),
         "ts must be > 0"),
        (lambda: theory.tightness_curve(1.0, 3, jnp.asarray([1.5])),
         "ts must lie in"),
        (lambda: theory.tightness_curve(-1.0, 3, jnp.asarray(TS)), "tau"),
        (lambda: theory.bound_slack(jnp.zeros(3), jnp.asarray([.5, .6, 0.]),
                                    1.0), "sum to 1"),
        (lambda: theory.verify_bound(jax.random.key(0), 1.0, 1), "num_classes"),
    ],
)
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
