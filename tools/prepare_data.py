"""Prepares tfds image datasets for compsum_jax (run once, with a network).

compsum_jax reads tfds datasets at run time with ``tfds.data_source``, which
needs no TensorFlow but needs the ``array_record`` file format. Preparing
(download + conversion) does need TensorFlow, so install the ``prepare`` extra
first::

    pip install -e '.[prepare]'          # tensorflow-cpu
    python tools/prepare_data.py --datasets=cifar10,cifar100,svhn_cropped \\
        --data_dir=/data/tfds

Then train with ``--config.data_dir=/data/tfds`` (or ``TFDS_DATA_DIR``). The
directory can be copied to machines without a network.
"""

from __future__ import annotations

import importlib.util
import sys
import time

from absl import app, flags

from compsum_jax.data import tfds_source

_DATASETS = flags.DEFINE_list(
    "datasets", ["cifar10"],
    f"Comma-separated tfds datasets to prepare, from {tfds_source.TFDS_DATASETS}.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "Output TFDS data directory (default: $TFDS_DATA_DIR, then "
    "~/tensorflow_datasets).")
_VERIFY = flags.DEFINE_bool(
    "verify", True,
    "After preparing, load each dataset the way training does "
    "(tfds.data_source, no TensorFlow) and print its sizes.")


def prepare(name: str, data_dir: str) -> None:
  """Downloads ``name`` and writes it to ``data_dir`` as array_record files."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  unknown = [d for d in _DATASETS.value if d not in tfds_source.TFDS_DATASETS]
  if unknown:
    raise app.UsageError(f"unknown --datasets {unknown}; choose from "
                         f"{tfds_source.TFDS_DATASETS}")
  if importlib.util.find_spec("tensorflow") is None:
    print("Preparing tfds datasets needs TensorFlow: install the 'prepare' "
          "extra with  pip install -e '.[prepare]'  (tensorflow-cpu), on a "
          "machine with network access. Training itself does not need it.",
          file=sys.stderr)
    return 2
  data_dir = _DATA_DIR.value or tfds_source.default_data_dir()
  for name in _DATASETS.value:
    start = time.time()
    print(f"preparing {name} into {data_dir} (array_record) ...", flush=True)
    prepare(name, data_dir)
    version = tfds_source.find_prepared_version(name, data_dir)
    print(f"  prepared {name}:{version} in {time.time() - start:.0f} s")
    if _VERIFY.value:
      splits = tfds_source.load_tfds_splits(name, data_dir)
      print(f"  verified: train {splits.train.images.shape}, test "
            f"{splits.test.images.shape}")
  return 0


if __name__ == "__main__":
  app.run(main)
