"""Tests for the cascade (robust_accuracy), sanity checks, Square and presets,
on small MLPs trained on scikit-learn's digits (8×8 images in [0, 1])."""

import functools
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from compsum_jax import attacks
from compsum_jax.attacks import threat_model
from compsum_jax.attacks.presets import member_overrides

EPS = 0.1  # ℓ∞ radius on digits where a plain MLP is about half robust


class _DigitsMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1) * 2.0 - 1.0
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


@functools.cache
def _digits():
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))
  return x[perm[:1500]], y[perm[:1500]], x[perm[1500:]], y[perm[1500:]]


@functools.cache
def _trained_model(seed):
  """A small MLP trained for 300 Adam steps; returns a jitted logits_fn."""
  params = _trained_params(seed)
  return jax.jit(lambda x: _DigitsMLP().apply(params, x))


def _apply_digits_mlp(params, x):
  return _DigitsMLP().apply(params, x)


@functools.cache
def _trained_params(seed):
  """Parameters of a small MLP trained for 300 Adam steps."""
  x_tr, y_tr, _, _ = _digits()
  net = _DigitsMLP()
  params = net.init(jax.random.key(seed), x_tr[:2])
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, state, xb, yb):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          net.apply(p, xb), yb).mean()
    grads = jax.grad(loss)(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(300):
    idx = rng.integers(0, len(y_tr), 128)
    params, state = step(params, state, x_tr[idx], y_tr[idx])
  return params


def _test_points(num):
  _, _, x_te, y_te = _digits()
  return x_te[:num], y_te[:num]


@pytest.mark.parametrize("seed", [
    0, pytest.param(1, marks=pytest.mark.slow),
    pytest.param(2, marks=pytest.mark.slow)])
def test_apgd_ce_at_least_as_strong_as_pgd_ce_same_budget(seed):
  """Croce & Hein (2020) §4: APGD needs no step-size tuning. Same budget (N
  gradient steps, one restart): APGD-CE leaves no more robust points than
  PGD-CE with the step 2.5ε/N of Madry et al., and at most one more than
  PGD-CE with the tuned step ε/4 (on these small MLPs PGD saturates and the
  two differ by the random start only; measured APGD-CE vs PGD ε/4: 69 vs
  68, 70 vs 71, 75 vs 75 robust of 150 for seeds 0-2)."""
  f = _trained_model(seed)
  x, y = _test_points(150)
  steps = 50
  key = jax.random.key(10 + seed)

  def robust(x_adv):
    return int(jnp.sum(jnp.argmax(f(x_adv), -1) == y))

  pgd_madry = robust(attacks.pgd(f, x, y, key, eps=EPS,
                                 step_size=2.5 * EPS / steps,
                                 num_steps=steps, loss="ce"))
  pgd_tuned = robust(attacks.pgd(f, x, y, key, eps=EPS, step_size=EPS / 4,
                                 num_steps=steps, loss="ce"))
  apgd_ce = robust(attacks.apgd(f, x, y, key, eps=EPS, num_steps=steps,
                                loss="ce"))
  clean = robust(x)
  assert clean > 135  # the model is trained
  assert apgd_ce < clean  # the attack does something
  assert apgd_ce <= pgd_madry
  assert apgd_ce <= pgd_tuned + 1


def _small_cascade_overrides():
  return {"num_steps": 15, "num_target_classes": 3, "num_queries": 200}


def test_cascade_worst_case_is_pointwise_minimum_of_single_attacks():
  f = _trained_model(0)
  x, y = _test_points(100)
  key = jax.random.key(3)
  # One jit cache: run_all reuses the cascade's compiled attacks (same
  # batch shapes; the programs do not depend on which points are attacked).
  kw = dict(eps=EPS, batch_size=64, overrides=_small_cascade_overrides(),
            run_checks=False, jit_cache={})
  cascade = attacks.robust_accuracy(f, x, y, key, "aa_standard_like", **kw)
  # run_all: each attack on every clean-correct point, i.e. run one by one.
  every = attacks.robust_accuracy(f, x, y, key, "aa_standard_like",
                                  run_all=True, **kw)
  singles = [stage.robust_after for stage in every.stages]
  expected = np.logical_and.reduce(singles)
  np.testing.assert_array_equal(cascade.robust, expected)
  np.testing.assert_array_equal(every.robust, expected)
  assert cascade.num_robust == every.num_robust == int(expected.sum())
  # A single attack run on its own (other chunking: batches of 32, not 64)
  # agrees with its run_all stage point by point.
  alone = attacks.robust_accuracy(
      f, x, y, key, ["apgd_t"], eps=EPS, batch_size=32, run_checks=False,
      overrides=member_overrides("apgd_t", _small_cascade_overrides()))
  np.testing.assert_array_equal(alone.robust, singles[1])
  # Exact counts add up stage by stage.
  assert cascade.num_clean_correct == int(
      np.sum(np.asarray(jnp.argmax(f(x), -1)) == y))
  robust_before = cascade.num_clean_correct
  for stage in cascade.stages:
    assert stage.num_attacked == robust_before
    assert stage.num_robust_after == robust_before - stage.num_broken
    robust_before = stage.num_robust_after
  # Broken points' adversarial examples are in the ball and misclassified.
  broken = cascade.broken_by >= 0
  assert broken.any()
  x_adv = cascade.x_adv[broken]
  assert np.all(np.abs(x_adv - x[broken]).reshape(broken.sum(), -1).max(-1)
                <= EPS + 1e-5)
  assert np.all(np.asarray(jnp.argmax(f(x_adv), -1)) != y[broken])


@pytest.mark.slow
def test_gradient_masking_is_flagged():
  f = _trained_model(0)
  masked = lambda xa: f(jax.lax.stop_gradient(xa))  # zero input gradient
  x, y = _test_points(64)
  with pytest.warns(UserWarning, match="gradient masking"):
    report = attacks.robust_accuracy(
        masked, x, y, jax.random.key(0), "aa_standard_like", eps=EPS,
        overrides=_small_cascade_overrides())
  # The DLR-gradient check covers every evaluated (clean-correct) point.
  assert report.sanity.gradient_objective == "dlr"
  assert report.sanity.num_gradient_points == report.num_clean_correct > 0
  assert report.sanity.num_zero_gradient == report.num_clean_correct
  assert report.gradient_masking_suspected
  assert report.num_broken_only_by_gradient_free == report.stages[-1].num_broken
  assert report.stages[-1].num_broken > 0
  # The unmasked model raises no masking flag.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    clean_report = attacks.robust_accuracy(
        f, x, y, jax.random.key(0), "aa_lite", eps=EPS,
        overrides={"num_steps": 15, "num_target_classes": 3})
  assert not clean_report.gradient_masking_suspected
  assert clean_report.sanity.messages == []


