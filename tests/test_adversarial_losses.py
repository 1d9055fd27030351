"""Adversarial objectives (compsum_jax.losses.adversarial) vs NumPy float64."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from compsum_jax import attacks, losses
from compsum_jax.losses import adversarial as adv

TAUS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


def _problem(seed, batch=16, n=6, scale=2.0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(batch, n)) * scale
  z_adv = z + rng.normal(size=(batch, n)) * scale * 0.5
  y = rng.integers(0, n, size=batch)
  return z, z_adv, y


# --- independent float64 references ------------------------------------------


def _np_log_softmax(z):
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _np_comp_sum(z, y, tau):
  """Φ^τ(Σ_{y'≠y} e^{z_{y'} − z_y}), the definition (docs/math.md (2.3))."""
  zy = np.take_along_axis(z, y[:, None], -1)
  mask = np.arange(z.shape[-1])[None] != y[:, None]
  u = np.sum(np.where(mask, np.exp(z - zy), 0.0), -1)
  if tau == 1.0:
    return np.log1p(u)
  return ((1.0 + u) ** (1.0 - tau) - 1.0) / (1.0 - tau)


def _np_delta_bar(z, y):
  """Δ̄(z, y) = (z_1 − z_y, …, z_n − z_y)."""
  return z - np.take_along_axis(z, y[:, None], -1)


def _np_smooth(z_adv, z, y):
  """‖Δ̄(z', y) − Δ̄(z, y)‖₂ written from the definition (not via d − d_y)."""
  return np.linalg.norm(_np_delta_bar(z_adv, y) - _np_delta_bar(z, y), axis=-1)


def _np_adv_comp_sum(z, z_adv, y, tau, nu, rho):
  return (_np_comp_sum(z / rho, y, tau)
          + nu * _np_smooth(z_adv / rho, z / rho, y))


def _np_trades(z, z_adv, y, beta):
  """CE(z, y) + β Σ p (log p − log q), p = softmax z, q = softmax z'."""
  log_p, log_q = _np_log_softmax(z), _np_log_softmax(z_adv)
  ce = -np.take_along_axis(log_p, y[:, None], -1)[:, 0]
  return ce + beta * np.sum(np.exp(log_p) * (log_p - log_q), -1)


def _np_grad(f, x, h=1e-6):
  """Central finite differences of the scalar f at x (float64)."""
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (f(x + e) - f(x - e)) / (2 * h)
  return g


# --- values -------------------------------------------------------------------


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("nu,rho", [(0.0, 1.0), (1.0, 1.0), (6.0, 0.5),
                                    (0.3, 2.0)])
def test_adv_comp_sum_value_matches_float64_reference(tau, nu, rho):
  z, z_adv, y = _problem(int(tau * 10 + nu * 7))
  got = adv.adv_comp_sum_loss(jnp.float32(z), jnp.float32(z_adv), y, tau, nu,
                              rho)
  want = _np_adv_comp_sum(z, z_adv, y, tau, nu, rho)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
def test_trades_value_matches_float64_reference(beta):
  z, z_adv, y = _problem(3)
  got = adv.trades_loss(jnp.float32(z), jnp.float32(z_adv), y, beta)
  np.testing.assert_allclose(got, _np_trades(z, z_adv, y, beta), rtol=2e-5,
                             atol=2e-5)


def test_pgd_at_is_cross_entropy_of_adversarial_logits():
  z, z_adv, y = _problem(4)
  np.testing.assert_allclose(adv.pgd_at_loss(jnp.float32(z_adv), y),
                             _np_comp_sum(z_adv, y, 1.0), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("tau", [0.0, 1.0, 2.0])
def test_nu_zero_equals_comp_sum_training_loss_and_gradient(tau):
  z, z_adv, y = _problem(5)
  z, z_adv = jnp.float32(z), jnp.float32(z_adv)

  def mean_adv(z):
    return jnp.mean(adv.adv_comp_sum_loss(z, z_adv, y, tau, 0.0))

  def mean_plain(z):
    return jnp.mean(losses.comp_sum_loss(z, y, tau))

  np.testing.assert_allclose(mean_adv(z), mean_plain(z), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(mean_adv)(z), jax.grad(mean_plain)(z),
                             rtol=1e-6, atol=1e-7)


# --- gradients vs finite differences ------------------------------------------


@pytest.mark.parametrize("tau,nu,rho", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.7),
                                        (1.5, 6.0, 1.0), (0.0, 0.5, 2.0)])
