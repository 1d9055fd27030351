"""Subprocess helper for tests/test_distributed_tfds.py.

One process of a (possibly) multi-process run of an experiment's smoke preset
on a prepared tfds dataset (mnist layout, written by the test): joins the run
when ``--num_processes`` is given, runs ``<experiment>_lib.run`` (process 0
writes results.json) and prints one JSON line: this process's index, whether
its training split was read on demand, and how many training records it
decoded (``RecordSubset.records_read``; None for a whole-split load).
"""

import argparse
import json

import jax

from compsum_jax.training import distributed


def loss_comparison_config(data_dir: str):
  from configs import loss_comparison as presets  # pylint: disable=g-import-not-at-top
  config = presets.get_config("smoke")
  config.dataset = "mnist"
  config.data_dir = data_dir
  config.dataset_kwargs = {}
  config.validation_size = 32
  config.label_noise.rate = 0.25
  config.num_seeds = 1
  config.batch_size = 64
  config.member_shards = 1  # every batch split over the processes
  return config


def adversarial_config(data_dir: str):
  from configs import adversarial_training as presets  # pylint: disable=g-import-not-at-top
  config = presets.get_config("smoke")
  config.dataset = "mnist"
  config.data_dir = data_dir
  config.dataset_kwargs = {}
  config.methods = ("pgd_at",)
  config.num_epochs = 1
  config.eval_every_epochs = 1
  config.batch_size = 64
  config.validation_size = 32
  config.cascade = ()
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--experiment", choices=["loss_comparison",
                                               "adversarial_training"])
  parser.add_argument("--workdir")
  parser.add_argument("--data_dir")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--config.cpu_devices", dest="cpu_devices", type=int,
                      default=1)
  args = parser.parse_args()
  jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  distributed.initialize(coordinator_address=args.coordinator_address,
                         num_processes=args.num_processes,
                         process_id=args.process_id, failure_timeout_s=30.0)
  # Imported after start-up: nothing may touch JAX's backend before it.
  from compsum_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top

  loaded = []
  load_data = common.load_data

  def load_and_keep(config):
    dataset = load_data(config)
    loaded.append(dataset)
    return dataset

  common.load_data = load_and_keep
  if args.experiment == "loss_comparison":
    from experiments import loss_comparison_lib as lib  # pylint: disable=g-import-not-at-top
    lib.run(loss_comparison_config(args.data_dir), args.workdir,
            log=lambda line: None)
  else:
    from experiments import adversarial_training_lib as lib  # pylint: disable=g-import-not-at-top
    lib.run(adversarial_config(args.data_dir), args.workdir,
            log=lambda line: None)
  (dataset,) = loaded
  on_demand = isinstance(dataset.train, tfds_source.RecordSubset)
  print(json.dumps({
      "process": jax.process_index(), "on_demand": on_demand,
      "num_train": dataset.train.num_examples,
      "records_read": dataset.train.records_read if on_demand else None}),
        flush=True)


if __name__ == "__main__":
  main()
