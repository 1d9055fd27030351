"""End-to-end run of the bounds binary's smoke preset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_preset_runs_end_to_end(tmp_path, light_compile_env):
  workdir = tmp_path / "bounds"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.bounds",
       "--config=configs/bounds.py:smoke", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
      env=light_compile_env(os.environ))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Minimum slack over all checks" in proc.stdout
  for name in ["results.json", "summary.md", "gamma.png", "tightness.png",
               "gaps.png"]:
    assert (workdir / name).stat().st_size > 0, name
  results = json.loads((workdir / "results.json").read_text())
  assert results["preset"] == "smoke"
  # (a) Γ_τ is increasing in s and capped at 1.
  for row in results["gamma_table"]:
    gamma = np.asarray(row["gamma"])
    assert np.all(np.diff(gamma) >= 0) and np.all(gamma <= 1.0)
  # (b) the bound held on every checked pair.
  for row in results["verification"]:
    assert row["random_pairs"] == 2000
    assert row["random_min_slack"] >= -1e-12
    assert row["adversarial_min_slack"] >= -1e-10
  # (c) no ratio above 1 (that would be a counterexample).
  for row in results["tightness"]:
    assert max(row["ratios"]) <= 1 + 1e-9
  # (d) gaps are non-negative and non-increasing in τ (docs/math.md (7.6)).
  gap = np.asarray(results["gaps"]["gap"])
  assert np.all(gap >= -1e-12)
  assert np.all(np.diff(gap, axis=0) <= 1e-12)
  summary = (workdir / "summary.md").read_text()
  for heading in ["(a) Γ_τ(s)", "(b) Verification", "(c) Tightness",
                  "(d) Deterministic minimizability gaps", "(e) Choosing τ"]:
    assert heading in summary
  # (e) gradient descent on τ lands on the grid's minimiser (within one grid
  # step) and is at least as low as the grid's best value.
  search = results["tau_search"]
  assert abs(search["descent_tau"] - search["grid_tau"]) <= search[
      "grid_spacing"]
  assert search["descent_bound"] <= search["grid_bound"] + 1e-9
  assert 0.0 <= search["descent_bound"] < min(search["grid_values"][0],
                                              search["grid_values"][-1])