def test_adv_comp_sum_gradient_in_both_logits_matches_finite_differences(
    tau, nu, rho):
  z, z_adv, y = _problem(6, batch=4, n=5)

  def f_np(zz, zza):
    return float(np.sum(_np_adv_comp_sum(zz, zza, y, tau, nu, rho)))

  g_clean, g_adv = jax.grad(
      lambda a, b: jnp.sum(adv.adv_comp_sum_loss(a, b, y, tau, nu, rho)),
      argnums=(0, 1))(jnp.float32(z), jnp.float32(z_adv))
  np.testing.assert_allclose(g_clean, _np_grad(lambda a: f_np(a, z_adv), z),
                             rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(g_adv, _np_grad(lambda b: f_np(z, b), z_adv),
                             rtol=1e-3, atol=1e-4)


def test_trades_gradient_flows_through_clean_softmax():
  """The reference formula with p = softmax z NOT detached (Zhang et al.)."""
  z, z_adv, y = _problem(7, batch=4, n=5)
  beta = 6.0
  g_clean, g_adv = jax.grad(
      lambda a, b: jnp.sum(adv.trades_loss(a, b, y, beta)),
      argnums=(0, 1))(jnp.float32(z), jnp.float32(z_adv))
  fd_clean = _np_grad(lambda a: float(np.sum(_np_trades(a, z_adv, y, beta))),
                      z)
  fd_adv = _np_grad(lambda b: float(np.sum(_np_trades(z, b, y, beta))), z_adv)
  np.testing.assert_allclose(g_clean, fd_clean, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(g_adv, fd_adv, rtol=1e-3, atol=1e-4)
  # A detached clean softmax would give only the CE gradient in z: different.
  fd_ce_only = _np_grad(lambda a: float(np.sum(_np_comp_sum(a, y, 1.0))), z)
  assert np.max(np.abs(fd_clean - fd_ce_only)) > 1e-2
  np.testing.assert_allclose(
      g_clean, fd_ce_only + beta * _np_grad(
          lambda a: float(np.sum(_np_trades(a, z_adv, y, 1.0)
                                 - _np_comp_sum(a, y, 1.0))), z),
      rtol=1e-3, atol=1e-4)


def test_smooth_term_gradient_at_zero_is_finite_and_zero():
  z = jnp.float32(np.random.default_rng(0).normal(size=(3, 4)))
  y = jnp.array([0, 1, 2])
  # z' = z (e.g. x' = x): v = 0, the term is 0 and its subgradient 0, not NaN.
  value, grad = jax.value_and_grad(
      lambda b: jnp.sum(adv.smooth_adversarial_term(b, z, y)))(z)
  assert float(value) == 0.0
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) == 0.0)


# --- agreement with the attacks room (inner max uses the same formula) --------


def test_smooth_term_agrees_with_attack_objective():
  z, z_adv, y = _problem(8)
  z, z_adv = jnp.float32(z), jnp.float32(z_adv)
  eps = attacks.objectives.SMOOTH_NORM_EPS
  np.testing.assert_allclose(
      adv.smooth_adversarial_term(z_adv, z, y, norm_eps=eps),
      attacks.smooth_comp_sum_term(z_adv, y, z), rtol=1e-6)
  # Gradients in z' agree too (the attack holds z constant).
  g_loss = jax.grad(lambda b: jnp.sum(
      adv.smooth_adversarial_term(b, z, y, norm_eps=eps)))(z_adv)
  g_attack = jax.grad(lambda b: jnp.sum(
      attacks.smooth_comp_sum_term(b, y, z)))(z_adv)
  np.testing.assert_allclose(g_loss, g_attack, rtol=1e-5, atol=1e-7)


def test_trades_kl_agrees_with_attack_objective():
  z, z_adv, y = _problem(9)
  z, z_adv = jnp.float32(z), jnp.float32(z_adv)
  np.testing.assert_allclose(adv.kl_divergence_from_logits(z, z_adv),
                             attacks.kl_to_clean(z_adv, y, z), rtol=1e-5,
                             atol=1e-6)


# --- properties ---------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tau=st.sampled_from([1.0, 1.3, 2.0,
                                                            3.0]),
       rho=st.floats(0.2, 5.0), scale=st.floats(0.1, 8.0))
def test_adv_comp_sum_bounds_rho_margin_comp_sum_at_the_adversarial_point(
    seed, tau, rho, scale):
  """docs/math.md (10.3) steps 1–3, pointwise in the logits, τ ≥ 1, ν = 1.

  Φ^τ(Σ_{y'≠y} Φ_ρ(z'_y − z'_{y'})) ≤ ℓ_τ(z/ρ, y) + ‖Δ̄(z'/ρ) − Δ̄(z/ρ)‖₂,
  with Φ_ρ(u) = min(1, max(0, 1 − u/ρ)): so L̃ evaluated at the attack's x'
  upper-bounds the adversarial ρ-margin comp-sum loss at x'.
  """
  z, z_adv, y = _problem(seed, batch=8, n=5, scale=scale)
  zy = np.take_along_axis(z_adv, y[:, None], -1)
  margin_terms = np.clip(1.0 - (zy - z_adv) / rho, 0.0, 1.0)
  mask = np.arange(5)[None] != y[:, None]
  u = np.sum(np.where(mask, margin_terms, 0.0), -1)
  target = (np.log1p(u) if tau == 1.0
            else ((1.0 + u) ** (1.0 - tau) - 1.0) / (1.0 - tau))
  bound = np.asarray(adv.adv_comp_sum_loss(jnp.float32(z), jnp.float32(z_adv),
                                           y, tau, 1.0, rho), np.float64)
  assert np.all(target <= bound + 1e-4 * (1 + np.abs(bound)))