def test_sanity_checks_flag_probabilities_and_randomness():
  f = _trained_model(0)
  x, y = _test_points(16)
  probs = attacks.sanity_checks(lambda xa: jax.nn.softmax(f(xa)), x, y)
  assert probs.looks_like_probabilities
  calls = []

  def noisy(xa):
    calls.append(1)
    return f(xa) + 1e-3 * len(calls)

  rnd = attacks.sanity_checks(noisy, x, y)
  assert not rnd.deterministic and rnd.max_abs_logit_difference > 0
  assert rnd.num_forward_passes == 3 and len(calls) >= 3
  # Differences within the tolerance (relative to 1 + max|z|) pass.
  tiny = []

  def tiny_noise(xa):
    tiny.append(1)
    return f(xa) + 1e-9 * len(tiny)

  assert attacks.sanity_checks(tiny_noise, x, y).deterministic
  ok = attacks.sanity_checks(f, x, y)
  assert ok.deterministic and not ok.looks_like_probabilities
  assert ok.num_zero_gradient == 0 and ok.messages == []


def test_square_attack_budget_ball_and_margin():
  f = _trained_model(1)
  x, y = _test_points(100)
  res = attacks.square_attack_run(f, x, y, jax.random.key(4), eps=EPS,
                                  num_queries=150)
  queries = np.asarray(res.queries)
  assert queries.min() >= 1 and queries.max() <= 150
  assert np.all(np.abs(np.asarray(res.x_adv) - x).max(axis=(1, 2, 3))
                <= EPS + 1e-6)
  assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
  logits = np.asarray(f(res.x_adv), np.float64)
  margin = logits[np.arange(100), y] - np.max(
      np.where(np.eye(10)[y] > 0, -np.inf, logits), axis=1)
  np.testing.assert_allclose(np.asarray(res.margin), margin, atol=1e-4)
  fooled = np.asarray(res.margin) < 0
  assert fooled.any()
  # Fooled points stop querying; robust points use the whole budget.
  assert np.all(queries[~fooled & (margin > 0)] == 150)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    attacks.square_attack(f, x.reshape(100, 64), y, jax.random.key(0),
                          eps=EPS)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow)
    if name in ("aa_standard_like", "aa_standard")
    else name for name in sorted(attacks.PRESETS)])
