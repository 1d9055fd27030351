"""``load_dataset``: every dataset by name, with validation split and label noise.

Order of operations (all randomness from ``seed``, in independent streams):

1. load the raw train/test splits;
2. hold out ``validation_size`` training examples (uniformly at random) as the
   validation split — BEFORE any noise, so validation keeps clean labels and
   can be used for early stopping / model selection as on clean data;
3. apply label noise to the remaining training labels only (test and
   validation stay clean);
4. record per-channel mean/std of the (clean-input) training split in
   ``meta`` for the models' input normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from compsum_jax.data import noise as noise_lib
from compsum_jax.data import offline, tfds_source
from compsum_jax.data.batching import to_float_images
from compsum_jax.data.types import ArraySplit, Dataset, LabelNoise

OFFLINE_DATASETS = ("digits", "synthetic")
# Records per read when a process sums the channel statistics of its share.
_STATS_CHUNK = 1024
DATASET_NAMES = OFFLINE_DATASETS + tfds_source.TFDS_DATASETS
# Extra keyword options of load_dataset per dataset (tfds datasets: none).
_OPTIONS = {
    "digits": ("test_size",),
    "synthetic": ("num_classes", "dim", "separation", "sigma", "priors",
                  "num_train", "num_test", "mixture_seed"),
}


def validation_mask(num_examples: int, validation_size: int,
                    rng: np.random.Generator) -> np.ndarray:
  """bool [N], True on the ``validation_size`` held-out training examples."""
  n = num_examples
  if isinstance(validation_size, bool) or int(validation_size) != (
      validation_size) or not 0 <= validation_size < n:
    raise ValueError(f"validation_size must be an integer in [0, {n}) for a "
                     f"training set of {n} examples, got "
                     f"validation_size={validation_size!r}")
  held = np.zeros(n, dtype=bool)
  if validation_size:
    held[rng.choice(n, size=int(validation_size), replace=False)] = True
  return held


def split_validation(train: ArraySplit, validation_size: int,
                     rng: np.random.Generator
                     ) -> tuple[ArraySplit, ArraySplit | None]:
  """Holds out ``validation_size`` random training examples.

  Returns:
    (remaining_train, validation or None); both keep their original order.
  """
  held = validation_mask(train.num_examples, validation_size, rng)
  if validation_size == 0:
    return train, None

  def take(mask):
    return ArraySplit(train.images[mask], train.labels[mask])

  return take(~held), take(held)


def channel_sums(images: np.ndarray) -> dict[str, Any]:
  """Exact per-channel sums of uint8 images: {'count', 'sum', 'sum_sq'}.

  count = pixels per channel, sum = Σ v and sum_sq = Σ v² (int64 [C], v the
  uint8 values); sums of several shares add up exactly to the whole's.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"channel_sums needs uint8 images, got dtype "
                     f"{images.dtype}")
  v = images.reshape(-1, images.shape[-1]).astype(np.int64)
  return {"count": np.int64(v.shape[0]), "sum": v.sum(0),
          "sum_sq": (v * v).sum(0)}


