"""Pre-activation residual networks for 32×32 images: PreActResNet18, WideResNet.

* PreActResNet-18: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual
  Networks", ECCV 2016, in its CIFAR form (3×3 stem, four stages of two
  pre-activation basic blocks with 64, 128, 256, 512 channels, strides
  1, 2, 2, 2; final BN–activation, global average pool, Dense). 11.2M
  parameters at 10 classes.
* WideResNet-d-k: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016:
  3×3 stem with 16 channels, three groups of n = (d − 4)/6 pre-activation
  blocks with 16k, 32k, 64k channels and strides 1, 2, 2; final
  BN–activation, pool, Dense. WRN-28-10: 36.5M parameters, WRN-34-10: 46.2M.
  ``activation='swish'`` gives the Gowal et al. (2020) variant.

A block computes, with a = act(BN(x)):
    out = conv3×3(act(BN(conv3×3_s(a)))) + shortcut,
    shortcut = x if shapes match, else conv1×1_s(a).
Convolutions have no bias (BN follows); weights use He-normal (fan-out)
initialisation. Batch norm: momentum 0.9 (PyTorch's 0.1), ε = 1e-5; the
running averages live in the 'batch_stats' collection.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from compsum_jax.models import common

_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class PreActBlock(nn.Module):
  """Pre-activation basic block (two 3×3 convolutions), see module docstring."""

  features: int
  stride: int = 1
  activation: str = "relu"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    act = common.get_activation(self.activation)
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                   epsilon=1e-5, dtype=self.dtype, name=name)
    conv = lambda k, s, name: nn.Conv(self.features, (k, k), strides=(s, s),
                                      padding="SAME" if k == 3 else "VALID",
                                      use_bias=False, kernel_init=_CONV_INIT,
                                      dtype=self.dtype, name=name)
    a = act(bn("bn1")(x))  # a = act(BN(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(1, self.stride, "shortcut")(a)
    else:
      shortcut = x
    out = conv(3, self.stride, "conv1")(a)
    out = conv(3, 1, "conv2")(act(bn("bn2")(out)))
    return out + shortcut


class _PreActNet(nn.Module):
  """Stem, stages of PreActBlocks, final BN–activation, pool and Dense."""

  num_classes: int
  stem_features: int
  stage_features: Sequence[int]
  stage_strides: Sequence[int]
  blocks_per_stage: int
  activation: str = "relu"
  mean: float | Sequence[float] = 0.5
  std: float | Sequence[float] = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    common.check_num_classes(self.num_classes)
    act = common.get_activation(self.activation)
    if x.ndim != 4:
      raise ValueError(f"{type(self).__name__} needs images of shape "
                       f"[B, H, W, C], got shape {tuple(x.shape)}")
    x = common.normalize(x, self.mean, self.std, self.dtype)
    x = nn.Conv(self.stem_features, (3, 3), padding="SAME", use_bias=False,
                kernel_init=_CONV_INIT, dtype=self.dtype, name="stem")(x)
    for stage, (width, stride) in enumerate(
        zip(self.stage_features, self.stage_strides, strict=True)):
      for block in range(self.blocks_per_stage):
        x = PreActBlock(width, stride if block == 0 else 1, self.activation,
                        self.dtype, name=f"stage{stage + 1}_block{block + 1}"
                        )(x, train)
    x = act(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype, name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))  # global average pooling
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)


class PreActResNet18(nn.Module):
  """PreActResNet-18 (He et al. 2016), CIFAR form; 11.2M params at n = 10.

  Attributes:
    num_classes: n ≥ 2.
    activation: 'relu' or 'swish'.
    mean, std: input normalisation (x − mean)/std per channel.
    dtype: compute dtype (e.g. jnp.bfloat16); params and logits float32.
  """

  num_classes: int
  activation: str = "relu"
  mean: float | Sequence[float] = 0.5
  std: float | Sequence[float] = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, H, W, C] in [0, 1] → logits float32 [B, num_classes]."""
    return _PreActNet(self.num_classes, 64, (64, 128, 256, 512), (1, 2, 2, 2),
                      2, self.activation, self.mean, self.std, self.dtype,
                      name="net")(x, train)


class WideResNet(nn.Module):
  """WRN-depth-width (Zagoruyko & Komodakis 2016), pre-activation blocks.

  Attributes:
    depth: d with (d − 4) divisible by 6 (e.g. 28, 34, 70).
    width: widening factor k ≥ 1 (e.g. 10).
    num_classes: n ≥ 2.
    activation: 'relu' or 'swish'.
    mean, std: input normalisation (x − mean)/std per channel.
    dtype: compute dtype; params and logits float32.
  """

  depth: int = 28
  width: int = 10
  num_classes: int = 10
  activation: str = "relu"
  mean: float | Sequence[float] = 0.5
  std: float | Sequence[float] = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, H, W, C] in [0, 1] → logits float32 [B, num_classes]."""
    blocks = check_wide_resnet_shape(self.depth, self.width)
    k = self.width
    return _PreActNet(self.num_classes, 16, (16 * k, 32 * k, 64 * k),
                      (1, 2, 2), blocks, self.activation, self.mean, self.std,
                      self.dtype, name="net")(x, train)


def check_wide_resnet_shape(depth: int, width: int) -> int:
  """Validates (depth, width); returns blocks per group n = (depth − 4)/6."""
  if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or (
      depth < 10 or (depth - 4) % 6):
    raise ValueError(f"WideResNet depth must be an integer >= 10 with "
                     f"(depth - 4) divisible by 6 (e.g. 16, 28, 34, 70), got "
                     f"depth={depth!r}")
  if isinstance(width, bool) or not isinstance(width, numbers.Integral) or (
      width < 1):
    raise ValueError(f"WideResNet width must be a positive integer, got "
                     f"width={width!r}")
  return (int(depth) - 4) // 6