def test_every_preset_builds_and_stays_in_its_ball(name):
  f = _trained_model(0)
  x, y = _test_points(8)
  small = {"num_steps": 3, "num_target_classes": 2, "num_queries": 5}
  if attacks.is_cascade(name):
    overrides = {}
    for member in attacks.PRESETS[name]["cascade"]:
      overrides.update(member_overrides(member, small))
    eps, norm = attacks.PRESETS["apgd_ce"]["eps"], "linf"
  else:
    cfg = attacks.get_preset(name)
    eps, norm = cfg["eps"], cfg.get("norm", "linf")
    overrides = {k: v for k, v in small.items() if k in cfg}
    if "step_size_boundaries_and_scales" in cfg:
      overrides = {}
  x_adv = attacks.build_attack(name, **overrides)(f, x, y, jax.random.key(0))
  dist = np.asarray(threat_model.per_example_norm(x_adv - x, norm))
  assert np.all(dist <= eps + 1e-5)
  assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_preset_and_cascade_errors():
  f = _trained_model(0)
  x, y = _test_points(8)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="unknown attack preset"):
    attacks.build_attack("pgd_1000")
  with pytest.raises(ValueError, match="num_querys"):
    attacks.build_attack("apgd_ce", num_querys=3)
  with pytest.raises(ValueError, match="l-infinity only"):
    attacks.build_attack("square", norm="l2")
  with pytest.raises(ValueError, match="eps"):
    attacks.robust_accuracy(f, x, y, key, [("mine", lambda *a: a[1])])
  with pytest.raises(ValueError, match="eps"):
    attacks.robust_accuracy(f, x, y, key, "aa_lite", eps=-0.1)
  with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
    attacks.robust_accuracy(f, x + 2.0, y, key, "aa_lite")
  # Points outside the threat model are never counted as broken.
  cheat = lambda fn, xa, ya, k: jnp.clip(xa + 3 * EPS, 0.0, 1.0)
  with pytest.warns(UserWarning, match="outside"):
    rep = attacks.robust_accuracy(f, x, y, key, [("cheat", cheat)], eps=EPS,
                                  run_checks=False)
  assert rep.stages[0].num_broken == 0
  assert rep.num_robust == rep.num_clean_correct


@pytest.mark.slow
def test_shares_with_example_offset_add_up_to_the_whole_set():
  # One process's contiguous share keeps its examples' global indices (and so
  # their attack keys): the shares' robust points are the whole set's.
  f = _trained_model(0)
  x, y = _test_points(60)
  key = jax.random.key(5)
  kw = dict(eps=EPS, batch_size=32, run_checks=False,
            attacks=["apgd_ce", "square"],
            overrides={"num_steps": 5, "num_queries": 30})
  whole = attacks.robust_accuracy(f, x, y, key, **kw)
  first = attacks.robust_accuracy(f, x[:25], y[:25], key, **kw)
  second = attacks.robust_accuracy(f, x[25:], y[25:], key,
                                   example_offset=25, **kw)
  np.testing.assert_array_equal(
      np.concatenate([first.robust, second.robust]), whole.robust)
  assert first.num_robust + second.num_robust == whole.num_robust
  for s1, s2, s in zip(first.stages, second.stages, whole.stages,
                       strict=True):
    assert s1.num_attacked + s2.num_attacked == s.num_attacked
    assert s1.num_broken + s2.num_broken == s.num_broken
  with pytest.raises(ValueError, match="example_offset=-1"):
    attacks.robust_accuracy(f, x, y, key, example_offset=-1, **kw)


