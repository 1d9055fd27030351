"""Label noise on training labels: symmetric and asymmetric (pair-flip).

For N labels and rate r, exactly k = round(r · N) examples, chosen uniformly
without replacement, get a wrong label:

* symmetric: y' uniform over the n − 1 classes other than y, i.e.
  y' = (y + U) mod n with U uniform on {1, …, n − 1};
* asymmetric (pair-flip): y' = (y + 1) mod n.

Every chosen label changes, so ``flipped.sum() == k`` exactly. Everything is a
pure function of the NumPy generator passed in.
"""

from __future__ import annotations

import numpy as np

from compsum_jax.data.types import ArraySplit, LabelNoise


def num_flipped(rate: float, num_examples: int) -> int:
  """k = round(rate · N), the number of labels a noise rate flips."""
  return int(round(float(rate) * int(num_examples)))


def flip_labels(labels: np.ndarray, num_classes: int, noise: LabelNoise,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Flips exactly round(rate · N) labels.

  Args:
    labels: int [N] clean labels in [0, num_classes).
    num_classes: n ≥ 2.
    noise: the kind and rate.
    rng: NumPy generator; the result is a pure function of its state.

  Returns:
    (noisy_labels int32 [N], flipped bool [N]) with
    ``flipped == (noisy_labels != labels)`` and ``flipped.sum() == round(rate·N)``.
  """
  labels = np.asarray(labels)
  if num_classes < 2:
    raise ValueError(f"label noise needs num_classes >= 2, got "
                     f"num_classes={num_classes}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  shift, flipped = noise_shifts(labels.shape[0], num_classes, noise, rng)
  # y' = (y + shift) mod n; shift = 0 where the label is kept
  noisy = (labels.astype(np.int64) + shift) % num_classes
  return noisy.astype(np.int32), flipped


def noise_shifts(num_examples: int, num_classes: int, noise: LabelNoise,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """What :func:`flip_labels` does to each position, without the labels.

  The chosen positions and their shifts depend only on N, n, the noise and
  the generator, so a split read on demand applies them record by record:
  y'_i = (y_i + shift_i) mod n.

  Returns:
    (shift int64 [N] in [0, n), 0 where the label is kept; flipped bool [N]).
  """
  if num_classes < 2:
    raise ValueError(f"label noise needs num_classes >= 2, got "
                     f"num_classes={num_classes}")
  k = num_flipped(noise.rate, num_examples)
  chosen = rng.choice(num_examples, size=k, replace=False)
  if noise.kind == "symmetric":
    # y' = (y + U) mod n, U ~ Uniform{1, …, n−1}: uniform over the other classes.
    chosen_shift = rng.integers(1, num_classes, size=k)
  else:
    # Pair-flip: y' = (y + 1) mod n.
    chosen_shift = np.ones(k, dtype=np.int64)
  shift = np.zeros(num_examples, dtype=np.int64)
  shift[chosen] = chosen_shift
  flipped = np.zeros(num_examples, dtype=bool)
  flipped[chosen] = True
  return shift, flipped


def apply_label_noise(split: ArraySplit, num_classes: int,
                      noise: LabelNoise | None,
                      rng: np.random.Generator) -> ArraySplit:
  """Returns ``split`` with noisy ``labels`` and ``clean_labels``/``flipped`` set.

  ``noise`` None returns the split unchanged. A rate of 0 still records
  ``clean_labels`` and an all-False ``flipped``.
  """
  if noise is None:
    return split
  noisy, flipped = flip_labels(split.labels, num_classes, noise, rng)
  return ArraySplit(images=split.images, labels=noisy,
                    clean_labels=np.asarray(split.labels, np.int32),
                    flipped=flipped)
