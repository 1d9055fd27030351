"""Derivatives of T_τ, Γ_τ and the score-bounded C* against finite differences.

float64 throughout. Finite differences are taken of values that the other
theory tests check against independent formulas (NumPy closed forms, SciPy);
at the kinks (τ = 0 from the right, τ = 1 for n > 2 from the left, τ = 2 from
the right, t = 1 from the left) they are one-sided, matching the documented
convention.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference
import pytest
from scipy import optimize

from compsum_jax import theory

TAUS = [0.0, 0.5, 1.0, 1.0 - 1e-6, 1.0 + 1e-6, 1.5, 2.0, 3.0]
TS = [1e-6, 1e-3, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0 - 1e-6]


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


_np_transform = numpy_reference.transform


def _np_transform_dt(t, tau, n):
  """∂T/∂t differentiated by hand from the branches (independent form)."""
  if tau >= 2.0:
    return 1.0 / ((tau - 1) * n ** (tau - 1))
  if tau == 1.0:
    return np.arctanh(t)  # d/dt ((1+t)log(1+t) + (1−t)log(1−t))/2
  e = 1.0 / (2 - tau)
  inner = ((1 + t) ** e + (1 - t) ** e) / 2
  # dA/dt = (2 − τ)·inner^{1−τ}·e·((1+t)^{e−1} − (1−t)^{e−1})/2
  d_a = inner ** (1 - tau) * ((1 + t) ** (e - 1) - (1 - t) ** (e - 1)) / 2
  if tau < 1.0:
    return -2 ** (1 - tau) / (1 - tau) * d_a
  return d_a / ((tau - 1) * n ** (tau - 1))


def _central(f, x, h):
  return (f(x + h) - f(x - h)) / (2 * h)


def _one_sided(f, x, h):
  """Second-order one-sided difference, h > 0 forward, h < 0 backward."""
  return (-3 * f(x) + 4 * f(x + h) - f(x + 2 * h)) / (2 * h)


def _grid_grad(fn, argnum, xs, taus, n):
  """∂fn/∂(argument argnum) at every (x, τ) pair, one compiled call."""
  grad = jax.jit(jax.vmap(jax.vmap(jax.grad(fn, argnums=argnum),
                                   in_axes=(0, None, None)),
                          in_axes=(None, 0, None)))
  return np.asarray(grad(jnp.asarray(xs), jnp.asarray(taus), n))


@pytest.mark.parametrize("n", [2, 10])
def test_transform_t_derivative_matches_hand_derivative(n):
  ts = np.asarray(TS)
  got_grid = _grid_grad(theory.transform, 0, ts, TAUS, n)
  for tau, got in zip(TAUS, got_grid, strict=True):
    near_one = abs(tau - 1.0) < 1e-3
    # Near τ = 1 the NumPy branches cancel; T' is smooth in τ, so compare
    # with the τ = 1 derivative (distance O(|τ − 1|·log n)).
    want = _np_transform_dt(ts, 1.0 if near_one else tau, n)
    np.testing.assert_allclose(got, want, rtol=1e-5 if near_one else 1e-9,
                               atol=1e-300, err_msg=f"tau={tau}")
    # Independent check by central differences of the NumPy value (t ≥ 0.05:
    # below, 1 − A_τ(t) cancels in the NumPy form).
    if not near_one:
      for t, g in zip(ts[2:6], got[2:6], strict=True):
        fd = _central(lambda x: _np_transform(x, tau, n), t, 1e-5 * t)  # noqa: B023
        assert g == pytest.approx(fd, rel=1e-5), (tau, t)


@pytest.mark.parametrize("n", [2, 10])
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.5, 1.9, 2.0, 3.0])
def test_transform_derivative_at_t_equal_one(tau, n):
  """T'(1) = +inf for τ ≤ 1, (2/n)^{τ−1}/(2(τ−1)) for 1 < τ < 2 (left limit)."""
  got = float(jax.grad(theory.transform)(1.0, tau, n))
  if tau <= 1.0:
    assert got == np.inf
  elif tau < 2.0:
    want = (2.0 / n) ** (tau - 1) / (2 * (tau - 1))
    assert got == pytest.approx(want, rel=1e-12)
    fd = _one_sided(lambda x: _np_transform(x, tau, n), 1.0, -1e-5)
    assert got == pytest.approx(fd, rel=1e-3)
  else:
    assert got == pytest.approx(1.0 / ((tau - 1) * n ** (tau - 1)))


