"""The loss-comparison binary's results can be trusted or it says why not.

Experiment-level checks: one owner per workdir, final values from the final
checkpoint (a lost or truncated metrics.jsonl neither changes them nor goes
unreported), a corrupted newest checkpoint survived, a diverged group reported
as failed (the rest as usual) with a non-zero exit and retried only when
asked, config errors in one line, --help.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
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
  # The suite's compilation cache (tests/conftest.py) when it is on, so that
  # programs compiled by other tests or earlier runs are reused; else a
  # fresh one.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _diverging_config(taus):
  """smoke, sequential, 1 epoch, lr 100 without clip: ℓ_0 overflows within
  the first steps; the bounded MAE (τ = 2) stays finite."""
  config = _config()
  config.taus = taus
  config.sweep_mode = "sequential"
  config.optimizer.learning_rate = 100.0
  config.optimizer.grad_clip = 1e30
  config.num_epochs = 1
  return config


def test_diverged_group_is_reported_failed_and_exits_1(
    tmp_path):
  workdir = tmp_path / "run"
  out = _binary(tmp_path, SMOKE[0], "--config.taus=0,2",
                "--config.num_seeds=1", "--config.sweep_mode=sequential",
                "--config.optimizer.learning_rate=100",
                "--config.optimizer.grad_clip=1e30", "--config.num_epochs=1",
                f"--workdir={workdir}")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  # One line naming the group (JAX may warn about its compilation cache).
  (line,) = [x for x in out.stderr.splitlines()
             if x.startswith("loss_comparison.py:")]
  assert out.stderr.strip().endswith(line)
  assert "diverged" in line and "members/000-000 (tau=0 seed=0" in line
  assert "1 of 2 member groups" in line and "--retry_diverged" in line
  (marker,) = workdir.glob("members/*/diverged.json")
  assert marker.parent.name == "000-000"
  assert json.loads(marker.read_text())["step"] >= 0

  # The report is written: the diverged member marked failed (no numbers),
  # the finished one as usual; the plots exist and skip the failed member.
  results = json.loads((workdir / "results.json").read_text())
  bad, good = results["members"]
  assert bad["tau"] == 0.0 and bad["status"] == "nonfinite"
  assert "non-finite loss or gradient" in bad["error"]
  assert bad["group"] == "members/000-000"
  assert "final" not in bad and "history" not in bad
  assert str(tmp_path) not in json.dumps(results)  # no absolute paths
  assert "status" not in good and good["history"]["epoch"] == [1]
  (failed,) = results["failed_groups"]
  assert failed["members"] == [0] and failed["diverged_members"] == [
      "tau=0 seed=0"]
  row0, row2 = results["per_tau"]
  assert row0["num_seeds"] == 0 and row0["num_failed"] == 1
  assert row0["test_accuracy"] is None
  assert row2["num_seeds"] == 1 and "num_failed" not in row2
  assert row2["test_accuracy"]["mean"] == good["final"]["test_accuracy"]
  table = (workdir / "results.md").read_text()
  (row0_line,) = [r for r in table.splitlines() if r.startswith("| 0 |")]
  assert "failed (diverged)" in row0_line and "1 of 1" in row0_line
  assert "Failed members" in table and "τ=0 seed 0" in table
  for name in ("accuracy_vs_tau.png", "training_curves.png"):
    assert (workdir / name).stat().st_size > 0
  # The finished member's numbers are those of a run without the diverging
  # group (same seed index, hence same initialisation and batch order).
  alone, _ = lib.run(_diverging_config((2.0,)), str(tmp_path / "alone"),
                     log=_quiet)
  (lone,) = alone["members"]
  assert good["final"] == lone["final"]
  assert good["history"] == lone["history"]
  assert row2 == alone["per_tau"][0]

  # A restart does not train the diverged group again: same report, exit 1.
  config = _diverging_config((0.0, 2.0))
  marker_before = marker.read_bytes()
  with pytest.raises(run_outcome.DivergedRunsError,
                     match="members/000-000.*--retry_diverged") as info:
    lib.run(config, str(workdir), log=_quiet)
  assert info.value.results["members"] == results["members"]
  again = json.loads((workdir / "results.json").read_text())
  # The same report (the config's taus were typed '0,2' on the command line).
  assert {k: v for k, v in again.items() if k != "config"} == {
      k: v for k, v in results.items() if k != "config"}
  assert marker.read_bytes() == marker_before
  # (--retry_diverged: test_retry_diverged_resumes_from_last_good_checkpoint)


@pytest.mark.slow
def test_retry_diverged_resumes_from_last_good_checkpoint(reference, tmp_path,
                                                         monkeypatch):
  """A group that diverges in epoch 2 (NaN inputs injected into one batch of
  that epoch) keeps its epoch-1 checkpoint; a restart without the flag does
  not train it; with --retry_diverged it resumes from that checkpoint and
  ends with the numbers of the run that never diverged."""
  original = lib.common.epoch_batches

  def poisoned_epoch_batches(config, dataset, mesh=None):
    batches = original(config, dataset, mesh)

    def epoch_batches(epoch):
      for i, batch in enumerate(batches(epoch)):
        if epoch == 1 and i == 2:
          batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        yield batch

    return epoch_batches

  workdir = str(tmp_path / "run")
  monkeypatch.setattr(lib.common, "epoch_batches", poisoned_epoch_batches)
  with pytest.raises(run_outcome.DivergedRunsError, match="-vmap"):
    lib.run(_config(), workdir, log=_quiet)
  (marker,) = pathlib.Path(workdir).glob("members/*/diverged.json")
  record = json.loads(marker.read_text())
  steps_per_epoch = reference[1]["sweep"]["steps_per_epoch"]
  assert record["step"] == steps_per_epoch + 2
  assert record["last_checkpoint_step"] == steps_per_epoch
  monkeypatch.setattr(lib.common, "epoch_batches", original)
  with pytest.raises(run_outcome.DivergedRunsError):  # not retried
    lib.run(_config(), workdir, log=_quiet)
  env_file = marker.parent / "environment.json"
  starts = len(json.loads(env_file.read_text()))
  results, _ = lib.run(_config(), workdir, log=_quiet, retry_diverged=True)
  assert not marker.exists()
  environment = json.loads(env_file.read_text())
  assert len(environment) == starts + 1
  assert environment[-1]["resumed_from_step"] == steps_per_epoch
  assert "failed_groups" not in results
  assert results["per_tau"] == reference[1]["per_tau"]
  assert results["members"] == reference[1]["members"]


def test_diverged_vmapped_group_marks_every_member_and_skips_bound_plot(
    tmp_path):
  """In 'vmap' mode one diverging member stops the whole stacked group:
  every member is reported failed, with the one that diverged named; with
  no finished member the bound check is not applicable and not plotted."""
  config = presets.get_config("synthetic_smoke")
  config.taus = (0.0, 2.0)
  config.sweep_mode = "vmap"
  config.num_epochs = 1
  config.optimizer.learning_rate = 100.0
  config.optimizer.grad_clip = 1e30
  workdir = tmp_path / "run"
  with pytest.raises(run_outcome.DivergedRunsError,
                     match=r"1 of 1 member groups diverged .*"
                           r"members/000-001-vmap \(tau=0 seed=0") as info:
    lib.run(config, str(workdir), log=_quiet)
  results = json.loads((workdir / "results.json").read_text())
  assert info.value.results == results
  assert [m["status"] for m in results["members"]] == ["nonfinite"] * 2
  (failed,) = results["failed_groups"]
  assert failed["members"] == [0, 1]
  assert "tau=0 seed=0" in failed["diverged_members"]
  assert all(row["test_accuracy"] is None and row["num_failed"] == 1
             for row in results["per_tau"])
  assert results["bound_check"]["applicable"] is False
  assert "bound_plot" not in results["files"]
  assert not (workdir / "bound_check.png").exists()
  assert results["history_check"] == []
  table = (workdir / "results.md").read_text()
  assert table.count("failed (diverged)") == 8  # 4 numeric cells × 2 τ
  assert "2 of 2 members FAILED" in table
  for name in ("accuracy_vs_tau.png", "training_curves.png"):
    assert (workdir / name).stat().st_size > 0


def test_bound_check_of_a_partly_diverged_sweep_covers_finished_members(
    tmp_path):
  """Sequential synthetic sweep, ℓ_0 diverges: the bound is checked, tabled
  and plotted for the finished τ = 2 only."""
  config = presets.get_config("synthetic_smoke")
  config.taus = (0.0, 2.0)
  config.sweep_mode = "sequential"
  config.num_epochs = 1
  config.optimizer.learning_rate = 100.0
  config.optimizer.grad_clip = 1e30
  workdir = tmp_path / "run"
  with pytest.raises(run_outcome.DivergedRunsError,
                     match="1 of 2 member groups.*members/000-000 "):
    lib.run(config, str(workdir), log=_quiet)
  results = json.loads((workdir / "results.json").read_text())
  check = results["bound_check"]
  assert check["applicable"] and "not checked" in check["statement"]
  assert [t["tau"] for t in check["per_tau"]] == [2.0]
  good = results["members"][1]
  assert check["num_checks"] == len(good["history"]["slack"]) == 1
  assert check["min_slack"] == min(good["history"]["slack"])
  lines = (workdir / "results.md").read_text().splitlines()
  (row0,) = [r for r in lines if r.startswith("| 0 |")]
  (row2,) = [r for r in lines if r.startswith("| 2 |")]
  assert row0.endswith("| 1 of 1 | — | — |")
  assert "| 0 of 1 | 1/1 hold |" in row2
  assert (workdir / "bound_check.png").stat().st_size > 0


@pytest.mark.slow
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


@pytest.mark.slow
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
