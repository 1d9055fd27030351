"""Several cooperating processes on JAX's distributed runtime (CPU, gloo).

Real 2-process runs on 127.0.0.1 (subprocesses of tests/
train_distributed_script.py): 2 processes x 1 CPU device reproduce 1 process
x 2 CPU devices; member groups split over 2 processes reproduce the
one-device vmapped members; a SIGKILLed process is reported by the survivor,
and relaunching both resumes and reproduces the uninterrupted run; bad
start-up values fail at once naming the value. Plus in-process checks of the
row bookkeeping every process relies on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import process_helpers
import pytest
from conftest import with_light_compilation

from compsum_jax import data, training
from compsum_jax.training import distributed
from tools import launch_local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "train_distributed_script.py")
# Generous: the test machines are shared; an idle run takes seconds.
RUN_TIMEOUT_S = 420
FAILURE_TIMEOUT_S = 10.0


def _env() -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)  # device counts are set per process by flags
  return with_light_compilation(env)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _Processes:
  """Started subprocesses; every one still running is killed at the end."""

  def __init__(self):
    self.procs: list[subprocess.Popen] = []

  def start(self, args: list[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "w", encoding="utf-8")  # closed with the process
    proc = subprocess.Popen([sys.executable] + args, stdout=log,
                            stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                            start_new_session=True)
    proc.log_file = log
    self.procs.append(proc)
    return proc

  def wait(self, proc: subprocess.Popen, timeout: float) -> int:
    try:
      return proc.wait(timeout=timeout)
    finally:
      proc.log_file.close()

  def kill_all(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      proc.log_file.close()


@pytest.fixture(scope="module")
def processes():
  started = _Processes()
  yield started
  started.kill_all()


def _run_group(processes, workdir, num_processes, extra=(), sleep=0.0):
  """Starts ``num_processes`` script processes; returns (procs, logs)."""
  os.makedirs(workdir, exist_ok=True)
  port = _free_port()
  procs, logs = [], []
  for i in range(num_processes):
    args = [SCRIPT, f"--workdir={workdir}", f"--sleep={sleep}",
            f"--failure_timeout={FAILURE_TIMEOUT_S}", *extra]
    if num_processes > 1:
      args += [f"--coordinator_address=127.0.0.1:{port}",
               f"--num_processes={num_processes}", f"--process_id={i}"]
    log = os.path.join(os.path.dirname(workdir),
                       f"{os.path.basename(workdir)}_p{i}.log")
    procs.append(processes.start(args, log))
    logs.append(log)
  return procs, logs


def _finish(processes, procs, logs):
  for proc, log in zip(procs, logs, strict=True):
    code = processes.wait(proc, RUN_TIMEOUT_S)
    with open(log, encoding="utf-8") as f:
      text = f.read()
    assert code == 0, f"{log} exited {code}:\n{text[-4000:]}"


def _result(workdir):
  with open(os.path.join(workdir, "final.json"), encoding="utf-8") as f:
    meta = json.load(f)
  with np.load(os.path.join(workdir, "final.npz")) as z:
    leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
  return meta, leaves


def _max_relative_difference(a, b):
  worst = 0.0
  for x, y in zip(a, b, strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape
    scale = max(float(np.max(np.abs(x))), 1e-6) if x.size else 1.0
    worst = max(worst, float(np.max(np.abs(x - y), initial=0.0)) / scale)
  return worst


@pytest.fixture(scope="module")
def two_device_runs(tmp_path_factory, processes):
  """1 process x 2 CPU devices and 2 processes x 1 CPU device, same run."""
  root = tmp_path_factory.mktemp("dist")
  one = str(root / "one_process")
  two = str(root / "two_processes")
  procs, logs = _run_group(processes, one, 1, ["--cpu_devices=2"])
  _finish(processes, procs, logs)
  procs, logs = _run_group(processes, two, 2, ["--cpu_devices=1"])
  _finish(processes, procs, logs)
  return root, one, two


def test_two_processes_reproduce_one_process_with_two_devices(
    two_device_runs):
  _, one, two = two_device_runs
  meta1, leaves1 = _result(one)
  meta2, leaves2 = _result(two)
  assert meta1["process_count"] == 1 and meta2["process_count"] == 2
  assert meta2["run"]["process_devices"] == [1, 1]
  assert meta1["run"]["mesh"] == meta2["run"]["mesh"] == {"data": 2}
  assert meta1["device_count"] == meta2["device_count"] == 2
  # each process materialised half of every global batch
  assert (meta1["train_rows"], meta2["train_rows"]) == (64, 32)
  assert (meta1["eval_rows"], meta2["eval_rows"]) == (100, 50)
  assert _max_relative_difference(leaves1, leaves2) <= 1e-5
  e1, e2 = meta1["eval"], meta2["eval"]
  # exact counts over the whole digits test split (360 examples)
  assert e1["test_count"] == e2["test_count"] == 360
  assert e1["test_correct"] == e2["test_correct"]
  assert e2["test_loss"] == pytest.approx(e1["test_loss"], rel=1e-5)
  # exact host-side combination of per-process shares of the test labels
  labels = data.load_dataset("digits", seed=0).test.labels
  assert meta2["label_counts"] == {"n": 360, "ones": int(np.sum(labels == 1))}
  # records come from process 0 only: one train record per logged step
  with open(os.path.join(two, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f
             if json.loads(line)["split"] == "train"]
  assert steps == sorted(set(steps))
  with open(os.path.join(two, "environment.json"), encoding="utf-8") as f:
    assert json.load(f)[-1]["process_count"] == 2


@pytest.mark.slow
def test_member_groups_across_processes_equal_one_device_members(
    tmp_path, processes):
  split = str(tmp_path / "split")
  single = str(tmp_path / "single")
  procs, logs = _run_group(processes, split, 2,
                           ["--members=2", "--member_shards=2"])
  _finish(processes, procs, logs)
  procs, logs = _run_group(processes, single, 1, ["--members=2"])
  _finish(processes, procs, logs)
  meta_split, leaves_split = _result(split)
  meta_single, leaves_single = _result(single)
  # every process held the whole batch: its group trains its own member
  assert meta_split["train_rows"] == 64 and meta_split["process_count"] == 2
  assert _max_relative_difference(leaves_single, leaves_split) <= 1e-5
  assert meta_split["eval"]["test_correct"] == \
      meta_single["eval"]["test_correct"]
  assert len(meta_split["eval"]["test_correct"]) == 2


@pytest.mark.slow
def test_sigkill_one_process_then_relaunch_resumes(two_device_runs,
                                                    processes):
  root, _, uninterrupted = two_device_runs
  workdir = str(root / "killed")
  procs, logs = _run_group(processes, workdir, 2, sleep=0.4)
  checkpoints = os.path.join(workdir, "checkpoints")
  process_helpers.wait_for_first_checkpoint(checkpoints, procs,
                                            RUN_TIMEOUT_S)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  code = processes.wait(procs[0], RUN_TIMEOUT_S)
  waited = time.monotonic() - killed_at
  processes.wait(procs[1], 10)
  with open(logs[0], encoding="utf-8") as f:
    text = f.read()
  assert code != 0, text[-3000:]
  assert code == distributed.LOST_PROCESS_EXIT_CODE, text[-3000:]
  assert "lost process(es) [1]" in text
  # the bound: failure timeout + heartbeat period + slack for a loaded host
  assert waited < FAILURE_TIMEOUT_S + 60, waited
  # relaunch the same command: resumes and ends as the uninterrupted run
  procs, logs = _run_group(processes, workdir, 2)
  _finish(processes, procs, logs)
  meta, leaves = _result(workdir)
  meta_ref, leaves_ref = _result(uninterrupted)
  assert meta["resumed_from_step"] is not None
  assert 0 < meta["resumed_from_step"] < meta["step"] == meta_ref["step"]
  assert _max_relative_difference(leaves_ref, leaves) <= 1e-6
  assert meta["eval"]["test_correct"] == meta_ref["eval"]["test_correct"]


_FLAGS_MAIN = ("from absl import app; from experiments import "
               "distributed_flags as f; app.run(lambda argv: "
               "print('setup', f.initialize_from_flags()))")


@pytest.mark.parametrize("flags,named", [
    (["--num_processes=2", "--process_id=2",
      "--coordinator_address=127.0.0.1:1234"], "process_id=2"),
    (["--num_processes=2", "--process_id=0"], "coordinator_address"),
    (["--num_processes=2", "--process_id=0",
      "--coordinator_address=127.0.0.1:99999"], "127.0.0.1:99999"),
    (["--num_processes=2", "--process_id=0",
      "--coordinator_address=no-port"], "no-port"),
    (["--num_processes=0", "--process_id=0",
      "--coordinator_address=127.0.0.1:1234"], "num_processes=0"),
    (["--process_id=1"], "num_processes is missing"),
    (["--distributed=auto"], "auto detection found no cluster"),
])
def test_bad_flags_fail_at_once_naming_the_value(flags, named):
  start = time.monotonic()
  out = subprocess.run([sys.executable, "-c", _FLAGS_MAIN, *flags],
                       capture_output=True, text=True, env=_env(), cwd=ROOT,
                       timeout=RUN_TIMEOUT_S)
  assert out.returncode != 0
  assert named in out.stderr, out.stderr[-2000:]
  if "auto" not in flags[0]:
    assert "connecting" not in out.stderr  # failed before contacting anyone
  assert time.monotonic() - start < 120


@pytest.mark.slow
def test_mismatched_num_processes_fails_naming_both_values(tmp_path,
                                                           processes):
  port = _free_port()
  common = [SCRIPT, "--mode=init_only",
            f"--coordinator_address=127.0.0.1:{port}"]
  p0 = processes.start(common + ["--num_processes=2", "--process_id=0"],
                       str(tmp_path / "p0.log"))
  p1 = processes.start(common + ["--num_processes=3", "--process_id=1"],
                       str(tmp_path / "p1.log"))
  code = processes.wait(p1, RUN_TIMEOUT_S)
  processes.wait(p0, RUN_TIMEOUT_S)
  text = (tmp_path / "p1.log").read_text()
  assert code != 0
  assert "num_processes=3" in text and "num_processes=2" in text, text[-2000:]


# --- in-process checks (one process) ------------------------------------------


def test_explicit_setup_validation_names_the_value():
  assert distributed.check_explicit_setup("10.0.0.1:1234", 4, 3) == (
      "10.0.0.1:1234", 4, 3)
  assert distributed.check_explicit_setup("[::1]:80", 1, 0)[0] == "[::1]:80"
  for args, named in [(("h:1", 2, 5), "process_id=5"),
                      (("h:1", 2, -1), "process_id=-1"),
                      ((None, 2, 0), "coordinator_address is missing"),
                      (("h:0", 2, 0), "'h:0'"),
                      (("h", 2, 0), "'h'"),
                      (("h:1", True, 0), "num_processes=True"),
                      (("h:1", 2, None), "process_id must be given")]:
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
      distributed.check_explicit_setup(*args)


def test_initialize_rejects_bad_values_before_jax_starts():
  # JAX's backend is already running in this test process: validation errors
  # must come first, naming the value.
  with pytest.raises(ValueError, match="process_id=3"):
    distributed.initialize(coordinator_address="127.0.0.1:5", num_processes=2,
                           process_id=3)
  with pytest.raises(ValueError, match="heartbeat_period_s"):
    distributed.initialize(coordinator_address="127.0.0.1:5", num_processes=2,
                           process_id=0, failure_timeout_s=1.0,
                           heartbeat_period_s=2.0)


def test_launcher_appends_each_process_flags():
  cmd = launch_local.process_command(["python", "-m", "x", "--a=1"], port=77,
                                     num_processes=3, process_id=2,
                                     cpu_devices=4)
  assert cmd == ["python", "-m", "x", "--a=1",
                 "--coordinator_address=127.0.0.1:77", "--num_processes=3",
                 "--process_id=2", "--config.cpu_devices=4"]
  port = launch_local.free_port()
  assert 0 < port < 65536


def test_launcher_stops_all_when_one_fails(tmp_path, capfd):
  # Process 1 fails at once; process 0 would sleep for a minute.
  script = ("import sys, time\n"
            "pid = int([a for a in sys.argv if a.startswith('--process_id')]"
            "[0].split('=')[1])\n"
            "print('hello from', pid, flush=True)\n"
            "sys.exit(3) if pid == 1 else time.sleep(60)\n")
  start = time.monotonic()
  code = launch_local.launch([sys.executable, "-c", script], num_processes=2,
                             log_dir=str(tmp_path), grace_s=2.0, settle_s=1.0)
  assert code == 3
  assert time.monotonic() - start < 40
  assert "hello from 1" in (tmp_path / "process_1.log").read_text()
  err = capfd.readouterr().err
  assert ("[launch_local] process 1 ended first: exited with status 3"
          in err), err
  assert "coordinator" not in err
  assert ("[launch_local] process 0: killed by SIGTERM (status -15), "
          "stopped by the launcher") in err, err


_COORDINATOR_DIES = (
    "import os, signal, sys, time\n"
    "from compsum_jax.training import distributed\n"
    "flags = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
    "me = int(flags['process_id'])\n"
    "distributed.initialize(coordinator_address=flags['coordinator_address'],"
    " num_processes=int(flags['num_processes']), process_id=me,"
    " failure_timeout_s=10.0)\n"
    "print('joined', me, flush=True)\n"
    "time.sleep(3)\n"
    "if me == 0: os.kill(os.getpid(), signal.SIGKILL)\n"
    "time.sleep(120)\n")


def test_launcher_names_the_coordinator_when_it_dies_first(tmp_path,
                                                          monkeypatch,
                                                          capfd):
  # Process 0 (the coordinator) SIGKILLs itself once both have joined: JAX
  # aborts process 1 at once; the launcher names process 0 as the first to
  # end, with its status, and then says how process 1 ended.
  for name, value in _env().items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  start = time.monotonic()
  code = launch_local.launch([sys.executable, "-c", _COORDINATOR_DIES],
                             num_processes=2, log_dir=str(tmp_path),
                             grace_s=2.0, settle_s=20.0)
  elapsed = time.monotonic() - start
  err = capfd.readouterr().err
  assert code == 128 + signal.SIGKILL, err
  assert ("[launch_local] process 0 ended first: killed by SIGKILL (status "
          "-9); process 0 is the coordinator") in err, err
  # process 1 ended on its own (JAX's abort, or its watchdog's report of
  # process 0 if that won the race), well before the settle time ran out
  line = next(text for text in err.splitlines()
              if text.startswith("[launch_local] process 1:"))
  assert "on its own" in line, err
  assert ("SIGABRT" in line or
          f"status {distributed.LOST_PROCESS_EXIT_CODE}" in line), line
  assert "stopping" not in err
  assert "joined 1" in (tmp_path / "process_1.log").read_text()
  assert elapsed < 120, elapsed


def test_launcher_describes_exit_statuses():
  assert launch_local.LOST_PROCESS_EXIT_CODE == (
      distributed.LOST_PROCESS_EXIT_CODE)
  assert launch_local.describe_status(-9) == "killed by SIGKILL (status -9)"
  assert "SIGABRT (status -6)" in launch_local.describe_status(-6)
  assert launch_local.describe_status(3) == "exited with status 3"
  assert "lost process" in launch_local.describe_status(
      distributed.LOST_PROCESS_EXIT_CODE)
  assert "coordinator" in launch_local.first_failure_message(0, -9)
  assert "coordinator" not in launch_local.first_failure_message(1, 3)


def test_process_rows_partition_every_global_batch():
  rs = np.random.RandomState(0)
  images = rs.rand(50, 3).astype(np.float32)
  labels = rs.randint(0, 4, 50).astype(np.int32)
  arrays = data.ArraySplit(images, labels)
  full = list(data.train_batches(arrays, 8, seed=3, epoch=1))
  halves = [list(data.train_batches(arrays, 8, seed=3, epoch=1, rows=r))
            for r in (np.arange(0, 4), np.arange(4, 8))]
  for b, batch in enumerate(full):
    for name in batch:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][b][name], halves[1][b][name]]),
          batch[name])
  eval_full = list(data.eval_batches(arrays, 16))
  eval_parts = [list(data.eval_batches(arrays, 16, rows=r))
                for r in (np.arange(0, 8), np.arange(8, 16))]
  assert sum(float(b["mask"].sum()) for p in eval_parts for b in p) == 50
  for b, batch in enumerate(eval_full):
    for name in batch:
      np.testing.assert_array_equal(
          np.concatenate([eval_parts[0][b][name], eval_parts[1][b][name]]),
          batch[name])
  with pytest.raises(ValueError, match="rows"):
    next(data.train_batches(arrays, 8, seed=0, epoch=0, rows=[3, 9]))


def test_single_process_row_helpers():
  assert training.process_batch_rows(None, 6).tolist() == list(range(6))
  mesh = training.make_data_mesh(1)
  assert training.process_batch_rows(mesh, 6).tolist() == list(range(6))
  batch = {"x": np.arange(12.0).reshape(6, 2)}
  placed = training.shard_batch(batch, mesh, global_batch_size=6)
  np.testing.assert_array_equal(np.asarray(placed["x"]), batch["x"])
  with pytest.raises(ValueError, match="holds 6 rows"):
    training.shard_batch({"x": np.zeros((4, 2))}, mesh, global_batch_size=6)
  assert distributed.process_slice(7) == slice(0, 7)
  totals = training.sum_over_processes({"a": np.int32(3), "b": [0.5]})
  assert totals["a"].dtype == np.int64 and int(totals["a"]) == 3
  assert training.is_primary() and jax.process_count() == 1
  record = distributed.run_record(mesh)
  assert record["num_processes"] == 1 and record["mesh"] == {"data": 1}
  assert record["process_devices"] == [len(jax.devices())]
  fetched = training.fetch({"v": jax.numpy.arange(3)})
  assert isinstance(fetched["v"], np.ndarray)
