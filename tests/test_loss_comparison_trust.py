"""The loss-comparison binary's results can be trusted or it says why not.

Experiment-level checks: one owner per workdir, final values from the final
checkpoint (a lost or truncated metrics.jsonl neither changes them nor goes
unreported), a corrupted newest checkpoint survived, a diverged run exiting
non-zero and not retried unless asked, config errors in one line, --help.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from compsum_jax import training
from configs import loss_comparison as presets
from experiments import loss_comparison_lib as lib
from experiments import run_outcome

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/loss_comparison.py:smoke", "--config.taus=0,2",
         "--config.num_seeds=1"]


def _env(cache_dir):
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _binary(tmp_path, *args, timeout=180):
  return subprocess.run(
      [sys.executable, "-m", "experiments.loss_comparison", *args], cwd=REPO,
      env=_env(tmp_path / "cache"), capture_output=True, text=True,
      timeout=timeout)


def _config():
  config = presets.get_config("smoke")
  config.taus = (0.0, 2.0)
  config.num_seeds = 1
  return config


def _quiet(_):
  pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A finished run (2 epochs, evaluated and checkpointed at both)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  results, _ = lib.run(_config(), workdir, log=_quiet)
  return workdir, results


def _copy(reference, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference[0], workdir)
  return workdir


def _metrics_file(workdir):
  (path,) = pathlib.Path(workdir).glob("members/*/metrics.jsonl")
  return path


def test_whole_history_is_reported_complete(reference):
  _, results = reference
  (check,) = results["history_check"]
  assert check["complete"] and not check["problems"]
  assert check["missing_epochs"] == [] and check["rebuilt_epochs"] == []
  for member in results["members"]:
    assert member["history"]["epoch"] == [1, 2]
    for name, value in member["final"].items():
      assert member["history"][name][-1] == value


def test_deleted_metrics_of_finished_run_reported_and_rebuilt(reference,
                                                              tmp_path):
  workdir = _copy(reference, tmp_path)
  _metrics_file(workdir).unlink()
  results, _ = lib.run(_config(), workdir, log=_quiet)
  (check,) = results["history_check"]
  assert not check["complete"]
  assert any("lacks the evaluations of epochs [1, 2]" in p
             for p in check["problems"]), check
  assert check["rebuilt_epochs"] == [1, 2] and check["missing_epochs"] == []
  assert not any(str(tmp_path) in p for p in check["problems"])
  # The numbers are those of the run whose log was whole.
  assert results["per_tau"] == reference[1]["per_tau"]
  assert results["members"] == reference[1]["members"]


def test_truncated_metrics_never_report_an_earlier_epoch_as_final(reference,
                                                                  tmp_path):
  workdir = _copy(reference, tmp_path)
  path = _metrics_file(workdir)
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  last_eval = max(i for i, line in enumerate(lines) if '"eval"' in line)
  # Drop the final evaluation and tear the line before it.
  kept = "".join(lines[:last_eval])
  path.write_text(kept[:-10], encoding="utf-8")
  results, _ = lib.run(_config(), workdir, log=_quiet)
  (check,) = results["history_check"]
  assert not check["complete"]
  assert 2 in check["rebuilt_epochs"]
  assert check["missing_epochs"] == []
  assert results["per_tau"] == reference[1]["per_tau"]
  for got, want in zip(results["members"], reference[1]["members"],
                       strict=True):
    assert got["final"] == want["final"]
    assert got["history"]["epoch"] == [1, 2]


def test_lost_epoch_is_listed_missing_not_reported_as_final(reference,
                                                            tmp_path):
  workdir = _copy(reference, tmp_path)
  # Epoch 1's checkpoint and log record both gone: epoch 1 is lost for good.
  (ckpt,) = pathlib.Path(workdir).glob("members/*/checkpoints")
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  shutil.rmtree(ckpt / str(steps[0]))
  path = _metrics_file(workdir)
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  first_eval = min(i for i, line in enumerate(lines) if '"eval"' in line)
  path.write_text("".join(lines[:first_eval] + lines[first_eval + 1:]),
                  encoding="utf-8")
  results, _ = lib.run(_config(), workdir, log=_quiet)
  (check,) = results["history_check"]
  assert check["missing_epochs"] == [1]
  for got, want in zip(results["members"], reference[1]["members"],
                       strict=True):
    assert got["final"] == want["final"]
    assert got["history"]["epoch"] == [2]


def test_corrupted_final_checkpoint_resumes_from_previous(reference,
                                                          tmp_path):
  workdir = _copy(reference, tmp_path)
  (ckpt,) = pathlib.Path(workdir).glob("members/*/checkpoints")
  newest = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  meta_file = ckpt / str(newest) / "meta" / "metadata"
  meta_file.write_bytes(meta_file.read_bytes()[:10])
  results, _ = lib.run(_config(), workdir, log=_quiet)
  assert (ckpt / str(newest)).exists()  # trained again from epoch 1
  assert results["per_tau"] == reference[1]["per_tau"]
  assert [m["final"] for m in results["members"]] == [
      m["final"] for m in reference[1]["members"]]


def test_second_run_on_owned_workdir_exits_at_once_naming_owner(tmp_path):
  workdir = tmp_path / "run"
  with training.workdir_lock(workdir) as lock:
    out = _binary(tmp_path, *SMOKE, f"--workdir={workdir}")
    assert out.returncode == 1, out.stderr
    assert "in use by" in out.stderr and str(os.getpid()) in out.stderr
    assert "Traceback" not in out.stderr
    # The first owner is unaffected: its lock is intact and nothing trained.
    with open(lock.path, encoding="utf-8") as f:
      assert json.load(f)["token"] == lock.owner["token"]
    assert not (workdir / "members").exists()
  assert not os.path.exists(lock.path)


def test_diverged_run_exits_non_zero_and_is_retried_only_when_asked(
    tmp_path):
  workdir = tmp_path / "run"
  diverging = [SMOKE[0], "--config.taus=0", "--config.num_seeds=1",
               "--config.optimizer.learning_rate=1e30",
               "--config.optimizer.grad_clip=1e30", "--config.num_epochs=1"]
  out = _binary(tmp_path, *diverging, f"--workdir={workdir}")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "diverged" in out.stderr and "Traceback" not in out.stderr
  (marker,) = workdir.glob("members/*/diverged.json")
  assert json.loads(marker.read_text())["step"] >= 0
  assert not (workdir / "results.json").exists()
  # A restart refuses it without training; asked, it trains again.
  config = _config()
  config.taus = (0.0,)
  config.optimizer.learning_rate = 1e30
  config.optimizer.grad_clip = 1e30
  config.num_epochs = 1
  with pytest.raises(run_outcome.DivergedBeforeError,
                     match="--retry_diverged"):
    lib.run(config, str(workdir), log=_quiet)
  with pytest.raises(training.NonFiniteError):
    lib.run(config, str(workdir), log=_quiet, retry_diverged=True)
  assert marker.exists()  # written again by the retried run


def test_config_typo_is_one_line_exit_2_and_help_lists_presets(tmp_path):
  out = _binary(tmp_path, *SMOKE, "--config.tauss=1",
                f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 2
  assert out.stderr.strip().count("\n") == 0, out.stderr
  assert '"taus"' in out.stderr
  assert not (tmp_path / "run").exists()
  out = _binary(tmp_path, "--help")
  assert out.returncode == 0, out.stderr
  for preset in presets.PRESETS:
    assert preset in out.stdout
  assert "--config.taus" in out.stdout


@pytest.mark.slow
def test_two_real_binaries_on_one_workdir(tmp_path):
  """The second of two concurrent binaries exits at once naming the first;
  the first finishes with the results of a lone run."""
  longer = [*SMOKE, "--config.num_epochs=6"]
  workdir = tmp_path / "shared"
  first = subprocess.Popen(
      [sys.executable, "-m", "experiments.loss_comparison", *longer,
       f"--workdir={workdir}"], cwd=REPO, env=_env(tmp_path / "cache"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lock_path = workdir / "owner.lock"
    deadline = time.monotonic() + 300
    while not lock_path.exists():
      assert first.poll() is None and time.monotonic() < deadline
      time.sleep(0.2)
    second = _binary(tmp_path, *longer, f"--workdir={workdir}")
    assert first.poll() is None, "the first run ended too early for the test"
    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stderr or str(first.pid) in (
        second.stderr)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
  finally:
    if first.poll() is None:
      first.kill()
  lone = tmp_path / "lone"
  out = _binary(tmp_path, *longer, f"--workdir={lone}", timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  shared_results = json.loads((workdir / "results.json").read_text())
  lone_results = json.loads((lone / "results.json").read_text())
  assert shared_results["per_tau"] == lone_results["per_tau"]
  assert shared_results["members"] == lone_results["members"]


def test_full_disk_during_the_run_is_one_line_exit_1(tmp_path, monkeypatch,
                                                     capsys):
  """An injected ENOSPC from training reaches the binary's error handling
  as a storage error (path, free space), not as out of memory."""
  full = training.StorageError(
      28, f"no space left on device writing {tmp_path}/ckpt (free: 0 B)",
      str(tmp_path / "ckpt"), 0)

  def fail(*args, **kwargs):
    del args, kwargs
    raise full

  monkeypatch.setattr(lib.training, "fit", fail)
  config = _config()
  config.sweep_mode = "auto"  # a full disk must not trigger the fallback
  with pytest.raises(SystemExit) as exit_info:
    with run_outcome.fatal_errors():
      lib.run(config, str(tmp_path / "run"), log=_quiet)
  assert exit_info.value.code == run_outcome.FAILURE_EXIT_CODE
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "storage error: no space left" in err
  assert "out of memory" not in err
