"""The experiment binaries as cooperating processes (CPU, gloo, 127.0.0.1).

Real runs of the binaries (``python -m experiments.<name>``) on their smoke
presets: 2 processes x 1 CPU device (started by ``tools/launch_local.py``)
against 1 process x 2 CPU devices and, for the member groups of the loss
comparison, 1 process x 1 device (the plain vmapped sweep). A SIGKILLed
process is reported by the survivor and a relaunch resumes (slow); bad
distributed flags fail at once naming the value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import process_helpers
import pytest
from conftest import with_light_compilation

from compsum_jax.training import distributed
from tools import launch_local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 900  # generous: the test machines are shared
FAILURE_TIMEOUT_S = 10.0
LC_SMOKE = "--config=configs/loss_comparison.py:smoke"
ADV_SMOKE = "--config=configs/adversarial_training.py:smoke"


def _env() -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)  # device counts are set per process by flags
  return with_light_compilation(env)


def _binary(name: str, workdir: str, *flags: str) -> list[str]:
  return [sys.executable, "-m", f"experiments.{name}", f"--workdir={workdir}",
          f"--distributed_failure_timeout={FAILURE_TIMEOUT_S}", *flags]


def _run(command: list[str], log: str) -> None:
  """Runs ``command`` to its end; fails the test with its log if non-zero."""
  process_helpers.run_logged(command, log, env=_env(), cwd=ROOT,
                             timeout=RUN_TIMEOUT_S)


def _launch_two(command: list[str], log: str) -> list[str]:
  """``tools/launch_local.py --num_processes=2 --cpu_devices=1 -- command``."""
  return [sys.executable, os.path.join(ROOT, "tools", "launch_local.py"),
          "--num_processes=2", "--cpu_devices=1",
          f"--log_dir={log}.d", "--", *command]


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def _relative_difference(a: float, b: float) -> float:
  return abs(float(a) - float(b)) / max(abs(float(a)), abs(float(b)), 1e-6)


def _assert_members_match(reference: dict, other: dict, rel: float) -> None:
  """Every member's final accuracies and losses agree within ``rel``."""
  assert len(reference["members"]) == len(other["members"])
  for m_ref, m_other in zip(reference["members"], other["members"],
                            strict=True):
    assert (m_ref["tau"], m_ref["seed"]) == (m_other["tau"], m_other["seed"])
    assert sorted(m_ref["final"]) == sorted(m_other["final"])
    for field, value in m_ref["final"].items():
      worst = _relative_difference(value, m_other["final"][field])
      assert worst <= rel, (m_ref["tau"], m_ref["seed"], field, value,
                            m_other["final"][field])


class _LossComparisonRuns:
  """The smoke preset's workdirs, each run on first use (a test that needs
  one run does not pay for the others): ``runs[name]`` for name in
  'one_process' (1 x 2 devices), 'one_device' (1 x 1 device) and
  'two_processes' (2 x 1 device); ``runs["root"]``: their parent folder."""

  _DEVICES = {"one_process": 2, "one_device": 1}

  def __init__(self, root):
    self._root = root
    self._done: dict[str, str] = {}

  def __getitem__(self, name: str) -> str:
    if name == "root":
      return str(self._root)
    if name not in self._done:
      workdir = str(self._root / name)
      if name == "two_processes":
        _run(_launch_two(_binary("loss_comparison", workdir, LC_SMOKE),
                         str(self._root / "two")),
             str(self._root / "two.log"))
      else:
        _run(_binary("loss_comparison", workdir, LC_SMOKE,
                     f"--config.cpu_devices={self._DEVICES[name]}"),
             str(self._root / f"{name}.log"))
      self._done[name] = workdir
    return self._done[name]


@pytest.fixture(scope="module")
def loss_comparison_runs(tmp_path_factory):
  """The smoke preset as 1 x 2 devices, 2 x 1 device and 1 x 1 device, each
  run once per module when a test first asks for it."""
  return _LossComparisonRuns(tmp_path_factory.mktemp("lc_dist"))


