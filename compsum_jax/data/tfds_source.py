"""tfds image datasets read with ``tfds.data_source`` (no TensorFlow at run time).

Datasets must be prepared once, in the ``array_record`` file format, by
``tools/prepare_data.py`` on a machine with network access (it needs the
``prepare`` extra, i.e. tensorflow-cpu). At run time they are read from the
prepared data directory with ``tfds.data_source`` (random access through
``array_record``; TensorFlow is not imported) and loaded once into host
``uint8`` arrays.

A missing dataset fails fast: before calling tfds, this module checks the
prepared directory ``<data_dir>/<name>/<version>/dataset_info.json`` itself
and raises one ``FileNotFoundError`` that says how to prepare it. tfds is not
called at all then, so it cannot enter its download loop: with its default
``download=True``, ``tfds.data_source`` calls ``download_and_prepare``, whose
downloader (``tensorflow_datasets/core/download/downloader.py``) retries every
URL with exponential back-off (urllib3 ``Retry``, ``MAX_RETRIES = 10``) and
then needs TensorFlow anyway. For prepared datasets ``tfds.data_source`` is
called with ``download=False, try_gcs=False``, so it only reads local files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import numpy as np

from compsum_jax.data.types import ArraySplit


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """What the pipeline needs to know about one tfds dataset."""

  num_classes: int
  image_shape: tuple[int, int, int]
  augment: bool  # random crop + horizontal flip suits it


TFDS_SPECS: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec(10, (28, 28, 1), False),
    "fashion_mnist": TfdsSpec(10, (28, 28, 1), False),
    "cifar10": TfdsSpec(10, (32, 32, 3), True),
    "cifar100": TfdsSpec(100, (32, 32, 3), True),
    # Digits: a horizontal flip changes the class, so no standard augmentation.
    "svhn_cropped": TfdsSpec(10, (32, 32, 3), False),
}
TFDS_DATASETS = tuple(TFDS_SPECS)


@dataclasses.dataclass(frozen=True)
class TfdsSplits:
  """Train and test splits of a tfds dataset, plus where they came from."""

  train: ArraySplit
  test: ArraySplit
  num_classes: int
  augment: bool
  data_dir: str
  version: str


def default_data_dir() -> str:
  """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (tfds' default)."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that prepares ``name`` into ``data_dir``."""
  return (f"pip install -e '.[prepare]' && python tools/prepare_data.py "
          f"--datasets={name} --data_dir={data_dir}")


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in version.split("."))


def find_prepared_version(name: str, data_dir: str) -> str:
  """Checks that ``name`` is prepared in ``data_dir``; returns its version.

  Looks for ``<data_dir>/<name>/<X.Y.Z>/dataset_info.json`` (newest version
  first) whose file format is ``array_record``. Only the local file system is
  touched, so this takes milliseconds.

  Raises:
    ValueError: unknown dataset name.
    FileNotFoundError: not prepared, or prepared only in a format that
      ``tfds.data_source`` cannot read; the message says how to prepare it.
  """
  if name not in TFDS_SPECS:
    raise ValueError(f"unknown tfds dataset name={name!r}; expected one of "
                     f"{TFDS_DATASETS}")
  root = os.path.join(data_dir, name)
  versions = []
  if os.path.isdir(root):
    versions = sorted(
        (v for v in os.listdir(root) if re.fullmatch(r"\d+\.\d+\.\d+", v)
         and os.path.isfile(os.path.join(root, v, "dataset_info.json"))),
        key=_version_key, reverse=True)
  how = (f"Prepare it once on a machine with network access:\n    "
         f"{prepare_command(name, data_dir)}\nthen point the run at that "
         f"directory (--config.data_dir=... or TFDS_DATA_DIR), or use the "
         f"offline datasets 'digits' or 'synthetic'.")
  if not versions:
    raise FileNotFoundError(
        f"Dataset {name!r} is not prepared in data_dir={data_dir!r} (no "
        f"{root}/<version>/dataset_info.json). {how}")
  for version in versions:
    with open(os.path.join(root, version, "dataset_info.json"),
              encoding="utf-8") as f:
      info = json.load(f)
    if info.get("fileFormat", "tfrecord") == "array_record":
      return version
  raise FileNotFoundError(
      f"Dataset {name!r} in data_dir={data_dir!r} (versions {versions}) is "
      f"prepared in the tfrecord format, which tfds.data_source cannot read "
      f"without TensorFlow; it must be prepared with "
      f"file_format='array_record'. {how}")


