"""Tests for FGSM/PGD: ball and box constraints, closed-form linear robustness."""

import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import attacks
from compsum_jax.attacks import threat_model

# Float32 rounding of x + δ − x: a point may exceed ε by a few ulps.
BALL_TOL = 1e-5


def _linear(w, b):
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def _tanh_mlp(key, d, n):
  k1, k2 = jax.random.split(key)
  w1 = jax.random.normal(k1, (d, 16)) / np.sqrt(d)
  w2 = jax.random.normal(k2, (16, n))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2 * 3.0


_PROPERTY_MODEL = _tanh_mlp(jax.random.key(11), 12, 5)
_COMPILED = {}


def _compiled_attacks(norm, loss, start):
  """One jitted PGD + FGSM per static setting; ε and the step are traced."""
  if (norm, loss, start) not in _COMPILED:
    f = _PROPERTY_MODEL

    def run(x, y, targets, key, eps):
      x_pgd = attacks.pgd(f, x, y, key, eps=eps, step_size=eps / 3 + 1e-3,
                          num_steps=3, norm=norm, loss=loss,
                          random_start=start, num_restarts=2,
                          target_labels=targets)
      x_fgsm = attacks.fgsm(f, x, y, eps=eps, norm=norm, loss="ce")
      return x_pgd, x_fgsm

    _COMPILED[norm, loss, start] = jax.jit(run)
  return _COMPILED[norm, loss, start]


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    norm=st.sampled_from(["linf", "l2"]),
    loss=st.sampled_from(["ce", "margin", "kl", "dlr", "dlr_targeted",
                          "smooth_comp_sum"]),
    eps=st.floats(0.0, 0.5),
    start=st.sampled_from([True, False, "gaussian", "boundary"]),
)
@pytest.mark.slow
def test_pgd_stays_in_ball_and_box(seed, norm, loss, eps, start):
  key = jax.random.key(seed)
  kx, ka = jax.random.split(key)
  n = 5
  x = jax.random.uniform(kx, (6, 3, 4))
  # Some pixels exactly on the box's faces.
  x = jnp.where(x < 0.2, 0.0, jnp.where(x > 0.8, 1.0, x))
  y = jnp.arange(6) % n
  targets = (y + 1) % n
  x_adv, x_f = _compiled_attacks(norm, loss, start)(
      x, y, targets, ka, jnp.float32(eps))
  for out in (x_adv, x_f):
    dist = np.asarray(threat_model.per_example_norm(out - x, norm))
    assert np.all(dist <= eps + BALL_TOL)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def _closed_form_linf_robust(w, b, x, y, eps):
  """Exact ℓ∞ robustness of a linear classifier on the box ∩ ball (NumPy f64).

  For each wrong class j the worst case of (w_j − w_y)·x' + b_j − b_y over the
  box ∩ ball is attained at a vertex: coordinate i moves to x_i + ε (clipped to
  1) where w_j − w_y > 0, to x_i − ε (clipped to 0) where it is < 0. The point
  is robust iff no wrong class can reach a score ≥ the label's.
  """
  w, b, x = (np.asarray(a, np.float64) for a in (w, b, x))
  x = x.reshape(x.shape[0], -1)
  robust = np.ones(x.shape[0], bool)
  for i in range(x.shape[0]):
    for j in range(w.shape[1]):
      if j == y[i]:
        continue
      diff = w[:, j] - w[:, y[i]]
      vertex = np.where(diff > 0, np.minimum(x[i] + eps, 1.0),
                        np.maximum(x[i] - eps, 0.0))
      if vertex @ diff + b[j] - b[y[i]] >= 0:
        robust[i] = False
  return robust


def _robust_acc_after(f, x_adv, y):
  return np.asarray(jnp.argmax(f(x_adv), -1) == y)


@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_margin_exact_on_binary_linear(seed):
  rng = np.random.default_rng(seed)
  d, m = 10, 500
  w = rng.normal(size=(d, 2)).astype(np.float32)
  x = rng.uniform(size=(m, d)).astype(np.float32)
  # Centre the scores so that the data straddles the decision boundary.
  b = (-np.mean(x @ w, 0)).astype(np.float32)
  f = _linear(jnp.asarray(w), jnp.asarray(b))
  y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
  eps = 0.08
  expected = _closed_form_linf_robust(w, b, x, y, eps)
  x_adv = attacks.pgd(f, jnp.asarray(x), jnp.asarray(y), jax.random.key(seed),
                      eps=eps, step_size=eps / 4, num_steps=20, loss="margin")
  got = _robust_acc_after(f, x_adv, y)
  assert 0.05 < expected.mean() < 0.95  # a non-trivial instance
  np.testing.assert_array_equal(got, expected)


def test_pgd_margin_multiclass_linear_within_one_point():
  rng = np.random.default_rng(7)
  d, n, m = 12, 5, 400
  w = rng.normal(size=(d, n)).astype(np.float32)
  x = rng.uniform(size=(m, d)).astype(np.float32)
  b = (-np.mean(x @ w, 0)).astype(np.float32)
  f = _linear(jnp.asarray(w), jnp.asarray(b))
  y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
  eps = 0.05
  expected = _closed_form_linf_robust(w, b, x, y, eps).mean()
  x_adv = attacks.pgd(f, jnp.asarray(x), jnp.asarray(y), jax.random.key(3),
                      eps=eps, step_size=eps / 4, num_steps=20, loss="margin",
                      num_restarts=5)
  got = _robust_acc_after(f, x_adv, y).mean()
  assert 0.05 < expected < 0.95
  # PGD can only over-estimate robustness (the closed form is exact).
  assert got >= expected - 1e-9
  assert got - expected <= 0.01