@pytest.mark.slow
def test_early_exit_gives_the_exhaustive_robust_set_with_less_work():
  f = _trained_model(0)
  x, y = _test_points(48)
  small = {"num_steps": 6, "num_target_classes": 3, "num_queries": 30}
  kw = dict(eps=EPS, batch_size=32, overrides=small, run_checks=False)
  fast = attacks.robust_accuracy(f, x, y, jax.random.key(5), "aa_standard",
                                 **kw)
  full = attacks.robust_accuracy(f, x, y, jax.random.key(5), "aa_standard",
                                 early_exit=False, **kw)
  np.testing.assert_array_equal(fast.robust, full.robust)
  assert [s.name for s in fast.stages] == ["apgd_ce", "apgd_t", "fab_t",
                                           "square"]
  assert 0 < fast.num_robust < fast.num_clean_correct
  # Exhaustive: every clean-correct point gets every run of every attack.
  for s in full.stages:
    assert s.num_attacked == full.num_clean_correct
    assert s.num_point_runs == s.num_attacked * s.num_runs
  assert sum(s.num_point_runs for s in fast.stages) < sum(
      s.num_point_runs for s in full.stages)
  # Targets after the first see only the points the earlier ones left.
  apgd_t = fast.stages[1]
  assert apgd_t.num_runs == 3
  assert apgd_t.num_point_runs < 3 * apgd_t.num_attacked


def test_parametrised_logits_fn_gives_the_same_report_and_compiles_once():
  """A jax.tree_util.Partial logits_fn (parameters as leaves) gives the
  closure's robust set, and a second network of the same structure reuses
  every compiled attack of the shared jit_cache (APGD-T: one program per
  target run; APGD-CE: one program for the whole attack)."""
  x, y = _test_points(40)
  kw = dict(eps=EPS, batch_size=32, attacks=["apgd_ce", "apgd_t"],
            overrides={"num_steps": 5, "num_target_classes": 2})
  closure = _trained_model(0)
  partial = jax.tree_util.Partial(_apply_digits_mlp, _trained_params(0))
  a = attacks.robust_accuracy(closure, x, y, jax.random.key(3), **kw)
  cache = {}
  b = attacks.robust_accuracy(partial, x, y, jax.random.key(3),
                              jit_cache=cache, **kw)
  np.testing.assert_array_equal(a.robust, b.robust)
  np.testing.assert_array_equal(a.broken_by, b.broken_by)
  assert a.sanity.num_zero_gradient == b.sanity.num_zero_gradient
  assert 0 < b.num_robust < b.num_clean_correct
  size = len(cache)
  other = jax.tree_util.Partial(_apply_digits_mlp, _trained_params(1))
  c = attacks.robust_accuracy(other, x, y, jax.random.key(3),
                              jit_cache=cache, **kw)
  assert len(cache) == size > 0
  assert not np.array_equal(c.broken_by, b.broken_by)  # another network
  # One trace (compilation) per shape of each cached program, not per network.
  for fn in cache.values():
    assert fn._cache_size() <= 2  # a full batch and one padded bucket


def test_report_states_each_attack_configuration():
  import json
  f = _trained_model(0)
  x, y = _test_points(16)
  report = attacks.robust_accuracy(
      f, x, y, jax.random.key(0), "aa_standard", eps=EPS, run_checks=True,
      overrides={"num_steps": 3, "num_target_classes": 2, "num_queries": 5})
  out = json.loads(json.dumps(report.to_dict()))
  desc = out["attack_configuration"]
  assert len(desc) == 4
  assert desc[0].startswith("apgd_ce: APGD-CE (") and "num_steps=3" in desc[0]
  assert "num_target_classes=2" in desc[1] and "num_target_classes=2" in desc[2]
  assert desc[2].startswith("fab_t: FAB-T (") and "eta=1.05" in desc[2]
  assert "num_queries=5" in desc[3] and "rescale_schedule=False" in desc[3]
  assert [s["gradient_free"] for s in out["stages"]] == [False, False, False,
                                                         True]
  assert out["sanity"]["num_forward_passes"] == 3
  assert "FAB-T" in report.summary()


