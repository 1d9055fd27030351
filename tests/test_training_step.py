"""Tests of the training core: optimizer, schedules, THE train step, eval.

Every expected value is computed independently: NumPy float64
re-implementations of the update rules (PyTorch's SGD/AdamW formulas), the
closed-form gradient of ℓ_τ for a linear model, separate single-member runs
for the vmapped step, and a 1-device run for the 4-device mesh.
"""

import json
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compsum_jax import training

REPO = pathlib.Path(__file__).resolve().parents[1]


class Linear(nn.Module):
  """h(x) = x W + b, no batch norm."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class TinyBatchNormNet(nn.Module):
  """Dense -> BatchNorm -> relu -> Dense."""

  @nn.compact
  def __call__(self, x, train=False):
    # No bias before batch norm: its gradient is 0 up to rounding, which Adam
    # would amplify to ±η and make runs incomparable.
    x = nn.Dense(8, use_bias=False)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(3)(nn.relu(x))


def _batch(rs, size=16, dim=6, num_classes=4):
  return {"image": rs.randn(size, dim).astype(np.float32),
          "label": rs.randint(0, num_classes, size).astype(np.int32)}


# ---------------------------------------------------------------- schedules


def _cosine_reference(t, lr, warmup, total):
  if t < warmup:
    return lr * t / warmup
  return lr * 0.5 * (1 + math.cos(math.pi * min(t - warmup, total - warmup) /
                                  (total - warmup)))


@settings(max_examples=25, deadline=None)
@given(lr=st.floats(1e-4, 2.0), total=st.integers(2, 500),
       warmup_frac=st.floats(0.0, 0.9), t_frac=st.floats(0.0, 1.2))
def test_cosine_schedule_matches_formula(lr, total, warmup_frac, t_frac):
  warmup = int(warmup_frac * total)
  t = int(t_frac * total)
  schedule = training.make_schedule(
      {"name": "sgd", "learning_rate": lr, "schedule": "cosine",
       "warmup_steps": warmup}, total)
  np.testing.assert_allclose(float(schedule(t)),
                             _cosine_reference(t, lr, warmup, total),
                             rtol=1e-5, atol=1e-7 * lr)


def test_piecewise_and_constant_schedules():
  cfg = {"name": "sgd", "learning_rate": 0.4, "schedule": "piecewise",
         "warmup_steps": 4,
         "boundaries_and_scales": {"0.5": 0.1, "75": 0.5}}
  schedule = training.make_schedule(cfg, 100)
  for t in [0, 1, 3, 4, 10, 49, 50, 51, 74, 75, 76, 99]:
    expected = 0.4 * min(1.0, t / 4)
    expected *= 0.1 if t >= 50 else 1.0
    expected *= 0.5 if t >= 75 else 1.0
    assert float(schedule(t)) == pytest.approx(expected, rel=1e-6), t
  constant = training.make_schedule(
      {"name": "adamw", "learning_rate": 0.01, "schedule": "constant"}, 10)
  assert [float(constant(t)) for t in (0, 5, 9)] == pytest.approx([0.01] * 3)


@pytest.mark.parametrize("update,match", [
    ({"name": "rmsprop"}, "name"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"momentum": 1.0}, "momentum"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"schedule": "linear"}, "schedule"),
    ({"warmup_steps": 100}, "warmup_steps"),
    ({"schedule": "piecewise"}, "boundaries_and_scales"),
    ({"schedule": "piecewise", "boundaries_and_scales": {"1.5": 0.1}},
     "boundary"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"weight_decay_mask": "bias"}, "weight_decay_mask"),
    ({"learnin_rate": 0.1}, "unknown"),
])
def test_optimizer_bad_config_raises(update, match):
  cfg = {"name": "sgd", "learning_rate": 0.1, **update}
  with pytest.raises(ValueError, match=match):
    training.make_optimizer(cfg, 100)


def test_optimizer_bad_total_steps_raises():
  with pytest.raises(ValueError, match="total_steps"):
    training.make_optimizer({"name": "sgd", "learning_rate": 0.1}, 0)


# ---------------------------------------------------------------- optimizers


def _run_optax(optimizer, params, grads_seq):
  opt_state = optimizer.init(params)
  for g in grads_seq:
    updates, opt_state = optimizer.update(g, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


def test_sgd_nesterov_weight_decay_matches_numpy_reference():
  # PyTorch SGD: g ← g + λw; buf ← βbuf + g; w ← w − η_t(g + β buf).
  rs = np.random.RandomState(1)
  total, lr, beta, wd, warmup = 12, 0.3, 0.9, 5e-3, 3
  w0 = rs.randn(5, 3)
  grads = [rs.randn(5, 3) for _ in range(total)]
  cfg = {"name": "sgd", "learning_rate": lr, "momentum": beta,
         "nesterov": True, "weight_decay": wd, "warmup_steps": warmup,
         "schedule": "cosine"}
  got = _run_optax(training.make_optimizer(cfg, total),
                   {"w": jnp.asarray(w0, jnp.float32)},
                   [{"w": jnp.asarray(g, jnp.float32)} for g in grads])["w"]
  w, buf = w0.copy(), np.zeros_like(w0)
  for t, g in enumerate(grads):
    g = g + wd * w
    buf = beta * buf + g
    w = w - _cosine_reference(t, lr, warmup, total) * (g + beta * buf)
  np.testing.assert_allclose(np.asarray(got), w, rtol=1e-5, atol=1e-5)


def test_adamw_with_clipping_matches_numpy_reference():
  # g ← g·min(1, c/‖g‖); PyTorch AdamW: w ← w − η(m̂/(√v̂ + ε) + λw).
  rs = np.random.RandomState(2)
  total, lr, wd, clip = 8, 0.05, 0.1, 1.5
  b1, b2, eps = 0.8, 0.99, 1e-6
  w0 = rs.randn(4)
  grads = [2 * rs.randn(4) for _ in range(total)]
  cfg = {"name": "adamw", "learning_rate": lr, "weight_decay": wd,
         "schedule": "constant", "grad_clip": clip, "b1": b1, "b2": b2,
         "eps": eps}
  got = _run_optax(training.make_optimizer(cfg, total),
                   {"w": jnp.asarray(w0, jnp.float32)},
                   [{"w": jnp.asarray(g, jnp.float32)} for g in grads])["w"]
  w, m, v = w0.copy(), np.zeros(4), np.zeros(4)
  for t, g in enumerate(grads, start=1):
    g = g * min(1.0, clip / np.linalg.norm(g))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    w = w - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * w)
  np.testing.assert_allclose(np.asarray(got), w, rtol=1e-5, atol=1e-6)


def test_weight_decay_mask_kernels_skips_biases():
  cfg = {"name": "sgd", "learning_rate": 1.0, "momentum": 0.0,
         "weight_decay": 0.5, "weight_decay_mask": "kernels",
         "schedule": "constant"}
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  zero = jax.tree.map(jnp.zeros_like, params)
  out = _run_optax(training.make_optimizer(cfg, 10), params, [zero])
  np.testing.assert_allclose(out["kernel"], 0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(out["bias"], np.ones(2))


# ---------------------------------------------------------------- train step


@pytest.mark.parametrize("tau", [0.0, 0.6, 1.0, 1.5, 2.0])
def test_train_step_gradient_matches_closed_form(tau):
  # ℓ_τ = expm1((1−τ)CE)/(1−τ): ∂ℓ/∂h = s_y^{τ−1}(s − e_y), docs/math.md (2.10),
  # so one plain SGD step on h = xW + b is W ← W − η/B Σ_i x_i ∂ℓ_i/∂h_i.
  rs = np.random.RandomState(3)
  batch = _batch(rs)
  model = Linear()
  lr = 0.7
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": lr, "momentum": 0.0,
       "schedule": "constant"}, 10)
  state = training.init_train_state(model, optimizer, rng=0, input_shape=(6,),
                                    hparams={"tau": tau})
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  step = training.make_train_step(training.classification_objective(model),
                                  optimizer)
  new_state, metrics = step(state, batch)

  x = batch["image"].astype(np.float64)
  y = batch["label"]
  h = x @ w + b
  s = np.exp(h - h.max(1, keepdims=True))
  s /= s.sum(1, keepdims=True)
  s_y = s[np.arange(len(y)), y]
  onehot = np.eye(4)[y]
  dh = s_y[:, None] ** (tau - 1) * (s - onehot) / len(y)
  ce = -np.log(s_y)
  loss = ce.mean() if tau == 1 else np.mean(np.expm1((1 - tau) * ce) /
                                            (1 - tau))
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
  np.testing.assert_allclose(new_state.params["Dense_0"]["kernel"],
                             w - lr * x.T @ dh, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_state.params["Dense_0"]["bias"],
                             b - lr * dh.sum(0), rtol=1e-5, atol=1e-6)
  grad_norm = np.sqrt(np.sum((x.T @ dh) ** 2) + np.sum(dh.sum(0) ** 2))
  np.testing.assert_allclose(float(metrics["grad_norm"]), grad_norm,
                             rtol=1e-4)
  assert int(new_state.step) == 1
  assert float(metrics["finite"]) == 1.0


def test_ema_and_batch_stats_follow_their_update_rules():
  rs = np.random.RandomState(4)
  model = TinyBatchNormNet()
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.1, "schedule": "constant"}, 10)
  state = training.init_train_state(model, optimizer, rng=1, input_shape=(6,),
                                    hparams={"tau": 1.0}, ema=True)
  batch = _batch(rs, num_classes=3)
  step = training.make_train_step(training.classification_objective(model),
                                  optimizer, ema_decay=0.75, donate=False)
  new_state, _ = step(state, batch)
  # ema ← d·ema + (1 − d)·params, with ema_0 = params_0.
  expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p,
                          state.ema_params, new_state.params)
  for got, want in zip(jax.tree.leaves(new_state.ema_params),
                       jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # BatchNorm running mean ← 0.9·mean + 0.1·(batch mean of the Dense output).
  kernel = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  batch_mean = (batch["image"] @ kernel).mean(0)
  np.testing.assert_allclose(
      new_state.batch_stats["BatchNorm_0"]["mean"], 0.1 * batch_mean,
      rtol=1e-5, atol=1e-6)


def _max_tree_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
@pytest.mark.slow
def test_vmapped_members_equal_separate_runs(optimizer_name):
  rs = np.random.RandomState(5)
  model = TinyBatchNormNet()
  steps = 4
  optimizer = training.make_optimizer(
      {"name": optimizer_name, "learning_rate": 0.05, "weight_decay": 1e-3,
       "warmup_steps": 1}, steps)
  taus = [0.0, 1.0, 1.5]
  seeds = [7, 8, 9]
  batches = [_batch(rs, num_classes=3) for _ in range(steps)]

  def augment(key, batch):
    # x ← x + 0.1·N(0, 1), a per-member random perturbation.
    return dict(batch, image=batch["image"] + 0.1 * jax.random.normal(
        key, batch["image"].shape))

  objective = training.classification_objective(model)
  members = training.init_member_states(
      model, optimizer, rngs=seeds, input_shape=(6,),
      hparams={"tau": taus}, ema=True)
  step_k = training.make_train_step(objective, optimizer, ema_decay=0.5,
                                    num_members=3, augment_fn=augment)
  for batch in batches:
    members, metrics_k = step_k(members, batch)
  step_1 = training.make_train_step(objective, optimizer, ema_decay=0.5,
                                    augment_fn=augment)
  for k, (tau, seed) in enumerate(zip(taus, seeds, strict=True)):
    state = training.init_train_state(model, optimizer, rng=seed,
                                      input_shape=(6,), hparams={"tau": tau},
                                      ema=True)
    for batch in batches:
      state, metrics = step_1(state, batch)
    member = training.unstack_states(members)[k]
    assert _max_tree_diff(member, state) < 1e-5
    assert float(metrics_k["loss"][k]) == pytest.approx(
        float(metrics["loss"]), rel=1e-5)
  # Different τ and seeds really give different members.
  assert _max_tree_diff(training.unstack_states(members)[0].params,
                        training.unstack_states(members)[1].params) > 1e-3


@pytest.mark.slow
def test_four_fake_devices_match_one_device(run_on_fake_cpu_devices):
  proc = run_on_fake_cpu_devices(
      [str(REPO / "tests" / "train_mesh_script.py")], timeout=300)
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["num_devices"] == 4 and out["mesh_size"] == 4
  for name in ("single", "members", "member_mesh_4x1", "member_mesh_2x2"):
    result = out[name]
    assert result["devices_1"] == [1]
    assert result["devices_4"] == [4]  # every device of the mesh takes part
    assert result["param_scale"] > 0.1
    for field in ("params", "batch_stats", "ema_params", "opt_state",
                  "loss"):
      assert result[field] < 1e-5, (name, field, result[field])
    e1, e4 = result["eval_1"], result["eval_4"]
    assert e1["correct"] == e4["correct"]  # exact integer counts
    assert e1["count"] == e4["count"]
    assert np.all(np.asarray(e1["count"]) == 13)
    np.testing.assert_allclose(e1["loss"], e4["loss"], rtol=1e-5)
  # ('data',) mesh: state replicated (all 3 members on every device), XLA
  # all-reduces gradients; ('members',) mesh: one member per device and no
  # collective at all; ('members', 'data') 2×2: 2 members per device,
  # all-reduces within each data group.
  assert out["members"]["local_members"] == [3]
  assert out["members"]["collectives"] > 0
  assert out["member_mesh_4x1"]["local_members"] == [1]
  assert out["member_mesh_4x1"]["collectives"] == 0
  assert out["member_mesh_2x2"]["local_members"] == [2]
  assert out["member_mesh_2x2"]["collectives"] > 0
  fit = out["fit"]  # fit() with the mesh vs without, then resumed
  assert fit["steps"] == 8 and fit["params"] < 1e-5
  assert fit["resumed_from_step"] == 8 and fit["resumed_equal"] == 0.0
  assert fit["restored_devices"] == 4
  errors = out["errors"]  # bad member counts name the value
  assert "num_members=3" in errors["step"] and "'members'" in errors["step"]
  assert "multiple of 2" in errors["place"]
  assert "data_shards=2" in errors["mesh"]
  fit = out["fit_member_mesh"]  # 4 members on a 2×2 ('members', 'data') mesh
  assert fit["steps"] == 8 and fit["params"] < 1e-5
  assert fit["resumed_from_step"] == 8 and fit["resumed_equal"] == 0.0
  assert fit["restored_devices"] == 4
  assert fit["restored_local_members"] == [2]  # restored member-split
  for fit in (out["fit"], out["fit_member_mesh"]):  # reopened on 1 device
    assert fit["resumed_on_one_device_equal"] == 0.0
    assert fit["resumed_on_one_device_devices"] == 1


def test_nonfinite_loss_is_flagged():
  model = Linear()
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.1, "schedule": "constant"}, 10)
  state = training.init_train_state(model, optimizer, rng=0, input_shape=(6,),
                                    hparams={"tau": 1.0})
  step = training.make_train_step(training.classification_objective(model),
                                  optimizer)
  batch = _batch(np.random.RandomState(0))
  batch["image"][3, 2] = np.nan
  _, metrics = step(state, batch)
  assert float(metrics["finite"]) == 0.0


def test_train_step_bad_arguments_raise():
  model = Linear()
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.1}, 10)
  objective = training.classification_objective(model)
  with pytest.raises(ValueError, match="ema_decay"):
    training.make_train_step(objective, optimizer, ema_decay=1.0)
  with pytest.raises(ValueError, match="num_members"):
    training.make_train_step(objective, optimizer, num_members=0)
  state = training.init_train_state(model, optimizer, rng=0, input_shape=(6,),
                                    hparams={"tau": 1.0})
  batch = _batch(np.random.RandomState(0))
  with pytest.raises(ValueError, match="ema_params"):
    training.make_train_step(objective, optimizer, ema_decay=0.9)(state, batch)
  with pytest.raises(ValueError, match="num_members=2"):
    training.make_train_step(objective, optimizer, num_members=2)(state, batch)

  def bad_objective(params, batch_stats, batch, rng):
    return objective(params, batch_stats, batch, rng)[0], {}

  with pytest.raises(ValueError, match="aux"):
    training.make_train_step(bad_objective, optimizer)(state, batch)
  no_tau = training.init_train_state(model, optimizer, rng=0,
                                     input_shape=(6,))
  with pytest.raises(ValueError, match="tau"):
    training.make_train_step(objective, optimizer)(no_tau, batch)
  with pytest.raises(ValueError, match="hparams"):
    training.init_train_state(model, optimizer, rng=0, input_shape=(6,),
                              hparams={"tau": float("nan")})
  with pytest.raises(ValueError, match="one value per member"):
    training.init_member_states(model, optimizer, rngs=[0, 1],
                                input_shape=(6,), hparams={"tau": [1.0]})


# ---------------------------------------------------------------- evaluation


def test_evaluate_exact_counts_with_padded_last_batch():
  rs = np.random.RandomState(6)
  model = TinyBatchNormNet()
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      10)
  state = training.init_train_state(model, optimizer, rng=2, input_shape=(6,),
                                    hparams={"tau": 0.5})
  n, batch_size = 37, 8
  images = rs.randn(n, 6).astype(np.float32)
  labels = rs.randint(0, 3, n).astype(np.int32)
  batches = []
  for start in range(0, n, batch_size):
    img = np.full((batch_size, 6), np.nan, np.float32)  # padding is NaN
    lab = np.zeros(batch_size, np.int32)
    mask = np.zeros(batch_size, np.float32)
    stop = min(start + batch_size, n)
    img[:stop - start] = images[start:stop]
    lab[:stop - start] = labels[start:stop]
    mask[:stop - start] = 1.0
    batches.append({"image": img, "label": lab, "mask": mask})
  eval_step = training.make_eval_step(training.classification_eval_fn(model))
  result = training.evaluate(eval_step, state, batches)

  logits = np.asarray(model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images,
      train=False), np.float64)
  correct = int(np.sum(np.argmax(logits, 1) == labels))
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + \
      logits.max(1)
  ce = lse - logits[np.arange(n), labels]
  comp_sum = np.expm1(0.5 * ce) / 0.5  # ℓ_τ at τ = 0.5
  assert int(result["count"]) == n
  assert int(result["correct_sum"]) == correct
  assert result["correct"] == pytest.approx(correct / n)
  assert result["cross_entropy"] == pytest.approx(ce.mean(), rel=1e-5)
  assert result["loss"] == pytest.approx(comp_sum.mean(), rel=1e-5)


def test_eval_step_needs_mask():
  model = Linear()
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      10)
  state = training.init_train_state(model, optimizer, rng=0, input_shape=(6,),
                                    hparams={"tau": 1.0})
  eval_step = training.make_eval_step(training.classification_eval_fn(model))
  with pytest.raises(ValueError, match="mask"):
    training.evaluate(eval_step, state, [_batch(np.random.RandomState(0))])


def test_init_train_state_equals_manual_init():
  # init_train_state = split the key, model.init on zeros, create_train_state.
  model = TinyBatchNormNet()
  optimizer = training.make_optimizer(
      {"name": "adamw", "learning_rate": 0.1}, 10)
  got = training.init_train_state(model, optimizer, rng=11, input_shape=(6,),
                                  hparams={"tau": 0.3}, ema=True)
  init_key, state_key = jax.random.split(jax.random.key(11))
  variables = model.init(init_key, jnp.zeros((1, 6)), train=False)
  want = training.create_train_state(
      variables["params"], optimizer, rng=state_key,
      batch_stats=variables["batch_stats"], hparams={"tau": 0.3}, ema=True)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(got) == jax.tree.structure(want)


_MANY_STEPS_SCRIPT = """
import jax, numpy as np, optax
from compsum_jax import models, training
model = models.get_model("mlp", 10, hidden_sizes=(64,))
opt = training.make_optimizer({"name": "sgd", "learning_rate": 0.01}, 10**6)
mesh = training.make_data_mesh()
state = training.replicate(training.init_train_state(
    model, opt, rng=0, input_shape=(8,), hparams={"tau": 1.0}), mesh)
