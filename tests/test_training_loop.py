"""Tests of fit(): accuracy on digits, records, checkpoints, resume, NaN stop.

The SIGKILL test runs tests/train_resume_script.py in subprocesses: one run is
killed with SIGKILL after a checkpoint exists and restarted on the same
workdir, and its final state must equal (bit for bit) an uninterrupted run's.
"""

import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import process_helpers
import pytest

from compsum_jax import data, models, training

REPO = pathlib.Path(__file__).resolve().parents[1]


def _read_event_scalars(directory):
  """{tag: [(step, value)]} parsed from TFRecord event files by hand."""
  from tensorboardX.proto import event_pb2

  scalars = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      # TFRecord: uint64 length, uint32 crc, payload, uint32 crc.
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      payload = raw[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(
            (event.step, value.simple_value))
  return scalars


@pytest.mark.slow
def test_fit_on_digits_exceeds_90_percent_and_keeps_records(tmp_path):
  dataset = data.load_dataset("digits", seed=0)
  model = models.get_model("cnn", dataset.num_classes, features=(16, 32),
                           strides=(1, 2), hidden_size=64,
                           use_batch_norm=True)
  batch_size, epochs = 64, 8
  steps_per_epoch = data.num_train_batches(dataset.train, batch_size)
  opt_config = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine",
                "warmup_steps": steps_per_epoch}
  config = {"optimizer": opt_config, "batch_size": batch_size,
            "epochs": epochs}
  total = steps_per_epoch * epochs
  optimizer = training.make_optimizer(opt_config, total)

  def fresh_state():
    return training.init_train_state(model, optimizer, rng=0,
                                     input_shape=dataset.input_shape,
                                     hparams={"tau": 1.0})

  train_step = training.make_train_step(
      training.classification_objective(model), optimizer)
  eval_step = training.make_eval_step(training.classification_eval_fn(model))

  def evaluate_fn(state, epoch):
    del epoch
    result = training.evaluate(eval_step, state,
                               data.eval_batches(dataset.test, 100))
    return {"test_accuracy": result["accuracy"],
            "test_correct": result["correct_sum"],
            "test_count": result["count"]}

  def train_batches(epoch):
    return data.train_batches(dataset.train, batch_size, seed=0, epoch=epoch)

  workdir = tmp_path / "run"
  keep = 2
  kwargs = dict(workdir=workdir, config=config, train_step=train_step,
                train_batches=train_batches, steps_per_epoch=steps_per_epoch,
                num_epochs=epochs, evaluate_fn=evaluate_fn,
                keep_checkpoints=keep, best_metric="test_accuracy",
                log_every_steps=10, progress=False,
                learning_rate_fn=training.make_schedule(opt_config, total))
  # fit consumes (donates) the state it is given, so each call gets a fresh
  # one; on resume it only serves as the template of the restored state.
  result = training.fit(state=fresh_state(), **kwargs)
  assert result.step == total and result.resumed_from_step is None

  # Accuracy recomputed from the final parameters with NumPy argmax.
  logits = model.apply({"params": result.state.params,
                        "batch_stats": result.state.batch_stats},
                       data.to_float_images(dataset.test.images), train=False)
  accuracy = np.mean(np.argmax(np.asarray(logits), 1) == dataset.test.labels)
  assert accuracy > 0.90
  final_eval = result.eval_history[-1][1]
  assert final_eval["test_count"] == dataset.test.num_examples
  assert final_eval["test_correct"] == round(accuracy * len(logits))

  # Records: config, environment, metrics.jsonl, TensorBoard.
  assert json.loads((workdir / "config.json").read_text()) == config
  env = json.loads((workdir / "environment.json").read_text())
  assert len(env) == 1
  assert env[0]["versions"]["jax"] == jax.__version__
  assert env[0]["device_count"] == len(jax.devices())
  records = training.read_metrics(workdir)
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps))
  assert all(s % 10 == 0 or s % steps_per_epoch == 0 for s in train_steps)
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["epoch"] for r in evals] == list(range(1, epochs + 1))
  first, last = ([r for r in records if r["split"] == "train"][i]
                 for i in (0, -1))
  assert last["loss"] < first["loss"]
  scalars = _read_event_scalars(workdir / "tensorboard")
  assert [s for s, _ in scalars["eval/test_accuracy"]] == [
      r["step"] for r in evals]
  np.testing.assert_allclose([v for _, v in scalars["eval/test_accuracy"]],
                             [r["test_accuracy"] for r in evals], rtol=1e-6)

  # Checkpoints: the last `keep` plus the best by test_accuracy.
  best = max(evals, key=lambda r: (r["test_accuracy"], r["step"]))["step"]
  ckpt_dir = workdir / "checkpoints"
  kept = sorted(int(p) for p in os.listdir(ckpt_dir) if p.isdigit())
  epoch_ends = [steps_per_epoch * e for e in range(1, epochs + 1)]
  assert kept == sorted(set(epoch_ends[-keep:]) | {best})
  store = training.CheckpointStore(ckpt_dir, keep=keep,
                                   best_metric="test_accuracy")
  assert store.best_step() == best == result.best_step
  best_state, meta = store.restore(fresh_state(), best)
  store.close()
  best_eval = evaluate_fn(best_state, None)
  recorded = [r for r in evals if r["step"] == best][0]
  assert best_eval["test_correct"] == recorded["test_correct"]
  # The one-call helper restores the same checkpoint.
  again, step, meta_again = training.restore_best_checkpoint(
      workdir, fresh_state(), "test_accuracy")
  assert step == best and meta_again == meta
  for a, b in zip(jax.tree.leaves(again.params),
                  jax.tree.leaves(best_state.params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert meta["metrics"]["test_accuracy"] == recorded["test_accuracy"]

  # A second fit on the finished workdir resumes at the end and does nothing.
  again = training.fit(state=fresh_state(), **kwargs)
  assert again.resumed_from_step == total and again.step == total
  for a, b in zip(jax.tree.leaves(again.state),
                  jax.tree.leaves(result.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(json.loads((workdir / "environment.json").read_text())) == 2

  # A different config in the same workdir is refused.
  with pytest.raises(ValueError, match="different config"):
    training.fit(state=fresh_state(),
                 **{**kwargs, "config": {**config, "epochs": 9}})


def _finished_steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(p) for p in os.listdir(ckpt) if p.isdigit())


def _script(workdir, sleep):
  return [sys.executable, str(REPO / "tests" / "train_resume_script.py"),
          "--workdir", str(workdir), "--epochs", "3", "--sleep", str(sleep)]


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_parameters(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
  reference = subprocess.Popen(_script(reference_dir, 0.0), env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
  victim = subprocess.Popen(_script(killed_dir, 0.04), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  # Kill once a mid-run checkpoint (past the first epoch's 5-step saves)
  # exists; the run takes ~3 s more after that.
  while not any(s >= 10 for s in _finished_steps(killed_dir)):
    assert victim.poll() is None, "the run ended before it could be killed"
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.02)
  victim.send_signal(signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL
  killed_at = max(_finished_steps(killed_dir))
  total = 3 * data.num_train_batches(data.load_dataset("digits").train, 64)
  assert 10 <= killed_at < total
  assert not (killed_dir / "final_state.npz").exists()

  restarted = subprocess.run(_script(killed_dir, 0.0), env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=240)
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  _, ref_err = reference.communicate(timeout=240)
  assert reference.returncode == 0, ref_err.decode()[-3000:]

  process_helpers.assert_saved_states_equal(
      killed_dir / "final_state.npz", reference_dir / "final_state.npz")

  env_records = json.loads((killed_dir / "environment.json").read_text())
  assert len(env_records) == 2
  resumed_from = env_records[1]["resumed_from_step"]
  assert killed_at <= resumed_from < total
  # metrics.jsonl holds one consistent history: no step logged twice.
  records = training.read_metrics(killed_dir)
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps))
  ref_records = training.read_metrics(reference_dir)
  for split in ("train", "eval"):
    ours = [r for r in records if r["split"] == split]
    theirs = [r for r in ref_records if r["split"] == split]
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
      assert x.get("loss") == y.get("loss")
      assert x.get("test_accuracy") == y.get("test_accuracy")


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_nonfinite_loss_stops_at_the_injected_step(tmp_path):
  # Two members; member 1 is poisoned (its loss becomes NaN) at step 13.
  rs = np.random.RandomState(0)
  images = rs.randn(40, 5).astype(np.float32)
  labels = rs.randint(0, 3, 40).astype(np.int32)
  batch_size, steps_per_epoch, bad_step = 8, 5, 13
  model = _TinyNet()
  base = training.classification_objective(model)

  def objective(params, batch_stats, batch, rng):
    loss, aux = base(params, batch_stats, batch, rng)
    poisoned = (batch["hparams"]["poison"] > 0) & (batch["poison"][0] > 0)
    return jnp.where(poisoned, jnp.nan, loss), aux

  def train_batches(epoch):
    for b in range(steps_per_epoch):
      step = epoch * steps_per_epoch + b
      idx = np.arange(b * batch_size, (b + 1) * batch_size)
      yield {"image": images[idx], "label": labels[idx],
             "poison": np.full(batch_size, float(step == bad_step),
                               np.float32)}

  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      50)
  state = training.init_member_states(
      model, optimizer, rngs=[0, 1], input_shape=(5,),
      hparams={"tau": [1.0, 1.0], "poison": [0.0, 1.0]})
  train_step = training.make_train_step(objective, optimizer, num_members=2)
  with pytest.raises(training.NonFiniteError) as info:
    training.fit(workdir=tmp_path, config={"x": 1}, state=state,
                 train_step=train_step, train_batches=train_batches,
                 steps_per_epoch=steps_per_epoch, num_epochs=10,
                 checkpoint_every_steps=3, log_every_steps=4,
                 progress=False)
  error = info.value
  assert error.step == bad_step and error.members == [1]
  assert f"step {bad_step}" in str(error) and "[1]" in str(error)
  kept = _finished_steps(tmp_path)
  # Saves at steps 3, 5, 6, 9, 10, 12 precede the NaN; none after it.
  assert max(kept) == 12 == error.last_checkpoint_step
  store = training.CheckpointStore(tmp_path / "checkpoints")
  good, _ = store.restore(state)
  store.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good.params))
  errors = [r for r in training.read_metrics(tmp_path)
            if r["split"] == "error"]
  assert errors == [{"step": bad_step, "split": "error",
                     "nonfinite_step": bad_step, "members": [1]}]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_checkpoint_store_keeps_last_k_and_best(tmp_path, mode):
  rs = np.random.RandomState(1 if mode == "max" else 2)
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      10)
  state = training.create_train_state({"w": jnp.zeros(3)}, optimizer, rng=0)
  store = training.CheckpointStore(tmp_path, keep=2, best_metric="score",
                                   best_mode=mode, async_save=False)
  scores = {}
  for step in range(1, 9):
    state = state.replace(step=jnp.asarray(step, jnp.int32),
                          params={"w": jnp.full(3, float(step))})
    if step % 3:  # steps 3 and 6 are saved without metrics
      scores[step] = float(rs.rand())
      store.save(state, epoch=step, metrics={"score": scores[step]})
    else:
      store.save(state, epoch=step)
  pick = max if mode == "max" else min
  best = pick(scores, key=scores.get)
  assert store.best_step() == best
  assert store.all_steps() == sorted({7, 8, best})
  restored, meta = store.restore(state, best)
  np.testing.assert_array_equal(restored.params["w"], np.full(3, best))
  assert meta["metrics"]["score"] == scores[best]
  store.close()
  with pytest.raises(FileNotFoundError, match="step 4"):
    training.CheckpointStore(tmp_path).restore(state, 4)