def _read_all(source, name: str, split: str, spec: TfdsSpec) -> ArraySplit:
  """Reads every record of a data source into uint8 images and int32 labels."""
  n = len(source)
  images = np.empty((n,) + spec.image_shape, np.uint8)
  labels = np.empty(n, np.int32)
  # One record at a time: decoding (PNG) dominates, and the batch read
  # ``__getitems__`` is broken under tfds.testing.mock_data in tfds 4.9.10.
  for i in range(n):
    record = source[i]
    image = np.asarray(record["image"])
    if image.shape != spec.image_shape:
      raise ValueError(f"{name}/{split} record {i} has image shape "
                       f"{image.shape}, expected {spec.image_shape}")
    images[i] = image
    labels[i] = int(record["label"])
  if n and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise ValueError(f"{name}/{split} has labels outside [0, "
                     f"{spec.num_classes}): range [{labels.min()}, "
                     f"{labels.max()}]")
  # Shared by every load_dataset call in this process (cached): read-only.
  images.flags.writeable = False
  labels.flags.writeable = False
  return ArraySplit(images, labels)


class TfdsRecordSplit:
  """A tfds split read on demand: only the records a batch asks for.

  For runs over several processes, where each process materialises only the
  rows of its own devices: ``compsum_jax.data``'s batch helpers call
  :meth:`take` with the indices of those rows, so a process decodes only
  its share of every global batch (the whole split is never loaded).
  ``records_read`` counts the records decoded so far.
  """

  def __init__(self, source, name: str, split: str, spec: TfdsSpec,
               data_dir: str | None = None, version: str | None = None):
    self._source = source
    self._name, self._split, self._spec = name, split, spec
    self.data_dir, self.version = data_dir, version
    self.records_read = 0

  @property
  def num_examples(self) -> int:
    """N, the number of records of the split."""
    return int(len(self._source))

  def __len__(self) -> int:
    return self.num_examples

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [k, H, W, C], int32 labels [k]) of records ``indices``."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    n = self.num_examples
    if indices.size and (indices.min() < 0 or indices.max() >= n):
      raise ValueError(f"{self._name}/{self._split} has {n} records; got "
                       f"indices in [{indices.min()}, {indices.max()}]")
    images = np.empty((len(indices),) + self._spec.image_shape, np.uint8)
    labels = np.empty(len(indices), np.int32)
    for j, i in enumerate(indices):
      record = self._source[int(i)]
      image = np.asarray(record["image"])
      if image.shape != self._spec.image_shape:
        raise ValueError(f"{self._name}/{self._split} record {i} has image "
                         f"shape {image.shape}, expected "
                         f"{self._spec.image_shape}")
      label = int(record["label"])
      if not 0 <= label < self._spec.num_classes:
        raise ValueError(f"{self._name}/{self._split} record {i} has label "
                         f"{label} outside [0, {self._spec.num_classes})")
      images[j], labels[j] = image, label
    self.records_read += len(indices)
    return images, labels


