"""Tests of the comp-sum loss family against independent NumPy float64 formulas."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from compsum_jax import losses, validation

TAUS = [0.0, 0.3, 0.5, 0.9, 1.0, 1.2, 1.5, 1.9, 2.0, 2.5, 3.0, 5.0]


def _random_problem(seed, batch=32, n=7, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, n)) * scale
  labels = rng.integers(0, n, size=batch)
  return logits, labels


def _np_softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_sum_exp(logits, labels):
  """Σ_{y'≠y} exp(h_{y'} − h_y), float64."""
  hy = np.take_along_axis(logits, labels[:, None], -1)
  mask = np.arange(logits.shape[-1])[None] != labels[:, None]
  return np.sum(np.where(mask, np.exp(logits - hy), 0.0), -1)


def _np_phi(u, tau):
  """Φ^τ(u) textbook definition (docs/math.md (2.2)), float64."""
  if tau == 1.0:
    return np.log1p(u)
  return ((1.0 + u) ** (1.0 - tau) - 1.0) / (1.0 - tau)


# --- named members vs textbook formulas -------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_named_losses_match_textbook_formulas(seed):
  logits, labels = _random_problem(seed)
  p = _np_softmax(logits)
  py = p[np.arange(len(labels)), labels]
  l32 = jnp.asarray(logits, jnp.float32)
  np.testing.assert_allclose(losses.sum_exponential_loss(l32, labels),
                             _np_sum_exp(logits, labels), rtol=2e-5)
  np.testing.assert_allclose(
      losses.cross_entropy_loss(l32, labels),
      optax.softmax_cross_entropy_with_integer_labels(l32, labels),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.cross_entropy_loss(l32, labels),
                             -np.log(py), rtol=1e-5, atol=1e-6)
  for q in [0.1, 0.5, 0.7, 1.0]:
    np.testing.assert_allclose(
        losses.generalized_cross_entropy_loss(l32, labels, q),
        (1.0 - py**q) / q, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(losses.mean_absolute_error_loss(l32, labels),
                             1.0 - py, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_comp_sum_equals_phi_of_sum_exp_for_random_tau(seed):
  logits, labels = _random_problem(seed, scale=2.0)
  tau = float(np.random.default_rng(100 + seed).uniform(0.0, 4.0))
  expected = _np_phi(_np_sum_exp(logits, labels), tau)
  got = losses.comp_sum_loss(jnp.asarray(logits, jnp.float32), labels, tau)
  np.testing.assert_allclose(got, expected, rtol=3e-5, atol=1e-6)
  # phi_tau itself against the textbook formula.
  u = np.random.default_rng(seed).exponential(3.0, size=50)
  np.testing.assert_allclose(losses.phi_tau(jnp.asarray(u, jnp.float32), tau),
                             _np_phi(u, tau), rtol=3e-5, atol=1e-6)


def test_soft_loss_is_expectation_of_hard_losses():
  logits, _ = _random_problem(3, batch=16, n=5)
  rng = np.random.default_rng(3)
  probs = rng.dirichlet(np.ones(5), size=16)
  probs[0] = [0.0, 1.0, 0.0, 0.0, 0.0]  # a zero-probability label
  for tau in [0.0, 0.5, 1.0, 1.7, 2.0, 3.0]:
    hard = np.stack([_np_phi(_np_sum_exp(logits, np.full(16, y)), tau)
                     for y in range(5)], -1)
    expected = np.sum(probs * hard, -1)
    got = losses.comp_sum_loss_soft(jnp.asarray(logits, jnp.float32),
                                    jnp.asarray(probs, jnp.float32), tau)
    np.testing.assert_allclose(got, expected, rtol=3e-5, atol=1e-6)


def test_zero_one_loss_tie_break_lowest_index_wins():
  logits = jnp.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 5.0, 1.0],
                      [4.0, 4.0, 0.0]])
  labels = jnp.array([1, 2, 0, 0])
  # Row 0: tie between 1 and 2 → predict 1 (correct). Row 1: predict 0 (label 2
  # wrong). Row 2: predict 1 (wrong). Row 3: tie 0/1 → predict 0 (correct).
  np.testing.assert_array_equal(losses.zero_one_loss(logits, labels),
                                [0.0, 1.0, 1.0, 0.0])
  assert losses.zero_one_loss(logits, labels).dtype == jnp.float32


def test_margin_matches_numpy():
  logits, labels = _random_problem(4)
  hy = logits[np.arange(len(labels)), labels]
  others = logits.copy()
  others[np.arange(len(labels)), labels] = -np.inf
  np.testing.assert_allclose(
      losses.margin(jnp.asarray(logits, jnp.float32), labels),
      hy - others.max(-1), rtol=1e-5, atol=1e-5)


def test_low_precision_inputs_compute_in_float32():
  logits, labels = _random_problem(5, n=4)
  ref = losses.comp_sum_loss(jnp.asarray(logits, jnp.float32), labels, 0.5)
  for dtype in [jnp.float16, jnp.bfloat16]:
    low = jnp.asarray(logits, dtype)
    out = losses.comp_sum_loss(low, labels, 0.5)
    assert out.dtype == jnp.float32
    # Same as float32 on the rounded inputs.
    np.testing.assert_allclose(
        out, losses.comp_sum_loss(low.astype(jnp.float32), labels, 0.5),
        rtol=1e-6)
    np.testing.assert_allclose(out, ref, rtol=5e-2, atol=5e-2)
  assert losses.zero_one_loss(jnp.asarray(logits, jnp.bfloat16),
                              labels).dtype == jnp.float32


# --- τ = 1: continuity and finite gradients ----------------------------------


def test_continuity_across_tau_one():
  logits, labels = _random_problem(6, scale=4.0)
  l32 = jnp.asarray(logits, jnp.float32)
  at_one = losses.comp_sum_loss(l32, labels, 1.0)
  for delta in [1e-7, 1e-5, 1e-3]:
    for tau in [1.0 - delta, 1.0 + delta]:
      near = losses.comp_sum_loss(l32, labels, tau)
      # |ℓ_τ − CE| ≈ |τ−1|·CE²/2 by the Taylor expansion in τ.
      ce = np.asarray(at_one, np.float64)
      bound = delta * ce**2 + 1e-6 * (1 + ce)
      assert np.all(np.abs(np.asarray(near) - ce) <= bound)


@pytest.mark.parametrize("tau", [1.0, 1.0 - 1e-7, 1.0 + 1e-7, 1.0 - 1e-3])
@pytest.mark.slow
def test_gradients_finite_and_continuous_at_tau_one(tau):
  logits, labels = _random_problem(7, scale=5.0)
  l32 = jnp.asarray(logits, jnp.float32)
  f = lambda lg, t: jnp.sum(losses.comp_sum_loss(lg, labels, t))
  g_logits, g_tau = jax.grad(f, argnums=(0, 1))(l32, jnp.float32(tau))
  assert np.all(np.isfinite(g_logits)) and np.isfinite(g_tau)
  # d ℓ_τ/dτ at τ = 1 is −CE²/2 (Taylor: ℓ_τ = CE − (τ−1)CE²/2 + ...), float64.
  p = _np_softmax(logits)
  ce = -np.log(p[np.arange(len(labels)), labels])
  expected_dtau = np.sum(-(ce**2) / 2 + (tau - 1) * ce**3 / 3)
  np.testing.assert_allclose(g_tau, expected_dtau, rtol=2e-3)
  # d ℓ/d logits = s_y^{τ−1} (softmax − e_y) (chain rule on expm1 form).
  onehot = np.eye(logits.shape[1])[labels]
  expected_dlogits = (np.exp((1 - tau) * ce)[:, None]) * (p - onehot)
  np.testing.assert_allclose(g_logits, expected_dlogits, rtol=1e-4, atol=1e-6)


# One jitted function for every τ (τ and the labels are arguments): check_grads
# then compiles a few whole programs once, not every primitive op per test.
_comp_sum_loss_jit = jax.jit(losses.comp_sum_loss)


@pytest.mark.parametrize("tau", [0.01, 0.5, 0.97, 1.0, 1.05, 1.5, 2.0, 3.0])
def test_check_grads_logits_and_tau(tau):
  logits, labels = _random_problem(8, batch=4, n=5, scale=1.0)
  with jax.enable_x64(True):
    lg = jnp.asarray(logits, jnp.float64)
    f = lambda lg, t: _comp_sum_loss_jit(lg, labels, t)
    check_grads(f, (lg, jnp.float64(tau)), order=2, modes=("fwd", "rev"),
                atol=1e-5, rtol=1e-5)


# --- extreme logits -----------------------------------------------------------


def _extreme_logits(seed):
  rng = np.random.default_rng(seed)
  logits = rng.uniform(-1e4, 1e4, size=(64, 10)).astype(np.float32)
  labels = rng.integers(0, 10, size=64)
  # Include confident-correct and confident-wrong rows.
  logits[0] = -1e4
  logits[0, labels[0]] = 1e4
  logits[1] = 1e4
  logits[1, labels[1]] = -1e4
  return logits, labels


@pytest.mark.parametrize("tau", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.slow
def test_extreme_logits_finite_values_and_gradients(tau):
  logits, labels = _extreme_logits(0)
  f = lambda lg: jnp.sum(losses.comp_sum_loss(lg, labels, tau))
  vals = losses.comp_sum_loss(jnp.asarray(logits), labels, tau)
  grads = jax.grad(f)(jnp.asarray(logits))
  assert np.all(np.isfinite(vals)) and np.all(np.isfinite(grads))
  # Against float64 (log-space) reference.
  l64 = logits.astype(np.float64)
  lse = np.log(np.sum(np.exp(l64 - l64.max(-1, keepdims=True)), -1)) + l64.max(-1)
  ce = lse - l64[np.arange(64), labels]
  ref = ce if tau == 1.0 else np.expm1((1 - tau) * ce) / (1 - tau)
  np.testing.assert_allclose(vals, ref, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("tau", [0.0, 0.5, 0.9, 0.999])
def test_extreme_logits_tau_below_one_inf_only_on_overflow(tau):
  logits, labels = _extreme_logits(1)
  vals = np.asarray(losses.comp_sum_loss(jnp.asarray(logits), labels, tau))
  assert not np.any(np.isnan(vals))
  l64 = logits.astype(np.float64)
  lse = np.log(np.sum(np.exp(l64 - l64.max(-1, keepdims=True)), -1)) + l64.max(-1)
  ce = lse - l64[np.arange(64), labels]
  # log of the exact value: log(expm1(a·CE)/a) ≈ a·CE − log a for large a·CE.
  a = 1.0 - tau
  with np.errstate(over="ignore"):
    log_exact = np.where(a * ce > 30, a * ce - np.log(a),
                         np.log(np.expm1(a * ce) / a + 1e-300))
  fmax = np.log(np.finfo(np.float32).max)
  overflow = log_exact > fmax + 1e-3
  assert np.all(np.isinf(vals[overflow]))
  fits = log_exact < fmax - 1e-3
  assert np.all(np.isfinite(vals[fits]))
  ok = fits & (log_exact > -50)
  np.testing.assert_allclose(np.log(np.maximum(vals[ok], 1e-30)),
                             log_exact[ok], atol=2e-3)
  # Gradients are never NaN where the value is finite.
  g = jax.grad(lambda lg: jnp.sum(jnp.where(
      jnp.asarray(fits), losses.comp_sum_loss(lg, labels, tau), 0.0)))(
          jnp.asarray(logits))
  assert not np.any(np.isnan(np.asarray(g)[fits]))


# --- transformations ---------------------------------------------------------


@pytest.mark.slow
def test_jit_vmap_grad_agree_with_plain_call():
  logits, labels = _random_problem(9, batch=8, n=6)
  l32 = jnp.asarray(logits, jnp.float32)
  taus = jnp.asarray([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], jnp.float32)
  plain = np.stack([losses.comp_sum_loss(l32, labels, float(t)) for t in taus])
  np.testing.assert_allclose(
      jax.jit(jax.vmap(lambda t: losses.comp_sum_loss(l32, labels, t)))(taus),
      plain, rtol=1e-6, atol=1e-7)
  jitted = jax.jit(losses.comp_sum_loss)
  for t in taus:
    np.testing.assert_allclose(jitted(l32, labels, t),
                               losses.comp_sum_loss(l32, labels, float(t)),
                               rtol=1e-6, atol=1e-7)
  per_example = jax.vmap(lambda lg, y: losses.comp_sum_loss(lg, y, 0.5))(
      l32, jnp.asarray(labels))
  np.testing.assert_allclose(per_example,
                             losses.comp_sum_loss(l32, labels, 0.5), rtol=1e-6)
  # grad of the sum equals stacked per-example grads.
  f = lambda lg, y: losses.comp_sum_loss(lg, y, 1.5)
  g_sum = jax.grad(lambda lg: jnp.sum(f(lg, labels)))(l32)
  g_each = jax.vmap(jax.grad(f))(l32, jnp.asarray(labels))
  np.testing.assert_allclose(g_sum, g_each, rtol=1e-5, atol=1e-7)
  g_jit = jax.jit(jax.grad(lambda lg: jnp.sum(f(lg, labels))))(l32)
  np.testing.assert_allclose(g_jit, g_sum, rtol=1e-6, atol=1e-7)
  # Any leading batch shape; per-example τ broadcast.
  l3 = l32.reshape(2, 4, 6)
  np.testing.assert_allclose(
      losses.comp_sum_loss(l3, jnp.asarray(labels).reshape(2, 4), 0.5),
      losses.comp_sum_loss(l32, labels, 0.5).reshape(2, 4), rtol=1e-6)
  per_tau = jnp.linspace(0.0, 3.0, 8)
  np.testing.assert_allclose(
      losses.comp_sum_loss(l32, labels, per_tau),
      [losses.comp_sum_loss(l32[i:i + 1], labels[i:i + 1], float(per_tau[i]))[0]
       for i in range(8)], rtol=1e-5)


# --- property tests ------------------------------------------------------------

_logit_rows = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(2, 8)),
    elements=st.floats(-20, 20, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(_logit_rows, st.data(), st.floats(0.0, 5.0), st.floats(0.0, 5.0),
       st.floats(-50, 50))
@pytest.mark.slow
def test_properties(logits, data, tau_a, tau_b, shift):
  n = logits.shape[1]
  labels = np.asarray(data.draw(hnp.arrays(np.int64, logits.shape[0],
                                           elements=st.integers(0, n - 1))))
  with jax.enable_x64(True):
    lg = jnp.asarray(logits)
    lo, hi = sorted([tau_a, tau_b])
    v_lo = np.asarray(losses.comp_sum_loss(lg, labels, lo))
    v_hi = np.asarray(losses.comp_sum_loss(lg, labels, hi))
    assert np.all(v_lo >= 0) and np.all(v_hi >= 0)
    # Non-increasing in τ (∂_τ Φ^τ ≤ 0, docs/math.md (2.9)).
    assert np.all(v_hi <= v_lo * (1 + 1e-9) + 1e-12)
    if hi > 1:
      assert np.all(v_hi <= 1.0 / (hi - 1.0) + 1e-9)
    shifted = np.asarray(losses.comp_sum_loss(lg + shift, labels, hi))
    np.testing.assert_allclose(shifted, v_hi, rtol=1e-7, atol=1e-9)


# --- bad input -------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
  logits = jnp.zeros((4, 3))
  labels = jnp.array([0, 1, 2, 0])
  with pytest.raises(ValueError, match=r"tau.*-0\.5"):
    losses.comp_sum_loss(logits, labels, -0.5)
  with pytest.raises(ValueError, match=r"tau.*nan"):
    losses.comp_sum_loss(logits, labels, float("nan"))
  with pytest.raises(ValueError, match=r"tau"):
    losses.comp_sum_loss(logits, labels, jnp.array([1.0, -1.0, 0.0, 2.0]))
  with pytest.raises(ValueError, match=r"labels.*\[0, 3\).*3"):
    losses.comp_sum_loss(logits, jnp.array([0, 1, 3, 0]), 1.0)
  with pytest.raises(ValueError, match=r"labels.*-1"):
    losses.cross_entropy_loss(logits, jnp.array([0, -1, 2, 0]))
  with pytest.raises(ValueError, match=r"at least 2 classes"):
    losses.comp_sum_loss(jnp.zeros((4, 1)), labels, 1.0)
  with pytest.raises(ValueError, match=r"labels shape \(3,\).*logits shape"):
    losses.comp_sum_loss(logits, labels[:3], 1.0)
  with pytest.raises(ValueError, match=r"integers"):
    losses.comp_sum_loss(logits, labels.astype(jnp.float32), 1.0)
  with pytest.raises(ValueError, match=r"q.*-0\.2"):
    losses.generalized_cross_entropy_loss(logits, labels, -0.2)
  probs = jnp.full((4, 3), 1 / 3)
  with pytest.raises(ValueError, match=r"probs shape"):
    losses.comp_sum_loss_soft(logits, probs[:, :2], 1.0)
  with pytest.raises(ValueError, match=r"non-negative"):
    losses.comp_sum_loss_soft(logits, probs.at[0, 0].set(-0.1), 1.0)
  with pytest.raises(ValueError, match=r"sum to 1.*1\.2"):
    losses.comp_sum_loss_soft(logits, probs.at[0].set(jnp.array([.4, .4, .4])),
                              1.0)
  with pytest.raises(ValueError, match=r"u > -1"):
    losses.phi_tau(jnp.array([-2.0]), 1.0)


def test_shape_errors_raise_under_jit():
  logits = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match=r"labels shape"):
    jax.jit(losses.comp_sum_loss)(logits, jnp.zeros((5,), jnp.int32), 1.0)
  with pytest.raises(ValueError, match=r"at least 2 classes"):
    jax.jit(losses.margin)(jnp.zeros((4, 1)), jnp.zeros((4,), jnp.int32))


@pytest.mark.slow
def test_runtime_checks_under_jit():
  checked = jax.jit(validation.with_runtime_checks(losses.comp_sum_loss))
  logits = jnp.zeros((2, 3))
  err, out = checked(logits, jnp.array([0, 2]), 0.5)
  err.throw()  # no error
  np.testing.assert_allclose(out, losses.comp_sum_loss(logits, jnp.array([0, 2]),
                                                       0.5))
  err, _ = checked(logits, jnp.array([0, 7]), 0.5)
  with pytest.raises(Exception, match=r"labels must lie in \[0, 3\)"):
    err.throw()
  err, _ = checked(logits, jnp.array([0, 1]), -1.0)
  with pytest.raises(Exception, match=r"tau must be >= 0"):
    err.throw()
  assert math.isfinite(float(out[0]))
