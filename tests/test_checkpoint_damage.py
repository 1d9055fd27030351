"""Checkpoint damage: interrupted deletions, corrupted files, fallback.

Damage is made the way it happens: files of an old step unlinked one by one
and the directories left (orbax's deleter unlinks files in parallel and then
removes the directories, so SIGKILL in between leaves exactly that), a data
file truncated or zeroed, ``_METADATA`` emptied, the meta JSON truncated.
One test does it for real: a training process (tests/train_resume_script.py)
is SIGKILLed while orbax deletes an old step, then resumed.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import process_helpers
import pytest

from compsum_jax import models, training
from compsum_jax.training import checkpoint as checkpoint_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

# A failed restore (the damage under test) leaves orbax's pending read
# coroutines to be closed mid-read; those "Exception ignored" reports are
# expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


def _state(seed=0):
  model = models.get_model("mlp", 10, hidden_sizes=(32,))
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      10)
  return training.init_train_state(model, optimizer, rng=seed,
                                   input_shape=(8, 8, 1))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def _assert_same(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _save_steps(directory, steps, keep=10):
  """Saves distinct states at ``steps`` (metric = step); returns them."""
  store = checkpoint_lib.CheckpointStore(directory, keep=keep,
                                         best_metric="acc", async_save=False)
  saved = {}
  for step in steps:
    state = _state(seed=step).replace(step=step)
    store.save(state, epoch=step, metrics={"acc": float(step % 3)})
    saved[step] = state
  store.close()
  return saved


def _files(step_dir):
  return sorted(p for p in pathlib.Path(step_dir).rglob("*") if p.is_file())


def _largest_data_file(step_dir):
  files = [p for p in _files(pathlib.Path(step_dir) / "state")
           if not p.name.startswith("_") and "manifest" not in p.name]
  return max(files, key=lambda p: p.stat().st_size)


def test_half_deleted_old_step_is_cleaned_and_best_survives(tmp_path):
  directory = tmp_path / "checkpoints"
  saved = _save_steps(directory, [1, 2, 3, 4])
  # An interrupted rmtree of step 1: some files unlinked (among them the
  # meta item), directories kept.
  for i, path in enumerate(_files(directory / "1")):
    if i % 2 == 0 or "meta" in path.parts:
      path.unlink()
  assert (directory / "1").is_dir()
  messages = []
  store = checkpoint_lib.CheckpointStore(directory, best_metric="acc",
                                         log=messages.append)
  try:
    assert not (directory / "1").exists()
    assert store.all_steps() == [2, 3, 4]
    assert any(str(directory / "1") in m and "interrupted deletion" in m
               for m in messages), messages
    # best by acc = step % 3 is step 2 (ties go to the later step)
    assert store.best_step() == 2
    state, meta = store.restore(_state(), store.best_step())
    _assert_same(state, saved[2])
    assert meta["metrics"] == {"acc": 2.0}
  finally:
    store.close()


def _corrupt(step_dir, kind):
  step_dir = pathlib.Path(step_dir)
  if kind == "truncated_data":
    path = _largest_data_file(step_dir)
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)
  elif kind == "zeroed_block":
    path = _largest_data_file(step_dir)
    size = path.stat().st_size
    with open(path, "r+b") as f:
      f.seek(size // 4)
      f.write(b"\0" * (size // 2))
  elif kind == "empty_metadata":
    (step_dir / "state" / "_METADATA").write_bytes(b"")
  elif kind == "truncated_meta_json":
    meta_file = step_dir / "meta" / "metadata"  # orbax JsonSave's file
    text = meta_file.read_bytes()
    meta_file.write_bytes(text[:len(text) // 2])
  elif kind == "missing_state":
    for path in _files(step_dir / "state"):
      path.unlink()
  else:
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated_data", "zeroed_block",
                                  "empty_metadata", "truncated_meta_json",
                                  "missing_state"])
@pytest.mark.slow
def test_corrupted_newest_falls_back_to_previous(tmp_path, kind):
  directory = tmp_path / "checkpoints"
  saved = _save_steps(directory, [1, 2, 3])
  _corrupt(directory / "3", kind)
  messages = []
  store = checkpoint_lib.CheckpointStore(directory, keep=3,
                                         log=messages.append)
  try:
    restored = store.restore_latest_intact(_state())
    assert restored is not None
    state, meta, step = restored
    assert step == 2 and meta["step"] == 2
    _assert_same(state, saved[2])
    text = "\n".join(messages)
    assert str(directory / "3") in text, text
    # The damaged step is out of the way (kept aside for inspection) and the
    # resumed run can save step 3 again.
    assert not (directory / "3").exists()
    assert len(os.listdir(str(directory) + ".damaged")) == 1
    assert store.all_steps() == [1, 2]
    store.save(saved[3], epoch=3)
    store.wait_until_finished()
    assert store.all_steps() == [1, 2, 3]
    again, _ = store.restore(_state(), 3)
    _assert_same(again, saved[3])
  finally:
    store.close()


@pytest.mark.slow
def test_no_loadable_checkpoint_raises_naming_paths_and_moves_nothing(
    tmp_path):
  directory = tmp_path / "checkpoints"
  _save_steps(directory, [1, 2])
  other_model = training.init_train_state(
      models.get_model("mlp", 10, hidden_sizes=(7,)),
      training.make_optimizer({"name": "sgd", "learning_rate": 0.1}, 10),
      rng=0, input_shape=(8, 8, 1))
  store = checkpoint_lib.CheckpointStore(directory, log=lambda m: None)
  try:
    with pytest.raises(checkpoint_lib.CheckpointRestoreError) as info:
      store.restore_latest_intact(other_model)
    assert str(directory / "1") in str(info.value)
    assert str(directory / "2") in str(info.value)
    assert store.all_steps() == [1, 2]
    assert not os.path.exists(str(directory) + ".damaged")
  finally:
    store.close()


def test_empty_store_restores_nothing(tmp_path):
  store = checkpoint_lib.CheckpointStore(tmp_path / "checkpoints")
  try:
    assert store.restore_latest_intact(_state()) is None
  finally:
    store.close()


def _train_script(workdir, *extra):
  return [sys.executable, str(REPO / "tests" / "train_resume_script.py"),
          "--workdir", str(workdir), "--epochs", "2", *extra]


@pytest.mark.slow
def test_sigkill_while_orbax_deletes_a_step_then_resume_is_exact(tmp_path):
  """kill -9 in the middle of orbax's deletion of an old checkpoint (the
  child's deleter stops halfway and hangs: a deterministic moment), then the
  same command resumes: the partial step is removed with a message and the
  final state equals an uninterrupted run's bit for bit."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
  ready = tmp_path / "deleting"
  reference = subprocess.Popen(_train_script(reference_dir), env=env,
                               cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
  victim = subprocess.Popen(
      _train_script(killed_dir, "--hang_in_deletion", str(ready)), env=env,
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 240
    while not ready.exists():
      assert victim.poll() is None, victim.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint was deleted"
      time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
  finally:
    if victim.poll() is None:
      victim.kill()
    victim.stderr.close()
  half = pathlib.Path(ready.read_text(encoding="utf-8"))
  checkpoints = killed_dir / "checkpoints"
  assert half.parent == checkpoints and half.is_dir()
  # Really half-deleted: parts of the checkpoint gone, others still there.
  assert checkpoint_lib.missing_checkpoint_parts(half)
  assert _files(half)
  newer = [int(p.name) for p in checkpoints.iterdir()
           if p.name.isdigit() and int(p.name) > int(half.name)]
  assert newer, "the deletion runs after a newer checkpoint is committed"
  assert not (killed_dir / "final_state.npz").exists()

  restarted = subprocess.run(_train_script(killed_dir), env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=240)
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  output = restarted.stdout + restarted.stderr
  assert f"checkpoint {half} was partly deleted" in output, output[-3000:]
  assert not half.exists()
  _, ref_err = reference.communicate(timeout=240)
  assert reference.returncode == 0, ref_err.decode()[-3000:]
  process_helpers.assert_saved_states_equal(
      killed_dir / "final_state.npz", reference_dir / "final_state.npz")
  # Every kept checkpoint is whole, and the best one (whose metadata broke
  # resumes before) ranks and reads without a damage report.
  messages = []
  store = checkpoint_lib.CheckpointStore(checkpoints,
                                         best_metric="test_accuracy",
                                         log=messages.append)
  try:
    steps = store.all_steps()
    assert steps and all(
        not checkpoint_lib.missing_checkpoint_parts(checkpoints / str(s))
        for s in steps)
    best = store.best_step()
    assert best in steps
    assert "test_accuracy" in store.metadata(best)["metrics"]
    assert messages == []
  finally:
    store.close()
