"""Pieces shared by the models: input normalisation and activations."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "swish": nn.swish,  # x · sigmoid(x) (= SiLU)
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """'relu' or 'swish' → the function; ValueError otherwise."""
  if name not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got "
                     f"activation={name!r}")
  return ACTIVATIONS[name]


def normalize(x: jax.Array, mean: float | Sequence[float],
              std: float | Sequence[float], dtype: jnp.dtype) -> jax.Array:
  """(x − mean) / std per channel (last axis), cast to the compute ``dtype``.

  Images stay in [0, 1] outside the model (so attacks work in pixel space);
  this is the model's first operation.
  """
  mean_arr = jnp.asarray(mean, jnp.float32)
  std_arr = jnp.asarray(std, jnp.float32)
  if mean_arr.ndim > 1 or std_arr.ndim > 1:
    raise ValueError(f"mean and std must be scalars or per-channel vectors, "
                     f"got mean={mean!r}, std={std!r}")
  for name, arr in (("mean", mean_arr), ("std", std_arr)):
    if arr.ndim == 1 and arr.shape[0] not in (1, x.shape[-1]):
      raise ValueError(f"{name} has {arr.shape[0]} entries but the input has "
                       f"{x.shape[-1]} channels on its last axis "
                       f"(input shape {tuple(x.shape)})")
  x = (jnp.asarray(x, jnp.float32) - mean_arr) / std_arr  # x̃ = (x − μ) / σ
  return x.astype(dtype)


def check_num_classes(num_classes: int) -> None:
  """num_classes must be an integer ≥ 2."""
  if isinstance(num_classes, bool) or not isinstance(
      num_classes, numbers.Integral) or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got "
                     f"num_classes={num_classes!r}")