def test_fit_bad_arguments_raise(tmp_path):
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      10)
  state = training.create_train_state({"w": jnp.zeros(3)}, optimizer, rng=0)
  common = dict(workdir=tmp_path, config={}, state=state,
                train_step=lambda s, b: (s, {}), train_batches=lambda e: [],
                progress=False)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    training.fit(steps_per_epoch=0, num_epochs=1, **common)
  with pytest.raises(ValueError, match="num_epochs"):
    training.fit(steps_per_epoch=1, num_epochs=1.5, **common)
  with pytest.raises(ValueError, match="evaluate_fn"):
    training.fit(steps_per_epoch=1, num_epochs=1, best_metric="acc",
                 **common)
  with pytest.raises(ValueError, match="fewer than steps_per_epoch"):
    training.fit(steps_per_epoch=2, num_epochs=1, **common)
  with pytest.raises(ValueError, match="keep"):
    training.CheckpointStore(tmp_path / "c", keep=0)
  with pytest.raises(ValueError, match="not a primitive"):
    training.fit(steps_per_epoch=1, num_epochs=1,
                 **{**common, "workdir": tmp_path / "o",
                    "config": {"fn": len}})


def test_checkpoint_every_epochs_saves_on_period_evaluations_and_end(tmp_path):
  rs = np.random.RandomState(3)
  images = rs.randn(16, 5).astype(np.float32)
  labels = rs.randint(0, 3, 16).astype(np.int32)
  model = _TinyNet()
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      14)

  def train_batches(epoch):
    del epoch
    for b in range(2):
      yield {"image": images[8 * b:8 * (b + 1)],
             "label": labels[8 * b:8 * (b + 1)]}

  def run(workdir, num_epochs):
    state = training.init_train_state(model, optimizer, rng=0,
                                      input_shape=(5,), hparams={"tau": 1.0})
    return training.fit(
        workdir=workdir, config={"x": 1}, state=state,
        train_step=training.make_train_step(
            training.classification_objective(model), optimizer),
        train_batches=train_batches, steps_per_epoch=2,
        num_epochs=num_epochs, evaluate_fn=lambda s, e: {"e": e},
        eval_every_epochs=3, checkpoint_every_epochs=2, keep_checkpoints=100,
        progress=False, tensorboard=False)

  # Epoch ends saved: 2, 4, 6 (period), 3, 6 (evaluations), 7 (last).
  run(tmp_path / "a", 7)
  assert _finished_steps(tmp_path / "a") == [4, 6, 8, 12, 14]
  # A 5-epoch run: period epochs 2, 4, evaluation epoch 3, last epoch 5.
  run(tmp_path / "b", 5)
  assert _finished_steps(tmp_path / "b") == [4, 6, 8, 10]
  with pytest.raises(ValueError, match="checkpoint_every_epochs"):
    training.fit(workdir=tmp_path / "c", config={}, state=None,
                 train_step=None, train_batches=train_batches,
                 steps_per_epoch=2, num_epochs=1, checkpoint_every_epochs=0)


def test_read_metrics_drops_a_torn_last_line_only(tmp_path):
  good = [{"step": 1, "split": "train", "loss": 0.5},
          {"step": 2, "split": "eval", "accuracy": 0.9}]
  text = "".join(json.dumps(r) + "\n" for r in good)
  (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "spl')
  assert training.read_metrics(tmp_path) == good
  (tmp_path / "metrics.jsonl").write_text('{"step": 3, "spl\n' + text)
  with pytest.raises(ValueError, match="line 1 is not valid JSON"):
    training.read_metrics(tmp_path)
