"""Shared test helpers."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# A persistent XLA compilation cache shared by the xdist workers, the
# subprocesses the tests start (they inherit os.environ) and later runs: most
# of the suite's time is compilation. Set before any test imports jax. The
# cache is keyed on the program, the XLA flags and the jax/jaxlib versions,
# so a stale entry is never reused; COMPSUM_JAX_TEST_CACHE=off disables it.
_CACHE = os.environ.get("COMPSUM_JAX_TEST_CACHE",
                        str(pathlib.Path.home() / ".cache" / "compsum_jax"
                            / "jax_compilation_cache"))
if _CACHE != "off":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
  # Cache every program, not only those that took over a second to build.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # Least recently used entries go beyond 2 GB.
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))


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
