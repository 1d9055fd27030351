"""Tests of the workdir lock with real concurrent processes.

The helper processes run plain Python (no JAX import), so each starts in a
fraction of a second.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from compsum_jax.training import workdir as workdir_lib

# The helper loads workdir.py by path (standard library only), not the
# compsum_jax.training package, so it starts without importing JAX.
HOLDER = textwrap.dedent("""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("workdir_lock_module",
                                                  sys.argv[6])
    w = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = w  # dataclasses look their module up
    spec.loader.exec_module(w)
    start = time.monotonic()
    try:
      lock = w.acquire(sys.argv[1], process_index=int(sys.argv[2]),
                       process_count=int(sys.argv[3]),
                       wait_timeout_s=float(sys.argv[4]))
    except w.WorkdirBusyError as error:
      print("BUSY", time.monotonic() - start, error, file=sys.stderr)
      sys.exit(3)
    try:
      print("LOCKED", time.time(), flush=True)
      time.sleep(float(sys.argv[5]))
      print("RELEASING", time.time(), flush=True)
    finally:
      lock.release()
""")
MODULE = workdir_lib.__file__


def _start(workdir, *, index=0, count=1, wait=5.0, hold=30.0):
  return subprocess.Popen(
      [sys.executable, "-c", HOLDER, str(workdir), str(index), str(count),
       str(wait), str(hold), MODULE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _wait_locked(proc):
  line = proc.stdout.readline()
  assert line.startswith("LOCKED"), (line, proc.stderr.read())


def test_second_process_fails_at_once_naming_the_owner(tmp_path):
  first = _start(tmp_path, hold=60.0)
  try:
    _wait_locked(first)
    second = subprocess.run(
        [sys.executable, "-c", HOLDER, str(tmp_path), "0", "1", "5", "0",
         MODULE], capture_output=True, text=True, timeout=60)
    assert second.returncode == 3, second.stderr
    busy = second.stderr.split()
    assert busy[0] == "BUSY"
    assert float(busy[1]) < 1.0  # refused at once, no waiting
    assert f"pid {first.pid}" in second.stderr
    assert socket.gethostname() in second.stderr
    assert "LOCKED" not in second.stdout
    assert first.poll() is None  # the first owner is unaffected
    owner = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
    assert owner["pid"] == first.pid
  finally:
    first.kill()
    first.wait()


def test_lock_released_on_exit_and_on_exception(tmp_path):
  with workdir_lib.workdir_lock(tmp_path) as lock:
    assert os.path.exists(lock.path)
    owner = json.loads(open(lock.path).read())
    assert owner["pid"] == os.getpid()
    assert owner["host"] == socket.gethostname()
    assert "start_time_utc" in owner
  assert not os.path.exists(lock.path)
  with pytest.raises(KeyError):
    with workdir_lib.workdir_lock(tmp_path):
      raise KeyError("boom")
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()
  # Taken again after release, and twice in one process is refused.
  with workdir_lib.workdir_lock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirBusyError, match="this process"):
      workdir_lib.acquire(tmp_path)


def test_stale_lock_of_killed_process_is_taken_over(tmp_path):
  first = _start(tmp_path, hold=60.0)
  _wait_locked(first)
  os.kill(first.pid, signal.SIGKILL)
  first.wait()
  assert (tmp_path / workdir_lib.LOCK_FILE).exists()  # left behind
  messages = []
  with workdir_lib.workdir_lock(tmp_path, log=messages.append) as lock:
    assert lock.took_over["pid"] == first.pid
    assert json.loads(open(lock.path).read())["pid"] == os.getpid()
  assert len(messages) == 1
  assert "stale lock" in messages[0] and f"pid {first.pid}" in messages[0]


def test_recycled_pid_counts_as_stale(tmp_path):
  # A lock naming a live pid (this test process) but another start time.
  me = workdir_lib._process_start_ticks(os.getpid())
  assert me is not None
  stale = {"host": socket.gethostname(), "pid": os.getppid(),
           "pid_start_ticks": -1, "start_time_utc": "2000-01-01T00:00:00",
           "process_count": 1, "token": "x"}
  (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(stale))
  messages = []
  with workdir_lib.workdir_lock(tmp_path, log=messages.append) as lock:
    assert lock.took_over["token"] == "x"
  assert messages


def test_lock_of_another_host_is_not_taken_over(tmp_path):
  other = {"host": "some-other-host", "pid": 1, "start_time_utc": "t",
           "process_count": 1, "token": "y"}
  (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(other))
  with pytest.raises(workdir_lib.WorkdirBusyError,
                     match="some-other-host.*delete"):
    workdir_lib.acquire(tmp_path)
  assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text()) == other


def test_unreadable_lock_is_refused_with_its_path(tmp_path):
  (tmp_path / workdir_lib.LOCK_FILE).write_text("{not json")
  with pytest.raises(workdir_lib.WorkdirBusyError,
                     match=str(tmp_path / workdir_lib.LOCK_FILE)):
    workdir_lib.acquire(tmp_path)


def test_many_concurrent_starts_exactly_one_owner(tmp_path):
  procs = [_start(tmp_path, hold=8.0) for _ in range(6)]
  outputs = [p.communicate(timeout=120) for p in procs]
  locked = [out for out, _ in outputs if "LOCKED" in out]
  assert all(p.returncode in (0, 3) for p in procs), outputs
  busy = [err for _, err in outputs if err.startswith("BUSY")]
  # Each either held the lock or was refused, at least one held it, and the
  # holders' intervals [LOCKED, RELEASING] never overlap.
  assert len(locked) + len(busy) == 6
  assert len(locked) >= 1
  intervals = sorted(
      tuple(float(line.split()[1]) for line in out.splitlines())
      for out in locked)
  for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
    assert end <= start
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_cooperating_processes_share_the_lock(tmp_path):
  # Process 1 of 2 starts first and waits for process 0's lock.
  follower = _start(tmp_path, index=1, count=2, wait=60.0, hold=0.0)
  time.sleep(0.5)
  assert follower.poll() is None  # still waiting
  leader = _start(tmp_path, index=0, count=2, hold=5.0)
  try:
    _wait_locked(leader)
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert "LOCKED" in out
    # The follower does not remove the leader's lock.
    assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())[
        "pid"] == leader.pid
  finally:
    leader.communicate(timeout=60)
  assert leader.returncode == 0
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_follower_refuses_a_lock_of_another_run(tmp_path):
  with workdir_lib.workdir_lock(tmp_path, process_count=1):
    with pytest.raises(workdir_lib.WorkdirBusyError, match="1 process"):
      workdir_lib.acquire(tmp_path, process_index=1, process_count=2)
  with pytest.raises(workdir_lib.WorkdirBusyError, match="did not lock"):
    workdir_lib.acquire(tmp_path, process_index=1, process_count=2,
                        wait_timeout_s=0.2)


@pytest.mark.parametrize("index,count", [(2, 2), (-1, 1), (0, 0), (0.5, 2)])
def test_bad_process_arguments(tmp_path, index, count):
  with pytest.raises(ValueError, match="process_"):
    workdir_lib.acquire(tmp_path, process_index=index, process_count=count)
