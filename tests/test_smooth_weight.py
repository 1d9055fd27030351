"""ν*(h), the smooth-term weight past which the constant classifier wins.

Checked on linear models h(x) = Wx + b where everything is known in closed
form: with δ = x' − x, d = Wδ and v = d − d_y·1 = (W − 1 w_yᵀ)δ.
  * Rank one, W = c uᵀ: v = (c − c_y 1)(u·δ), so ‖v‖₂ = ‖c − c_y 1‖₂·|u·δ| and
    sup_{‖δ‖∞ ≤ ε} ‖v‖₂ = ε‖u‖₁‖c − c_y 1‖₂ (ℓ2 ball: ε‖u‖₂‖c − c_y 1‖₂), as
    long as the ball stays inside [0, 1]^d.
  * Two classes: v has one nonzero entry (w_{1−y} − w_y)·δ, so
    sup_{‖δ‖∞ ≤ ε} ‖v‖₂ = ε‖w_{1−y} − w_y‖₁.
E[z_y − mean z] and ℓ_τ are computed in NumPy float64.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from compsum_jax.training import smooth_weight

EPS = 0.1
DIM = 6
NUM_EXAMPLES = 24


def _linear_problem(num_classes: int, rank_one: bool, seed: int = 0):
  """(W, b, x, y): x in [0.3, 0.7]^d so the ε = 0.1 ball stays in [0, 1]^d;
  y = argmax h(x) so that E[z_y − mean z] > 0."""
  rng = np.random.default_rng(seed)
  if rank_one:
    c = rng.normal(size=num_classes)
    u = rng.choice([-1.0, 1.0], size=DIM) * rng.uniform(0.5, 2.0, size=DIM)
    w = np.outer(c, u)
  else:
    w = rng.normal(size=(num_classes, DIM))
  b = rng.normal(size=num_classes)
  x = rng.uniform(0.3, 0.7, size=(NUM_EXAMPLES, DIM))
  y = np.argmax(x @ w.T + b, axis=-1)
  return w, b, x, y


def _logits_fn(w, b):
  w32, b32 = np.float32(w), np.float32(b)
  return lambda x: x @ w32.T + b32


def _comp_sum_float64(z: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
  """ℓ_τ(z, y) = ((Σ_i e^{z_i − z_y})^{1−τ} − 1)/(1 − τ), log(·) at τ = 1."""
  total = np.exp(z - z[np.arange(len(y)), y][:, None]).sum(axis=-1)
  if tau == 1.0:
    return np.log(total)
  return (total ** (1.0 - tau) - 1.0) / (1.0 - tau)


def _closed_form_gap(w, b, x, y) -> float:
  z = x @ w.T + b
  return float(np.mean(z[np.arange(len(y)), y] - z.mean(axis=-1)))


@pytest.mark.parametrize("tau,norm", [(0.5, "linf"), (1.5, "linf"),
                                      (1.0, "l2")])
@pytest.mark.slow
def test_threshold_matches_closed_form_on_rank_one_linear_model(tau, norm):
  w, b, x, y = _linear_problem(10, rank_one=True)
  c, u = w[:, 0] / w[0, 0], w[0] / 1.0  # w = c uᵀ with c_0 = 1
  sup_delta = EPS * (np.abs(u).sum() if norm == "linf"
                     else np.sqrt((u * u).sum()))  # sup u·δ over the ball
  sup_v = sup_delta * np.linalg.norm(c[None, :] - c[y][:, None], axis=-1)
  gap = _closed_form_gap(w, b, x, y)
  expected = 10 ** (1.0 - tau) * gap / sup_v.mean()

  result = smooth_weight.smooth_term_weight_threshold(
      _logits_fn(w, b), np.float32(x), y, jax.random.key(0), tau=tau,
      eps=EPS, norm=norm, num_steps=10 if norm == "linf" else 40)
  # ℓ∞: sign steps reach the maximising corner exactly; ℓ2: the projected
  # steps approach the maximiser ε·u/‖u‖ geometrically (a lower bound).
  rtol = 1e-4 if norm == "linf" else 2e-3
  np.testing.assert_allclose(result.sup_smooth_term, sup_v, rtol=rtol)
  assert np.all(result.sup_smooth_term <= sup_v * (1 + 1e-5))
  np.testing.assert_allclose(result.mean_label_gap, gap, rtol=1e-5)
  np.testing.assert_allclose(result.nu_threshold, expected, rtol=rtol)
  assert result.num_classes == 10


@pytest.mark.slow
def test_threshold_matches_closed_form_on_two_class_linear_model():
  w, b, x, y = _linear_problem(2, rank_one=False)
  diff = w[1 - y] - w[y]  # [B, d]: v = (w_{1−y} − w_y)·δ in one entry
  sup_v = EPS * np.abs(diff).sum(axis=-1)
  gap = _closed_form_gap(w, b, x, y)
  result = smooth_weight.smooth_term_weight_threshold(
      _logits_fn(w, b), np.float32(x), y, jax.random.key(1), tau=1.0,
      eps=EPS, num_steps=10, batch_size=7)  # 4 chunks, the last one short
  np.testing.assert_allclose(result.sup_smooth_term, sup_v, rtol=1e-4)
  np.testing.assert_allclose(result.nu_threshold, gap / sup_v.mean(),
                             rtol=1e-4)


@pytest.fixture(scope="module")
def rank_one_results():
  w, b, x, y = _linear_problem(10, rank_one=True, seed=3)
  return {tau: smooth_weight.smooth_term_weight_threshold(
      _logits_fn(w, b), np.float32(x), y, jax.random.key(2), tau=tau,
      eps=EPS, num_steps=10) for tau in (0.5, 1.0, 1.5)}


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("rho", [1.0, 2.5])
@pytest.mark.slow
def test_path_values_and_slope_at_zero(rank_one_results, tau, rho):
  result = rank_one_results[tau]
  nu = 0.7 * result.nu_threshold
  scales = np.array([0.0, 0.3, 1.0, 4.0])
  path = result.objective_path(scales, nu=nu, rho=rho)
  # Float64 reference: mean ℓ_τ(s z/ρ) + (ν/ρ) s mean sup ‖v‖.
  expected = [np.mean(_comp_sum_float64(s * result.logits / rho,
                                        result.labels, tau))
              + nu / rho * s * result.sup_smooth_term.mean() for s in scales]
  np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(path[0], _comp_sum_float64(
      np.zeros((1, 10)), np.zeros(1, int), tau)[0], rtol=1e-6)  # Φ^τ(n − 1)

  # Slope at 0: forward differences with Richardson extrapolation.
  h = 2e-3
  l0, l_half, l_full = result.objective_path([0.0, h / 2, h], nu=nu, rho=rho)
  finite_difference = 2 * (l_half - l0) / (h / 2) - (l_full - l0) / h
  formula = (-10 ** (1 - tau) * result.mean_label_gap
             + nu * result.mean_sup_smooth_term) / rho
  assert formula < 0  # ν below ν*: the path descends from s = 0
  np.testing.assert_allclose(result.slope_at_zero(nu, rho), formula,
                             rtol=1e-12)
  np.testing.assert_allclose(finite_difference, formula, rtol=2e-2,
                             atol=2e-3)
  # The slope vanishes at ν* whatever ρ.
  assert abs(result.slope_at_zero(result.nu_threshold, rho)) < 1e-9


@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.slow
def test_constant_classifier_wins_exactly_above_threshold_for_tau_le_1(
    rank_one_results, tau):
  result = rank_one_results[tau]
  scales = np.concatenate([[0.0], np.geomspace(1e-3, 20.0, 60)])
  above = result.objective_path(scales, nu=1.05 * result.nu_threshold)
  assert np.all(above[1:] > above[0])
  below = result.objective_path(scales, nu=0.95 * result.nu_threshold)
  assert np.min(below[1:]) < below[0]
  # Convex path: the grid threshold is at most ν* and close to it here.
  grid_nu = result.nu_constant_wins_on_grid(scales)
  assert grid_nu <= result.nu_threshold * (1 + 1e-6)
  assert grid_nu > 0.97 * result.nu_threshold
  at_grid_nu = result.objective_path(scales, nu=grid_nu * (1 + 1e-6))
  assert np.all(at_grid_nu[1:] >= at_grid_nu[0] - 1e-6)


def test_above_threshold_s0_is_a_local_minimum_for_tau_above_1(
    rank_one_results):
  result = rank_one_results[1.5]
  small = np.array([0.0, 1e-3, 1e-2, 3e-2])
  above = result.objective_path(small, nu=1.1 * result.nu_threshold)
  assert np.all(above[1:] > above[0])
  below = result.objective_path(small, nu=0.9 * result.nu_threshold)
  assert np.min(below[1:]) < below[0]
  # Beyond the local picture: the grid threshold makes s = 0 win everywhere.
  scales = np.concatenate([[0.0], np.geomspace(1e-3, 20.0, 60)])
  grid_nu = result.nu_constant_wins_on_grid(scales)
  path = result.objective_path(scales, nu=grid_nu * (1 + 1e-6))
  assert np.all(path[1:] >= path[0] - 1e-6)


def test_threshold_limits_without_smooth_term():
  logits = np.array([[2.0, 0.0, 0.0]])
  labels = np.array([0])
  result = smooth_weight.SmoothWeightThreshold(
      nu_threshold=math.inf, mean_label_gap=4 / 3, mean_sup_smooth_term=0.0,
      num_classes=3, tau=1.0, logits=logits, labels=labels,
      sup_smooth_term=np.zeros(1))
  assert result.nu_constant_wins_on_grid([0.0, 1.0]) == math.inf
  assert smooth_weight.nu_threshold_value(3, 1.0, 4 / 3, 0.0) == math.inf
  assert smooth_weight.nu_threshold_value(3, 1.0, 0.0, 0.0) == 0.0


@pytest.mark.slow
def test_bad_input_raises_clear_errors():
  w, b, x, y = _linear_problem(3, rank_one=False)
  fn, key = _logits_fn(w, b), jax.random.key(0)
  x = np.float32(x)
  estimate = smooth_weight.smooth_term_weight_threshold
  with pytest.raises(ValueError, match="tau"):
    estimate(fn, x, y, key, tau=-1.0, eps=EPS)
  with pytest.raises(ValueError, match="eps"):
    estimate(fn, x, y, key, tau=1.0, eps=0.0)
  with pytest.raises(ValueError, match="norm"):
    estimate(fn, x, y, key, tau=1.0, eps=EPS, norm="l1")
  with pytest.raises(ValueError, match="num_steps"):
    estimate(fn, x, y, key, tau=1.0, eps=EPS, num_steps=0)
  with pytest.raises(ValueError, match="batch_size"):
    estimate(fn, x, y, key, tau=1.0, eps=EPS, batch_size=0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    estimate(fn, x + 1.0, y, key, tau=1.0, eps=EPS)
  with pytest.raises(ValueError, match="labels"):
    estimate(fn, x, y[:-1], key, tau=1.0, eps=EPS)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    estimate(fn, x, y + 3, key, tau=1.0, eps=EPS)
  z = x @ w.T
  with pytest.raises(ValueError, match="scales"):
    smooth_weight.logit_scale_objective(z, y, np.ones(len(y)), [0.0, -1.0],
                                        tau=1.0, nu=1.0)
  with pytest.raises(ValueError, match="sup_smooth_term"):
    smooth_weight.logit_scale_objective(z, y, np.ones(3), [0.0], tau=1.0,
                                        nu=1.0)
  with pytest.raises(ValueError, match="rho"):
    smooth_weight.logit_scale_objective(z, y, np.ones(len(y)), [0.0],
                                        tau=1.0, nu=1.0, rho=0.0)


def _apply_linear(variables, x):
  return x @ variables["w"].T + variables["b"]


def test_variables_form_reuses_the_compiled_program_and_is_exact():
  cache = smooth_weight._cached_pgd_chunk_fn
  for seed in (5, 6):  # two "evaluations" with new parameters, same shapes
    w, b, x, y = _linear_problem(2, rank_one=False, seed=seed)
    hits = cache.cache_info().hits
    result = smooth_weight.smooth_term_weight_threshold(
        _apply_linear, np.float32(x), y, jax.random.key(seed), tau=1.0,
        eps=EPS, num_steps=10,
        variables={"w": np.float32(w), "b": np.float32(b)})
    sup_v = EPS * np.abs(w[1 - y] - w[y]).sum(axis=-1)
    np.testing.assert_allclose(result.sup_smooth_term, sup_v, rtol=1e-4)
    np.testing.assert_allclose(
        result.nu_threshold, _closed_form_gap(w, b, x, y) / sup_v.mean(),
        rtol=1e-4)
  assert cache.cache_info().hits == hits + 1  # the second call reused it


def test_example_offset_gives_each_example_its_own_key():
  # ℓ2 ball, one PGD step from a random start: the estimate depends on the
  # start, so on the key of each example.
  w, b, x, y = _linear_problem(4, rank_one=False, seed=3)
  fn, key = _logits_fn(w, b), jax.random.key(7)
  x = np.float32(x)
  settings = dict(eps=EPS, norm="l2", step_size=EPS / 8, num_steps=1)
  _, whole = smooth_weight.sup_smooth_term(fn, x, y, key, batch_size=24,
                                           example_offset=0, **settings)
  # two contiguous shares with their global offsets and other chunkings
  _, first = smooth_weight.sup_smooth_term(fn, x[:10], y[:10], key,
                                           batch_size=4, example_offset=0,
                                           **settings)
  _, second = smooth_weight.sup_smooth_term(fn, x[10:], y[10:], key,
                                            batch_size=5, example_offset=10,
                                            **settings)
  # float32 rounding of other batch shapes only (‖v‖ of small differences)
  np.testing.assert_allclose(np.concatenate([first, second]), whole,
                             rtol=5e-5)
  # the offset matters: shifted keys give other random starts
  _, shifted = smooth_weight.sup_smooth_term(fn, x, y, key, batch_size=24,
                                             example_offset=1, **settings)
  assert np.max(np.abs(shifted - whole) / whole) > 1e-2
  # the sums and counts of the shares give the whole set's ν*
  result = smooth_weight.smooth_term_weight_threshold(
      fn, x, y, key, tau=0.5, batch_size=24, example_offset=0, **settings)
  z = np.float64(x) @ np.float32(w).T.astype(np.float64) + np.float32(b)
  gap = z[np.arange(len(y)), y] - z.mean(axis=-1)
  combined = smooth_weight.nu_threshold_value(
      4, 0.5, gap.sum() / len(y), (first.sum() + second.sum()) / len(y))
  assert combined == pytest.approx(result.nu_threshold, rel=5e-5)
  with pytest.raises(ValueError, match="example_offset=-1"):
    smooth_weight.sup_smooth_term(fn, x, y, key, example_offset=-1,
                                  **settings)


def test_nu_threshold_value_closed_form_and_bad_values():
  # ν* = n^{1−τ}·gap/sup
  assert smooth_weight.nu_threshold_value(10, 0.5, 2.0, 4.0) == pytest.approx(
      math.sqrt(10) * 2.0 / 4.0, rel=1e-15)
  assert smooth_weight.nu_threshold_value(10, 2.0, -1.0, 0.5) == pytest.approx(
      -0.2, rel=1e-15)
  assert math.isnan(smooth_weight.nu_threshold_value(3, 1.0, math.nan, 0.0))
  with pytest.raises(ValueError, match="num_classes=1"):
    smooth_weight.nu_threshold_value(1, 1.0, 1.0, 1.0)
  with pytest.raises(ValueError, match="mean_sup_smooth_term=-0.5"):
    smooth_weight.nu_threshold_value(3, 1.0, 1.0, -0.5)
  with pytest.raises(ValueError, match="tau"):
    smooth_weight.nu_threshold_value(3, -1.0, 1.0, 1.0)
