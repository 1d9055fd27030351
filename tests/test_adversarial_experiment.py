"""The adversarial-training experiment end to end: smoke preset, early stopping,
robust ≤ clean, resume, NaN stop and config errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from compsum_jax import attacks, training
from compsum_jax.training import adversarial
from configs import adversarial_training as cfgs
from experiments import adversarial_training_lib as lib
from experiments import adversarial_training_report as report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_COLUMNS = ("robust_pgd20", "robust_pgd40_margin")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("adv_smoke"))
  config = cfgs.get_config("smoke")
  results = lib.run(config, workdir)
  return config, workdir, results


def test_smoke_end_to_end(smoke, tmp_path):
  """The smoke preset once (one test, so pytest-xdist builds it once)."""
  check_runs_every_method_and_writes_results(smoke)
  check_robust_accuracy_never_exceeds_clean_accuracy(smoke)
  check_best_checkpoint_has_the_best_validation_robust_accuracy(smoke)
  check_rerun_of_a_finished_experiment_recomputes_nothing(smoke)
  check_resumed_evaluation_reproduces_the_results(smoke, tmp_path)
  check_report_is_rerendered_from_the_workdir_alone(smoke)


def check_runs_every_method_and_writes_results(smoke):
  config, workdir, results = smoke
  for name in (lib.RESULTS_JSON, report.RESULTS_MD, report.RESULTS_PNG):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  runs = results["runs"]
  assert [(r["method"], r["tau"], r["seed"]) for r in runs] == lib.runs_of(
      config)
  assert {r["method"] for r in runs} == set(adversarial.METHODS)
  assert all(r["status"] == "ok" for r in runs)
  with open(os.path.join(workdir, lib.RESULTS_JSON), encoding="utf-8") as f:
    on_disk = json.load(f)
  assert on_disk["summary"] == results["summary"]
  md = open(os.path.join(workdir, report.RESULTS_MD), encoding="utf-8").read()
  for row in results["summary"]:
    assert f"| {report.label(row)} | 1 |" in md
  # One seed: the value and "n = 1", never a "± 0.00" nor "τ=None".
  assert "(n = 1)" in md and "±" not in md.split("|", 1)[1]
  assert "None" not in md


def check_robust_accuracy_never_exceeds_clean_accuracy(smoke):
  _, _, results = smoke
  for r in results["runs"]:
    for col in TEST_COLUMNS:
      assert 0.0 <= r[col] <= r["clean_accuracy"], (r["method"], col)
    assert r["robust_cascade"] <= r["cascade_clean_accuracy"]
    # The cascade saw the same examples and parameters: same clean accuracy.
    assert r["cascade_clean_accuracy"] == pytest.approx(r["clean_accuracy"])
    # Cascade stages only remove points.
    after = [s["robust_accuracy_after"] for s in r["cascade_stages"]]
    assert after == sorted(after, reverse=True)
    assert r["val"]["val_robust_accuracy"] <= r["val"]["val_accuracy"]
  for row in results["summary"]:
    for col in TEST_COLUMNS + ("robust_cascade",):
      assert row[col] <= row["clean_accuracy"] + 1e-12


def check_best_checkpoint_has_the_best_validation_robust_accuracy(smoke):
  config, workdir, results = smoke
  for r in results["runs"]:
    run_dir = os.path.join(workdir, lib.run_name(r["method"], r["tau"],
                                                 r["seed"]))
    evals = [m for m in training.read_metrics(run_dir)
             if m["split"] == "eval"]
    assert len(evals) == config.num_epochs // config.eval_every_epochs
    best = max(m["val_robust_accuracy"] for m in evals)
    # Ties go to the later step (CheckpointStore's rule).
    best_step = max(m["step"] for m in evals
                    if m["val_robust_accuracy"] == best)
    assert r["best_step"] == best_step
    assert r["val"]["val_robust_accuracy"] == best


def test_early_stopping_restores_a_better_earlier_checkpoint(tmp_path,
                                                             monkeypatch):
  """A scripted validation curve 0.4, 0.9, 0.2: the epoch-2 state is used."""
  config = cfgs.get_config("smoke")
  config.num_epochs = 3
  config.cascade = ()
  scripted = iter([0.4, 0.9, 0.2])
  real_evaluate = training.evaluate
  seen_steps = []

  def fake_evaluate(step_fn, state, batches, **kw):
    out = real_evaluate(step_fn, state, batches, **kw)
    if "robust_val" in out:  # the validation evaluation of the loop
      out["robust_val"] = next(scripted)
      seen_steps.append(int(state.step))
    else:  # the final test evaluation: record which state it got
      seen_steps.append(("test", int(state.step)))
    return out

  monkeypatch.setattr(training, "evaluate", fake_evaluate)
  record = lib.train_and_evaluate(lib.Experiment.create(config),
                                  lib.PlannedRun("standard", None, 0),
                                  str(tmp_path / "run"))
  steps_per_epoch = seen_steps[0]
  assert record["best_step"] == 2 * steps_per_epoch
  assert record["best_epoch"] == 2
  assert record["val"]["val_robust_accuracy"] == 0.9
  assert seen_steps[-1] == ("test", 2 * steps_per_epoch)
  assert record["final_step"] == 3 * steps_per_epoch


def check_rerun_of_a_finished_experiment_recomputes_nothing(smoke):
  config, workdir, results = smoke
  run_dir = os.path.join(workdir, lib.run_name(*lib.runs_of(config)[0]))
  stamp = os.path.getmtime(os.path.join(run_dir, lib.RUN_RESULT))
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  before = {d: os.path.getmtime(os.path.join(ckpt_dir, d))
            for d in os.listdir(ckpt_dir)}
  again = lib.run(config, workdir)
  after = {d: os.path.getmtime(os.path.join(ckpt_dir, d))
           for d in os.listdir(ckpt_dir)}
  assert after == before  # no training step, no checkpoint written
  assert os.path.getmtime(os.path.join(run_dir, lib.RUN_RESULT)) == stamp
  assert again["runs"] == results["runs"]


def check_resumed_evaluation_reproduces_the_results(smoke, tmp_path):
  """Losing final.json (killed during the test evaluation) redoes only it."""
  config, workdir, results = smoke
  method, tau, seed = lib.runs_of(config)[0]
  run_dir = os.path.join(workdir, lib.run_name(method, tau, seed))
  os.replace(os.path.join(run_dir, lib.RUN_RESULT), tmp_path / "final.json")
  # Bookkeeping switches may change between starts of the same run.
  config = config.copy_and_resolve_references()
  config.progress = not config.progress
  config.log_every_steps = config.log_every_steps + 1
  record = lib.train_and_evaluate(lib.Experiment.create(config),
                                  lib.PlannedRun(method, tau, seed), run_dir)
  with open(os.path.join(run_dir, "environment.json"), encoding="utf-8") as f:
    env = json.load(f)
  starts = env  # one record per process start
  assert starts[-1]["resumed_from_step"] == record["final_step"]
  for col in ("clean_accuracy",) + TEST_COLUMNS + ("robust_cascade",):
    assert record[col] == results["runs"][0][col]


def check_report_is_rerendered_from_the_workdir_alone(smoke):
  """The report module's CLI rebuilds results.md (same text) and the plot
  from results.json, without training."""
  _, workdir, _ = smoke
  md_path = os.path.join(workdir, report.RESULTS_MD)
  png_path = os.path.join(workdir, report.RESULTS_PNG)
  with open(md_path, encoding="utf-8") as f:
    before = f.read()
  os.remove(md_path)
  os.remove(png_path)
  subprocess.run([sys.executable, "-m",
                  "experiments.adversarial_training_report",
                  f"--workdir={workdir}"], cwd=ROOT, check=True,
                 capture_output=True, timeout=300)
  with open(md_path, encoding="utf-8") as f:
    assert f.read() == before
  assert os.path.getsize(png_path) > 0


def test_report_states_sample_std_over_seeds():
  """Two seeds: the cell is mean ± std with ddof = 1 (NumPy), the text says
  so; the standard run's label has no τ; the report needs no config object."""
  config = training.metrics.to_jsonable(cfgs.get_config("smoke"))
  runs = [{"method": m, "tau": tau, "seed": seed, "status": "ok",
           "clean_accuracy": clean, "robust_pgd20": robust,
           "robust_pgd40_margin": robust, "robust_cascade": robust}
          for m, tau in (("standard", None), ("adv_comp_sum", 0.5))
          for seed, clean, robust in ((0, 0.90, 0.50), (1, 0.96, 0.56))]
  columns = report.test_columns(config)
  summary = report.summarize(runs, columns)
  assert [(r["method"], r["tau"], r["num_seeds"]) for r in summary] == [
      ("standard", None, 2), ("adv_comp_sum", 0.5, 2)]
  want_std = np.std([0.90, 0.96], ddof=1)
  assert summary[0]["clean_accuracy_std"] == pytest.approx(want_std)
  md = report.results_markdown({"config": config, "runs": runs,
                                "summary": summary})
  assert "mean ± sample std (ddof = 1) over n seeds (n = 2" in md
  assert f"| standard | 2 | 93.00 ± {100 * want_std:.2f} |" in md
  assert "| ADV-COMP-SUM (τ=0.5) | 2 |" in md
  assert "None" not in md


