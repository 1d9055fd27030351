"""Tests for FAB-T: its projection against float64 NumPy and SciPy, and the
minimal ℓ∞ perturbation of linear models, known in closed form."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from compsum_jax import attacks
from compsum_jax.attacks import fab


def _numpy_projection(p, w, b):
  """min ‖d‖∞ s.t. ⟨w, p + d⟩ = b, p + d ∈ [0, 1]^D, float64, by bisection on
  δ of g(δ) = Σ|w_i| min(δ, room_i) (independent of the sorted closed form)."""
  p, w = p.astype(np.float64), w.astype(np.float64)
  c = b - w @ p
  s = np.sign(w) * np.sign(c)
  room = np.where(s > 0, 1.0 - p, np.where(s < 0, p, 0.0))
  g = lambda delta: np.sum(np.abs(w) * np.minimum(delta, room))
  if g(room.max()) < abs(c):  # the hyperplane misses the box
    return s * room
  lo, hi = 0.0, room.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if g(mid) < abs(c) else (lo, mid)
  return s * np.minimum(hi, room)


def _lp_min_linf(p, w, b):
  """The optimal ‖d‖∞ by linear programming (scipy HiGHS), float64."""
  dim = p.size
  # Variables (d, t): minimise t, −t ≤ d_i ≤ t, ⟨w, d⟩ = b − ⟨w, p⟩.
  cost = np.r_[np.zeros(dim), 1.0]
  a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))],
                   [-np.eye(dim), -np.ones((dim, 1))]])
  a_eq = np.r_[w, 0.0][None]
  bounds = [(-pi, 1.0 - pi) for pi in p] + [(0, None)]
  res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * dim), A_eq=a_eq,
                b_eq=[b - w @ p], bounds=bounds, method="highs")
  assert res.status == 0
  return res.fun


@pytest.mark.parametrize("seed", range(6))
def test_projection_matches_float64_numpy_and_linear_program(seed):
  rng = np.random.default_rng(seed)
  dim = 30
  p = rng.random(dim)
  w = rng.normal(size=dim)
  w[rng.random(dim) < 0.2] = 0.0  # some coordinates do not matter
  # A hyperplane at a reachable offset: ⟨w, q⟩ for a random q in the box.
  b = float(w @ rng.random(dim))
  d = np.asarray(fab.project_linf_hyperplane_box(
      jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32),
      jnp.float32(b)), np.float64)
  np.testing.assert_allclose(d, _numpy_projection(p, w, b), atol=2e-5)
  # Feasible, on the hyperplane, and as short as the LP optimum.
  assert np.all(p + d >= -1e-6) and np.all(p + d <= 1 + 1e-6)
  assert abs(w @ (p + d) - b) < 1e-4 * (1 + np.abs(w).sum())
  np.testing.assert_allclose(np.abs(d).max(), _lp_min_linf(p, w, b),
                             rtol=1e-4, atol=1e-6)


def test_projection_when_hyperplane_misses_box_or_point_is_on_it():
  p = np.array([0.2, 0.5, 0.9], np.float32)
  w = np.array([1.0, -2.0, 0.0], np.float32)
  # ⟨w, z⟩ ≤ 1 on the box: b = 5 is out of reach; every coordinate that
  # matters moves to the bound that raises ⟨w, z⟩ (z = (1, 0, ·)).
  d = np.asarray(fab.project_linf_hyperplane_box(p, w, jnp.float32(5.0)))
  np.testing.assert_allclose(d, [0.8, -0.5, 0.0], atol=1e-7)
  np.testing.assert_allclose(d, _numpy_projection(p, w, 5.0), atol=1e-7)
  d0 = fab.project_linf_hyperplane_box(p, w, jnp.float32(w @ p))
  np.testing.assert_allclose(np.asarray(d0), 0.0, atol=1e-7)


def _sorted_closed_form(p, w, b):
  """The same projection in float64 by the sorted closed form: h is linear
  between the sorted rooms, so walk the sorted breakpoints to the piece where
  h reaches |c| and solve on it (independent of the bisection under test)."""
  p, w = p.astype(np.float64), w.astype(np.float64)
  c = b - w @ p
  s = np.sign(w) * np.sign(c)
  room = np.where(s > 0, 1.0 - p, np.where(s < 0, p, 0.0))
  a = np.abs(w)
  order = np.argsort(room, kind="stable")
  u, a_s = room[order], a[order]
  done = 0.0  # Σ over the breakpoints passed of |w_i| u_i
  for k in range(len(u)):
    rest = a_s[k:].sum()  # slope of h on the piece ending at u[k]
    if done + u[k] * rest >= abs(c):
      delta = (abs(c) - done) / rest if rest > 0 else u[k]
      return s * np.minimum(delta, room)
    done += a_s[k] * u[k]
  return s * room  # the hyperplane misses the box


@pytest.mark.parametrize("dim", [1, 2, 64, 3072])
def test_projection_matches_sorted_closed_form_at_image_sizes(dim):
  """Digits (64) and CIFAR (3072) sizes, with ties among the rooms (pixels
  at 0 or 1, repeated values) and coordinates of zero weight."""
  rng = np.random.default_rng(dim)
  for trial in range(4):
    p = rng.random(dim).astype(np.float32)
    p[rng.random(dim) < 0.3] = rng.choice([0.0, 1.0, 0.5])
    w = rng.normal(size=dim).astype(np.float32)
    w[rng.random(dim) < 0.1] = 0.0
    # Offsets from "on the hyperplane" to "out of reach".
    b = float(w @ p + (trial - 1) * 0.3 * np.abs(w).sum())
    d = np.asarray(fab.project_linf_hyperplane_box(
        jnp.asarray(p), jnp.asarray(w), jnp.float32(b)), np.float64)
    expected = _sorted_closed_form(p, w, b)
    np.testing.assert_allclose(d, expected, atol=1e-5 * max(1.0, np.abs(
        expected).max()))
    np.testing.assert_allclose(d, _numpy_projection(p, w, b), atol=1e-5)


_jitted_projection = jax.jit(fab.project_linf_hyperplane_box)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    p=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.9]),
               min_size=1, max_size=12),
    data=st.data(), shift=st.floats(-3.0, 3.0))
def test_projection_property_against_sorted_closed_form(p, data, shift):
  """Any box point (rooms with many ties), weights with zeros and ties, any
  offset: the bisection agrees with the sorted closed form."""
  p = np.asarray(p, np.float32)
  w = np.asarray(data.draw(st.lists(
      st.sampled_from([0.0, 1.0, -1.0, 2.0, -0.5, 3.0]),
      min_size=len(p), max_size=len(p))), np.float32)
  b = float(w @ p + shift)
  # Padded to 12 coordinates of zero weight (they must not move): one
  # compilation for every example.
  pad = 12 - len(p)
  d = np.asarray(_jitted_projection(
      jnp.asarray(np.r_[p, np.full(pad, 0.5, np.float32)]),
      jnp.asarray(np.r_[w, np.zeros(pad, np.float32)]), jnp.float32(b)),
      np.float64)
  np.testing.assert_allclose(d[len(p):], 0.0, atol=0.0)
  np.testing.assert_allclose(d[:len(p)], _sorted_closed_form(p, w, b),
                             atol=1e-5)


def _linear_model(seed, num_classes, dim, scale):
  rng = np.random.default_rng(seed)
  weights = (scale * rng.normal(size=(dim, num_classes))).astype(np.float32)
  bias = (0.1 * rng.normal(size=num_classes)).astype(np.float32)
  return weights, bias, lambda x: x.reshape(x.shape[0], -1) @ weights + bias


def _closed_form_minimal_linf(x, weights, bias):
  """min over classes j ≠ y of (z_y − z_j)/‖w_y − w_j‖₁ (box inactive), the
  smallest ℓ∞ perturbation that changes a linear model's decision, float64."""
  w64, b64 = weights.astype(np.float64), bias.astype(np.float64)
  z = x.reshape(len(x), -1).astype(np.float64) @ w64 + b64
  y = z.argmax(-1)
  out = []
  for i in range(len(x)):
    out.append(min((z[i, y[i]] - z[i, j]) / np.abs(w64[:, y[i]] - w64[:, j]).sum()
                   for j in range(z.shape[1]) if j != y[i]))
  return y, np.array(out)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_fab_t_finds_the_minimal_perturbation_of_linear_models(num_classes):
  dim, batch = 24, 16
  weights, bias, f = _linear_model(num_classes, num_classes, dim, 1.0)
  rng = np.random.default_rng(7)
  # Inputs in [0.3, 0.7] whose minimal perturbation (< 0.3) keeps the box
  # inactive, so the closed form holds.
  x = (0.3 + 0.4 * rng.random((batch, dim))).astype(np.float32)
  y, minimal = _closed_form_minimal_linf(x, weights, bias)
  keep = minimal < 0.25
  x, y, minimal = x[keep], y[keep], minimal[keep]
  assert len(y) >= 4
  res = fab.fab_targeted_run(f, jnp.asarray(x), jnp.asarray(y, jnp.int32),
                             jax.random.key(0), eps=0.3,
                             num_target_classes=num_classes - 1)
  dist = np.asarray(res.distance, np.float64)
  assert np.all(np.asarray(res.found))
  # Never below the minimum (float32 slack), within 1 % above it.
  assert np.all(dist >= minimal * (1 - 1e-4) - 1e-6), (dist, minimal)
  assert np.all(dist <= minimal * 1.01 + 1e-6), (dist, minimal)
  x_adv = np.asarray(res.x_adv, np.float64)
  np.testing.assert_allclose(np.abs(x_adv - x).max(-1), dist, rtol=1e-5)
  z_adv = x_adv @ weights.astype(np.float64) + bias
  assert np.all(z_adv.argmax(-1) != y)


