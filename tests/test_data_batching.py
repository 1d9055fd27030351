"""Tests of deterministic batching and on-device augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compsum_jax import data


def _split(n: int, shape=(4, 4, 3), dtype=np.uint8) -> data.ArraySplit:
  rng = np.random.default_rng(n)
  images = rng.integers(0, 256, (n,) + shape).astype(dtype)
  return data.ArraySplit(images, (np.arange(n) % 10).astype(np.int32))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), batch_size=st.integers(1, 64),
       seed=st.integers(0, 2**31), epoch=st.integers(0, 1000))
def test_train_batches_visit_each_example_once(n, batch_size, seed, epoch):
  split = data.ArraySplit(np.arange(n, dtype=np.float32)[:, None],
                          np.arange(n, dtype=np.int32))
  batches = list(data.train_batches(split, batch_size, seed=seed, epoch=epoch,
                                    drop_remainder=False))
  assert len(batches) == data.num_train_batches(split, batch_size,
                                                drop_remainder=False)
  seen = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  for b in batches:  # image and label stay paired
    np.testing.assert_array_equal(b["image"][:, 0], b["label"])
  if n >= batch_size:
    dropped = list(data.train_batches(split, batch_size, seed=seed,
                                      epoch=epoch))
    assert len(dropped) == n // batch_size == data.num_train_batches(
        split, batch_size)
    assert all(b["label"].shape == (batch_size,) for b in dropped)
    assert len(set(np.concatenate([b["label"] for b in dropped]))) == (
        n // batch_size * batch_size)


def test_train_order_is_a_pure_function_of_seed_and_epoch():
  split = _split(200)

  def labels(seed, epoch):
    return np.concatenate([b["label"] for b in data.train_batches(
        split, 32, seed=seed, epoch=epoch)])

  np.testing.assert_array_equal(labels(1, 5), labels(1, 5))
  # A "resumed" iterator at epoch 5 equals the 6th epoch of a fresh run.
  fresh = [labels(1, e) for e in range(6)]
  np.testing.assert_array_equal(fresh[5], labels(1, 5))
  assert not np.array_equal(labels(1, 5), labels(1, 6))
  assert not np.array_equal(labels(1, 5), labels(2, 5))
  assert not np.array_equal(np.sort(labels(1, 5)), labels(1, 5))


def test_uint8_images_become_float_in_unit_interval():
  split = _split(50)
  batch = next(data.train_batches(split, 50, seed=0, epoch=0))
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  # Each batch image equals some source image / 255 (match by pixels).
  src = split.images.astype(np.float64) / 255.0
  for image in batch["image"]:
    assert np.min(np.abs(src - image).reshape(50, -1).max(-1)) < 1e-7
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0


@pytest.mark.parametrize("n, batch_size", [(100, 32), (96, 32), (5, 8)])
def test_eval_batches_cover_in_order_with_padding_mask(n, batch_size):
  split = _split(n)
  batches = list(data.eval_batches(split, batch_size))
  assert len(batches) == -(-n // batch_size) == data.num_eval_batches(
      split, batch_size)
  for b in batches:
    assert b["image"].shape == (batch_size, 4, 4, 3)
    assert b["mask"].dtype == np.float32 and b["label"].dtype == np.int32
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n and np.all(mask[:n] == 1) and np.all(mask[n:] == 0)
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_allclose(images[:n], split.images / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(labels[:n], split.labels)
  assert np.all(images[n:] == 0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_batch_size_raises(bad):
  with pytest.raises(ValueError, match="batch_size"):
    data.num_train_batches(_split(10), bad)
  with pytest.raises(ValueError, match="batch_size"):
    next(data.eval_batches(_split(10), bad))


def test_drop_remainder_with_too_few_examples_raises():
  with pytest.raises(ValueError, match="batch_size=16"):
    next(data.train_batches(_split(10), 16, seed=0, epoch=0))


def test_negative_epoch_raises():
  with pytest.raises(ValueError, match="epoch"):
    next(data.train_batches(_split(10), 2, seed=0, epoch=-1))


# ---------------------------------------------------------------- augment


def _numpy_candidates(image: np.ndarray, pad: int) -> list[np.ndarray]:
  """Every crop of the zero-padded image, flipped and not (reference)."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  out = []
  for i in range(2 * pad + 1):
    for j in range(2 * pad + 1):
      crop = padded[i:i + h, j:j + w]
      out.append((i, j, False, crop))
      out.append((i, j, True, crop[:, ::-1]))
  return out


def test_augment_output_is_a_padded_crop_maybe_flipped():
  rng = np.random.default_rng(0)
  images = rng.uniform(0.1, 1.0, (64, 6, 5, 3)).astype(np.float32)
  out = np.asarray(jax.jit(data.augment_images)(jax.random.key(3), images))
  assert out.shape == images.shape and out.dtype == np.float32
  offsets, flips = set(), []
  for image, aug in zip(images, out, strict=True):
    matches = [(i, j, f) for i, j, f, c in _numpy_candidates(image, 4)
               if np.array_equal(c, aug)]
    assert matches, "augmented image is no crop/flip of its source"
    offsets.add(matches[0][:2])
    flips.append(matches[0][2])
  # Randomness is per example: many different offsets and both flip states.
  assert len(offsets) > 20 and 0 < sum(flips) < 64


def test_augment_is_deterministic_in_key_and_identity_when_disabled():
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 4, 4, 1)),
                       jnp.float32)
  a = data.augment_images(jax.random.key(0), images)
  b = data.augment_images(jax.random.key(0), images)
  c = data.augment_images(jax.random.key(1), images)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  same = data.augment_images(jax.random.key(0), images, crop_padding=0,
                             flip=False)
  np.testing.assert_array_equal(same, images)
  flipped_only = np.asarray(data.augment_images(jax.random.key(0), images,
                                                crop_padding=0))
  for src, aug in zip(np.asarray(images), flipped_only, strict=True):
    assert np.array_equal(aug, src) or np.array_equal(aug, src[:, ::-1])


def test_augment_bad_input_raises():
  with pytest.raises(ValueError, match="crop_padding"):
    data.augment_images(jax.random.key(0), jnp.zeros((2, 4, 4, 1)),
                        crop_padding=-1)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    data.augment_images(jax.random.key(0), jnp.zeros((4, 4, 1)))
