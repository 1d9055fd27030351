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
import os
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
_BUILDER_MODULE = flags.DEFINE_string(
    "builder_module", None,
    "Optional Python file defining tfds builders of your own (e.g. over "
    "local files); importing it registers them, and --datasets may then name "
    "them (no TensorFlow needed when their examples are image files). "
    "Their load check (--verify) needs an entry in "
    "compsum_jax.data.tfds_source.TFDS_SPECS and is skipped without one.")
_VERIFY = flags.DEFINE_bool(
    "verify", True,
    "After preparing, load each dataset the way training does "
    "(tfds.data_source, no TensorFlow) and print its sizes.")


def prepare(name: str, data_dir: str) -> str:
  """Downloads ``name`` and writes it to ``data_dir`` as array_record files.

  Returns:
    The prepared version, e.g. '3.0.1'.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")
  return str(builder.version)


def _import_builders(path: str) -> tuple[str, ...]:
  """Imports the builder file ``path``; returns the tfds names it registers."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise app.UsageError(f"--builder_module={path!r} is not a file")
  spec = importlib.util.spec_from_file_location("prepare_data_builders", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # tfds looks builders' modules up by name
  spec.loader.exec_module(module)
  return tuple(
      value.name for value in vars(module).values()
      if isinstance(value, type) and issubclass(value, tfds.core.DatasetBuilder)
      and value.__module__ == module.__name__)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  known = tfds_source.TFDS_DATASETS
  if _BUILDER_MODULE.value:
    known += _import_builders(_BUILDER_MODULE.value)
  unknown = [d for d in _DATASETS.value if d not in known]
  if unknown:
    raise app.UsageError(f"unknown --datasets {unknown}; choose from {known}")
  catalog = [d for d in _DATASETS.value if d in tfds_source.TFDS_DATASETS]
  # The catalog builders encode images with TensorFlow; builders of your own
  # that yield image files (paths or bytes) prepare without it (tfds 4.9.10).
  if catalog and importlib.util.find_spec("tensorflow") is None:
    print("Preparing tfds datasets needs TensorFlow: install the 'prepare' "
          "extra with  pip install -e '.[prepare]'  (tensorflow-cpu), on a "
          "machine with network access. Training itself does not need it.",
          file=sys.stderr)
    return 2
  data_dir = _DATA_DIR.value or tfds_source.default_data_dir()
  for name in _DATASETS.value:
    start = time.time()
    print(f"preparing {name} into {data_dir} (array_record) ...", flush=True)
    version = prepare(name, data_dir)
    if name in tfds_source.TFDS_SPECS:  # the check training will make
      version = tfds_source.find_prepared_version(name, data_dir)
    print(f"  prepared {name}:{version} in {time.time() - start:.0f} s")
    if _VERIFY.value and name in tfds_source.TFDS_SPECS:
      splits = tfds_source.load_tfds_splits(name, data_dir)
      print(f"  verified: train {splits.train.images.shape}, test "
            f"{splits.test.images.shape}")
  return 0


if __name__ == "__main__":
  app.run(main)