def test_non_finite_training_is_stopped_and_reported(tmp_path):
  config = cfgs.get_config("smoke")
  config.methods = ("standard",)
  config.optimizer.learning_rate = 1e30
  config.cascade = ()
  results = lib.run(config, str(tmp_path))
  (run,) = results["runs"]
  assert run["status"] == "nonfinite"
  assert "non-finite" in run["error"]
  assert results["summary"][0]["num_failed"] == 1
  md = open(tmp_path / report.RESULTS_MD, encoding="utf-8").read()
  assert "Failed runs" in md and "non-finite" in md
  assert "- standard seed 0: " in md  # no "τ=None" for the standard run


@pytest.mark.parametrize("field,value,match", [
    ("methods", ("standard", "madry"), "unknown method 'madry'"),
    ("methods", (), "at least one method"),
    ("adv_comp_sum.taus", (1.0, -0.5), "taus"),
    ("adv_comp_sum.nu", -1.0, "nu"),
    ("adv_comp_sum.rho", 0.0, "rho"),
    ("trades.beta", float("nan"), "beta"),
    ("trades.recipe", "madry", "recipe"),
    ("eps", -0.1, "eps"),
    ("seeds", (), "seeds"),
    ("num_epochs", 0, "num_epochs"),
    ("ema_decay", 1.0, "ema_decay"),
    ("validation_attack.preset", "pgd1000", "validation_attack"),
    ("cascade", ("apgd_ce", "aa_lite"), "cascade"),
])
def test_bad_config_values_raise_clear_errors(tmp_path, field, value, match):
  config = cfgs.get_config("smoke")
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with config.ignore_type():
    node[leaf] = value
  with pytest.raises(ValueError, match=match):
    lib.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # failed before any work


