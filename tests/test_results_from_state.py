"""Results from state: the final evaluation is committed with the final
checkpoint; metrics.jsonl is checked against it; damage and full disks.

One small run (MLP on digits, 3 epochs) is trained once per module and its
workdir copied for each test.
"""

import errno
import json
import shutil
import subprocess

import jax
import numpy as np
import pytest

from compsum_jax import data, models, training
from compsum_jax.training import errors as errors_lib
from compsum_jax.training import history as history_lib
from compsum_jax.training import metrics as metrics_lib

BATCH_SIZE = 128
EPOCHS = 3

# A failed restore (the damage under test) leaves orbax's pending read
# coroutines to be closed mid-read; those "Exception ignored" reports are
# expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


class _Run:
  """Builds and trains the small run; fresh states on demand."""

  def __init__(self, hidden=(32,)):
    self.dataset = data.load_dataset("digits", seed=0)
    self.model = models.get_model("mlp", self.dataset.num_classes,
                                  hidden_sizes=hidden)
    self.steps_per_epoch = data.num_train_batches(self.dataset.train,
                                                  BATCH_SIZE)
    self.optimizer = training.make_optimizer(
        {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9},
        self.steps_per_epoch * EPOCHS)
    self.train_step = training.make_train_step(
        training.classification_objective(self.model), self.optimizer)
    self.eval_step = training.make_eval_step(
        training.classification_eval_fn(self.model))

  def state(self):
    return training.init_train_state(self.model, self.optimizer, rng=0,
                                     input_shape=self.dataset.input_shape,
                                     hparams={"tau": 1.0})

  def evaluate(self, state, epoch):
    del epoch
    result = training.evaluate(self.eval_step, state,
                               data.eval_batches(self.dataset.test, 256))
    return {"test_accuracy": result["accuracy"],
            "test_correct": result["correct_sum"]}

  def fit(self, workdir, **kwargs):
    return training.fit(
        workdir=workdir, config={"run": "small"}, state=self.state(),
        train_step=self.train_step,
        train_batches=lambda e: data.train_batches(
            self.dataset.train, BATCH_SIZE, seed=0, epoch=e),
        steps_per_epoch=self.steps_per_epoch, num_epochs=EPOCHS,
        evaluate_fn=self.evaluate, keep_checkpoints=EPOCHS,
        best_metric="test_accuracy", log_every_steps=4, progress=False,
        tensorboard=False, **kwargs)


@pytest.fixture(scope="module")
def run():
  return _Run()