@pytest.mark.slow
def test_loss_comparison_two_processes_reproduce_two_devices(
    loss_comparison_runs):
  one = _results(loss_comparison_runs["one_process"])
  two = _results(loss_comparison_runs["two_processes"])
  assert one["run"]["num_processes"] == 1
  assert one["run"]["process_devices"] == [2]
  assert two["run"]["num_processes"] == 2
  assert two["run"]["process_devices"] == [1, 1]
  # 6 members on 2 devices: gcd(6, 2) = 2 member groups, one per process
  assert one["sweep"]["mesh"] == two["sweep"]["mesh"] == {"members": 2,
                                                          "data": 1}
  assert one["sweep"]["mode"] == two["sweep"]["mode"] == "vmap"
  _assert_members_match(one, two, 1e-5)
  for row_one, row_two in zip(one["per_tau"], two["per_tau"], strict=True):
    assert _relative_difference(row_one["test_accuracy"]["mean"],
                                row_two["test_accuracy"]["mean"]) <= 1e-5
  # process 0 wrote the report; the other process wrote nothing of its own
  workdir = loss_comparison_runs["two_processes"]
  for name in ("results.md", "accuracy_vs_tau.png", "training_curves.png",
               "timing.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(loss_comparison_runs["root"], "two.d",
                         "process_1.log"), encoding="utf-8") as f:
    assert "Bound-check summary" not in f.read()


def test_loss_comparison_member_groups_equal_one_device_sweep(
    loss_comparison_runs):
  # 2 processes x 1 device: each process trains its own 3 of the 6 members
  # (no collective across member groups); the one-device run vmaps all 6.
  single = _results(loss_comparison_runs["one_device"])
  two = _results(loss_comparison_runs["two_processes"])
  assert single["run"]["device_count"] == 1
  assert single["sweep"]["mesh"] == {"members": 1, "data": 1}
  _assert_members_match(single, two, 1e-5)
  for m_single, m_two in zip(single["members"], two["members"], strict=True):
    # accuracies are counts over the same examples: equal up to float order
    for field in ("test_accuracy", "train_accuracy"):
      assert np.allclose(m_single["history"][field], m_two["history"][field],
                         rtol=1e-5, atol=0)


@pytest.fixture(scope="module")
def adversarial_runs(tmp_path_factory):
  """The adversarial smoke preset as 1 x 2 devices and 2 x 1 device."""
  root = tmp_path_factory.mktemp("adv_dist")
  one, two = str(root / "one_process"), str(root / "two_processes")
  _run(_binary("adversarial_training", one, ADV_SMOKE,
               "--config.cpu_devices=2"), str(root / "one.log"))
  _run(_launch_two(_binary("adversarial_training", two, ADV_SMOKE),
                   str(root / "two")), str(root / "two.log"))
  return one, two


@pytest.mark.slow  # 4 adversarial runs each way: minutes on a shared host
def test_adversarial_two_processes_reproduce_two_devices(adversarial_runs):
  one, two = (_results(w) for w in adversarial_runs)
  assert one["run"]["num_processes"] == 1
  assert two["run"]["num_processes"] == 2
  assert two["run"]["process_devices"] == [1, 1]
  # the batch is split over the 2 processes' devices (data parallelism)
  assert one["run"]["mesh"] == two["run"]["mesh"] == {"data": 2}
  assert [(r["method"], r["tau"], r["seed"]) for r in one["runs"]] == [
      (r["method"], r["tau"], r["seed"]) for r in two["runs"]]
  for r_one, r_two in zip(one["runs"], two["runs"], strict=True):
    assert r_one["status"] == r_two["status"] == "ok"
    assert r_one["best_step"] == r_two["best_step"]
    assert r_one["num_test_examples"] == r_two["num_test_examples"] == 64
    for field in (["clean_accuracy", "robust_cascade", "cascade_clean_accuracy"]
                  + [k for k in r_one if k.startswith("robust_")]):
      assert _relative_difference(r_one[field], r_two[field]) <= 1e-5, (
          r_one["method"], field, r_one[field], r_two[field])
    for name, value in r_one["val"].items():
      assert _relative_difference(value, r_two["val"][name]) <= 1e-5, name
    # the cascade's per-process shares add up to the whole test subset
    assert [(s["name"], s["attacked"], s["broken"])
            for s in r_one["cascade_stages"]] == [
                (s["name"], s["attacked"], s["broken"])
                for s in r_two["cascade_stages"]]
    assert r_one["num_broken_only_by_gradient_free"] == (
        r_two["num_broken_only_by_gradient_free"])
    # ν*(h): each process estimates its share of the validation examples and
    # the sums and counts are added (the ADV-COMP-SUM runs log it)
    assert ("nu_threshold_history" in r_one) == (
        "nu_threshold_history" in r_two)
    history_one = r_one.get("nu_threshold_history", [])
    history_two = r_two.get("nu_threshold_history", [])
    assert [h["step"] for h in history_one] == [h["step"]
                                                for h in history_two]
    for h_one, h_two in zip(history_one, history_two, strict=True):
      for field in ("nu_threshold", "mean_label_gap", "mean_sup_smooth_term"):
        assert _relative_difference(h_one[field], h_two[field]) <= 1e-5, (
            r_one["method"], h_one["step"], field, h_one[field], h_two[field])
  assert any("nu_threshold_history" in r and r["nu_threshold_history"]
             for r in one["runs"])
  assert os.path.exists(os.path.join(adversarial_runs[1], "results.md"))


