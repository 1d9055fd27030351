"""A 2-D convolution that stays fast when vmapped over stacked members.

``member_conv`` is a drop-in for ``jax.lax.conv_general_dilated`` (pass it to
``flax.linen.Conv(conv_general_dilated=member_conv)``). Its values and
gradients are those of the lax convolution up to float summation order; its
forward pass, unbatched, *is* the lax convolution. The main difference is
under ``jax.vmap`` when both the input and the kernel carry the vmapped axis,
which is what the train step does with K stacked members
(``make_train_step(num_members=K)``): member k's activations meet member k's
kernel. JAX's default rule turns that into one grouped convolution
(``feature_group_count = K``), which XLA:CPU runs slower than K ordinary
convolutions (benchmarks/results/train_step.md). Here that case runs
on CPU as K batched matmuls over image patches instead (im2col):

    P_k = patches(x_k)   [B·H'·W', kh·kw·C],   y_k = P_k · W_k   [B·H'·W', F],

with gradients ∂x_k = patches⁺(∂y_k · W_kᵀ) (the adjoint of the patch
extraction: pads and adds) and ∂W_k = P_kᵀ · ∂y_k. When only one operand is
batched (e.g. the first layer, whose input batch is shared by all members),
the default rule is already an ordinary convolution (members folded into the
output features or the batch) and is kept.

On CPU one member alone also takes the input gradient in patch form,
∂x = patches⁺(∂y · Wᵀ), instead of XLA's transposed convolution: on XLA:CPU
that was never slower for the layer shapes tried and much faster for strided
layers, which speeds up attacks (input gradients) and the backward pass of
training; the forward pass and the kernel gradient stay lax convolutions.
For a tiny network the bookkeeping can cost more than it saves. Measured
figures: benchmarks/results/train_step.md ("K = 15 members" and "Other
things tried") and benchmarks/results/attacks.md.

Other platforms (GPU, TPU) keep the lax convolution and JAX's default vmap
rule everywhere (``jax.lax.platform_dependent`` picks the branch when the
program is lowered): their convolution libraries do not have XLA:CPU's
problem, and the patch tensors are 9× the size of the input.

Supported in the patch path: NHWC inputs, HWIO kernels, any kernel size,
strides and padding, no dilation, ``feature_group_count == 1``; anything else
falls back to the lax convolution and its default vmap rule. Reverse-mode
autodiff is defined (``jax.custom_vjp``; the backward pass has the same vmap
treatment; gradients of the backward pass, for higher-order derivatives, are
plain JAX autodiff of it with default vmap rules); forward-mode
(``jax.jvp``) of a ``custom_vjp`` function is not supported by JAX, so use
``flax.linen.Conv`` with the default convolution where a JVP through the
model is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
  """Whether dimension_numbers mean NHWC input, HWIO kernel, NHWC output."""
  if ndim != 4:
    return False
  try:
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4,
                                    dimension_numbers or _NHWC)
    want = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _NHWC)
  except (TypeError, ValueError):
    return False
  return tuple(map(tuple, dn)) == tuple(map(tuple, want))


def _patch_conv(x: jax.Array, kernel: jax.Array,
                strides: tuple[int, int],
                pads: tuple[tuple[int, int], tuple[int, int]],
                precision: Any) -> jax.Array:
  """Stacked convolution as batched matmuls over patches (module doc).

  x: [M, B, H, W, C]; kernel: [M, kh, kw, C, F] → [M, B, H', W', F].
  """
  m, b, h, w, c = x.shape
  kh, kw, _, f = kernel.shape[1:]
  (plo_h, phi_h), (plo_w, phi_w) = pads
  sh, sw = strides
  zero = jnp.zeros((), x.dtype)
  xp = lax.pad(x, zero, ((0, 0, 0), (0, 0, 0), (plo_h, phi_h, 0),
                         (plo_w, phi_w, 0), (0, 0, 0)))
  ho = (h + plo_h + phi_h - kh) // sh + 1
  wo = (w + plo_w + phi_w - kw) // sw + 1
  # Column (i, j, c) of a patch row is x[.., s·r + i, s·q + j, c], the same
  # (kh, kw, C) order as the HWIO kernel reshaped to [kh·kw·C, F].
  cols = [lax.slice(xp, (0, 0, i, j, 0),
                    (m, b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                    (1, 1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  # Stacking on a new axis and reshaping ran faster on XLA:CPU than
  # concatenating on the channel axis (same result; benchmarks/results/
  # train_step.md, "Figures moved out of library docstrings").
  patches = jnp.stack(cols, axis=-2).reshape(m, b * ho * wo, kh * kw * c)
  weights = kernel.reshape(m, kh * kw * c, f)
  y = jnp.einsum("mnp,mpf->mnf", patches, weights, precision=precision)
  return y.reshape(m, b, ho, wo, f)


@functools.cache
def _stacked_conv(strides: tuple[int, int],
                  pads: tuple[tuple[int, int], tuple[int, int]],
                  precision: Any):
  """The custom-vjp/custom-vmap convolution for one static configuration."""

  def conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, strides, pads,
                                    dimension_numbers=_NHWC,
                                    precision=precision)

  def patch_conv(x, kernel):
    return _patch_conv(x, kernel, strides, pads, precision)

  def lax_input_grad(x, kernel, g):
    return jax.linear_transpose(lambda x: conv(x, kernel), x)(g)[0]

  def patch_input_grad(x, kernel, g):
    return jax.linear_transpose(
        lambda x: patch_conv(x[None], kernel[None])[0], x)(g)[0]

  def conv_vjp(x, kernel, g):
    # On CPU ∂x through the patch form (module doc), elsewhere lax's
    # transposed convolution; ∂W through lax everywhere.
    dx = lax.platform_dependent(x, kernel, g, cpu=patch_input_grad,
                                default=lax_input_grad)
    (dkernel,) = jax.linear_transpose(lambda k: conv(x, k), kernel)(g)
    return dx, dkernel

  def stacked_forward(x, kernel):
    return lax.platform_dependent(x, kernel, cpu=patch_conv,
                                  default=jax.vmap(conv))

  def stacked_vjp(x, kernel, g):
    return lax.platform_dependent(
        x, kernel, g, cpu=lambda x, k, g: jax.vjp(patch_conv, x, k)[1](g),
        default=jax.vmap(conv_vjp))

  forward = jax.custom_batching.custom_vmap(conv)

  @forward.def_vmap
  def _forward_rule(axis_size, in_batched, x, kernel):
    del axis_size
    x_batched, kernel_batched = in_batched
    if x_batched and kernel_batched:
      return stacked_forward(x, kernel), True
    in_axes = (0 if x_batched else None, 0 if kernel_batched else None)
    return jax.vmap(conv, in_axes=in_axes)(x, kernel), True

  backward_rule = jax.custom_batching.custom_vmap(conv_vjp)

  @backward_rule.def_vmap
  def _backward_rule(axis_size, in_batched, x, kernel, g):
    x_batched, kernel_batched, g_batched = in_batched
    if x_batched and kernel_batched:
      if not g_batched:
        g = jnp.broadcast_to(g, (axis_size,) + g.shape)
      return stacked_vjp(x, kernel, g), (True, True)
    in_axes = tuple(0 if bat else None for bat in in_batched)
    return jax.vmap(conv_vjp, in_axes=in_axes)(x, kernel, g), (True, True)

  # custom_vmap functions are not differentiable; the backward pass is (for
  # higher-order gradients), through plain JAX autodiff of conv_vjp and the
  # default vmap rules.
  @jax.custom_vjp
  def backward(x, kernel, g):
    return backward_rule(x, kernel, g)

  def backward_fwd(x, kernel, g):
    return backward(x, kernel, g), (x, kernel, g)

  def backward_bwd(residuals, cotangents):
    return jax.vjp(conv_vjp, *residuals)[1](cotangents)

  backward.defvjp(backward_fwd, backward_bwd)

  @jax.custom_vjp
  def stacked_conv(x, kernel):
    return forward(x, kernel)

  def stacked_conv_fwd(x, kernel):
    return stacked_conv(x, kernel), (x, kernel)

  def stacked_conv_bwd(residuals, g):
    x, kernel = residuals
    return backward(x, kernel, g)

  stacked_conv.defvjp(stacked_conv_fwd, stacked_conv_bwd)
  return stacked_conv


def member_conv(lhs: jax.Array, rhs: jax.Array,
                window_strides: Sequence[int],
                padding: str | Sequence[tuple[int, int]],
                lhs_dilation: Sequence[int] | None = None,
                rhs_dilation: Sequence[int] | None = None,
                dimension_numbers: Any = None,
                feature_group_count: int = 1,
                batch_group_count: int = 1,
                precision: Any = None,
                preferred_element_type: Any = None) -> jax.Array:
  """``lax.conv_general_dilated`` that vmaps over members as batched matmuls.

  Same signature and result as ``jax.lax.conv_general_dilated`` (the input
  gradient is computed in patch form, see the module doc). For NHWC
  input ``lhs`` [B, H, W, C] and HWIO kernel ``rhs`` [kh, kw, C, F] without
  dilation or groups, ``jax.vmap`` over both operands runs as batched
  matmuls over image patches instead of a grouped convolution (module doc);
  every other call is the lax convolution.
  """
  lax_conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides,
      padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and all(
      d == 1 for d in (rhs_dilation or (1, 1)))
  if (not _is_nhwc(dimension_numbers, jnp.ndim(lhs)) or not undilated or
      feature_group_count != 1 or batch_group_count != 1 or
      preferred_element_type is not None or jnp.ndim(rhs) != 4 or
      len(window_strides) != 2):
    return lax_conv(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides,
                               padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if isinstance(precision, list):
    precision = tuple(precision)
  return _stacked_conv(strides, pads, precision)(lhs, rhs)
