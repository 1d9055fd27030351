"""Conditional risks, C* for the complete and score-bounded families, vs SciPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from compsum_jax import theory

TAUS = [0.0, 0.5, 1.0, 1.3, 1.7, 2.0, 2.5, 3.0]


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _np_loss_of_q(q, tau):
  """ψ(q) = (1 − q^{τ−1})/(τ − 1), −log q at τ = 1 (softmax form, docs/math.md (2.5))."""
  if tau == 1.0:
    return -np.log(q)
  return (1.0 - q ** (tau - 1.0)) / (tau - 1.0)


def _np_risk_of_scores(s, p, tau):
  z = s - s.max()
  q = np.exp(z) / np.exp(z).sum()
  return float(np.sum(p * _np_loss_of_q(np.maximum(q, 1e-300), tau)))


def _scipy_simplex_min(p, tau, rng, starts=6):
  """min over the simplex of Σ p_y ψ(q_y) by SLSQP, multi-start."""
  n = len(p)
  lo = 1e-12 if tau <= 1 else 0.0
  best = np.inf
  for k in range(starts):
    x0 = rng.dirichlet(np.ones(n)) if k else p ** (1 / (2 - min(tau, 1.9)))
    x0 = np.clip(x0 / x0.sum(), 1e-6, None)
    res = optimize.minimize(
        lambda q: np.sum(p * _np_loss_of_q(np.maximum(q, 1e-300), tau)), x0,
        method="SLSQP", bounds=[(lo, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}],
        options={"ftol": 1e-15, "maxiter": 500})
    if res.success or res.status == 8:
      q = np.clip(res.x, lo, None)
      best = min(best, float(np.sum(p * _np_loss_of_q(
          np.maximum(q / q.sum(), 1e-300), tau))))
  return best


def _scipy_box_min(p, tau, bound, rng, starts=8):
  """min over [−Λ, Λ]^n of C_τ(s) by L-BFGS-B, multi-start."""
  n = len(p)
  best = np.inf
  for _ in range(starts):
    res = optimize.minimize(
        _np_risk_of_scores, rng.uniform(-bound, bound, n), args=(p, tau),
        method="L-BFGS-B", bounds=[(-bound, bound)] * n,
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000})
    best = min(best, float(res.fun))
  return best


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.slow
def test_complete_best_risk_matches_scipy_simplex_optimum(tau):
  rng = np.random.default_rng(int(tau * 10))
  for n in [2, 3, 6]:
    for _ in range(3):
      p = rng.dirichlet(np.ones(n))
      got = float(theory.best_conditional_risk(p, tau))
      want = _scipy_simplex_min(p, tau, rng)
      assert got == pytest.approx(want, abs=1e-6, rel=1e-6)


def test_complete_best_risk_notes_values():
  # docs/math.md (5.3), p = (.5, .3, .2).
  p = jnp.asarray([0.5, 0.3, 0.2])
  got = [float(theory.best_conditional_risk(p, t))
         for t in [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]]
  np.testing.assert_allclose(got, [1.897, 1.385, 1.030, 0.767, 0.5, 0.25],
                             atol=6e-4)
  # τ = 0: (Σ sqrt p)² − 1; τ = 1: entropy.
  assert math.isclose(got[0], np.sum(np.sqrt(p)) ** 2 - 1, rel_tol=1e-12)
  assert math.isclose(got[2], -np.sum(p * np.log(p)), rel_tol=1e-12)


def test_complete_best_risk_continuous_at_one_and_two():
  p = jnp.asarray([0.6, 0.25, 0.1, 0.05])
  for pivot in [1.0, 2.0]:
    at = float(theory.best_conditional_risk(p, pivot))
    for eps in [1e-4, 1e-7, 1e-10]:
      for side in [-1, 1]:
        near = float(theory.best_conditional_risk(p, pivot + side * eps))
        assert near == pytest.approx(at, rel=20 * eps + 1e-12)


def test_complete_best_risk_handles_zero_probabilities():
  p = jnp.asarray([0.7, 0.3, 0.0, 0.0])
  q = jnp.asarray([0.7, 0.3])
  for tau in TAUS:
    assert float(theory.best_conditional_risk(p, tau)) == pytest.approx(
        float(theory.best_conditional_risk(q, tau)), rel=1e-12)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.slow
def test_bounded_best_risk_matches_scipy_box_multistart(tau):
  rng = np.random.default_rng(100 + int(10 * tau))
  for n, bound in [(2, 0.3), (3, 1.0), (5, 0.5), (5, 2.0), (8, 1.5)]:
    p = rng.dirichlet(np.ones(n) * rng.choice([0.3, 1.0, 3.0]))
    sol = theory.solve_score_bounded(p, tau, bound)
    want = _scipy_box_min(p, tau, bound, rng)
    # Exact solver: never above SciPy's best local optimum, and equal to it.
    assert float(sol.value) <= want + 1e-10
    assert float(sol.value) == pytest.approx(want, abs=1e-6, rel=1e-6)
    assert np.all(np.abs(np.asarray(sol.scores)) <= bound + 1e-12)
    assert float(sol.value) == pytest.approx(
        _np_risk_of_scores(np.asarray(sol.scores), p, tau), rel=1e-12)
    assert float(sol.kkt_residual) < 1e-6
    assert float(sol.duality_gap) < 1e-8


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.slow
def test_frank_wolfe_gap_bounds_the_suboptimality_of_any_point(n):
  rng = np.random.default_rng(7 + n)
  m = 300
  taus = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0], size=m)
  bounds_ = rng.choice([0.2, 1.0, 3.0], size=m)
  probs = rng.dirichlet(np.ones(n), size=m)
  # Random feasible points, some of them close to the optimum.
  exact = theory.solve_score_bounded(probs, taus, bounds_)
  s = rng.uniform(-1, 1, (m, n)) * bounds_[:, None]
  mix = rng.uniform(0, 1, (m, 1)) ** 4
  s = mix * s + (1 - mix) * np.asarray(exact.scores)
  _, gap = theory.score_bounded_certificate(s, probs, taus, bounds_)
  risks = np.array([_np_risk_of_scores(s[i], probs[i], taus[i])
                    for i in range(m)])
  assert np.all(risks - np.asarray(exact.value) <= np.asarray(gap) + 1e-10)


@pytest.mark.slow
def test_bounded_is_above_complete_and_converges_as_bound_grows():
  rng = np.random.default_rng(3)
  bounds_grid = [0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
  for tau in TAUS:
    p = rng.dirichlet(np.ones(5))
    complete = float(theory.best_conditional_risk(p, tau))
    values = [float(theory.best_conditional_risk(p, tau, b))
              for b in bounds_grid]
    assert all(v >= complete - 1e-12 for v in values)
    assert np.all(np.diff(values) <= 1e-12)
    # Full support, τ < 2: equal once Λ ≥ (a/2)·log(p_max/p_min); τ ≥ 2: the
    # vertex value tends to (1 − p_max)/(τ − 1) like e^{−2Λ}.
    assert values[-1] == pytest.approx(complete, abs=1e-9)


@pytest.mark.slow
def test_deterministic_closed_form_matches_solver():
  for n in [2, 3, 10]:
    for tau in TAUS:
      for bound in [0.1, 1.0, 3.0]:
        p = np.zeros(n)
        p[n // 2] = 1.0
        got = float(theory.best_conditional_risk(p, tau, bound))
        want = float(theory.deterministic_best_conditional_risk(tau, n, bound))
        # Closed form Φ^τ((n−1)e^{−2Λ}) written out (docs/math.md (5.11)).
        u = (n - 1) * math.exp(-2 * bound)
        direct = (math.log1p(u) if tau == 1 else
                  ((1 + u) ** (1 - tau) - 1) / (1 - tau))
        assert got == pytest.approx(want, rel=1e-10)
        assert want == pytest.approx(direct, rel=1e-10)


@jax.jit
def _best_risk_over_tau_grid(p, bound):
  taus = jnp.linspace(0.0, 4.0, 41)
  complete = jax.vmap(lambda t: theory.best_conditional_risk(p, t))(taus)
  bounded = jax.vmap(lambda t: theory.best_conditional_risk(p, t, bound))(
      taus)
  return complete, bounded


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([2, 3, 6]),
       bound=st.sampled_from([0.2, 1.0, 3.0]))
@pytest.mark.slow
def test_best_risk_is_non_increasing_in_tau(seed, n, bound):
  p = np.random.default_rng(seed).dirichlet(np.ones(n) * 0.5)
  p = p / p.sum()
  for values in _best_risk_over_tau_grid(p, bound):
    assert np.all(np.diff(np.asarray(values)) <= 1e-10)


@pytest.mark.slow
def test_vmap_over_probs_tau_and_bound_together():
  rng = np.random.default_rng(11)
  m, n = 24, 6
  probs = rng.dirichlet(np.ones(n), size=m)
  taus = rng.choice(TAUS, size=m)
  bounds_ = rng.uniform(0.05, 4.0, size=m)
  batched = jax.jit(jax.vmap(theory.best_conditional_risk))(
      probs, taus, bounds_)
  family_batched = jax.vmap(
      lambda p, t, fam: theory.best_conditional_risk(p, t, family=fam))(
          probs, taus, theory.ScoreBoundedFamily(jnp.asarray(bounds_)))
  loop = [float(theory.best_conditional_risk(probs[i], taus[i], bounds_[i]))
          for i in range(m)]
  np.testing.assert_allclose(batched, loop, rtol=1e-12)
  np.testing.assert_allclose(family_batched, loop, rtol=1e-12)
  # Batched call without vmap: same values.
  np.testing.assert_allclose(
      theory.best_conditional_risk(probs, taus, bounds_), loop, rtol=1e-12)


@pytest.mark.slow
def test_generic_projected_gradient_agrees_with_exact_solver():
  rng = np.random.default_rng(5)
  m, n = 16, 5
  probs = rng.dirichlet(np.ones(n), size=m)
  taus = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0], size=m)
  bound = 1.0
  family = theory.ScoreBoundedFamily(bound)
  generic = theory.projected_gradient_solve(probs, taus, family,
                                            num_steps=400)
  exact = theory.solve_score_bounded(probs, taus, bound)
  assert np.all(np.asarray(generic.value) >= np.asarray(exact.value) - 1e-12)
  np.testing.assert_allclose(generic.value, exact.value, atol=1e-7)
  # Complete family: the generic solver approaches the closed form from above.
  complete = theory.projected_gradient_solve(probs[:4], 1.0,
                                             theory.CompleteFamily())
  np.testing.assert_allclose(complete.value,
                             theory.best_conditional_risk(probs[:4], 1.0),
                             atol=1e-9)


@pytest.mark.slow
def test_new_family_through_projection_only_matches_scipy():
  # L2BallFamily (linear scorers with a norm bound) only defines the
  # projection; the generic solver gives C* (global for τ ≤ 1: convex).
  rng = np.random.default_rng(21)
  n, m, radius = 4, 6, 1.5
  probs = rng.dirichlet(np.ones(n), size=m)
  taus = np.asarray([0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
  family = theory.L2BallFamily(radius)
  got = np.asarray(theory.best_conditional_risk(probs, taus, family=family))
  # vmap over the family's leaf works as for the box family.
  radii = jnp.full((m,), radius)
  vmapped = jax.vmap(lambda p, t, r: theory.best_conditional_risk(
      p, t, family=theory.L2BallFamily(r)))(probs, taus, radii)
  np.testing.assert_allclose(vmapped, got, rtol=1e-10)
  for i in range(m):
    best = np.inf
    for _ in range(4):
      res = optimize.minimize(
          _np_risk_of_scores, rng.normal(size=n) * 0.3,
          args=(probs[i], taus[i]), method="SLSQP",
          constraints=[{"type": "ineq",
                        "fun": lambda s: radius**2 - np.sum(s * s)}],
          options={"ftol": 1e-15, "maxiter": 500})
      best = min(best, float(res.fun))
    assert got[i] == pytest.approx(best, abs=1e-6)
    # Box ⊂ ball ⊂ all: C*(box of side r/√n) ≥ C*(ball) ≥ C*(complete).
    assert got[i] <= float(theory.best_conditional_risk(
        probs[i], taus[i], radius / np.sqrt(n))) + 1e-9
    assert got[i] >= float(theory.best_conditional_risk(
        probs[i], taus[i])) - 1e-12


@pytest.mark.slow
def test_predicted_class_candidates_match_scipy_constrained_minimum():
  # inf{C_τ(s, p) : s_1 ≥ s_j} by SLSQP on the simplex with q_1 ≥ q_j.
  rng = np.random.default_rng(9)
  for tau in [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]:
    for n in [2, 3, 5]:
      p = rng.dirichlet(np.ones(n))
      lo = 1e-12 if tau <= 1 else 0.0
      best = np.inf
      for k in range(8):
        x0 = rng.dirichlet(np.ones(n)) if k else np.ones(n) / n
        cons = [{"type": "eq", "fun": lambda q: q.sum() - 1}] + [
            {"type": "ineq", "fun": lambda q, j=j: q[1] - q[j]}
            for j in range(n) if j != 1]
        res = optimize.minimize(
            lambda q, p=p, tau=tau: np.sum(
                p * _np_loss_of_q(np.maximum(q, 1e-300), tau)),
            x0, method="SLSQP", bounds=[(lo, 1.0)] * n, constraints=cons,
            options={"ftol": 1e-15, "maxiter": 500})
        q = np.clip(res.x, lo, None)
        if q[1] >= q.max() - 1e-7:
          best = min(best, float(np.sum(p * _np_loss_of_q(
              np.maximum(q / q.sum(), 1e-300), tau))))
      got = float(theory.min_surrogate_regret_given_prediction(
          jnp.asarray(p), jnp.asarray(tau))) + float(
              theory.best_conditional_risk(p, tau))
      assert got <= best + 1e-9
      assert got == pytest.approx(best, abs=1e-6)


def test_conditional_regret_and_zero_one_regret():
  p = jnp.asarray([0.5, 0.3, 0.2])
  s = jnp.asarray([0.0, 1.0, -1.0])
  assert float(theory.zero_one_conditional_regret(s, p)) == pytest.approx(0.2)
  # Tie between classes 0 and 1: lowest index is predicted.
  assert float(theory.zero_one_conditional_regret(
      jnp.asarray([1.0, 1.0, 0.0]), p)) == 0.0
  assert float(theory.zero_one_conditional_regret(
      jnp.asarray([0.0, 1.0, 1.0]), p)) == pytest.approx(0.2)
  for tau in TAUS:
    regret = float(theory.conditional_regret(s, p, tau))
    assert regret == pytest.approx(
        _np_risk_of_scores(np.asarray(s), np.asarray(p), tau) -
        float(theory.best_conditional_risk(p, tau)), rel=1e-12)
    assert regret >= 0
    assert float(theory.conditional_regret(jnp.clip(s, -0.5, 0.5), p, tau,
                                           0.5)) >= -1e-12


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.best_conditional_risk([0.5, -0.1, 0.6], 1.0),
         "non-negative"),
        (lambda: theory.best_conditional_risk([0.5, 0.6], 1.0),
         "sum to 1"),
        (lambda: theory.best_conditional_risk([0.5, 0.5], -1.0), "tau"),
        (lambda: theory.best_conditional_risk([0.5, 0.5], 1.0, 0.0),
         "score_bound"),
        (lambda: theory.best_conditional_risk([0.5, 0.5], 1.0, -2.0),
         "score_bound"),
        (lambda: theory.best_conditional_risk(
            [0.5, 0.5], 1.0, family=theory.ScoreBoundedFamily(-1.0)),
         "score_bound"),
        (lambda: theory.best_conditional_risk(
            [0.5, 0.5], 1.0, 1.0, family=theory.CompleteFamily()),
         "either score_bound or family"),
        (lambda: theory.conditional_regret([0.0, 1.0], [0.2, 0.9], 1.0),
         "sum to 1"),
        (lambda: theory.solve_score_bounded([0.5, 0.5], 1.0, 0.0),
         "score_bound"),
    ],
)
def test_bad_input_raises_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.slow
def test_large_batches_solved_in_chunks_equal_per_point_solves():
  """Batches above the CPU chunk size (lax.map path) give the vmapped values,
  minimisers and certificates, for a 2-D batch shape that is no multiple of
  the chunk."""
  from compsum_jax.theory import families

  rng = np.random.default_rng(12)
  shape, n = (3, families._CPU_CHUNK // 2 + 7), 5  # noqa: SLF001
  probs = rng.dirichlet(np.full(n, 0.7), size=shape)
  taus = rng.uniform(0.0, 3.0, size=shape)
  bounds_ = rng.uniform(0.05, 4.0, size=shape)
  chunked = theory.solve_score_bounded(probs, taus, bounds_)
  flat = jax.jit(jax.vmap(theory.solve_score_bounded))(
      probs.reshape(-1, n), taus.reshape(-1), bounds_.reshape(-1))
  assert chunked.value.shape == shape
  assert chunked.scores.shape == shape + (n,)
  for got, want in zip(chunked, flat, strict=True):
    np.testing.assert_allclose(np.reshape(got, np.shape(want)), want,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 16])
@pytest.mark.slow
def test_pruned_candidate_set_equals_the_full_enumeration(n):
  """The solver evaluates the risk of the two-level candidates and the few
  mixed ones closest to the optimality conditions only; it must find the
  value of the full enumeration, also with tied and zero probabilities,
  τ at and around 1 and 2, and Λ from 10⁻³ to 20."""
  import functools

  from compsum_jax.theory import families

  rng = np.random.default_rng(40 + n)
  size = 4000
  alpha = rng.choice([0.05, 0.2, 1.0, 5.0, 50.0], size=size)
  probs = np.stack([rng.dirichlet(np.full(n, a)) for a in alpha])
  quarter = size // 4
  probs[:quarter, : max(1, n // 2)] = probs[:quarter, :1]  # ties at the top
  probs[quarter:2 * quarter, -max(1, n // 3):] = 0.0  # zero probabilities
  probs[2 * quarter:2 * quarter + 20] = 1.0  # uniform
  probs /= probs.sum(-1, keepdims=True)
  taus = np.where(rng.random(size) < 0.4,
                  rng.choice([0.0, 0.5, 1.0, 1.5, 1.999, 2.0, 2.001, 3.0],
                             size=size),
                  rng.uniform(0.0, 3.0, size))
  bounds_ = np.exp(rng.uniform(np.log(1e-3), np.log(20.0), size))
  args = (jnp.asarray(probs), jnp.asarray(taus), jnp.asarray(bounds_))
  pruned = jax.jit(jax.vmap(families._solve_one))(*args)  # noqa: SLF001
  full = jax.jit(jax.vmap(functools.partial(
      families._solve_one, keep_mixed=None)))(*args)  # noqa: SLF001
  assert np.all(np.isfinite(pruned.value))
  np.testing.assert_allclose(pruned.value, full.value, rtol=1e-12,
                             atol=1e-13)
