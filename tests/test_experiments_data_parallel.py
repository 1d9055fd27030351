"""Both experiments run data-parallel over every device (4 fake CPU devices)."""

import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_experiments_are_data_parallel_over_every_device(
    run_on_fake_cpu_devices):
  proc = run_on_fake_cpu_devices(
      [str(REPO / "tests" / "experiments_mesh_script.py")])
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["num_devices"] == 4 and out["mesh_size"] == 4
  # Loss comparison: the data-parallel sweep gives the single-device test
  # accuracies (exact counts; summation order differs, so allow one example).
  # Its 6 vmapped members (3 τ × 2 seeds) split into gcd(6, 4) = 2 member
  # groups of 2 devices each; member_shards=1 is pure data parallelism.
  assert out["member_mesh"] == {"members": 2, "data": 2}
  assert out["lc_parallel_facts"]["mesh"] == {"members": 2, "data": 2}
  assert out["lc_data_only_facts"]["mesh"] == {"members": 1, "data": 4}
  assert "on 4 devices (2 member groups × batch split 2)" in (
      out["lc_parallel_facts"]["devices_line"][0])
  num_test = out["num_test"]
  for name in ("lc_parallel", "lc_data_only"):
    for parallel, single in zip(out[name], out["lc_single"], strict=True):
      assert abs(parallel - single) <= 1.0 / num_test + 1e-12, name
  # Adversarial training: every method trains and is evaluated on the mesh.
  runs = out["adv_runs"]
  assert {r["method"] for r in runs} == {"standard", "pgd_at", "trades",
                                         "adv_comp_sum"}
  for r in runs:
    assert r["status"] == "ok"
    assert 0.0 <= r["robust_pgd20"] <= r["clean_accuracy"] <= 1.0
  assert "config.batch_size=126" in out["bad_batch_error"]
  assert "multiple of the 4 devices" in out["bad_batch_error"]
  assert "config.member_shards=4" in out["bad_shards_error"]
  assert "6 members" in out["bad_shards_error"]