def test_attacks_declare_their_properties_not_their_names():
  kinds = attacks.ATTACKS
  assert [k for k, v in kinds.items() if v.gradient_free] == ["square"]
  assert not kinds["fgsm"].takes_key and kinds["pgd"].takes_key
  assert kinds["apgd_targeted"].targeted and kinds["fab_targeted"].targeted
  built = attacks.build_attack("square", num_queries=5)
  assert built.gradient_free and built.num_runs(10) == 1
  assert attacks.build_attack("apgd_t").num_runs(10) == 9
  assert attacks.build_attack("fab_t").num_runs(4) == 3
  # A renamed gradient-free attack still counts as gradient-free.
  f = _trained_model(0)
  masked = lambda xa: f(jax.lax.stop_gradient(xa))
  x, y = _test_points(32)
  with pytest.warns(UserWarning, match="gradient masking"):
    report = attacks.robust_accuracy(
        masked, x, y, jax.random.key(0),
        ["apgd_ce", ("random_search", attacks.build_attack(
            "square", eps=EPS, num_queries=100))], eps=EPS,
        overrides={"num_steps": 3})
  assert report.stages[1].gradient_free
  assert report.gradient_masking_suspected


def test_square_schedule_is_autoattack_standard_unless_rescaled():
  from compsum_jax.attacks import square
  p = lambda i, rescale: float(square.p_selection(
      0.8, jnp.asarray(i), 5000, rescale))
  # Unscaled: halvings after iterations 10, 50, 200, 500, 1000, ...
  assert p(10, False) == pytest.approx(0.8)
  assert p(11, False) == pytest.approx(0.4)
  assert p(600, False) == pytest.approx(0.8 / 2 ** 4)
  assert p(4999, False) == pytest.approx(0.8 / 2 ** 7)  # i in (4000, 6000]
  # Rescaled to Q = 5000: i counts double (i/Q·10⁴).
  assert p(6, True) == pytest.approx(0.4)
  assert p(600, True) == pytest.approx(0.8 / 2 ** 5)
  assert p(4999, True) == pytest.approx(0.8 / 2 ** 9)


@pytest.mark.parametrize("name,num_runs,cfg", [
    ("apgd", 2, dict(loss="ce", num_restarts=2)),
    ("apgd_targeted", 6, dict(num_target_classes=3, num_restarts=2)),
    ("fab_targeted", 6, dict(num_target_classes=3, num_restarts=2)),
])
def test_one_run_per_example_equals_each_run_alone(name, num_runs, cfg):
  """only_run as an array (example b makes run only_run[b]) gives, example
  by example, what the run alone (a scalar only_run) gives: the batched
  runs of the early-exit evaluation change nothing but the batch."""
  rng = np.random.default_rng(2)
  weights = rng.normal(size=(64, 10)).astype(np.float32)
  f = lambda x: x.reshape(x.shape[0], -1) @ weights
  x = (0.3 + 0.4 * rng.random((12, 8, 8, 1))).astype(np.float32)
  y = np.asarray(f(x)).argmax(-1).astype(np.int32)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  keys = threat_model.example_keys(jax.random.key(4), len(y))
  run_fn = {"apgd": attacks.apgd_run,
            "apgd_targeted": attacks.apgd_targeted_run,
            "fab_targeted": attacks.fab_targeted_run}[name]
  kw = dict(eps=0.05, num_steps=4, **cfg)
  runs = np.arange(len(y)) % num_runs
  rng.shuffle(runs)
  mixed = run_fn(f, xj, yj, keys, only_run=jnp.asarray(runs), **kw)
  for j in range(num_runs):
    alone = run_fn(f, xj, yj, keys, only_run=j, **kw)
    mine = runs == j
    np.testing.assert_allclose(np.asarray(mixed.x_adv)[mine],
                               np.asarray(alone.x_adv)[mine], atol=1e-6)
  with pytest.raises(ValueError, match="only_run"):
    run_fn(f, xj, yj, keys, only_run=jnp.full(len(y), num_runs), **kw)
  with pytest.raises(ValueError, match="only_run"):
    run_fn(f, xj, yj, keys, only_run=jnp.zeros(3, jnp.int32), **kw)


def test_batched_runs_give_the_one_at_a_time_outcome():
  """Early exit with several runs sharing a batch (few points left) gives
  the robust set, the breaking stage and the adversarial points of one run
  at a time, and attacks each (point, run) pair at most once."""
  f = _trained_model(0)
  x, y = _test_points(40)
  kw = dict(eps=EPS, run_checks=False, attacks=["apgd_ce", "apgd_t"],
            overrides={"num_steps": 5, "num_target_classes": 4})
  one = attacks.robust_accuracy(f, x, y, jax.random.key(5), batch_size=8,
                                **kw)  # left > batch_size/2: one at a time
  grouped = attacks.robust_accuracy(f, x, y, jax.random.key(5),
                                    batch_size=256, **kw)
  np.testing.assert_array_equal(grouped.robust, one.robust)
  np.testing.assert_array_equal(grouped.broken_by, one.broken_by)
  np.testing.assert_allclose(grouped.x_adv, one.x_adv, atol=1e-6)
  t_one, t_grouped = one.stages[1], grouped.stages[1]
  assert 0 < t_one.num_broken  # the targets break points: a real check
  assert t_one.num_point_runs < 4 * t_one.num_attacked  # early exit
  # Sharing a batch can only add (point, run) pairs on points broken early.
  assert (t_one.num_point_runs <= t_grouped.num_point_runs
          <= 4 * t_grouped.num_attacked)


