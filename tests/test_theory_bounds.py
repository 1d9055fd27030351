"""Tests of T_τ, Γ_τ and the bound functions against independent float64 formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compsum_jax import theory
from compsum_jax.losses import phi_tau

TAUS = [0.0, 0.3, 0.5, 0.9, 1.0, 1.2, 1.5, 1.9, 2.0, 2.5, 3.0]


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


_np_transform = numpy_reference.transform


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n", [2, 3, 10, 100])
def test_transform_matches_numpy_formula(tau, n):
  # t ≥ 0.02 keeps the direct formula's cancellation error below ~1e-11.
  ts = np.linspace(0.02, 1.0, 50)
  got = np.asarray(theory.transform(ts, tau, n))
  np.testing.assert_allclose(got, _np_transform(ts, tau, n), rtol=1e-9)


@pytest.mark.parametrize("tau", TAUS)
def test_transform_small_t_matches_quadratic_term(tau):
  # T_τ(t) = c2 t² (1 + O(t²)) for τ < 2 with c2 = 2^{−τ}/(2−τ)(2/n)^{(τ−1)+}
  # (Taylor expansion of A_τ, derived independently of the implementation).
  if tau >= 2:
    pytest.skip("linear branch")
  n = 10
  c2 = 2.0**-tau / (2 - tau) * (2 / n) ** max(tau - 1, 0)
  ts = np.array([1e-8, 1e-6, 1e-5])
  got = np.asarray(theory.transform(ts, tau, n))
  np.testing.assert_allclose(got, c2 * ts**2, rtol=1e-8)


def test_transform_closed_forms():
  ts = np.linspace(0, 1, 101)
  # τ = 0: T = 1 − sqrt(1 − t²) (docs/math.md (6.2)).
  np.testing.assert_allclose(theory.transform(ts, 0.0, 5),
                             1 - np.sqrt(1 - ts**2), atol=1e-14)
  # τ = 2: T = t/n.
  np.testing.assert_allclose(theory.transform(ts, 2.0, 7), ts / 7,
                             atol=1e-15)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("n", [2, 10, 100])
@pytest.mark.slow
def test_inverse_of_transform_is_identity(tau, n):
  ts = np.concatenate([np.geomspace(1e-9, 1e-2, 15), np.linspace(0.02, 1, 40)])
  s = theory.transform(ts, tau, n)
  back = np.asarray(theory.inverse_transform(s, tau, n))
  np.testing.assert_allclose(back, ts, rtol=1e-7)


@pytest.mark.slow
def test_inverse_transform_closed_forms_and_saturation():
  s = np.linspace(0, 2, 41)
  np.testing.assert_allclose(theory.inverse_transform(s, 0.0, 10),
                             np.sqrt(np.clip(2 * s - s**2, 0, None) *
                                     (s <= 1)) + (s > 1), atol=1e-14)
  np.testing.assert_allclose(theory.inverse_transform(s, 3.0, 4),
                             np.minimum(1, 2 * 16 * s), atol=1e-14)
  # Beyond T_τ(1) the zero-one regret bound saturates at 1.
  t1 = float(theory.transform(1.0, 1.0, 3))
  assert float(theory.inverse_transform(t1 * 1.5, 1.0, 3)) == 1.0


@pytest.mark.slow
def test_inverse_transform_sqrt_upper_bound_for_tau_le_1():
  # docs/math.md (6.6): Γ_τ(s) ≤ sqrt(2^τ (2−τ) s) for τ ∈ [0, 1].
  s = np.geomspace(1e-8, 0.5, 60)
  for tau in [0.0, 0.25, 0.5, 0.75, 1.0]:
    gamma = np.asarray(theory.inverse_transform(s, tau, 10))
    assert np.all(gamma <= np.sqrt(2**tau * (2 - tau) * s) * (1 + 1e-12))


@pytest.mark.parametrize("pivot", [1.0, 2.0])
def test_transform_continuous_in_tau(pivot):
  ts = jnp.linspace(0.0, 1.0, 21)
  at = theory.transform(ts, pivot, 10)
  for eps in [1e-3, 1e-6, 1e-9, 1e-12]:
    for side in [-1, 1]:
      near = theory.transform(ts, pivot + side * eps, 10)
      np.testing.assert_allclose(near, at, rtol=50 * eps + 1e-12, atol=1e-15)


@pytest.mark.slow
def test_transform_vmaps_over_tau_and_matches_scalar_calls():
  taus = jnp.asarray(TAUS)
  got = jax.jit(jax.vmap(lambda tau: theory.transform(0.3, tau, 10)))(taus)
  want = [float(theory.transform(0.3, tau, 10)) for tau in TAUS]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  inv = jax.jit(jax.vmap(theory.inverse_transform, (0, 0, None)))(
      got, taus, 10)
  np.testing.assert_allclose(inv, 0.3, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(t1=st.floats(0, 1), t2=st.floats(0, 1),
       tau=st.sampled_from(TAUS), n=st.sampled_from([2, 3, 10]))
def test_transform_is_increasing_and_convex(t1, t2, tau, n):
  lo, hi = sorted([t1, t2])
  f = lambda t: float(theory.transform(t, tau, n))
  assert f(lo) <= f(hi) + 1e-15
  # Convexity: T((lo+hi)/2) ≤ (T(lo) + T(hi))/2.
  assert f(0.5 * (lo + hi)) <= 0.5 * (f(lo) + f(hi)) + 1e-14


@pytest.mark.slow
def test_zero_one_bound_adds_and_subtracts_gaps():
  got = theory.zero_one_bound(0.01, 1.0, 10, surrogate_gap=0.02,
                              zero_one_gap=0.05)
  want = float(theory.inverse_transform(0.03, 1.0, 10)) - 0.05
  assert math.isclose(float(got), want, rel_tol=1e-12)


def test_adversarial_constant_values():
  # docs/math.md (9.6): Φ^τ(1) = (2^{1−τ} − 1)/(1 − τ), log 2 at τ = 1.
  taus = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
  want = np.where(taus == 1, np.log(2),
                  (2.0 ** (1 - taus) - 1) / (1 - np.where(taus == 1, 0, taus)))
  np.testing.assert_allclose(theory.adversarial_constant(taus), want,
                             rtol=1e-12)
  np.testing.assert_allclose(
      theory.adversarial_zero_one_bound(0.1, taus, 0.05, 0.01),
      0.15 / want - 0.01, rtol=1e-12)


def _np_phi(u, tau):
  return np.log1p(u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("n", [2, 3, 6])
def test_adversarial_rearrangement_inequality(tau, n):
  # docs/math.md (9.4)–(9.5) proof sketch: for a robust h that ranks classes by a
  # permutation, C̃ = Σ_y p_y Φ^τ(rank(y) − 1), C̃* = Σ_k p_(k) Φ^τ(k − 1),
  # and ΔC̃ ≥ Φ^τ(1)·(max p − p_{top(h)}), with equality when the top two are
  # swapped. Checked by brute force over all permutations.
  import itertools
  rng = np.random.default_rng(n)
  c = float(theory.adversarial_constant(tau))
  costs = np.array([_np_phi(k, tau) for k in range(n)])
  for _ in range(30):
    p = rng.dirichlet(np.ones(n) * 0.7)
    best = np.sum(np.sort(p)[::-1] * costs)
    for perm in itertools.permutations(range(n)):
      ranks = np.empty(n, int)
      ranks[list(perm)] = np.arange(n)  # perm[k] is ranked k-th
      regret = np.sum(p * costs[ranks]) - best
      assert regret >= c * (p.max() - p[perm[0]]) - 1e-12
    order = np.argsort(-p)
    swapped = order.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    ranks = np.empty(n, int)
    ranks[swapped] = np.arange(n)
    regret = np.sum(p * costs[ranks]) - best
    assert math.isclose(regret, c * (p[order[0]] - p[order[1]]),
                        rel_tol=1e-9, abs_tol=1e-14)
  assert math.isclose(float(theory.adversarial_constant(tau)),
                      float(phi_tau(1.0, tau)), rel_tol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.transform(1.5, 1.0, 3), "t must lie in"),
        (lambda: theory.transform(-0.1, 1.0, 3), "t must lie in"),
        (lambda: theory.transform(0.5, -1.0, 3), "tau"),
        (lambda: theory.transform(0.5, 1.0, 1), "num_classes"),
        (lambda: theory.transform(0.5, 1.0, 2.5), "num_classes"),
        (lambda: theory.inverse_transform(-0.1, 1.0, 3), "s must be >= 0"),
        (lambda: theory.inverse_transform(float("nan"), 1.0, 3), "s must"),
        (lambda: theory.zero_one_bound(-1.0, 1.0, 3), "surrogate_excess"),
        (lambda: theory.zero_one_bound(0.1, 1.0, 3, surrogate_gap=-1),
         "surrogate_gap"),
        (lambda: theory.adversarial_constant(-0.5), "tau"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
  with pytest.raises(ValueError, match=match):
    call()
