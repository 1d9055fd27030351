"""The tfds path: tfds.data_source under tfds.testing.mock_data, no TensorFlow.

TensorFlow is not installed in the default environment, and the library must
never import it: ``tfds.data_source`` reads array_record files without it.
Preparation itself (tools/prepare_data.py) needs TensorFlow and a network and
is not run here.
"""

from __future__ import annotations

import importlib.util
import io
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_prepared_dir(root, name: str, file_format: str = "array_record"
                       ) -> str:
  """Writes <root>/<name>/<version>/dataset_info.json as tfds would.

  The records themselves come from tfds.testing.mock_data, which replaces the
  array_record reader; this file is what the fast "is it prepared?" check
  reads.
  """
  version = str(tfds.builder_cls(name).VERSION)
  path = os.path.join(root, name, version)
  os.makedirs(path)
  with open(os.path.join(path, "dataset_info.json"), "w",
            encoding="utf-8") as f:
    json.dump({"name": name, "version": version, "fileFormat": file_format},
              f)
  return str(root)


def _write_prepared_dataset(data_dir: str, name: str, splits) -> None:
  """Writes a genuinely prepared tfds dataset, without TensorFlow.

  The records are tf.train.Example protos (tfds' own proto module) holding a
  PNG image (PIL) and an int64 label, in array_record shards, and the
  metadata is written by tfds' own DatasetInfo — the layout tfds'
  download_and_prepare(file_format='array_record') produces, so
  tfds.data_source reads it for real (no mocking).

  Args:
    data_dir: the TFDS data directory.
    name: a dataset in TFDS_SPECS.
    splits: {split: (uint8 images [N, H, W, C], int labels [N])}.
  """
  from array_record.python import array_record_module
  from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  path = str(builder.data_dir)
  os.makedirs(path, exist_ok=True)
  infos = []
  for split, (images, labels) in splits.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, split=split, filetype_suffix="array_record")
    writer = array_record_module.ArrayRecordWriter(
        os.path.join(path, f"{name}-{split}.array_record-00000-of-00001"),
        "group_size:1")
    num_bytes = 0
    for image, label in zip(images, labels, strict=True):
      png = io.BytesIO()
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
          png, format="PNG")
      feature = {
          "image": tf_feature_pb2.Feature(
              bytes_list=tf_feature_pb2.BytesList(value=[png.getvalue()])),
          "label": tf_feature_pb2.Feature(
              int64_list=tf_feature_pb2.Int64List(value=[int(label)])),
      }
      record = tf_example_pb2.Example(
          features=tf_feature_pb2.Features(feature=feature)).SerializeToString()
      num_bytes += len(record)
      writer.write(record)
    writer.close()
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(labels)],
                                     num_bytes=num_bytes,
                                     filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(infos))
  builder.info.write_to_directory(path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_real_data_source_read_without_tensorflow(tmp_path, name):
  spec = tfds_source.TFDS_SPECS[name]
  rng = np.random.default_rng(0)
  splits = {split: (rng.integers(0, 256, (n,) + spec.image_shape, np.uint8),
                    rng.integers(0, spec.num_classes, n))
            for split, n in (("train", 40), ("test", 15))}
  _write_prepared_dataset(str(tmp_path), name, splits)
  assert tfds_source.find_prepared_version(name, str(tmp_path)) == str(
      tfds.builder_cls(name).VERSION)
  ds = data.load_dataset(name, data_dir=str(tmp_path), seed=0)
  assert "tensorflow" not in sys.modules
  # Exactly the pixels and labels that were written, in order.
  np.testing.assert_array_equal(ds.train.images, splits["train"][0])
  np.testing.assert_array_equal(ds.train.labels, splits["train"][1])
  np.testing.assert_array_equal(ds.test.images, splits["test"][0])
  np.testing.assert_array_equal(ds.test.labels, splits["test"][1])
  assert ds.train.labels.dtype == np.int32 and ds.meta["version"] == str(
      tfds.builder_cls(name).VERSION)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "svhn_cropped",
                                  "cifar100", "fashion_mnist"])
