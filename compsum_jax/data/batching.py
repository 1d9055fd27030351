"""Deterministic host batching and on-device augmentation.

Training batches: epoch e of a run with seed s visits the examples in the order
of a permutation that is a pure function of (s, e), so a run resumed at any
epoch sees exactly the batches an uninterrupted run would. uint8 images become
float32 x = v / 255 in [0, 1]; float images (digits, synthetic features) are
passed through as float32.

Evaluation batches cover the split in order; the last one is padded with zeros
to the full batch size and carries ``mask`` = 0 on the padding, so counts
computed as Σ mask · correct are exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax.data.types import ArraySplit

# Stream tag mixed into the training permutation's seed so it is independent
# of the data-preparation streams (compsum_jax.data.offline.STREAM_*).
_STREAM_TRAIN_ORDER = 1_000


def _check_batch_size(batch_size: int) -> int:
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or (
      batch_size < 1):
    raise ValueError(f"batch_size must be a positive integer, got "
                     f"batch_size={batch_size!r}")
  return int(batch_size)


def to_float_images(images: np.ndarray) -> np.ndarray:
  """uint8 → float32 v / 255 in [0, 1]; float arrays → float32 unchanged."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) * np.float32(1.0 / 255.0)  # x = v / 255
  return images.astype(np.float32, copy=False)


def train_permutation(num_examples: int, *, seed: int, epoch: int
                      ) -> np.ndarray:
  """The visiting order of one epoch: a pure function of (seed, epoch)."""
  for name, value in (("seed", seed), ("epoch", epoch)):
    if isinstance(value, bool) or int(value) != value or value < 0:
      raise ValueError(f"{name} must be a non-negative integer, got "
                       f"{name}={value!r}")
  rng = np.random.default_rng(
      np.random.SeedSequence([int(seed), _STREAM_TRAIN_ORDER, int(epoch)]))
  return rng.permutation(num_examples)


def num_train_batches(split: ArraySplit, batch_size: int, *,
                      drop_remainder: bool = True) -> int:
  """Number of batches :func:`train_batches` yields per epoch."""
  batch_size = _check_batch_size(batch_size)
  n = split.num_examples
  return n // batch_size if drop_remainder else -(-n // batch_size)


def _check_rows(rows: np.ndarray | None, batch_size: int) -> np.ndarray | None:
  if rows is None:
    return None
  rows = np.asarray(rows)
  if (rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or
      len(rows) == 0 or rows.min() < 0 or rows.max() >= batch_size or
      np.any(np.diff(rows) <= 0)):
    raise ValueError(f"rows must be sorted distinct integers in [0, "
                     f"batch_size={batch_size}), got rows={rows!r}")
  return rows


def _take(split: ArraySplit, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of examples ``idx``; lazy splits read only those."""
  take = getattr(split, "take", None)
  if take is not None:
    return take(idx)
  return split.images[idx], split.labels[idx]


def train_batches(split: ArraySplit, batch_size: int, *, seed: int,
                  epoch: int, drop_remainder: bool = True,
                  rows: np.ndarray | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled training batches.

  Args:
    split: the training split.
    batch_size: B.
    seed: run seed; the order is a pure function of (seed, epoch).
    epoch: epoch index ≥ 0.
    drop_remainder: drop the last partial batch (default) so every batch has
      exactly B examples; if False the last batch may be smaller.
    rows: several processes: the rows of each global batch this process
      materialises (``training.process_batch_rows(mesh, B)``); every process
      visits the same global order and only reads its rows. None: all rows.

  Yields:
    ``{'image': float32 [B, *input_shape], 'label': int32 [B]}`` (with
    ``rows``: [len(rows), ...], rows ``rows`` of the global batch).
  """
  batch_size = _check_batch_size(batch_size)
  rows = _check_rows(rows, batch_size)
  if rows is not None and not drop_remainder:
    raise ValueError("rows= needs drop_remainder=True (equal global batches)")
  if drop_remainder and split.num_examples < batch_size:
    raise ValueError(f"batch_size={batch_size} exceeds the split's "
                     f"{split.num_examples} examples with drop_remainder=True")
  order = train_permutation(split.num_examples, seed=seed, epoch=epoch)
  for b in range(num_train_batches(split, batch_size,
                                   drop_remainder=drop_remainder)):
    idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
    # Sorted indices read memory in order; the batch's content is unchanged.
    if rows is not None:
      idx = idx[rows]
    images, labels = _take(split, idx)
    yield {"image": to_float_images(images), "label": labels.astype(np.int32)}


def num_eval_batches(split: ArraySplit, batch_size: int) -> int:
  """ceil(N / B): the number of batches :func:`eval_batches` yields."""
  return -(-split.num_examples // _check_batch_size(batch_size))


def eval_batches(split: ArraySplit, batch_size: int, *,
                 rows: np.ndarray | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, in batches of exactly B (last one padded).

  Args:
    split: the split to evaluate.
    batch_size: B.
    rows: several processes: the rows of each global (padded) batch this
      process materialises (``training.process_batch_rows(mesh, B)``); the
      eval step's sums over the global batch stay exact. None: all rows.

  Yields:
    ``{'image': float32 [B, ...], 'label': int32 [B], 'mask': float32 [B]}``
    with mask 1 on real examples and 0 on zero padding (with ``rows``:
    [len(rows), ...], those rows of the padded global batch).
  """
  batch_size = _check_batch_size(batch_size)
  rows = _check_rows(rows, batch_size)
  positions = np.arange(batch_size) if rows is None else rows
  n = split.num_examples
  for start in range(0, n, batch_size):
    global_index = start + positions
    real = global_index < n
    images, labels = _take(split, global_index[real])
    images = to_float_images(images)
    labels = labels.astype(np.int32)
    pad = len(positions) - int(real.sum())
    if pad:  # padding rows come last (real rows are a prefix of positions)
      images = np.concatenate(
          [images, np.zeros((pad,) + images.shape[1:], np.float32)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
    yield {"image": images, "label": labels,
           "mask": real.astype(np.float32)}


def augment_images(key: jax.Array, images: jax.Array, *, crop_padding: int = 4,
                   flip: bool = True) -> jax.Array:
  """Per-example random crop (zero padding) and horizontal flip, on device.

  Each image is zero-padded by ``crop_padding`` pixels on every side and an
  H×W window is cut at an offset drawn uniformly from {0, …, 2·pad}² (the
  standard CIFAR augmentation); then, if ``flip``, it is mirrored left-right
  with probability 1/2. Jittable; randomness only from ``key``.

  Args:
    key: a PRNG key.
    images: [B, H, W, C] float images.
    crop_padding: padding p ≥ 0 (0 disables the crop).
    flip: whether to flip horizontally at random.

  Returns:
    [B, H, W, C], same dtype as ``images``.
  """
  if images.ndim != 4:
    raise ValueError(f"augment_images needs images of shape [B, H, W, C], got "
                     f"shape {tuple(images.shape)}")
  if isinstance(crop_padding, bool) or int(crop_padding) != crop_padding or (
      crop_padding < 0):
    raise ValueError(f"crop_padding must be a non-negative integer, got "
                     f"crop_padding={crop_padding!r}")
  pad = int(crop_padding)
  b, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  out = images
  if pad:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)

    def crop_one(image, offset):
      return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                   (h, w, image.shape[-1]))

    out = jax.vmap(crop_one)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    out = jnp.where(do_flip[:, None, None, None], out[:, :, ::-1, :], out)
  return out
