"""Containers shared by every dataset: :class:`ArraySplit`, :class:`Dataset`, :class:`LabelNoise`.

All arrays are host NumPy arrays. Images are ``uint8`` [N, H, W, C] for tfds
datasets and ``float32`` in [0, 1] for ``digits``; ``synthetic`` has raw
``float32`` features [N, d]. Labels are ``int32`` [N].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

NOISE_KINDS = ("symmetric", "asymmetric")


@dataclasses.dataclass(frozen=True)
class LabelNoise:
  """Label noise applied to the training labels only.

  Attributes:
    kind: ``'symmetric'`` (a flipped label is uniform over the other n − 1
      classes) or ``'asymmetric'`` (pair-flip: y → (y + 1) mod n).
    rate: fraction of training examples whose label is flipped, in [0, 1];
      exactly ``round(rate · N)`` labels are flipped.
  """

  kind: str = "symmetric"
  rate: float = 0.0

  def __post_init__(self):
    if self.kind not in NOISE_KINDS:
      raise ValueError(f"LabelNoise kind must be one of {NOISE_KINDS}, got "
                       f"kind={self.kind!r}")
    rate = float(self.rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
      raise ValueError(f"LabelNoise rate must lie in [0, 1], got rate={rate!r}")
    object.__setattr__(self, "rate", rate)

  @classmethod
  def from_value(cls, value: Any) -> LabelNoise | None:
    """Builds a LabelNoise from primitives (as stored in a config).

    Accepts ``None`` (no noise), a LabelNoise, a mapping
    ``{'kind': ..., 'rate': ...}`` (e.g. an ``ml_collections.ConfigDict``;
    ``kind`` None or rate 0 means no noise) or a pair ``(kind, rate)``.
    """
    if value is None or isinstance(value, LabelNoise):
      return value
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
      value = value.to_dict()
    if isinstance(value, Mapping):
      unknown = set(value) - {"kind", "rate"}
      if unknown:
        raise ValueError(f"label_noise has unknown keys {sorted(unknown)}; "
                         f"expected 'kind' and 'rate', got {dict(value)!r}")
      if value.get("kind") is None:
        return None
      return cls(kind=value["kind"], rate=value.get("rate", 0.0))
    if isinstance(value, (tuple, list)) and len(value) == 2:
      return cls(kind=value[0], rate=value[1])
    raise ValueError("label_noise must be None, a LabelNoise, a mapping "
                     "{'kind', 'rate'} or a pair (kind, rate); got "
                     f"label_noise={value!r}")


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split of a dataset, as host NumPy arrays.

  Attributes:
    images: [N, *input_shape]; uint8 (tfds) or float32 (digits, synthetic).
    labels: int32 [N], the labels to train on (noisy if noise was applied).
    clean_labels: int32 [N], the original labels, when noise was applied to
      this split; else None.
    flipped: bool [N], True where ``labels != clean_labels`` because of label
      noise; None when no noise was applied.
  """

  images: np.ndarray
  labels: np.ndarray
  clean_labels: np.ndarray | None = None
  flipped: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.labels)
    if len(self.images) != n:
      raise ValueError(f"images and labels disagree on the number of examples: "
                       f"{len(self.images)} images, {n} labels")
    for name in ("clean_labels", "flipped"):
      value = getattr(self, name)
      if value is not None and len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries, expected {n}")

  @property
  def num_examples(self) -> int:
    """N, the number of examples."""
    return int(len(self.labels))

  def __len__(self) -> int:
    return self.num_examples


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset loaded into host memory.

  Attributes:
    name: the name given to :func:`compsum_jax.data.load_dataset`.
    num_classes: n.
    input_shape: per-example shape, e.g. (8, 8, 1), (32, 32, 3) or (d,).
    train: the training split (label noise, if any, applied here only).
    validation: held out from the original training set, with clean labels;
      None when ``validation_size`` is 0.
    test: the test split.
    augment: whether random crop + horizontal flip suits this dataset.
    posterior_fn: only for ``synthetic``: x [N, d] -> p(y|x) [N, n], exact
      (NumPy in float64 for NumPy input, JAX for JAX input); else None.
    meta: extra facts: per-channel ``mean``/``std`` of the training inputs
      (in the [0, 1] scale the batches use), the label noise, sources, etc.
  """

  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  train: ArraySplit
  validation: ArraySplit | None
  test: ArraySplit
  augment: bool = False
  posterior_fn: Callable[[Any], Any] | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
