"""Shared test helpers."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def run_on_fake_cpu_devices():
  """``run(args, devices=4, timeout=600)``: ``python *args`` in a fresh
  process with that many host-platform CPU devices (XLA_FLAGS must be set
  before jax is imported), from the repository root; asserts exit code 0
  and returns the CompletedProcess."""

  def run(args, devices=4, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  return run