def test_presets_are_valid_and_eps_moves_every_attack():
  for name in cfgs.PRESETS:
    config = cfgs.get_config(name)
    lib.check_config(config)
    training.metrics.to_jsonable(config)  # primitives only
  config = cfgs.get_config("cifar10")
  assert config.train_attack.eps == pytest.approx(8 / 255)
  config.eps = 4 / 255
  assert config.train_attack.eps == pytest.approx(4 / 255)
  assert config.train_attack.step_size == pytest.approx(1 / 255)
  assert config.validation_attack.eps == pytest.approx(4 / 255)
  assert config.test_attacks.pgd20.eps == pytest.approx(4 / 255)
  with pytest.raises(ValueError, match="unknown preset"):
    cfgs.get_config("imagenet")


def test_trades_recipes():
  config = cfgs.get_config("cifar10")
  config.trades.recipe = "original"
  original = lib.train_attack_overrides(config, "trades")
  assert "eps" not in original and "step_size" not in original
  # The preset then supplies TRADES' own values.
  preset = attacks.get_preset(adversarial.METHODS["trades"].train_attack)
  assert (preset["eps"], preset["step_size"], preset["num_steps"],
          preset["random_start"]) == (0.031, 0.007, 10, "gaussian")
  config.trades.recipe = "eps8_255"
  assert lib.train_attack_overrides(config, "trades")["eps"] == (
      pytest.approx(8 / 255))


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_results(smoke,
                                                              tmp_path):
  # (Slow: runs the smoke preset twice more, in subprocesses.)
  """Kill the binary mid-training (SIGKILL), rerun: same results as the
  uninterrupted smoke run (bit-identical resume of the training loop)."""
  _, _, results = smoke
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "experiments.adversarial_training",
         "--config=configs/adversarial_training.py:smoke",
         f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  ckpt_dir = os.path.join(workdir, "pgd_at", "seed0", "checkpoints")
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(
        d.isdigit() for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, lib.RESULTS_JSON))
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=900)
  with open(os.path.join(workdir, lib.RESULTS_JSON), encoding="utf-8") as f:
    resumed = json.load(f)
  for a, b in zip(resumed["runs"], results["runs"], strict=True):
    for col in ("clean_accuracy", "best_step") + TEST_COLUMNS:
      assert np.isclose(a[col], b[col]), (a["method"], col)