@pytest.mark.slow
def test_loss_comparison_batch_split_across_processes(tmp_path):
  # member_shards=1: one member group, every global batch split over the 2
  # processes (each reads half the rows); gradients are summed across them.
  flags = (LC_SMOKE, "--config.member_shards=1")
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _run(_binary("loss_comparison", one, *flags, "--config.cpu_devices=2"),
       str(tmp_path / "one.log"))
  _run(_launch_two(_binary("loss_comparison", two, *flags),
                   str(tmp_path / "two")), str(tmp_path / "two.log"))
  results_one, results_two = _results(one), _results(two)
  assert results_one["sweep"]["mesh"] == {"members": 1, "data": 2}
  assert results_two["sweep"]["mesh"] == {"members": 1, "data": 2}
  assert results_two["run"]["num_processes"] == 2
  _assert_members_match(results_one, results_two, 1e-5)


@pytest.mark.parametrize("flags,named", [
    (["--num_processes=2", "--process_id=2",
      "--coordinator_address=127.0.0.1:1234"], "process_id=2"),
    (["--num_processes=2", "--process_id=0"], "coordinator_address"),
    (["--num_processes=2", "--process_id=0",
      "--coordinator_address=localhost"], "localhost"),
])
@pytest.mark.parametrize("binary", ["loss_comparison",
                                    "adversarial_training"])
@pytest.mark.slow
def test_binaries_reject_bad_distributed_flags_at_once(tmp_path, binary,
                                                       flags, named):
  start = time.monotonic()
  proc = subprocess.run(
      _binary(binary, str(tmp_path / "w"), f"--config=configs/{binary}.py:"
              "smoke", *flags),
      capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300,
      check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert named in proc.stderr
  assert "bad distributed flags" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert time.monotonic() - start < 120  # no wait for a coordinator
  assert not os.path.exists(tmp_path / "w" / "results.json")


@pytest.mark.slow
def test_loss_comparison_sigkill_one_process_then_relaunch_resumes(
    tmp_path):
  # More epochs than the smoke preset so that the kill lands mid-run.
  flags = (LC_SMOKE, "--config.num_epochs=6", "--config.eval_every_epochs=3",
           "--config.cpu_devices=1")
  reference = str(tmp_path / "uninterrupted")
  _run(_launch_two(_binary("loss_comparison", reference, *flags),
                   str(tmp_path / "ref")), str(tmp_path / "ref.log"))
  workdir = str(tmp_path / "killed")
  port = launch_local.free_port()
  procs, logs = [], []
  for i in range(2):
    log = str(tmp_path / f"killed_p{i}.log")
    command = launch_local.process_command(
        _binary("loss_comparison", workdir, *flags), port=port,
        num_processes=2, process_id=i, cpu_devices=None)
    with open(log, "w", encoding="utf-8") as out:
      procs.append(subprocess.Popen(command, stdout=out,
                                    stderr=subprocess.STDOUT, env=_env(),
                                    cwd=ROOT, start_new_session=True))
    logs.append(log)
  try:
    checkpoints = os.path.join(workdir, "members", "000-005-vmap",
                               "checkpoints")
    process_helpers.wait_for_first_checkpoint(checkpoints, procs,
                                              RUN_TIMEOUT_S)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    code = procs[0].wait(timeout=RUN_TIMEOUT_S)
    waited = time.monotonic() - killed_at
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  with open(logs[0], encoding="utf-8") as f:
    text = f.read()
  if code == 0:
    pytest.skip("process 0 finished before the kill was noticed (the run "
                "ended first); nothing to check")
  assert code == distributed.LOST_PROCESS_EXIT_CODE, text[-3000:]
  assert "lost process(es) [1]" in text
  assert waited < FAILURE_TIMEOUT_S + 60, waited
  # relaunching the same command resumes and ends as the uninterrupted run
  _run(_launch_two(_binary("loss_comparison", workdir, *flags),
                   str(tmp_path / "relaunch")), str(tmp_path / "relaunch.log"))
  with open(os.path.join(workdir, "members", "000-005-vmap",
                         "environment.json"), encoding="utf-8") as f:
    starts = json.load(f)
  assert starts[-1]["resumed_from_step"] is not None, starts[-1]
  assert starts[-1]["resumed_from_step"] > 0
  _assert_members_match(_results(reference), _results(workdir), 1e-6)
