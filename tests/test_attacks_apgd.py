"""Tests for APGD: a float64 NumPy re-implementation of Croce & Hein's Alg. 1,
the checkpoint schedule of eq. (4), monotone best loss, APGD-T, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import attacks
from compsum_jax.attacks import threat_model


def _paper_checkpoints(num_steps):
  """w_j = round(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j −
  p_{j−1} − 0.03, 0.06) (Croce & Hein 2020, eq. 4), w_j ≤ N."""
  p = [0.0, 0.22]
  while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  return [round(q * num_steps) for q in p[1:]]


@pytest.mark.parametrize("num_steps", [100, 200])
def test_checkpoints_match_paper_formula(num_steps):
  is_ckpt, window = attacks.checkpoint_schedule(num_steps)
  got = list(np.nonzero(is_ckpt)[0] + 1)
  assert got == _paper_checkpoints(num_steps)
  # Windows are the gaps between consecutive checkpoints.
  np.testing.assert_array_equal(window[is_ckpt], np.diff([0] + got))


def _numpy_apgd(w, b, x, y, x0, eps, num_steps, norm, rho=0.75):
  """Alg. 1 of Croce & Hein (2020) for one example of a linear model, CE loss,
  in float64, with the analytic gradient ∇_x CE = W(softmax(z) − e_y)."""
  n = w.shape[1]

  def loss_grad(xa):
    z = xa @ w + b
    s = np.exp(z - z.max())
    s /= s.sum()
    return np.log(np.exp(z - z.max()).sum()) + z.max() - z[y], w @ (
        s - np.eye(n)[y])

  def proj(v):
    if norm == "linf":
      return np.clip(np.clip(v, x - eps, x + eps), 0, 1)
    d = v - x
    length = np.linalg.norm(d)
    d = d * min(1.0, eps / max(length, 1e-12))
    return np.clip(x + d, 0, 1)

  def direction(g):
    if norm == "linf":
      return np.sign(g)
    return g / (np.linalg.norm(g) + 1e-12)

  ckpts = set(_paper_checkpoints(num_steps))
  eta = 2 * eps
  x_prev = x_cur = x0
  loss, g = loss_grad(x0)
  best_x, best_loss, best_g = x0, loss, g
  hist = [loss]
  last, reduced_last, best_at_last = 0, True, loss
  etas = []
  for k in range(num_steps):
    a = 0.75 if k > 0 else 1.0
    z = proj(x_cur + eta * direction(g))
    x_new = proj(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
    x_prev = x_cur
    loss, g = loss_grad(x_new)
    hist.append(loss)
    if loss > best_loss:
      best_x, best_loss, best_g = x_new, loss, g
    x_cur = x_new
    if k + 1 in ckpts:
      window = k + 1 - last
      increases = sum(hist[i + 1] > hist[i] for i in range(last, k + 1))
      reduce = (increases < rho * window) or (
          not reduced_last and best_at_last >= best_loss)
      if reduce:
        eta /= 2
        x_cur, g = best_x, best_g
      reduced_last, best_at_last, last = reduce, best_loss, k + 1
      etas.append(eta)
  return best_loss, best_x, np.asarray(hist), etas


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
def test_apgd_matches_float64_numpy_reference(norm, eps):
  rng = np.random.default_rng(0)
  d, n, m, steps = 16, 4, 6, 100
  w = rng.normal(size=(d, n))
  b = rng.normal(size=n) * 0.1
  x = rng.uniform(size=(m, d))
  y = np.argmax(x @ w + b, axis=1)
  key = jax.random.key(5)
  with jax.enable_x64(True):
    f = lambda xa: xa @ jnp.asarray(w) + jnp.asarray(b)
    res = attacks.apgd_run(f, jnp.asarray(x), jnp.asarray(y), key, eps=eps,
                           num_steps=steps, norm=norm, loss="ce")
    # The same start as apgd_run's first restart (keys folded with 0).
    keys = threat_model.fold_in_each(
        threat_model.example_keys(key, m), 0)
    x0 = np.asarray(threat_model.random_start(keys, jnp.asarray(x), eps, norm,
                                              "boundary"))
    res = jax.tree.map(np.asarray, res)
  for i in range(m):
    best, best_x, hist, etas = _numpy_apgd(w, b, x[i], y[i], x0[i], eps,
                                           steps, norm)
    np.testing.assert_allclose(res.loss_history[:, i], hist, rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(res.best_loss[i], best, rtol=1e-9)
    np.testing.assert_allclose(res.x_best[i], best_x, atol=1e-9)
    np.testing.assert_allclose(res.step_size[i], etas[-1], rtol=1e-12)


def _tanh_net(seed, d, n):
  k1, k2 = jax.random.split(jax.random.key(seed))
  w1 = jax.random.normal(k1, (d, 32)) / np.sqrt(d) * 3
  w2 = jax.random.normal(k2, (32, n))
  return lambda xa: jnp.tanh(xa.reshape(xa.shape[0], -1) @ w1) @ w2


@pytest.mark.parametrize("norm,loss", [("linf", "ce"), ("l2", "dlr")])
def test_apgd_best_loss_monotone_and_consistent(norm, loss):
  f = _tanh_net(1, 20, 5)
  x = jax.random.uniform(jax.random.key(2), (40, 20))
  y = jnp.argmax(f(x), -1)
  eps = 0.1 if norm == "linf" else 0.5
  res = attacks.apgd_run(f, x, y, jax.random.key(3), eps=eps, num_steps=50,
                         norm=norm, loss=loss)
  best_hist = np.asarray(res.best_loss_history)
  assert np.all(np.diff(best_hist, axis=0) >= 0)
  # The best loss is the running maximum of the loss history ...
  np.testing.assert_array_equal(
      best_hist, np.maximum.accumulate(np.asarray(res.loss_history), axis=0))
  # ... and it is the loss of the returned best point (recomputed).
  recomputed = attacks.get_objective(loss)(f(res.x_best), y, None, None)
  np.testing.assert_allclose(np.asarray(recomputed), np.asarray(res.best_loss),
                             rtol=1e-5, atol=1e-6)
  # Step sizes are 2ε / 2^m.
  m = np.log2(2 * eps / np.asarray(res.step_size))
  np.testing.assert_allclose(m, np.round(m), atol=1e-5)
  for out in (res.x_adv, res.x_best):
    dist = np.asarray(threat_model.per_example_norm(out - x, norm))
    assert np.all(dist <= eps + 1e-5)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
  # Points reported misclassified are misclassified.
  pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
  mis = np.asarray(res.misclassified)
  assert np.all(pred[mis] != np.asarray(y)[mis])


def test_apgd_targeted_reaches_target_class_on_linear_model():
  # A 5-class linear model and a large ε: each target class is reachable.
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(10, 5)), jnp.float32)
  f = lambda xa: xa @ w
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(30, 10)), jnp.float32)
  y = jnp.argmax(f(x), -1)
  x_t = attacks.apgd_targeted(f, x, y, jax.random.key(0), eps=0.3,
                              num_steps=30, num_target_classes=4)
  assert np.all(np.asarray(jnp.argmax(f(x_t), -1) != y))
  assert np.all(np.asarray(
      threat_model.per_example_norm(x_t - x, "linf")) <= 0.3 + 1e-5)


def test_apgd_errors():
  f3 = lambda xa: xa[:, :3]
  x = jnp.full((2, 4), 0.5)
  y = jnp.asarray([0, 1])
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="at least 4 classes"):
    attacks.apgd_targeted(f3, x, y, key, eps=0.1, num_steps=5)
  with pytest.raises(ValueError, match="at least 4 classes"):
    attacks.apgd(f3, x, y, key, eps=0.1, num_steps=5, loss="dlr_targeted",
                 target_labels=y)
  with pytest.raises(ValueError, match="eps"):
    attacks.apgd(f3, x, y, key, eps=-1.0, num_steps=5)
  with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
    attacks.apgd(f3, x - 1.0, y, key, eps=0.1, num_steps=5)
  with pytest.raises(ValueError, match="num_steps"):
    attacks.apgd(f3, x, y, key, eps=0.1, num_steps=0)
  with pytest.raises(ValueError, match="rho"):
    attacks.apgd(f3, x, y, key, eps=0.1, num_steps=5, rho=1.5)


@pytest.mark.parametrize("targeted", [False, True])
def test_stop_when_all_fooled_keeps_the_outcome_and_stops(targeted):
  """A run that stops once every example is misclassified finds the same
  misclassified set as the full run, in fewer steps (large ε: all break)."""
  rng = np.random.default_rng(3)
  weights = rng.normal(size=(16, 5)).astype(np.float32)
  f = lambda x: x @ weights
  x = jnp.asarray(rng.random((8, 16)), jnp.float32)
  y = jnp.asarray(np.asarray(f(x)).argmax(-1), jnp.int32)
  run = attacks.apgd_targeted_run if targeted else attacks.apgd_run
  for eps in (0.5, 0.02):  # every example breaks; hardly any does
    kw = dict(eps=eps, num_steps=20)
    full = run(f, x, y, jax.random.key(0), **kw)
    short = run(f, x, y, jax.random.key(0), stop_when_all_fooled=True, **kw)
    np.testing.assert_array_equal(np.asarray(short.misclassified),
                                  np.asarray(full.misclassified))
    steps_done = int(np.sum(np.any(np.asarray(short.loss_history[1:]) != 0,
                                   axis=-1)))
    if np.all(np.asarray(full.misclassified)):
      assert steps_done < 20
    else:
      np.testing.assert_allclose(np.asarray(short.x_adv),
                                 np.asarray(full.x_adv), atol=1e-6)
  with pytest.raises(ValueError, match="stop_when_all_fooled"):
    run(f, x, y, jax.random.key(0), eps=0.1, stop_when_all_fooled=1)