@pytest.fixture(scope="module")
def finished(run, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = run.fit(workdir)
  return workdir, result


@pytest.fixture
def copy(finished, tmp_path):
  workdir, result = finished
  target = tmp_path / "run"
  shutil.copytree(workdir, target)
  return target, result


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.mark.slow
def test_final_metrics_come_from_the_final_checkpoint(finished, run):
  workdir, result = finished
  # Independent recomputation: evaluate the returned final state again.
  again = run.evaluate(result.state, EPOCHS)
  assert result.final_metrics["test_accuracy"] == pytest.approx(
      float(again["test_accuracy"]), abs=0)
  assert result.final_metrics["epoch"] == EPOCHS
  step, final = history_lib.final_evaluation(workdir)
  assert step == run.steps_per_epoch * EPOCHS
  assert final == result.final_metrics
  check = history_lib.check_history(workdir)
  assert check.complete, check.problems
  assert check.expected_epochs == [1, 2, 3]
  assert [r["epoch"] for r in check.records] == [1, 2, 3]


@pytest.mark.slow
def test_lost_last_lines_are_reported_and_final_still_from_state(copy, run):
  workdir, result = copy
  path = workdir / metrics_lib.METRICS_FILE
  lines = path.read_text().splitlines(keepends=True)
  last_eval = max(i for i, line in enumerate(lines)
                  if json.loads(line)["split"] == "eval")
  # Lose the final evaluation and leave a torn line (killed mid-write).
  path.write_text("".join(lines[:last_eval]) + lines[last_eval][:20])
  log = metrics_lib.read_metrics_log(str(workdir))
  assert log.torn_last_line and log.exists
  assert metrics_lib.read_metrics(str(workdir)) == log.records
  check = history_lib.check_history(workdir)
  assert not check.complete
  text = " ".join(check.problems)
  assert "partial line" in text and "not at the final" in text
  # What is final still comes from the checkpoint, also when fit is called
  # again on the finished workdir (no retraining, no earlier epoch).
  again = run.fit(workdir)
  assert again.resumed_from_step == result.step
  assert again.eval_history == []
  assert again.final_metrics == result.final_metrics


@pytest.mark.slow
def test_deleted_and_truncated_history_reported_and_rebuilt(copy, run):
  workdir, result = copy
  path = workdir / metrics_lib.METRICS_FILE
  original = [json.loads(line) for line in path.read_text().splitlines()]
  evals = [r for r in original if r["split"] == "eval"]
  # Truncated mid-run: the epoch-1 evaluation lost.
  kept = [r for r in original if not (r["split"] == "eval" and
                                      r["epoch"] == 1)]
  path.write_text("".join(json.dumps(r) + "\n" for r in kept))
  check = history_lib.check_history(workdir)
  assert check.missing_epochs == [1]
  assert any("epochs [1]" in p for p in check.problems)
  path.unlink()
  check = history_lib.check_history(workdir)
  assert any("missing" in p for p in check.problems)
  assert check.missing_epochs == [1, 2, 3]
  # Rebuilt from the kept checkpoints: the stored metrics, and a fresh
  # re-evaluation of each restored state, both equal the logged evaluations.
  stored = history_lib.rebuild_eval_history(workdir)
  fresh = history_lib.rebuild_eval_history(
      workdir, template=run.state(), evaluate_fn=run.evaluate)
  for rebuilt in (stored, fresh):
    assert [r["step"] for r in rebuilt] == [r["step"] for r in evals]
    for r, logged in zip(rebuilt, evals, strict=True):
      assert r["rebuilt"] is True
      assert r["test_accuracy"] == pytest.approx(logged["test_accuracy"],
                                                 abs=1e-7)
      assert r["test_correct"] == logged["test_correct"]
  with pytest.raises(ValueError, match="template"):
    history_lib.rebuild_eval_history(workdir, evaluate_fn=run.evaluate)


def test_unfinished_run_is_not_summarised(tmp_path):
  with pytest.raises(history_lib.RunNotFinishedError, match="no checkpoint"):
    history_lib.final_evaluation(tmp_path)
  check = history_lib.check_history(tmp_path)
  assert not check.finished and check.final is None
  assert any("not finished" in p for p in check.problems)


@pytest.mark.slow
def test_corrupted_final_checkpoint_resumes_with_identical_results(copy,
                                                                    run):
  workdir, result = copy
  final_dir = workdir / "checkpoints" / str(result.step)
  data_files = [p for p in (final_dir / "state").rglob("*")
                if p.is_file() and not p.name.startswith("_")
                and "manifest" not in p.name]
  biggest = max(data_files, key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 2)
  again = run.fit(workdir)
  assert again.resumed_from_step == result.step - run.steps_per_epoch
  for a, b in zip(_leaves(again.state), _leaves(result.state), strict=True):
    np.testing.assert_array_equal(a, b)
  assert again.final_metrics == result.final_metrics
  assert history_lib.check_history(workdir).complete


def test_injected_enospc_is_a_storage_error_not_oom(run, tmp_path,
                                                    monkeypatch):
  def full(self, step, split, values):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(metrics_lib.MetricsWriter, "write", full)
  with pytest.raises(errors_lib.StorageError) as info:
    run.fit(tmp_path / "run")
  message = str(info.value)
  assert str(tmp_path / "run") in message
  assert "no space left on device" in message and "free space" in message
  assert "memory" not in message.replace("not an out-of-memory", "")
  assert isinstance(info.value.__cause__, OSError)
  assert not errors_lib.is_device_out_of_memory(info.value)


@pytest.fixture
def tiny_tmpfs(tmp_path):
  mount_point = tmp_path / "tmpfs"
  mount_point.mkdir()
  try:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                           str(mount_point)], capture_output=True, timeout=30)
  except (OSError, subprocess.SubprocessError) as error:
    pytest.skip(f"cannot mount a tmpfs here: {error}")
  if done.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()}")
  yield mount_point
  subprocess.run(["umount", str(mount_point)], capture_output=True,
                 timeout=30)


@pytest.mark.slow
def test_full_tmpfs_is_reported_as_full_disk(tiny_tmpfs):
  big = _Run(hidden=(512, 512))  # ~0.3M params: checkpoints exceed 1 MiB
  workdir = tiny_tmpfs / "run"
  with pytest.raises(errors_lib.StorageError) as info:
    big.fit(workdir)
  message = str(info.value)
  assert str(workdir) in message and "free space" in message
  assert info.value.free_bytes is not None
  assert info.value.free_bytes < 1024 * 1024
  assert not errors_lib.is_device_out_of_memory(info.value)
  assert not errors_lib.is_device_out_of_memory(info.value.__cause__)


def test_half_deleted_old_step_then_resume_keeps_best(copy, run):
  workdir, result = copy
  oldest = workdir / "checkpoints" / str(run.steps_per_epoch)
  assert oldest.is_dir()
  # Interrupted deletion: files unlinked, directories left behind.
  for path in sorted(p for p in oldest.rglob("*") if p.is_file())[::2]:
    path.unlink()
  for path in (oldest / "meta").rglob("*"):
    if path.is_file():
      path.unlink()
  again = run.fit(workdir)
  assert not oldest.exists()
  assert again.resumed_from_step == result.step
  assert again.final_metrics == result.final_metrics
  store = training.CheckpointStore(workdir / "checkpoints",
                                   best_metric="test_accuracy")
  try:
    steps = store.all_steps()
    best = store.best_step()
  finally:
    store.close()
  assert run.steps_per_epoch not in steps
  # The best among the remaining whole checkpoints, by the logged accuracies.
  evals = {r["step"]: r["test_accuracy"]
           for r in history_lib.check_history(workdir).records
           if r["step"] in steps}
  top = max(evals.values())
  assert best == max(s for s, a in evals.items() if a == top)
