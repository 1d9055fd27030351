"""The loss-comparison binary: start-up validation and SIGKILL resume.

Runs ``python -m experiments.loss_comparison`` in subprocesses: a run killed
with SIGKILL after its first checkpoint and restarted with the same
``--workdir`` must write the same results.json as an uninterrupted run.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import with_light_compilation

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ["--config=configs/loss_comparison.py:smoke",
             "--config.taus=0,1", "--config.num_seeds=1",
             "--config.num_epochs=12", "--config.eval_every_epochs=3"]


def _env(cache_dir):
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # A shared persistent compilation cache makes the second and third
  # processes start fast; cached executables are the compiled ones. The
  # suite's cache (tests/conftest.py) when it is on, else a fresh one.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return with_light_compilation(env)


def _command(workdir, *extra):
  return [sys.executable, "-m", "experiments.loss_comparison", *OVERRIDES,
          f"--workdir={workdir}", *extra]


@pytest.mark.parametrize("flag, field", [
    ("--config.taus=0,-1", "config.taus"),
    ("--config.label_noise.rate=1.0", "config.label_noise.rate"),
])
def test_binary_rejects_bad_config_at_start_up(flag, field, tmp_path):
  out = subprocess.run(_command(tmp_path / "run", flag), cwd=REPO,
                       env=_env(tmp_path / "cache"), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode != 0
  assert field in out.stderr
  assert "ValueError" in out.stderr
  assert not (tmp_path / "run" / "members").exists()  # nothing was trained


def _finished_checkpoints(workdir):
  found = []
  for ckpt_dir in pathlib.Path(workdir).glob("members/*/checkpoints"):
    found += [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
  return found


def test_sigkill_then_resume_gives_identical_results(tmp_path):
  env = _env(tmp_path / "cache")
  reference = tmp_path / "uninterrupted"
  subprocess.run(_command(reference), cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=600)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(killed), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not _finished_checkpoints(killed):
      assert proc.poll() is None, "run ended before its first checkpoint"
      assert time.monotonic() < deadline, "no checkpoint within 300 s"
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (killed / "results.json").exists()
  steps_at_kill = max(_finished_checkpoints(killed))
  assert steps_at_kill < 12 * 11  # killed before the end (11 steps/epoch)

  subprocess.run(_command(killed), cwd=REPO, env=env, check=True,
                 capture_output=True, timeout=600)
  (group,) = list((killed / "members").iterdir())
  with open(group / "environment.json", encoding="utf-8") as f:
    starts = json.load(f)
  assert len(starts) == 2 and starts[1]["resumed_from_step"] is not None
  with open(reference / "results.json", encoding="utf-8") as f:
    expected = json.load(f)
  with open(killed / "results.json", encoding="utf-8") as f:
    resumed = json.load(f)
  assert resumed == expected
  assert len(expected["members"][0]["history"]["epoch"]) == 4
