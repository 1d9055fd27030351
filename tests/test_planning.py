"""compsum_jax.training.planning: FLOP counts, compiled cost, fit and advice.

Expected values are closed forms computed here from the shapes (or published
figures, with their sources), never outputs of the code under test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import models
from compsum_jax.training import planning

SDS = jax.ShapeDtypeStruct


def test_dense_matmul_flops_are_two_m_k_n():
  x = SDS((7, 11), jnp.float32)
  w = SDS((11, 5), jnp.float32)
  count = planning.matmul_flops(jnp.dot, x, w)
  assert count.flops == 2 * 7 * 11 * 5
  assert count.num_dots == 1 and count.num_convs == 0


def test_batched_dot_general_counts_batch_dims():
  a = SDS((3, 4, 6), jnp.float32)
  b = SDS((3, 6, 2), jnp.float32)
  count = planning.matmul_flops(lambda u, v: jnp.einsum("bij,bjk->bik", u, v),
                                a, b)
  assert count.flops == 2 * 3 * 4 * 6 * 2


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_flops_closed_form(groups, stride):
  n, h, w, c_in, c_out, k = 2, 9, 9, 8, 12, 3
  x = SDS((n, h, w, c_in), jnp.float32)
  kernel = SDS((k, k, c_in // groups, c_out), jnp.float32)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups)

  out_hw = math.ceil(h / stride) * math.ceil(w / stride)
  expected = 2 * n * out_hw * c_out * k * k * (c_in // groups)
  count = planning.matmul_flops(conv, x, kernel)
  assert count.flops == expected and count.num_convs == 1


def test_scan_is_counted_length_times_and_cond_takes_the_larger_branch():
  x = SDS((4, 8), jnp.float32)
  w = SDS((8, 8), jnp.float32)
  one = 2 * 4 * 8 * 8

  def looped(x, w):
    return jax.lax.fori_loop(0, 10, lambda i, h: h @ w, x)

  assert planning.matmul_flops(looped, x, w).flops == 10 * one

  def branchy(x, w):
    return jax.lax.cond(x.sum() > 0, lambda: x @ w @ w, lambda: x @ w)

  assert planning.matmul_flops(branchy, x, w).flops == 2 * one


def test_while_loop_is_reported_as_a_lower_bound():
  x = SDS((4, 8), jnp.float32)
  w = SDS((8, 8), jnp.float32)

  def f(x, w):
    return jax.lax.while_loop(lambda c: c[0] < 3,
                              lambda c: (c[0] + 1, c[1] @ w), (0, x))[1]

  count = planning.matmul_flops(f, x, w)
  assert count.num_while_loops == 1
  assert count.flops == 2 * 4 * 8 * 8


def test_grad_of_dense_is_three_forward_passes():
  # Forward 2BIO, backward: dL/dx and dL/dW, 2BIO each.
  x = SDS((16, 32), jnp.float32)
  w = SDS((32, 10), jnp.float32)
  count = planning.matmul_flops(
      jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), argnums=(0, 1)), w, x)
  assert count.flops == 3 * 2 * 16 * 32 * 10


def _variables(model, input_shape):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))


def _preact_resnet18_macs() -> int:
  """Conv and dense MACs of the CIFAR ResNet-18, summed layer by layer."""
  macs = 32 * 32 * 64 * 3 * 9  # stem 3x3, 3 -> 64
  size, c_in = 32, 64
  for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    out = size // stride
    macs += out * out * c_out * c_in * 9  # first conv of the stage
    macs += 3 * out * out * c_out * c_out * 9  # three more 3x3 convs
    if stride != 1 or c_in != c_out:
      macs += out * out * c_out * c_in  # 1x1 shortcut
    size, c_in = out, c_out
  return macs + 512 * 10  # head


def test_preact_resnet18_forward_flops_match_published_figure():
  # Published: ResNet-18 (CIFAR form, 32x32 input) 0.56 GFLOPs counted as
  # multiply-adds (mmcv's complexity counter), 11.17 M parameters: OpenMMLab
  # mmpretrain, configs/resnet/README.md, CIFAR-10 table, "ResNet-18-b16x8".
  # Pre-activation only moves BN/ReLU: the convolutions are the same.
  model = models.get_model("preact_resnet18", 10)
  count = planning.forward_flops(model, _variables(model, (32, 32, 3)),
                                 (32, 32, 3))
  assert count.flops == 2 * _preact_resnet18_macs()
  assert abs(count.flops / (2 * 0.56e9) - 1) < 0.10


def test_wide_resnet_28_10_forward_flops_match_published_figure():
  # Published: WRN-28-10 on CIFAR, 36.5 M parameters and 5.2 G FLOPs
  # (multiply-adds): Huang et al., "CondenseNet: An Efficient DenseNet using
  # Learned Group Convolutions", CVPR 2018 (arXiv:1711.09224), Table 4.
  model = models.get_model("wide_resnet", 10, depth=28, width=10)
  count = planning.forward_flops(model, _variables(model, (32, 32, 3)),
                                 (32, 32, 3), batch_size=2)
  assert count.num_while_loops == 0
  per_example = count.flops / 2
  assert abs(per_example / (2 * 5.2e9) - 1) < 0.10


def test_step_cost_of_a_matmul():
  f = jax.jit(lambda a, b: a @ b)
  a = SDS((64, 128), jnp.float32)
  b = SDS((128, 32), jnp.float32)
  cost = planning.step_cost(f, a, b)
  # XLA counts a dot as 2·m·k·n FLOPs.
  assert cost.flops == pytest.approx(2 * 64 * 128 * 32, rel=0.01)
  assert cost.argument_bytes == 4 * (64 * 128 + 128 * 32)
  assert cost.output_bytes == 4 * 64 * 32
  assert cost.peak_bytes == (cost.argument_bytes + cost.output_bytes +
                             cost.temp_bytes - cost.alias_bytes)
  with pytest.raises(ValueError, match="jax.jit"):
    planning.step_cost(lambda a: a, a)


def test_tree_bytes_and_abstract():
  tree = {"a": np.zeros((3, 4), np.float32), "b": [np.zeros(5, np.int8), None]}
  assert planning.tree_bytes(tree) == 3 * 4 * 4 + 5
  shapes = planning.abstract(tree)
  assert shapes["a"].shape == (3, 4) and shapes["b"][0].dtype == np.int8


def test_accelerator_table_has_sources_and_sane_numbers():
  names = [a.name for a in planning.ACCELERATORS]
  for expected in ("A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB",
                   "TPU-v4", "TPU-v5e"):
    assert expected in names
  for acc in planning.ACCELERATORS:
    assert acc.source and acc.memory_bytes > 10 * 2**30
    assert acc.peak_bf16_flops > 1e14
    if acc.peak_fp32_flops is not None:
      assert acc.peak_fp32_flops < acc.peak_bf16_flops
  assert planning.get_accelerator("H100-80GB").peak_bf16_flops == 989.5e12
  with pytest.raises(ValueError, match="unknown accelerator"):
    planning.get_accelerator("K80")


def test_predicted_seconds_and_fits_closed_forms():
  acc = planning.get_accelerator("A100-80GB")
  t = planning.predicted_seconds(312e12, acc, mfu=0.5, num_devices=2)
  assert t == pytest.approx(1.0)  # 312 TFLOP / (2 · 312 TFLOP/s · 0.5)
  assert planning.predicted_seconds(1e12, planning.get_accelerator("TPU-v4"),
                                    dtype="float32") is None
  assert planning.fits(0.75 * acc.memory_bytes, acc, 0.75)
  assert not planning.fits(0.75 * acc.memory_bytes + 1, acc, 0.75)
  for bad in (0.0, 1.5, float("nan")):
    with pytest.raises(ValueError, match="mfu"):
      planning.predicted_seconds(1.0, acc, mfu=bad)
  with pytest.raises(ValueError, match="dtype"):
    planning.predicted_seconds(1.0, acc, dtype="int8")


def test_groupings_follow_the_experiments_mesh_rules():
  # m | K, m·d = n, d | B
  assert planning.groupings(6, 15, 1024) == [(3, 2)]
  assert planning.groupings(4, 15, 1024) == [(1, 4)]
  assert planning.groupings(5, 15, 1024) == [(5, 1)]
  assert planning.groupings(3, 1, 1000) == []  # 3 does not divide 1000


def test_recommend_is_the_smallest_fitting_card_count():
  acc = planning.Accelerator("toy", 100, 1e12, 1e11, "test")
  kwargs = dict(num_members=15, batch_size=1024, state_bytes_per_member=2.0,
                temp_bytes_per_member=40.0, batch_bytes=10.0)
  rec = planning.recommend(acc, usable_fraction=1.0, **kwargs)
  # Brute force over n, (m, d) with the memory model written out here.
  def need(m, d):
    return (15 // m) * (2.0 + 40.0 / d) + 10.0 / d
  smallest = min(n for n in range(1, 65)
                 for m in range(1, n + 1) if n % m == 0 and 15 % m == 0
                 and 1024 % (n // m) == 0 and need(m, n // m) <= 100)
  assert rec.num_devices == smallest
  assert rec.bytes_per_device == pytest.approx(
      need(rec.member_shards, rec.data_shards))
  assert rec.bytes_per_device <= 100
  tiny = planning.Accelerator("tiny", 1, 1e12, 1e11, "test")
  assert planning.recommend(tiny, max_devices=4, **kwargs) is None
