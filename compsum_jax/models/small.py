"""Small models for the offline datasets and fast CPU runs: MLP and CNN.

Both take inputs in [0, 1] (raw features for ``synthetic``), normalise them
inside the model with the ``mean``/``std`` attributes, and return float32
logits [B, num_classes]. Pass the dataset's ``meta['mean']``/``meta['std']``
for per-channel normalisation; the defaults map [0, 1] to [−1, 1].

The CNN downsamples with stride-2 convolutions, never max-pooling: on XLA:CPU
the backward pass of max-pool is very slow (measured:
benchmarks/results/train_step.md, "Figures moved out of library docstrings"). Its convolutions are
:func:`compsum_jax.models.conv.member_conv`: the lax convolution for one
model, and batched matmuls over patches when K members are vmapped (on
XLA:CPU a vmapped lax convolution is a slow grouped convolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from compsum_jax.models import common
from compsum_jax.models import conv as conv_lib


class MLP(nn.Module):
  """Multi-layer perceptron on the flattened input.

  Attributes:
    num_classes: n ≥ 2 (number of logits).
    hidden_sizes: widths of the hidden Dense layers.
    activation: 'relu' or 'swish'.
    mean, std: input normalisation (x − mean) / std, per channel (last axis).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters and logits float32.
  """

  num_classes: int
  hidden_sizes: Sequence[int] = (256, 256)
  activation: str = "relu"
  mean: float | Sequence[float] = 0.5
  std: float | Sequence[float] = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, ...] → logits float32 [B, num_classes]; ``train`` is unused."""
    del train  # No dropout or batch norm.
    common.check_num_classes(self.num_classes)
    act = common.get_activation(self.activation)
    x = common.normalize(x, self.mean, self.std, self.dtype)
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden_sizes:
      x = act(nn.Dense(width, dtype=self.dtype)(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)


class CNN(nn.Module):
  """Small convolutional network with strided convolutions (no max-pool).

  Layers: for each (features, stride) pair a 3×3 convolution (+ batch norm if
  ``use_batch_norm``) and the activation; then global average pooling, one
  hidden Dense layer and the output Dense layer.

  Attributes:
    num_classes: n ≥ 2.
    features: output channels of the convolutions.
    strides: their strides (2 halves the spatial size).
    hidden_size: width of the Dense layer after pooling (0: none).
    use_batch_norm: add batch norm after each convolution; then variables have
      a 'batch_stats' collection (apply with ``mutable=['batch_stats']`` when
      ``train=True``).
    activation: 'relu' or 'swish'.
    mean, std: input normalisation, per channel.
    dtype: compute dtype; parameters and logits float32.
    member_conv: convolve with :func:`compsum_jax.models.conv.member_conv`
      (default): identical results, and under ``jax.vmap`` over stacked
      members it runs as batched matmuls instead of a grouped convolution,
      which is faster on XLA:CPU (benchmarks/results/train_step.md, "K = 15
      members"). False: ``lax.conv_general_dilated``, e.g. for ``jax.jvp``
      through the model, which the custom VJP does not support.
  """

  num_classes: int
  features: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (1, 2, 2)
  hidden_size: int = 128
  use_batch_norm: bool = False
  activation: str = "relu"
  mean: float | Sequence[float] = 0.5
  std: float | Sequence[float] = 0.5
  dtype: jnp.dtype = jnp.float32
  member_conv: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, H, W, C] → logits float32 [B, num_classes].

    ``train`` selects batch statistics (True) or running averages (False)
    when ``use_batch_norm``.
    """
    common.check_num_classes(self.num_classes)
    if len(self.features) != len(self.strides):
      raise ValueError(f"features and strides must have the same length, got "
                       f"features={tuple(self.features)}, "
                       f"strides={tuple(self.strides)}")
    if x.ndim != 4:
      raise ValueError(f"CNN needs images of shape [B, H, W, C], got shape "
                       f"{tuple(x.shape)}")
    act = common.get_activation(self.activation)
    x = common.normalize(x, self.mean, self.std, self.dtype)
    conv = conv_lib.member_conv if self.member_conv else None
    for width, stride in zip(self.features, self.strides, strict=True):
      x = nn.Conv(width, (3, 3), strides=(stride, stride), padding="SAME",
                  use_bias=not self.use_batch_norm, dtype=self.dtype,
                  conv_general_dilated=conv)(x)
      if self.use_batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype)(x)
      x = act(x)
    x = jnp.mean(x, axis=(1, 2))  # global average pooling
    if self.hidden_size:
      x = act(nn.Dense(self.hidden_size, dtype=self.dtype)(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)
