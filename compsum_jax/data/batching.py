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


def train_batches(split: ArraySplit, batch_size: int, *, seed: int,
                  epoch: int, drop_remainder: bool = True
                  ) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled training batches.

  Args:
    split: the training split.
    batch_size: B.
    seed: run seed; the order is a pure function of (seed, epoch).
    epoch: epoch index ≥ 0.
    drop_remainder: drop the last partial batch (default) so every batch has
      exactly B examples; if False the last batch may be smaller.

  Yields:
    ``{'image': float32 [B, *input_shape], 'label': int32 [B]}``.
  """
  batch_size = _check_batch_size(batch_size)
  if drop_remainder and split.num_examples < batch_size:
    raise ValueError(f"batch_size={batch_size} exceeds the split's "
                     f"{split.num_examples} examples with drop_remainder=True")
  order = train_permutation(split.num_examples, seed=seed, epoch=epoch)
  for b in range(num_train_batches(split, batch_size,
                                   drop_remainder=drop_remainder)):
    idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
    # Sorted indices read memory in order; the batch's content is unchanged.
    yield {"image": to_float_images(split.images[idx]),
           "label": split.labels[idx].astype(np.int32)}


def num_eval_batches(split: ArraySplit, batch_size: int) -> int:
  """ceil(N / B): the number of batches :func:`eval_batches` yields."""
  return -(-split.num_examples // _check_batch_size(batch_size))


def eval_batches(split: ArraySplit, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, in batches of exactly B (last one padded).

  Yields:
    ``{'image': float32 [B, ...], 'label': int32 [B], 'mask': float32 [B]}``
    with mask 1 on real examples and 0 on zero padding.
  """
  batch_size = _check_batch_size(batch_size)
  n = split.num_examples
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    images = to_float_images(split.images[start:stop])
    labels = split.labels[start:stop].astype(np.int32)
    mask = np.ones(batch_size, np.float32)
    pad = batch_size - (stop - start)
    if pad:
      images = np.concatenate(
          [images, np.zeros((pad,) + images.shape[1:], np.float32)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask[batch_size - pad:] = 0.0
    yield {"image": images, "label": labels, "mask": mask}


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