@pytest.mark.slow
def test_fab_targeted_respects_eps_and_single_runs_compose():
  weights, bias, f = _linear_model(3, 4, 24, 1.0)
  x = (0.3 + 0.4 * np.random.default_rng(1).random((12, 24))).astype(
      np.float32)
  y, minimal = _closed_form_minimal_linf(x, weights, bias)
  xj, yj, key = jnp.asarray(x), jnp.asarray(y, jnp.int32), jax.random.key(1)
  full = fab.fab_targeted_run(f, xj, yj, key, eps=0.3, num_target_classes=3,
                              num_restarts=2)
  # Runs one at a time (targets × restarts), merged: the same distances.
  best = np.full(len(y), np.inf)
  for j in range(6):
    one = fab.fab_targeted_run(f, xj, yj, key, eps=0.3, num_target_classes=3,
                               num_restarts=2, only_run=j)
    best = np.minimum(best, np.asarray(one.distance))
  np.testing.assert_allclose(best, np.asarray(full.distance), rtol=1e-6)
  # Returned only within ε: below the minimal perturbation nothing changes.
  eps = float(np.median(minimal))
  out = np.asarray(fab.fab_targeted(f, xj, yj, key, eps=eps,
                                    num_target_classes=3))
  moved = np.abs(out - x).max(-1) > 0
  assert np.all(np.abs(out - x).max(-1) <= eps + 1e-6)
  assert not np.any(moved & (minimal > eps))
  assert np.all(moved[minimal < 0.9 * eps])


def test_fab_errors():
  _, _, f = _linear_model(0, 4, 8, 1.0)
  x = jnp.full((2, 8), 0.5)
  y = jnp.zeros(2, jnp.int32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="norm"):
    fab.fab_targeted(f, x, y, key, eps=0.1, norm="l2")
  with pytest.raises(ValueError, match="eta"):
    fab.fab_targeted(f, x, y, key, eps=0.1, eta=0.5)
  with pytest.raises(ValueError, match="alpha_max"):
    fab.fab_targeted(f, x, y, key, eps=0.1, alpha_max=0.0)
  with pytest.raises(ValueError, match="only_run"):
    fab.fab_targeted_run(f, x, y, key, eps=0.1, num_target_classes=3,
                         only_run=3)
  with pytest.raises(ValueError, match="l-infinity only"):
    attacks.build_attack("fab_t", norm="l2")
