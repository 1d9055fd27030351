"""Helpers shared by the tests that run subprocesses (binaries, trainings)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence

import numpy as np


def run_logged(command: Sequence[str], log: str, *, env: Mapping[str, str],
               cwd: str | os.PathLike, timeout: float) -> None:
  """Runs ``command`` to its end with its output in ``log``; fails the test
  with the log's tail if it exits non-zero."""
  with open(log, "w", encoding="utf-8") as out:
    proc = subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT,
                          env=dict(env), cwd=cwd, timeout=timeout, check=False)
  with open(log, encoding="utf-8") as f:
    text = f.read()
  assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n" + (
      text[-4000:])


def assert_saved_states_equal(path_a: str | os.PathLike,
                              path_b: str | os.PathLike) -> None:
  """Two ``final_state.npz`` files hold the same arrays, bit for bit."""
  with np.load(path_a) as a, np.load(path_b) as b:
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 5
    for name in a.files:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def wait_for_first_checkpoint(checkpoints: str | os.PathLike,
                              procs: Sequence[subprocess.Popen],
                              timeout: float) -> None:
  """Waits until ``checkpoints`` holds a step directory, failing the test if
  ``timeout`` seconds pass or any of ``procs`` ends first."""
  deadline = time.monotonic() + timeout
  while not (os.path.isdir(checkpoints) and
             any(n.isdigit() for n in os.listdir(checkpoints))):
    assert time.monotonic() < deadline, "no checkpoint was ever written"
    assert all(p.poll() is None for p in procs), "a process ended early"
    time.sleep(0.2)