def channel_stats_from_sums(sums: dict[str, Any]
                            ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of x = v/255 from :func:`channel_sums`.

  mean = Σv/(255·c), var = (c·Σv² − (Σv)²)/(255·c)², each computed from
  the integers and rounded once (Python integers, no overflow).
  """
  c = int(sums["count"])
  if c < 1:
    raise ValueError(f"channel statistics need at least one pixel, got "
                     f"count={c}")
  means, stds = [], []
  for total, total_sq in zip(np.asarray(sums["sum"]).tolist(),
                             np.asarray(sums["sum_sq"]).tolist(), strict=True):
    total, total_sq = int(total), int(total_sq)
    means.append(total / (255 * c))
    # Var = E[x²] − E[x]² = (c·Σv² − (Σv)²)/(255·c)², an exact integer ratio
    stds.append(math.sqrt(max(c * total_sq - total * total, 0)
                          / (255 * c) ** 2))
  return tuple(means), tuple(stds)


def channel_stats(images: np.ndarray, chunk: int = 4096
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (last axis) mean and std of images in the [0, 1] batch scale.

  uint8 images: exact (:func:`channel_stats_from_sums`); float images: float64
  sums over chunks.
  """
  if images.dtype == np.uint8:
    sums = None
    for start in range(0, len(images), chunk):
      part = channel_sums(images[start:start + chunk])
      sums = part if sums is None else {k: sums[k] + part[k] for k in part}
    return channel_stats_from_sums(sums)
  total = np.zeros(images.shape[-1])
  total_sq = np.zeros(images.shape[-1])
  count = 0
  for start in range(0, len(images), chunk):
    x = to_float_images(images[start:start + chunk]).astype(np.float64)
    x = x.reshape(-1, images.shape[-1])
    total += x.sum(0)
    total_sq += (x * x).sum(0)
    count += x.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))  # Var = E[x²] − E[x]²
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0,
                 validation_size: int = 0,
                 label_noise: LabelNoise | dict | tuple | None = None,
                 train_on_demand: bool = False,
                 process_share: tuple[int, int] = (0, 1),
                 sum_over_processes: Callable[[Any], Any] | None = None,
                 **kwargs: Any) -> Dataset:
  """Loads a dataset into host memory.

  Args:
    name: one of ``DATASET_NAMES``: 'digits', 'synthetic', 'mnist',
      'fashion_mnist', 'cifar10', 'cifar100', 'svhn_cropped'.
    data_dir: prepared TFDS data directory (tfds datasets only; default the
      ``TFDS_DATA_DIR`` environment variable, then ``~/tensorflow_datasets``).
    seed: non-negative integer; the test split of ``digits``, the synthetic
      sample, the validation hold-out and the label noise are pure functions
      of it.
    validation_size: number of training examples held out as a validation
      split with clean labels (0: none).
    label_noise: None, a :class:`LabelNoise`, or primitives
      ``{'kind': ..., 'rate': ...}`` / ``(kind, rate)``; applied to the
      training labels only, after the validation hold-out.
    train_on_demand: tfds datasets only: the training split is a
      :class:`~compsum_jax.data.tfds_source.RecordSubset` that decodes only
      the records a batch asks for (each process of a multi-process run
      reads only its rows of every batch); validation and test are read
      whole. The examples, labels (noise applied record by record) and
      channel statistics equal those of the whole-split load.
    process_share: (p, P) with ``train_on_demand``: this process reads its
      contiguous share [⌊p·N/P⌋, ⌊(p+1)·N/P⌋) of the N training examples
      once, for the exact integer channel sums of the statistics.
    sum_over_processes: adds those sums over the processes (e.g.
      ``compsum_jax.training.sum_over_processes``); None with P = 1.
    **kwargs: dataset options: ``digits``: ``test_size`` (default 360);
      ``synthetic``: ``num_classes``, ``dim``, ``separation``, ``sigma``,
      ``priors``, ``num_train``, ``num_test``, ``mixture_seed`` (see
      :func:`compsum_jax.data.offline.load_synthetic_splits`).

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: unknown name or bad option.
    FileNotFoundError: a tfds dataset that is not prepared in ``data_dir``;
      the message says how to prepare it.
  """
  if name not in DATASET_NAMES:
    raise ValueError(f"unknown dataset name={name!r}; expected one of "
                     f"{DATASET_NAMES}")
  noise = LabelNoise.from_value(label_noise)
  offline.rng_for(seed, 0)  # validates seed
  allowed = _OPTIONS.get(name, ())
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"dataset {name!r} has no option(s) {unknown}; its "
                     f"options are {list(allowed)}")
  if train_on_demand:
    if name not in tfds_source.TFDS_DATASETS:
      raise ValueError(f"train_on_demand needs a tfds dataset (one of "
                       f"{tfds_source.TFDS_DATASETS}), got name={name!r}")
    return _load_train_on_demand(name, data_dir, seed, validation_size,
                                 noise, process_share, sum_over_processes)
  posterior_fn = None
  meta: dict[str, Any] = {}
  if name == "digits":
    train, test = offline.load_digits_splits(seed, **kwargs)
    num_classes, augment = 10, False
    meta["source"] = "sklearn.datasets.load_digits"
  elif name == "synthetic":
    train, test, mixture = offline.load_synthetic_splits(seed, **kwargs)
    num_classes, augment = mixture.num_classes, False
    posterior_fn = mixture.posterior
    meta.update(source="gaussian_mixture", means=mixture.means.tolist(),
                priors=mixture.priors.tolist(), sigma=mixture.sigma)
  else:
    loaded = tfds_source.load_tfds_splits(name, data_dir=data_dir)
    train, test = loaded.train, loaded.test
    num_classes, augment = loaded.num_classes, loaded.augment
    meta.update(source="tfds.data_source", data_dir=loaded.data_dir,
                version=loaded.version)
  train, validation = split_validation(
      train, validation_size, offline.rng_for(seed, offline.STREAM_VALIDATION))
  train = noise_lib.apply_label_noise(
      train, num_classes, noise, offline.rng_for(seed, offline.STREAM_NOISE))
  mean, std = channel_stats(train.images)
  meta.update(mean=mean, std=std, seed=seed, validation_size=validation_size,
              label_noise=None if noise is None else
              {"kind": noise.kind, "rate": noise.rate})
  return Dataset(name=name, num_classes=int(num_classes),
                 input_shape=tuple(int(s) for s in train.images.shape[1:]),
                 train=train, validation=validation, test=test,
                 augment=augment, posterior_fn=posterior_fn, meta=meta)