def test_transform_repro_tau_one_and_a_half():
  """Issue repro: τ = 1.5, n = 10, t = 1: derivative 0.447 (was 0.189)."""
  assert float(jax.grad(theory.transform)(1.0, 1.5, 10)) == pytest.approx(
      0.2**0.5, rel=1e-12)


def _tau_step_and_kind(tau, n):
  if tau == 0.0 or tau == 2.0:
    return 1e-5, "forward"
  if tau == 1.0 and n > 2:
    return -1e-5, "backward"  # (2/n)^{(τ−1)+} has a kink: left derivative
  return 1e-5, "central"


def _fd(f, x, h, kind):
  return _central(f, x, abs(h)) if kind == "central" else _one_sided(f, x, h)


@pytest.mark.parametrize("n", [2, 10])
@pytest.mark.parametrize("tau", TAUS)
def test_transform_tau_derivative_matches_finite_differences(tau, n):
  h, kind = _tau_step_and_kind(tau, n)
  if abs(tau - 1.0) < 1e-3 and tau != 1.0 and n > 2:
    h = min(abs(h), 1e-7)  # stay on one side of the kink at τ = 1
  for t in [1e-3, 0.3, 0.9, 1.0 - 1e-6, 1.0]:
    got = float(jax.grad(theory.transform, argnums=1)(t, tau, n))
    fd = _fd(lambda x: float(theory.transform(t, x, n)), tau, h, kind)  # noqa: B023
    assert np.isfinite(got)
    assert got == pytest.approx(fd, rel=2e-4, abs=1e-10), (t, got, fd)


def _np_inverse(s, tau, n):
  """Γ_τ(s) by Brent's method on the NumPy T_τ (independent of the code)."""
  if tau >= 2.0:
    return min(1.0, (tau - 1) * n ** (tau - 1) * s)
  if s >= _np_transform(1.0, tau, n):
    return 1.0
  return optimize.brentq(lambda t: _np_transform(t, tau, n) - s, 0.0, 1.0,
                         xtol=1e-300, rtol=1e-15, maxiter=500)


@pytest.mark.parametrize("n", [2, 10])
@pytest.mark.parametrize("tau", TAUS)
def test_inverse_transform_s_derivative(tau, n):
  """dΓ/ds = 1/T'(Γ(s)) against the hand derivative and central differences."""
  for t in [1e-4, 0.05, 0.3, 0.7, 0.99]:
    s = float(theory.transform(t, tau, n))
    got = float(jax.grad(theory.inverse_transform)(s, tau, n))
    gamma = float(theory.inverse_transform(s, tau, n))
    ref_tau = 1.0 if abs(tau - 1.0) < 1e-3 else tau
    want = 1.0 / _np_transform_dt(gamma, ref_tau, n)
    assert got == pytest.approx(want, rel=1e-5 if ref_tau != tau else 1e-8)
    if ref_tau == tau and t >= 0.05:  # NumPy T_τ cancels for small t
      fd = _central(lambda x: _np_inverse(x, tau, n), s, 1e-6 * s)  # noqa: B023
      assert got == pytest.approx(fd, rel=1e-4)


def test_inverse_transform_repro():
  """Issue repro: dΓ_1/ds at s = 0.3466, n = 10 is 0.957, not 0."""
  got = float(jax.grad(lambda s: theory.inverse_transform(s, 1.0, 10))(0.3466))
  fd = _central(lambda x: _np_inverse(x, 1.0, 10), 0.3466, 1e-6)
  assert got == pytest.approx(fd, rel=1e-6)
  assert got == pytest.approx(0.957, abs=5e-4)


@pytest.mark.parametrize("n", [2, 10])
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.slow
def test_inverse_transform_tau_derivative(tau, n):
  """dΓ/dτ = −∂_τT/∂_tT against finite differences of Γ in τ."""
  h, kind = _tau_step_and_kind(tau, n)
  if abs(tau - 1.0) < 1e-3 and tau != 1.0 and n > 2:
    h = min(abs(h), 1e-7)
  for s in [1e-6, 1e-3, 0.05, 0.2]:
    if float(theory.inverse_transform(s, tau, n)) >= 1.0:
      continue
    got = float(jax.grad(theory.inverse_transform, argnums=1)(s, tau, n))
    fd = _fd(lambda x: float(theory.inverse_transform(s, x, n)), tau, h, kind)  # noqa: B023
    assert np.isfinite(got)
    assert got == pytest.approx(fd, rel=1e-4, abs=1e-9), (s, got, fd)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.slow