def test_losses_against_numpy():
  rng = np.random.default_rng(0)
  z_adv = rng.normal(size=(7, 6)) * 2
  z = rng.normal(size=(7, 6)) * 2
  y = rng.integers(0, 6, size=7)
  t = (y + 2) % 6
  zs = -np.sort(-z_adv, axis=1)
  zy = z_adv[np.arange(7), y]
  other = np.where(np.eye(6)[y] > 0, -np.inf, z_adv).max(1)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  q = np.exp(z_adv - z_adv.max(1, keepdims=True))
  q /= q.sum(1, keepdims=True)
  dd = z_adv - z
  v = dd - dd[np.arange(7), y][:, None]
  expected = {
      "ce": -np.log(q[np.arange(7), y]),
      "margin": other - zy,
      "kl": (p * (np.log(p) - np.log(q))).sum(1),
      "dlr": -(zy - other) / (zs[:, 0] - zs[:, 2] + 1e-12),
      "dlr_targeted": -(zy - z_adv[np.arange(7), t])
                      / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12),
      "smooth_comp_sum": np.linalg.norm(v, axis=1),
  }
  for name, want in expected.items():
    got = attacks.get_objective(name)(
        jnp.asarray(z_adv, jnp.float32), jnp.asarray(y),
        jnp.asarray(z, jnp.float32), jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5,
                               err_msg=name)


def test_smooth_term_gradient_finite_at_zero_and_matches_fd():
  z = jnp.asarray([[0.3, -1.0, 2.0, 0.5]])
  y = jnp.asarray([2])
  g = jax.grad(lambda za: attacks.smooth_comp_sum_term(za, y, z).sum())(z)
  assert np.all(np.isfinite(np.asarray(g)))
  za = z + jnp.asarray([[0.2, -0.1, 0.05, 0.3]])
  f = lambda a: np.linalg.norm((a - z[0]) - (a - z[0])[2])
  g = np.asarray(jax.grad(
      lambda a: attacks.smooth_comp_sum_term(a, y, z).sum())(za))[0]
  h = 1e-3
  fd = [(f(np.asarray(za[0]) + h * e) - f(np.asarray(za[0]) - h * e)) / (2 * h)
        for e in np.eye(4)]
  np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("norm,start", itertools.product(
    ["linf", "l2"], ["uniform", "boundary", "gaussian"]))
def test_random_starts_in_ball(norm, start):
  x = jax.random.uniform(jax.random.key(0), (50, 8))
  keys = jax.random.split(jax.random.key(1), 50)
  x0 = threat_model.random_start(keys, x, 0.2, norm, start)
  dist = np.asarray(threat_model.per_example_norm(x0 - x, norm))
  assert np.all(dist <= 0.2 + BALL_TOL)
  assert np.all(dist > 0)
  assert float(x0.min()) >= 0 and float(x0.max()) <= 1


def test_bad_inputs_raise_clear_errors():
  f = _linear(jnp.ones((4, 3)), jnp.zeros(3))
  x = jnp.full((2, 4), 0.5)
  y = jnp.asarray([0, 1])
  key = jax.random.key(0)
  kw = dict(step_size=0.1, num_steps=2)
  with pytest.raises(ValueError, match="eps"):
    attacks.pgd(f, x, y, key, eps=-0.1, **kw)
  with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
    attacks.pgd(f, x + 1.0, y, key, eps=0.1, **kw)
  with pytest.raises(ValueError, match="dlr_targeted"):
    attacks.pgd(f, x, y, key, eps=0.1, loss="dlr_targeted",
                target_labels=jnp.asarray([1, 2]), **kw)
  with pytest.raises(ValueError, match="norm"):
    attacks.pgd(f, x, y, key, eps=0.1, norm="l1", **kw)
  with pytest.raises(ValueError, match="loss"):
    attacks.pgd(f, x, y, key, eps=0.1, loss="hinge", **kw)
  with pytest.raises(ValueError, match="labels"):
    attacks.pgd(f, x, jnp.asarray([0, 3]), key, eps=0.1, **kw)
  with pytest.raises(ValueError, match="step_size"):
    attacks.pgd(f, x, y, key, eps=0.1, step_size=-1.0, num_steps=2)


def test_pgd_under_jit_and_vmap_over_models():
  """Two linear models stacked on a leading axis, attacked under vmap+jit,
  agree with attacking each model on its own."""
  rng = np.random.default_rng(3)
  ws = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)
  x = jnp.asarray(rng.uniform(size=(5, 6)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 0, 1])
  key = jax.random.key(0)

  def attack(w):
    return attacks.pgd(lambda xa: xa @ w, x, y, key, eps=0.1,
                       step_size=0.03, num_steps=5, loss="smooth_comp_sum",
                       select="loss")

  batched = jax.jit(jax.vmap(attack))(ws)
  for m in range(2):
    np.testing.assert_allclose(np.asarray(batched[m]),
                               np.asarray(attack(ws[m])), atol=1e-6)