def _check_process_share(process_share: Any) -> tuple[int, int]:
  try:
    p, count = (int(v) for v in process_share)
  except (TypeError, ValueError):
    p, count = -1, 0
  if count < 1 or not 0 <= p < count or tuple(process_share) != (p, count):
    raise ValueError(f"process_share must be (p, P) with integers "
                     f"0 <= p < P, got process_share={process_share!r}")
  return p, count


def _load_train_on_demand(name: str, data_dir: str | None, seed: int,
                          validation_size: int, noise: LabelNoise | None,
                          process_share: tuple[int, int],
                          sum_over_processes: Callable[[Any], Any] | None
                          ) -> Dataset:
  """load_dataset with the training split read on demand (same examples)."""
  p, count = _check_process_share(process_share)
  if count > 1 and sum_over_processes is None:
    raise ValueError(f"process_share={process_share!r} covers only a share "
                     f"of the training examples: pass sum_over_processes to "
                     f"add the channel sums of all shares")
  spec = tfds_source.TFDS_SPECS[name]
  records = tfds_source.open_tfds_split(name, "train", data_dir)
  test_records = tfds_source.open_tfds_split(name, "test", data_dir)
  # The same streams and draws as the whole-split load.
  held = validation_mask(records.num_examples, validation_size,
                         offline.rng_for(seed, offline.STREAM_VALIDATION))
  validation = None
  if validation_size:
    validation = ArraySplit(*records.take(np.nonzero(held)[0]))
  test = ArraySplit(*test_records.take(np.arange(test_records.num_examples)))
  train_indices = np.nonzero(~held)[0]
  shift = flipped = None
  if noise is not None:
    shift, flipped = noise_lib.noise_shifts(
        len(train_indices), spec.num_classes, noise,
        offline.rng_for(seed, offline.STREAM_NOISE))
  train = tfds_source.RecordSubset(records, train_indices, spec.num_classes,
                                   label_shift=shift, flipped=flipped)
  # Channel statistics: exact integer sums of this process's share, added
  # over the processes.
  n = train.num_examples
  start, stop = p * n // count, (p + 1) * n // count
  channels = spec.image_shape[-1]
  sums = {"count": np.int64(0), "sum": np.zeros(channels, np.int64),
          "sum_sq": np.zeros(channels, np.int64)}
  for first in range(start, stop, _STATS_CHUNK):
    images, _ = train.take(np.arange(first, min(first + _STATS_CHUNK, stop)))
    part = channel_sums(images)
    sums = {k: sums[k] + part[k] for k in sums}
  if sum_over_processes is not None:
    sums = sum_over_processes(sums)
  mean, std = channel_stats_from_sums(sums)
  meta = {"source": "tfds.data_source", "data_dir": records.data_dir,
          "version": records.version, "train_records": "on_demand",
          "mean": mean, "std": std, "seed": seed,
          "validation_size": validation_size,
          "label_noise": None if noise is None else
          {"kind": noise.kind, "rate": noise.rate}}
  return Dataset(name=name, num_classes=spec.num_classes,
                 input_shape=tuple(spec.image_shape), train=train,
                 validation=validation, test=test, augment=spec.augment,
                 posterior_fn=None, meta=meta)