def test_inverse_transform_derivatives_at_the_ends(tau):
  """s = 0: dΓ/ds = 1/T'(0) (+inf for τ < 2), dΓ/dτ = 0; capped: both 0."""
  n = 10
  d_s, d_tau = jax.grad(theory.inverse_transform, argnums=(0, 1))(0.0, tau, n)
  if tau < 2.0:
    assert float(d_s) == np.inf
  else:
    assert float(d_s) == pytest.approx((tau - 1) * n ** (tau - 1))
  assert float(d_tau) == 0.0
  big = float(theory.transform(1.0, tau, n)) * 2 + 1.0
  d_s, d_tau = jax.grad(theory.inverse_transform, argnums=(0, 1))(big, tau, n)
  assert (float(d_s), float(d_tau)) == (0.0, 0.0)


def _simplex_direction(n, rng):
  v = rng.normal(size=n)
  return v - v.mean()


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("bound", [0.1, 1.0, 3.0])
@pytest.mark.slow
def test_score_bounded_best_risk_gradients(tau, bound):
  """Envelope-theorem gradients of C*(p, τ, Λ) against finite differences."""
  rng = np.random.default_rng(int(tau * 1e6) + int(bound * 10))
  for n in [3, 7]:
    p = rng.dirichlet(np.ones(n))
    value_fn = lambda p, t, b: theory.best_conditional_risk(p, t, b)  # noqa: E731
    g_p, g_tau, g_bound = jax.grad(value_fn, argnums=(0, 1, 2))(
        jnp.asarray(p), tau, bound)
    assert np.all(np.isfinite(np.asarray(g_p)))
    v = _simplex_direction(n, rng) * 0.1 * p.min()
    fd_p = _central(lambda x: float(value_fn(p + x * v, tau, bound)), 0.0,  # noqa: B023
                    1e-4)
    assert float(jnp.dot(g_p, v)) == pytest.approx(fd_p, rel=1e-5,
                                                   abs=1e-12)
    h, kind = _tau_step_and_kind(tau, 2)
    fd_tau = _fd(lambda x: float(value_fn(p, x, bound)), tau, h, kind)  # noqa: B023
    assert float(g_tau) == pytest.approx(fd_tau, rel=1e-4, abs=1e-9)
    fd_bound = _central(lambda x: float(value_fn(p, tau, x)), bound, 1e-6)  # noqa: B023
    assert float(g_bound) == pytest.approx(fd_bound, rel=1e-4, abs=1e-9)


def test_score_bounded_gradient_repro_and_zero_probability():
  """Issue repro (was NaN) and ∂C*/∂p_y = ℓ_τ(s*, y) also where p_y = 0."""
  p = jnp.array([0.5, 0.3, 0.2])
  grad = jax.grad(lambda p: theory.best_conditional_risk(p, 1.0, 0.1))(p)
  solution = theory.solve_score_bounded(p, 1.0, 0.1)
  losses = np.asarray(jax.nn.logsumexp(solution.scores) - solution.scores)
  np.testing.assert_allclose(np.asarray(grad), losses, rtol=1e-12)
  # p_3 = 0: one-sided difference along (−1, 0, +1).
  p0 = np.array([0.7, 0.3, 0.0])
  grad = jax.grad(lambda p: theory.best_conditional_risk(p, 0.5, 1.0))(
      jnp.asarray(p0))
  direction = np.array([-1.0, 0.0, 1.0])
  fd = _one_sided(lambda x: float(theory.best_conditional_risk(
      p0 + x * direction, 0.5, 1.0)), 0.0, 1e-5)
  assert float(jnp.dot(grad, direction)) == pytest.approx(fd, rel=1e-4)


@pytest.mark.slow
def test_gradients_through_vmap_and_jit():
  taus = jnp.array([0.0, 0.7, 1.0, 1.6, 2.5])
  f = jax.jit(jax.vmap(jax.grad(
      lambda tau: theory.best_conditional_risk(
          jnp.array([0.6, 0.3, 0.1]), tau, 0.5) +
      theory.inverse_transform(0.01, tau, 5))))
  assert np.all(np.isfinite(np.asarray(f(taus))))
