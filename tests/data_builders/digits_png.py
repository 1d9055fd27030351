"""A tfds builder over local PNG files: scikit-learn's digits as images.

Used by tests/test_dataset_path_end_to_end.py to prepare a real dataset with
``tools/prepare_data.py --builder_module=...``: the Image feature encodes the
PNG files, tfds writes array_record shards, and training reads them back with
``tfds.data_source`` and PIL, as for mnist/cifar10.

The files are ``<root>/<split>/<index>_<label>.png`` (8×8, one grey channel)
with ``root`` taken from the environment variable DIGITS_PNG_DIR.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

ROOT_ENV = "DIGITS_PNG_DIR"
IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10


class DigitsPng(tfds.core.GeneratorBasedBuilder):
  """8×8 grey digits read from PNG files (name 'digits_png')."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local PNG files for the end-to-end test."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    root = os.environ[ROOT_ENV]
    return {split: self._generate_examples(os.path.join(root, split))
            for split in ("train", "test")}

  def _generate_examples(self, path: str):
    for name in sorted(os.listdir(path)):
      stem = os.path.splitext(name)[0]
      label = int(stem.split("_")[1])
      yield stem, {"image": os.path.join(path, name), "label": label}
