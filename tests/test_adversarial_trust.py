"""The adversarial binary's results can be trusted or it says why not.

Experiment-level checks: runs bound to their config (a changed config on an
existing workdir refused naming the fields, --new_run_dir), one owner per
workdir, a diverged run giving a non-zero exit with the report written and
retried only when asked, norm checked at start, config errors in one line,
--help.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from compsum_jax import training
from configs import adversarial_training as cfgs
from experiments import adversarial_training_lib as lib
from experiments import adversarial_training_report as report
from experiments import run_outcome

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config=configs/adversarial_training.py:smoke",
        "--config.methods=standard", "--config.cascade=()",
        "--config.num_epochs=1"]


def _tiny_config():
  config = cfgs.get_config("smoke")
  config.methods = ("standard",)
  config.cascade = ()
  config.num_epochs = 1
  return config


def _binary(tmp_path, *args, timeout=240):
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # The suite's compilation cache when it is on (tests/conftest.py), else a
  # fresh one.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return subprocess.run(
      [sys.executable, "-m", "experiments.adversarial_training", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_run_identity_keeps_what_changes_the_numbers():
  config = cfgs.get_config("smoke")
  run = lib.PlannedRun("adv_comp_sum", 1.0, 0)
  base = lib.run_identity(config, run)
  # Fields that only select other runs, or are bookkeeping, do not count.
  other = config.copy_and_resolve_references()
  other.methods = ("adv_comp_sum",)
  other.seeds = (0, 1)
  other.adv_comp_sum.taus = (0.5, 1.0)
  other.trades.beta = 1.0
  other.progress = True
  other.cpu_devices = 2
  assert lib.run_identity(other, run) == base
  # Everything that changes this run's training or test numbers does.
  for field, value in (("eps", 0.3), ("adv_comp_sum.nu", 0.5),
                       ("num_epochs", 3), ("num_test_examples", 32)):
    changed = config.copy_and_resolve_references()
    node = changed
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
    diff = lib.differing_fields(base, lib.run_identity(changed, run))
    assert f"experiment.{field}" in diff, (field, diff)
  assert lib.run_identity(config, lib.PlannedRun("adv_comp_sum", 0.5, 0)
                          )["tau"] == 0.5


def test_bad_norm_is_refused_before_any_work(tmp_path):
  config = _tiny_config()
  config.norm = "l3"
  with pytest.raises(ValueError, match="config.norm"):
    lib.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_changed_config_on_existing_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  config = _tiny_config()
  first = lib.run(config, workdir)
  (record,) = first["runs"]
  assert record["status"] == "ok"
  final_path = os.path.join(workdir, lib.run_name("standard", None, 0),
                            lib.RUN_RESULT)
  with open(final_path, encoding="utf-8") as f:
    stored = json.load(f)
  assert stored["identity"] == lib.run_identity(config, lib.runs_of(
      config)[0])
  assert stored["final_metrics"]["val_robust_accuracy"] == pytest.approx(
      stored["val"]["val_robust_accuracy"])  # one epoch: best = final
  stamp = os.path.getmtime(final_path)

  changed = config.copy_and_resolve_references()
  changed.eps = 0.3
  with pytest.raises(run_outcome.ConfigMismatchError, match=r"eps") as info:
    lib.run(changed, workdir)
  assert "--new_run_dir" in str(info.value)
  assert os.path.getmtime(final_path) == stamp
  with open(os.path.join(workdir, lib.RESULTS_JSON), encoding="utf-8") as f:
    assert json.load(f)["config"]["eps"] == config.eps  # untouched

  # Asked for, the new config's runs go to their own directory.
  again = lib.run(changed, workdir, new_run_dir=True)
  new_dir = lib.config_run_dir(changed, workdir)
  assert new_dir.startswith(workdir + os.sep)
  with open(os.path.join(new_dir, lib.RESULTS_JSON), encoding="utf-8") as f:
    assert json.load(f)["config"]["eps"] == 0.3
  assert again["runs"][0]["identity"]["experiment"]["eps"] == 0.3
  assert os.path.getmtime(final_path) == stamp


def test_second_run_on_owned_workdir_exits_at_once_naming_owner(tmp_path):
  workdir = tmp_path / "run"
  with training.workdir_lock(workdir) as lock:
    out = _binary(tmp_path, *TINY, f"--workdir={workdir}")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "in use by" in out.stderr and str(os.getpid()) in out.stderr
    assert "Traceback" not in out.stderr
    with open(lock.path, encoding="utf-8") as f:
      assert json.load(f)["token"] == lock.owner["token"]
    assert sorted(os.listdir(workdir)) == sorted(
        [os.path.basename(lock.path), os.path.basename(lock.path) + ".guard"])


@pytest.mark.slow
def test_diverged_run_exits_non_zero_with_report_and_retries_when_asked(
    tmp_path):
  workdir = tmp_path / "run"
  out = _binary(tmp_path, *TINY, "--config.optimizer.learning_rate=1e30",
                "--config.cpu_devices=1", f"--workdir={workdir}")
  assert out.returncode == 1, out.stderr[-2000:]
  # Progress is printed before the data is loaded.
  assert out.stdout.startswith("adversarial_training: 1 runs"), out.stdout
  assert "runs failed (diverged): standard/seed0" in out.stderr
  assert "Traceback" not in out.stderr
  md = (workdir / report.RESULTS_MD).read_text(encoding="utf-8")
  assert "Failed runs" in md
  final_path = workdir / lib.run_name("standard", None, 0) / lib.RUN_RESULT
  stamp = os.path.getmtime(final_path)
  config = _tiny_config()
  config.optimizer.learning_rate = 1e30
  config.cpu_devices = 1
  results = lib.run(config, str(workdir))  # not retried: same record
  assert lib.failed_runs(results) == ["standard/seed0"]
  assert os.path.getmtime(final_path) == stamp
  results = lib.run(config, str(workdir), retry_diverged=True)
  assert lib.failed_runs(results) == ["standard/seed0"]
  assert os.path.getmtime(final_path) > stamp  # trained (and failed) again


def test_config_typo_is_one_line_exit_2_and_help_lists_presets(tmp_path):
  out = _binary(tmp_path, *TINY, "--config.epss=0.1",
                f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 2
  assert out.stderr.strip().count("\n") == 0, out.stderr
  assert '"eps"' in out.stderr
  assert not (tmp_path / "run").exists()
  out = _binary(tmp_path, "--help")
  assert out.returncode == 0, out.stderr
  for preset in cfgs.PRESETS:
    assert preset in out.stdout
  assert "--config.eps" in out.stdout and "--config.cpu_devices" in out.stdout