def test_mock_data_source_path_without_tensorflow(tmp_path, name):
  data_dir = _fake_prepared_dir(tmp_path, name)
  spec = tfds_source.TFDS_SPECS[name]
  with tfds.testing.mock_data(num_examples=40):
    ds = data.load_dataset(name, data_dir=data_dir, seed=0, validation_size=8,
                           label_noise=("symmetric", 0.25))
  assert "tensorflow" not in sys.modules
  assert ds.num_classes == spec.num_classes
  assert ds.input_shape == spec.image_shape
  assert ds.augment == (name in ("cifar10", "cifar100"))
  assert len(ds.train) == 32 and len(ds.validation) == 8 and len(ds.test) == 40
  for split in (ds.train, ds.validation, ds.test):
    assert split.images.dtype == np.uint8
    assert split.images.shape[1:] == spec.image_shape
    assert split.labels.dtype == np.int32
    assert np.all((split.labels >= 0) & (split.labels < spec.num_classes))
  assert ds.train.flipped.sum() == 8  # round(0.25 · 32)
  assert ds.meta["source"] == "tfds.data_source"
  batch = next(data.train_batches(ds.train, 16, seed=0, epoch=0))
  assert batch["image"].dtype == np.float32
  assert batch["image"].shape == (16,) + spec.image_shape
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  # mean/std in meta are those of the [0, 1] training images (per channel).
  x = ds.train.images.astype(np.float64) / 255.0
  np.testing.assert_allclose(ds.meta["mean"], x.reshape(-1, x.shape[-1]).mean(0))
  np.testing.assert_allclose(ds.meta["std"], x.reshape(-1, x.shape[-1]).std(0))


def test_cached_arrays_are_read_only(tmp_path):
  data_dir = _fake_prepared_dir(tmp_path, "mnist")
  with tfds.testing.mock_data(num_examples=4):
    ds = data.load_dataset("mnist", data_dir=data_dir)
  with pytest.raises(ValueError):
    ds.train.images[0, 0, 0, 0] = 1


def test_missing_dataset_raises_one_clear_error_without_calling_tfds(
    tmp_path, monkeypatch):
  def must_not_be_called(*args, **kwargs):
    raise AssertionError("tfds was called for a dataset that is not prepared")

  # No tfds call at all, so no download or GCS retry loop can start.
  monkeypatch.setattr(tfds, "data_source", must_not_be_called)
  monkeypatch.setattr(tfds, "builder", must_not_be_called)
  with pytest.raises(FileNotFoundError) as info:
    data.load_dataset("cifar10", data_dir=str(tmp_path / "nothing_here"))
  message = str(info.value)
  assert "'cifar10' is not prepared" in message
  assert "tools/prepare_data.py --datasets=cifar10" in message
  assert "[prepare]" in message


def test_missing_dataset_uses_tfds_data_dir_env(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    data.load_dataset("svhn_cropped")


def test_tfrecord_prepared_dataset_is_rejected_with_instructions(tmp_path):
  data_dir = _fake_prepared_dir(tmp_path, "mnist", file_format="tfrecord")
  with pytest.raises(FileNotFoundError, match="array_record"):
    data.load_dataset("mnist", data_dir=data_dir)


def test_tfds_dataset_rejects_extra_options(tmp_path):
  with pytest.raises(ValueError, match="has no option"):
    data.load_dataset("mnist", data_dir=str(tmp_path), num_train=3)


def test_prepare_tool_without_tensorflow_says_what_to_install(tmp_path):
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed here; preparing would download")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "prepare_data.py"),
       "--datasets=mnist", f"--data_dir={tmp_path}"],
      capture_output=True, text=True, check=False, cwd=REPO, timeout=120)
  assert result.returncode == 2
  assert "pip install -e '.[prepare]'" in result.stderr
  assert not os.listdir(tmp_path)


def test_record_split_reads_only_the_requested_rows(tmp_path):
  # A process of a multi-process run reads only its rows of every batch.
  spec = tfds_source.TFDS_SPECS["mnist"]
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (24,) + spec.image_shape, np.uint8)
  labels = rng.integers(0, spec.num_classes, 24)
  _write_prepared_dataset(str(tmp_path), "mnist",
                          {"train": (images, labels), "test": (images[:5],
                                                               labels[:5])})
  lazy = tfds_source.open_tfds_split("mnist", "train", str(tmp_path))
  assert len(lazy) == 24 and lazy.records_read == 0
  eager = data.ArraySplit(images, labels.astype(np.int32))
  rows = np.array([1, 3, 4])
  got = list(data.train_batches(lazy, 6, seed=2, epoch=1, rows=rows))
  want = list(data.train_batches(eager, 6, seed=2, epoch=1))
  assert len(got) == len(want) == 4
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(g["image"], w["image"][rows])
    np.testing.assert_array_equal(g["label"], w["label"][rows])
  assert lazy.records_read == 4 * len(rows)  # nothing else was decoded
  assert "tensorflow" not in sys.modules
  with pytest.raises(ValueError, match="split='validation'"):
    tfds_source.open_tfds_split("mnist", "validation", str(tmp_path))


