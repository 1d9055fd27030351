"""Subprocess helper for test_experiments_data_parallel: both experiments'
smoke presets on 4 fake CPU devices (data-parallel steps; the loss
comparison's 6 vmapped members split over 2 member groups), and the loss
comparison again with pure data parallelism (member_shards=1) and with the
mesh switched off, in the same process.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 set before jax is
imported; prints one JSON line.
"""

import json
import sys
import tempfile

import jax

from configs import adversarial_training as adv_presets
from configs import loss_comparison as lc_presets
from experiments import adversarial_training_lib as adv_lib
from experiments import common
from experiments import loss_comparison_lib as lc_lib


def loss_comparison(workdir, **overrides):
  config = lc_presets.get_config("smoke")
  config.update(overrides)
  results, paths = lc_lib.run(config, workdir, log=lambda s: None)
  with open(paths["table"], encoding="utf-8") as f:
    table = f.read()
  return ([row["test_accuracy"]["mean"] for row in results["per_tau"]],
          {"num_test": results["dataset"]["num_test"],
           "mesh": results["sweep"]["mesh"],
           "devices_line": [line for line in table.splitlines()
                            if "members =" in line]})


def main():
  out = {"num_devices": jax.device_count()}
  with tempfile.TemporaryDirectory() as tmp:
    config = lc_presets.get_config("smoke")
    mesh = common.data_mesh(config)
    out["mesh_size"] = None if mesh is None else mesh.size
    num_members = len(config.taus) * config.num_seeds
    member_mesh = common.data_mesh(config, num_members)
    out["member_mesh"] = dict(member_mesh.shape)
    out["lc_parallel"], facts = loss_comparison(tmp + "/lc_parallel")
    out["num_test"] = facts["num_test"]
    out["lc_parallel_facts"] = facts
    out["lc_data_only"], out["lc_data_only_facts"] = loss_comparison(
        tmp + "/lc_data_only", member_shards=1)
    data_mesh = common.data_mesh
    common.data_mesh = lambda config, num_members=None: None
    try:
      out["lc_single"], _ = loss_comparison(tmp + "/lc_single")
    finally:
      common.data_mesh = data_mesh
    adv = adv_lib.run(adv_presets.get_config("smoke"), tmp + "/adv")
    out["adv_runs"] = [{k: r.get(k) for k in ("method", "status",
                                               "clean_accuracy",
                                               "robust_pgd20")}
                       for r in adv["runs"]]
    try:
      config = lc_presets.get_config("smoke")
      config.batch_size = 126
      common.data_mesh(config)
    except ValueError as error:
      out["bad_batch_error"] = str(error)
    try:
      config = lc_presets.get_config("smoke")
      config.member_shards = 4
      common.data_mesh(config, num_members)
    except ValueError as error:
      out["bad_shards_error"] = str(error)
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
