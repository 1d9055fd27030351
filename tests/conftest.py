"""Shared test helpers."""

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Mapping

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

# Lighter XLA:CPU compilation: LLVM at -O0. A CNN step then compiles in about
# half the CPU time and runs about 2-3x slower; nearly every test runs a
# program a few times, so compiling dominates. The HLO passes are unchanged and
# LLVM reassociates floating point only under fast-math (off by default on
# XLA:CPU), so the tests keep their tolerances. Applied to the test processes
# themselves (below, before any test imports jax) and to the processes that
# end-to-end smoke tests start; never to subprocesses whose run time dominates
# (``run_on_fake_cpu_devices(..., light_compile=False)``).
# COMPSUM_JAX_TEST_LIGHT_COMPILE=off disables it.
LIGHT_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0",)


def with_light_compilation(env: Mapping[str, str]) -> dict[str, str]:
  """A copy of ``env`` with LIGHT_COMPILE_XLA_FLAGS appended to XLA_FLAGS
  (its other flags kept), unless COMPSUM_JAX_TEST_LIGHT_COMPILE=off."""
  env = dict(env)
  if os.environ.get("COMPSUM_JAX_TEST_LIGHT_COMPILE", "on") == "off":
    return env
  flags = env.get("XLA_FLAGS", "").split()
  flags += [f for f in LIGHT_COMPILE_XLA_FLAGS if f not in flags]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def without_light_compilation(env: Mapping[str, str]) -> dict[str, str]:
  """A copy of ``env`` without LIGHT_COMPILE_XLA_FLAGS in XLA_FLAGS (its
  other flags kept): for subprocesses whose run time dominates."""
  env = dict(env)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if f not in LIGHT_COMPILE_XLA_FLAGS]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


# The test processes (each xdist worker) and the subprocesses that inherit
# os.environ compile lightly too; XLA reads XLA_FLAGS when jax starts.
_SESSION_ENV = with_light_compilation(os.environ)
if "XLA_FLAGS" in _SESSION_ENV:
  os.environ["XLA_FLAGS"] = _SESSION_ENV["XLA_FLAGS"]


@pytest.fixture(scope="session")
def light_compile_env() -> Callable[[Mapping[str, str]], dict[str, str]]:
  """``light_compile_env(env)``: ``env`` for an end-to-end smoke subprocess,
  with the lighter XLA:CPU compilation flags (see with_light_compilation)."""
  return with_light_compilation


@pytest.fixture
def run_on_fake_cpu_devices():
  """``run(args, devices=4, timeout=600, light_compile=True)``: ``python
  *args`` in a fresh process with that many host-platform CPU devices
  (XLA_FLAGS must be set before jax is imported), from the repository root,
  with the lighter compilation flags unless ``light_compile=False`` (for runs
  whose run time dominates); asserts exit code 0 and returns the
  CompletedProcess."""

  def run(args, devices=4, timeout=600, light_compile=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if light_compile:
      env = with_light_compilation(env)
    proc = subprocess.run([sys.executable, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  return run