def test_bound_needs_tau_at_least_one():
  """For τ < 1 the Lipschitz step (docs/math.md (10.3), step 4) fails."""
  z = np.array([[0.0, 5.0, 5.0]])
  z_adv = np.array([[0.0, 6.0, 6.0]])
  y = np.array([0])
  tau = 0.0
  # ℓ_0(z'/ρ) = Σ e^{z'_{y'} − z'_y} jumps by 2(e^6 − e^5) ≈ 510 while the
  # smooth term is only ‖(0, 1, 1)‖ = √2.
  lhs = _np_comp_sum(z_adv, y, tau)
  rhs = np.asarray(adv.adv_comp_sum_loss(jnp.float32(z), jnp.float32(z_adv), y,
                                         tau, 1.0, 1.0))
  assert lhs[0] > rhs[0] + 100


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c1=st.floats(-50, 50),
       c2=st.floats(-50, 50), tau=st.sampled_from(TAUS))
def test_objectives_invariant_to_shifting_all_logits(seed, c1, c2, tau):
  z, z_adv, y = _problem(seed, batch=6, n=4)
  base_acs = adv.adv_comp_sum_loss(jnp.float32(z), jnp.float32(z_adv), y, tau,
                                   2.0)
  shifted_acs = adv.adv_comp_sum_loss(jnp.float32(z + c1),
                                      jnp.float32(z_adv + c2), y, tau, 2.0)
  np.testing.assert_allclose(shifted_acs, base_acs, rtol=1e-3, atol=2e-3)
  base_tr = adv.trades_loss(jnp.float32(z), jnp.float32(z_adv), y)
  shifted_tr = adv.trades_loss(jnp.float32(z + c1), jnp.float32(z_adv + c2), y)
  np.testing.assert_allclose(shifted_tr, base_tr, rtol=1e-3, atol=2e-3)


def test_rho_is_a_temperature():
  """L(z, z'; ρ) = L(z/ρ, z'/ρ; 1)."""
  z, z_adv, y = _problem(10)
  rho = 0.37
  np.testing.assert_allclose(
      adv.adv_comp_sum_loss(jnp.float32(z), jnp.float32(z_adv), y, 1.0, 3.0,
                            rho),
      adv.adv_comp_sum_loss(jnp.float32(z / rho), jnp.float32(z_adv / rho), y,
                            1.0, 3.0, 1.0), rtol=1e-5)


def test_hyperparameters_may_be_traced_and_vmapped():
  z, z_adv, y = _problem(11)
  z, z_adv = jnp.float32(z), jnp.float32(z_adv)
  taus = jnp.array([0.0, 1.0, 2.0])
  nus = jnp.array([0.0, 1.0, 6.0])
  batched = jax.jit(jax.vmap(
      lambda t, n: adv.adv_comp_sum_loss(z, z_adv, y, t, n)))(taus, nus)
  for k in range(3):
    np.testing.assert_allclose(
        batched[k], _np_adv_comp_sum(np.float64(z), np.float64(z_adv), y,
                                     float(taus[k]), float(nus[k]), 1.0),
        rtol=2e-5, atol=2e-5)


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"tau": -1.0}, "tau"),
    ({"nu": -0.5}, "nu"),
    ({"rho": 0.0}, "rho"),
    ({"tau": float("nan")}, "tau"),
])
def test_bad_hyperparameters_raise_value_error(kwargs, match):
  z, z_adv, y = _problem(12)
  args = {"tau": 1.0, "nu": 1.0, "rho": 1.0, **kwargs}
  with pytest.raises(ValueError, match=match):
    adv.adv_comp_sum_loss(z, z_adv, y, **args)


def test_bad_shapes_and_labels_raise_value_error():
  z, z_adv, y = _problem(13)
  with pytest.raises(ValueError, match="same shape"):
    adv.trades_loss(z, z_adv[:, :3], y)
  with pytest.raises(ValueError, match="labels"):
    adv.smooth_adversarial_term(z_adv, z, y + 100)
  with pytest.raises(ValueError, match="beta"):
    adv.trades_loss(z, z_adv, y, -1.0)
  with pytest.raises(ValueError, match="at least 2 classes"):
    adv.pgd_at_loss(z[:, :1], y * 0)
