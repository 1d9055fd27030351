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

from typing import Any

import numpy as np

from compsum_jax.data import noise as noise_lib
from compsum_jax.data import offline, tfds_source
from compsum_jax.data.batching import to_float_images
from compsum_jax.data.types import ArraySplit, Dataset, LabelNoise

OFFLINE_DATASETS = ("digits", "synthetic")
DATASET_NAMES = OFFLINE_DATASETS + tfds_source.TFDS_DATASETS
# Extra keyword options of load_dataset per dataset (tfds datasets: none).
_OPTIONS = {
    "digits": ("test_size",),
    "synthetic": ("num_classes", "dim", "separation", "sigma", "priors",
                  "num_train", "num_test", "mixture_seed"),
}


def split_validation(train: ArraySplit, validation_size: int,
                     rng: np.random.Generator
                     ) -> tuple[ArraySplit, ArraySplit | None]:
  """Holds out ``validation_size`` random training examples.

  Returns:
    (remaining_train, validation or None); both keep their original order.
  """
  n = train.num_examples
  if isinstance(validation_size, bool) or int(validation_size) != (
      validation_size) or not 0 <= validation_size < n:
    raise ValueError(f"validation_size must be an integer in [0, {n}) for a "
                     f"training set of {n} examples, got "
                     f"validation_size={validation_size!r}")
  if validation_size == 0:
    return train, None
  held = np.zeros(n, dtype=bool)
  held[rng.choice(n, size=int(validation_size), replace=False)] = True

  def take(mask):
    return ArraySplit(train.images[mask], train.labels[mask])

  return take(~held), take(held)


def channel_stats(images: np.ndarray, chunk: int = 4096
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (last axis) mean and std of images in the [0, 1] batch scale."""
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