step = training.make_train_step(training.classification_objective(model),
                                opt, mesh=mesh)
rs = np.random.RandomState(0)
batch = training.shard_batch({"image": rs.rand(32, 8).astype(np.float32),
                              "label": rs.randint(0, 10, 32)}, mesh)
for _ in range(1500):  # back to back, never read on the host
  state, metrics = step(state, batch)
print("done", int(state.step), float(metrics["loss"]))
"""


@pytest.mark.slow
def test_many_async_steps_on_fake_cpu_devices_do_not_deadlock(
    run_on_fake_cpu_devices):
  """Without the per-step wait, XLA:CPU's all-reduce deadlocked here (abort
  after a 40 s rendezvous timeout) in every run of this session's repro."""
  proc = run_on_fake_cpu_devices(["-c", _MANY_STEPS_SCRIPT], timeout=300,
                                 light_compile=False)
  assert proc.stdout.split()[:2] == ["done", "1500"]


def test_member_mesh_checks_on_one_device():
  model = Linear()
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.1, "schedule": "constant"}, 10)
  objective = training.classification_objective(model)
  mesh = training.make_member_mesh(1)
  assert tuple(mesh.axis_names) == ("members", "data")
  assert training.mesh_axis_size(mesh, "members") == 1
  assert training.mesh_axis_size(None, "data") == 1
  with pytest.raises(ValueError, match="needs stacked members"):
    training.make_train_step(objective, optimizer, mesh=mesh)
  with pytest.raises(ValueError, match="member_shards=0"):
    training.make_member_mesh(0)
  too_many = len(jax.devices()) + 1
  with pytest.raises(ValueError, match=f"member_shards={too_many}"):
    training.make_member_mesh(too_many)
  bad = jax.make_mesh((1,), ("model",),
                      axis_types=(jax.sharding.AxisType.Auto,))
  with pytest.raises(ValueError, match="'model'"):
    training.make_train_step(objective, optimizer, mesh=bad, num_members=2)