def test_train_on_demand_equals_the_whole_split_load(tmp_path):
  # The training split of a multi-process run: the same examples, noisy
  # labels, validation hold-out and channel statistics as the whole load,
  # read record by record; two process shares of the statistics add up.
  spec = tfds_source.TFDS_SPECS["mnist"]
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (40,) + spec.image_shape, np.uint8)
  labels = rng.integers(0, spec.num_classes, 40)
  _write_prepared_dataset(str(tmp_path), "mnist",
                          {"train": (images, labels),
                           "test": (images[:7], labels[:7])})
  options = dict(data_dir=str(tmp_path), seed=3, validation_size=9,
                 label_noise=("symmetric", 0.4))
  whole = data.load_dataset("mnist", **options)
  partial_sums = []

  def keep_and_add(sums):  # stands in for sum_over_processes
    partial_sums.append(sums)
    return sums

  for p in range(2):
    data.load_dataset("mnist", train_on_demand=True, process_share=(p, 2),
                      sum_over_processes=keep_and_add, **options)
  lazy = data.load_dataset("mnist", train_on_demand=True, **options)
  assert isinstance(lazy.train, tfds_source.RecordSubset)
  assert lazy.train.num_examples == whole.train.num_examples == 31
  # statistics of a one-process on-demand load: the whole load's (float64
  # reference from the uint8 values)
  x = whole.train.images.reshape(-1, 1).astype(np.float64) / 255.0
  np.testing.assert_allclose(whole.meta["mean"], x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(whole.meta["std"], x.std(0), rtol=1e-12)
  assert lazy.meta["mean"] == whole.meta["mean"]
  assert lazy.meta["std"] == whole.meta["std"]
  # the two shares' integer sums add up to the whole's statistics
  total = {k: partial_sums[0][k] + partial_sums[1][k]
           for k in partial_sums[0]}
  assert int(total["count"]) == 31 * 28 * 28
  assert registry.channel_stats_from_sums(total) == (
      tuple(whole.meta["mean"]), tuple(whole.meta["std"]))
  # one share alone is not the whole
  assert registry.channel_stats_from_sums(partial_sums[0])[0] != tuple(
      whole.meta["mean"])
  assert int(partial_sums[0]["count"]) == 15 * 28 * 28  # ⌊31/2⌋ examples
  with pytest.raises(ValueError, match="sum_over_processes"):
    data.load_dataset("mnist", train_on_demand=True, process_share=(0, 2),
                      **options)
  assert lazy.train.records_read == 31  # the statistics pass
  got_images, got_labels = lazy.train.take(np.arange(31))
  np.testing.assert_array_equal(got_images, whole.train.images)
  np.testing.assert_array_equal(got_labels, whole.train.labels)
  np.testing.assert_array_equal(lazy.train.flipped, whole.train.flipped)
  assert whole.train.flipped.sum() == round(0.4 * 31)
  for split in ("validation", "test"):
    np.testing.assert_array_equal(getattr(lazy, split).images,
                                  getattr(whole, split).images)
    np.testing.assert_array_equal(getattr(lazy, split).labels,
                                  getattr(whole, split).labels)
  # batches of rows read only those records
  before = lazy.train.records_read
  rows = np.array([0, 2])
  got = list(data.train_batches(lazy.train, 4, seed=1, epoch=0, rows=rows))
  want = list(data.train_batches(whole.train, 4, seed=1, epoch=0))
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(g["label"], w["label"][rows])
    np.testing.assert_array_equal(g["image"], w["image"][rows])
  assert lazy.train.records_read - before == len(got) * len(rows)
  with pytest.raises(AttributeError, match="take"):
    lazy.train.images  # noqa: B018
  with pytest.raises(ValueError, match=r"process_share=\(2, 2\)"):
    data.load_dataset("mnist", train_on_demand=True, process_share=(2, 2),
                      **options)
  with pytest.raises(ValueError, match="name='digits'"):
    data.load_dataset("digits", train_on_demand=True)
  assert "tensorflow" not in sys.modules