class RecordSubset:
  """Records ``indices`` of a :class:`TfdsRecordSplit`, read on demand.

  The training split of a multi-process run (the records left after the
  validation hold-out, label noise applied record by record): the batch
  helpers call :meth:`take`, so a process decodes only the records of its
  rows of every batch. The arrays of the whole split (``images``,
  ``labels``) are never materialised; asking for them raises.

  Attributes:
    indices: int64 [N], the record index of every example.
    flipped: bool [N] (label noise) or None.
    records_read: records decoded through this subset so far.
  """

  def __init__(self, records: TfdsRecordSplit, indices: np.ndarray,
               num_classes: int, label_shift: np.ndarray | None = None,
               flipped: np.ndarray | None = None):
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or
                         indices.max() >= records.num_examples):
      raise ValueError(f"indices must lie in [0, {records.num_examples}), "
                       f"got [{indices.min()}, {indices.max()}]")
    for value, what in ((label_shift, "label_shift"), (flipped, "flipped")):
      if value is not None and len(value) != len(indices):
        raise ValueError(f"{what} has {len(value)} entries, expected "
                         f"{len(indices)}")
    self._records = records
    self.indices = indices
    self.num_classes = int(num_classes)
    self._label_shift = label_shift
    self.flipped = flipped
    self.records_read = 0

  @property
  def num_examples(self) -> int:
    """N, the number of examples."""
    return int(len(self.indices))

  def __len__(self) -> int:
    return self.num_examples

  def __getattr__(self, name: str):
    if name in ("images", "labels", "clean_labels"):
      raise AttributeError(
          f"a split read on demand has no whole-split '{name}' array; read "
          f"examples with take(indices) (compsum_jax.data's batch helpers do)")
    raise AttributeError(name)

  def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [k, ...], int32 labels [k]) of examples ``positions``."""
    positions = np.asarray(positions, np.int64).reshape(-1)
    n = self.num_examples
    if positions.size and (positions.min() < 0 or positions.max() >= n):
      raise ValueError(f"the split has {n} examples; got positions in "
                       f"[{positions.min()}, {positions.max()}]")
    images, labels = self._records.take(self.indices[positions])
    self.records_read += len(positions)
    if self._label_shift is not None:
      # y' = (y + shift) mod n (label noise, compsum_jax.data.noise)
      labels = ((labels.astype(np.int64) + self._label_shift[positions])
                % self.num_classes)
    return images, labels.astype(np.int32)


def open_tfds_split(name: str, split: str, data_dir: str | None = None
                    ) -> TfdsRecordSplit:
  """Opens one split of a prepared tfds dataset for on-demand reading.

  Args:
    name: one of ``TFDS_DATASETS``.
    split: 'train' or 'test'.
    data_dir: the prepared TFDS data directory; None for
      :func:`default_data_dir`.

  Raises:
    FileNotFoundError: the dataset is not prepared (fast, no network).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got split={split!r}")
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  version = find_prepared_version(name, data_dir)
  source = tfds.data_source(f"{name}:{version}", split=split,
                            data_dir=data_dir, download=False, try_gcs=False)
  return TfdsRecordSplit(source, name, split, TFDS_SPECS[name],
                         data_dir=data_dir, version=version)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, data_dir: str, version: str) -> TfdsSplits:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  spec = TFDS_SPECS[name]
  sources = tfds.data_source(f"{name}:{version}", split=["train", "test"],
                             data_dir=data_dir, download=False, try_gcs=False)
  train, test = (_read_all(src, name, split, spec)
                 for src, split in zip(sources, ("train", "test"), strict=True))
  return TfdsSplits(train=train, test=test, num_classes=spec.num_classes,
                    augment=spec.augment, data_dir=data_dir, version=version)


def load_tfds_splits(name: str, data_dir: str | None = None) -> TfdsSplits:
  """Loads the train and test splits of a prepared tfds dataset.

  Args:
    name: one of ``TFDS_DATASETS``.
    data_dir: the prepared TFDS data directory; None for
      :func:`default_data_dir`.

  Returns:
    TfdsSplits with uint8 images [N, H, W, C] and int32 labels [N]. Loaded
    once per process (cached; the arrays must not be modified).

  Raises:
    FileNotFoundError: the dataset is not prepared (fast, no network).
  """
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  version = find_prepared_version(name, data_dir)
  return _load_cached(name, data_dir, version)
