"""The dataset path end to end: tools/prepare_data.py, then training on it.

A tfds builder of our own (``tests/data_builders/digits_png.py``) turns
scikit-learn's digits, written here as PNG files, into a prepared array_record
dataset through ``tools/prepare_data.py`` (tfds' Image feature, its
array_record writer and shuffling: all real). tfds 4.9.10 prepares image
*files* without TensorFlow, so this runs in the default suite. Training then
reads the prepared files with ``tfds.data_source`` + PIL through
``compsum_jax.data.load_dataset``, the code mnist/cifar10 use, and its numbers
are compared with a run on the same PNG files read directly with PIL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from compsum_jax import data  # noqa: E402
from compsum_jax.data import registry, tfds_source  # noqa: E402
from configs import loss_comparison as presets  # noqa: E402
from experiments import common  # noqa: E402
from experiments import loss_comparison_lib as lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDER = os.path.join(REPO, "tests", "data_builders", "digits_png.py")
NAME = "digits_png"


def _write_pngs(root: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """digits as <root>/<split>/<index>_<label>.png; returns what was written."""
  train, test = data.offline.load_digits_splits(0, test_size=360)
  written = {}
  for split, arrays in (("train", train), ("test", test)):
    # Grey levels v ∈ {0..16} (images = v/16) as uint8 15·v ∈ {0..240}.
    pixels = np.rint(arrays.images * 16 * 15).astype(np.uint8)
    os.makedirs(os.path.join(root, split))
    for i, (image, label) in enumerate(zip(pixels, arrays.labels,
                                           strict=True)):
      Image.fromarray(image[..., 0]).save(
          os.path.join(root, split, f"{i:05d}_{int(label)}.png"))
    written[split] = (pixels, arrays.labels.astype(np.int32))
  return written


def _read_pngs_directly(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The PNG files of a split read with PIL, in file order."""
  names = sorted(os.listdir(os.path.join(root, split)))
  images = np.stack([np.asarray(Image.open(os.path.join(root, split, n)))
                     for n in names])[..., None]
  labels = np.array([int(n[:-4].split("_")[1]) for n in names], np.int32)
  return images, labels


def _match_order(reference: tuple[np.ndarray, np.ndarray],
                 images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Permutation p with reference[p] == (images, labels), record by record.

  tfds shuffles records when writing; every read record must be one of the
  files (same pixels and label), each file used once.
  """
  pool: dict[tuple[int, bytes], list[int]] = {}
  for i, (image, label) in enumerate(zip(*reference, strict=True)):
    pool.setdefault((int(label), image.tobytes()), []).append(i)
  order = []
  for image, label in zip(images, labels, strict=True):
    matches = pool.get((int(label), image.tobytes()))
    assert matches, "a prepared record matches none of the PNG files"
    order.append(matches.pop())
  assert not any(pool.values()), "some PNG files were not prepared"
  return np.array(order)


def _config(data_dir: str):
  config = presets.get_config("smoke")
  config.dataset = NAME
  config.dataset_kwargs = {}
  config.data_dir = data_dir
  config.model.name = "mlp"
  config.model.kwargs = {"hidden_sizes": (32,)}
  config.taus = (0.0, 1.0, 2.0)
  config.num_seeds = 1
  config.num_epochs = 2
  config.eval_every_epochs = 2
  return config


@pytest.mark.slow
def test_prepared_png_dataset_trains_like_the_files_read_directly(
    tmp_path, monkeypatch):
  png_root = str(tmp_path / "png")
  data_dir = str(tmp_path / "tfds")
  written = _write_pngs(png_root)

  # 1. Preparation by the tool, in its own process.
  env = dict(os.environ, DIGITS_PNG_DIR=png_root, PYTHONPATH=REPO)
  prep = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "prepare_data.py"),
       f"--builder_module={BUILDER}", f"--datasets={NAME}",
       f"--data_dir={data_dir}"],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
      check=False)
  assert prep.returncode == 0, prep.stderr[-3000:]
  assert f"prepared {NAME}:1.0.0" in prep.stdout
  version_dir = os.path.join(data_dir, NAME, "1.0.0")
  with open(os.path.join(version_dir, "dataset_info.json"),
            encoding="utf-8") as f:
    info = json.load(f)
  assert info["fileFormat"] == "array_record"
  assert any(n.startswith(f"{NAME}-train.array_record")
             for n in os.listdir(version_dir))

  # 2. The training-time reader, exactly as for mnist/cifar10.
  monkeypatch.setitem(tfds_source.TFDS_SPECS, NAME,
                      tfds_source.TfdsSpec(10, (8, 8, 1), False))
  names = registry.DATASET_NAMES + (NAME,)
  monkeypatch.setattr(registry, "DATASET_NAMES", names)
  monkeypatch.setattr(data, "DATASET_NAMES", names)
  prepared = data.load_dataset(NAME, data_dir=data_dir)
  assert "tensorflow" not in sys.modules
  assert prepared.meta["source"] == "tfds.data_source"
  splits = {"train": prepared.train, "test": prepared.test}
  direct = {}
  for split, arrays in splits.items():
    files = _read_pngs_directly(png_root, split)
    np.testing.assert_array_equal(files[0], written[split][0])
    np.testing.assert_array_equal(files[1], written[split][1])
    order = _match_order(files, arrays.images, arrays.labels)
    assert sorted(order) == list(range(len(files[1])))
    # Same records as the files, in the prepared (shuffled) order, decoded
    # by PIL here rather than by tfds' reader.
    direct[split] = data.ArraySplit(files[0][order], files[1][order])
  mean, std = registry.channel_stats(direct["train"].images)
  direct_ds = data.Dataset(
      name=NAME, num_classes=10, input_shape=(8, 8, 1),
      train=direct["train"], validation=None, test=direct["test"],
      augment=False, posterior_fn=None, meta={"mean": mean, "std": std})
  assert prepared.meta["mean"] == mean and prepared.meta["std"] == std

  # 3. The loss comparison through the data_source path, then on the
  # directly read files: the same numbers.
  config = _config(data_dir)
  results_tfds, _ = lib.run(config, str(tmp_path / "run_tfds"),
                            log=lambda _: None)
  assert "tensorflow" not in sys.modules
  monkeypatch.setattr(common, "load_data", lambda cfg: direct_ds)
  results_direct, _ = lib.run(config, str(tmp_path / "run_direct"),
                              log=lambda _: None)
  assert results_tfds["dataset"]["num_train"] == 1437
  assert results_tfds["dataset"]["num_test"] == 360
  for row_tfds, row_direct in zip(results_tfds["per_tau"],
                                  results_direct["per_tau"], strict=True):
    for field in ("test_accuracy", "final_surrogate_loss",
                  "test_surrogate_loss"):
      assert row_tfds[field] == row_direct[field], (row_tfds["tau"], field)
  # It learned something: well above chance (10 %) after 2 epochs.
  assert max(r["test_accuracy"]["mean"] for r in results_tfds["per_tau"]) > 0.5