def test_chunks_split_over_threads_give_the_same_values():
  """On a multi-core CPU host chunks run as equal parts in several threads:
  the rows come back complete and in order (padding included)."""
  from compsum_jax.attacks import evaluation
  calls = []

  def fn(a, b):
    calls.append(a.shape[0])
    return jnp.asarray(a) * 2.0 + jnp.asarray(b)[:, None]

  rng = np.random.default_rng(0)
  for total in (5, 17, 40, 64, 100, 300):
    a = rng.random((total, 3)).astype(np.float32)
    b = rng.random(total).astype(np.float32)
    calls.clear()
    out = evaluation._batched(fn, [a, b], 64)
    np.testing.assert_allclose(out, a * 2.0 + b[:, None], rtol=1e-6)
    assert max(calls) <= 64
    parts = evaluation.cpu_thread_parts(64)
    if total in (40, 64):  # one chunk of 64 rows, in equal parts
      assert calls == [64 // parts] * parts
    if jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2:
      assert parts >= 2


@pytest.mark.parametrize("rows,cores,parts", [
    (512, 2, 2), (512, 1, 1), (512, 16, 16), (512, 64, 32), (64, 16, 4),
    (16, 2, 1), (32, 2, 2), (24, 8, 1), (96, 8, 4), (8, 4, 1)])
def test_cpu_thread_parts(rows, cores, parts):
  from compsum_jax.attacks import evaluation
  assert evaluation.CPU_MIN_ROWS_PER_THREAD == 16
  assert evaluation.cpu_thread_parts(rows, cores) == parts


@pytest.mark.parametrize("num_points,runs_left,batch_size", [
    (64, 9, 512), (65, 9, 512), (5, 9, 256), (500, 9, 256), (1, 3, 8),
    (20, 3, 32), (7, 100, 1024), (300, 2, 256)])
def test_runs_per_batch_takes_the_fewest_padded_rows_per_run(
    num_points, runs_left, batch_size):
  from compsum_jax.attacks import evaluation

  def padded(count):  # full batches, then the smallest bucket 2^-k·B ≥ rest
    full, rest = divmod(count, batch_size)
    ladder = [batch_size >> k for k in range(20)
              if batch_size >> k >= evaluation.MIN_BUCKET] or [batch_size]
    return full * batch_size + (min(s for s in ladder if s >= rest)
                                if rest else 0)

  g = evaluation.runs_per_batch(num_points, runs_left, batch_size)
  assert 1 <= g <= runs_left
  assert g == 1 or g * num_points <= batch_size
  feasible = [h for h in range(1, runs_left + 1)
              if h == 1 or h * num_points <= batch_size]
  best = min(padded(h * num_points) / h for h in feasible)
  assert padded(g * num_points) / g == best
  assert g == max(h for h in feasible if padded(h * num_points) / h == best)


def test_second_call_with_the_same_jit_cache_compiles_nothing_new():
  """A plain callable: the sanity checks' gradient and every attack are
  kept in the caller's jit_cache, so a second call adds no compilation."""
  f = _trained_model(0)
  x, y = _test_points(24)
  cache = {}
  kw = dict(eps=EPS, batch_size=32, attacks=["apgd_ce"], jit_cache=cache,
            overrides={"num_steps": 3})
  attacks.robust_accuracy(f, x, y, jax.random.key(0), **kw)
  assert any("sanity_gradient_l1" in k for k in cache if isinstance(k, tuple))
  sizes = {k: v._cache_size() for k, v in cache.items()}
  attacks.robust_accuracy(f, x, y, jax.random.key(1), **kw)
  assert {k: v._cache_size() for k, v in cache.items()} == sizes
