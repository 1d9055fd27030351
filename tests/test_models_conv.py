"""member_conv equals lax.conv_general_dilated, unbatched and under vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from compsum_jax import models
from compsum_jax.models.conv import member_conv

NHWC = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, k, strides, padding):
  return lax.conv_general_dilated(x, k, strides, padding,
                                  dimension_numbers=NHWC,
                                  precision=lax.Precision.HIGHEST)


def new_conv(x, k, strides, padding):
  return member_conv(x, k, strides, padding, dimension_numbers=NHWC,
                     precision=lax.Precision.HIGHEST)


def numpy_conv(x, k, strides, pads):
  """Direct float64 loop convolution: x [B,H,W,C], k [kh,kw,C,F]."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
  kh, kw = k.shape[:2]
  ho = (x.shape[1] - kh) // strides[0] + 1
  wo = (x.shape[2] - kw) // strides[1] + 1
  out = np.zeros((x.shape[0], ho, wo, k.shape[3]))
  for r in range(ho):
    for q in range(wo):
      window = x[:, r * strides[0]:r * strides[0] + kh,
                 q * strides[1]:q * strides[1] + kw, :]
      out[:, r, q, :] = np.einsum("bijc,ijcf->bf", window, k)
  return out


CASES = [
    ((1, 1), "SAME", (3, 3)),
    ((2, 2), "SAME", (3, 3)),
    ((2, 1), "VALID", (3, 3)),
    ((1, 1), "SAME", (1, 1)),
    ((2, 2), ((2, 0), (1, 1)), (5, 3)),
]


@pytest.mark.parametrize("strides,padding,window", CASES)
def test_unbatched_matches_numpy_loop(strides, padding, window):
  rs = np.random.RandomState(0)
  x = rs.randn(2, 9, 7, 3).astype(np.float32)
  k = rs.randn(*window, 3, 4).astype(np.float32)
  pads = (lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
          if isinstance(padding, str) else padding)
  got = new_conv(jnp.asarray(x), jnp.asarray(k), strides, padding)
  np.testing.assert_allclose(got, numpy_conv(x, k, strides, pads),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strides,padding,window", CASES)
def test_unbatched_gradients_equal_lax(strides, padding, window):
  """One member: ∂x (patch form) and ∂W (lax) equal lax's VJP."""
  rs = np.random.RandomState(6)
  x = jnp.asarray(rs.randn(3, 9, 7, 5).astype(np.float32))
  k = jnp.asarray(rs.randn(*window, 5, 6).astype(np.float32))

  def objective(conv):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides,
                                                       padding))), (0, 1))

  for got, want in zip(jax.jit(objective(new_conv))(x, k),
                       objective(lax_conv)(x, k), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("strides,padding,window", CASES)
@pytest.mark.parametrize("in_axes", [(0, 0), (None, 0), (0, None)])
@pytest.mark.slow
def test_vmapped_value_and_gradients_equal_lax(strides, padding, window,
                                               in_axes):
  """The member path (both batched) and the fallbacks give lax's numbers."""
  rs = np.random.RandomState(1)
  members = 3
  x = jnp.asarray(rs.randn(members, 4, 9, 7, 5).astype(np.float32))
  k = jnp.asarray(rs.randn(members, *window, 5, 6).astype(np.float32))
  x = x if in_axes[0] == 0 else x[0]
  k = k if in_axes[1] == 0 else k[0]

  def objective(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding)))

  want = jax.vmap(functools.partial(lax_conv, strides=strides,
                                    padding=padding), in_axes)(x, k)
  got = jax.jit(jax.vmap(functools.partial(new_conv, strides=strides,
                                           padding=padding), in_axes))(x, k)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  want_g = jax.vmap(jax.grad(objective(lax_conv), (0, 1)), in_axes)(x, k)
  got_g = jax.jit(jax.vmap(jax.grad(objective(new_conv), (0, 1)),
                           in_axes))(x, k)
  for g, w in zip(got_g, want_g, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_gradients_match_finite_differences():
  rs = np.random.RandomState(2)
  x = jnp.asarray(rs.randn(2, 1, 5, 5, 2), jnp.float32)
  k = jnp.asarray(rs.randn(2, 3, 3, 2, 3), jnp.float32)

  def f(x, k):
    y = jax.vmap(lambda a, b: new_conv(a, b, (2, 2), "SAME"))(x, k)
    return jnp.sum(y**2)

  check_grads(f, (x, k), order=1, modes=("rev",), eps=1e-2,
                            atol=5e-2, rtol=5e-2)


@pytest.mark.slow
def test_nested_vmap_and_second_order_gradient():
  rs = np.random.RandomState(3)
  x = jnp.asarray(rs.randn(2, 3, 4, 6, 6, 2).astype(np.float32))
  k = jnp.asarray(rs.randn(2, 3, 3, 3, 2, 4).astype(np.float32))

  def grad_k(conv):
    return jax.vmap(jax.vmap(jax.grad(
        lambda x, k: jnp.mean(conv(x, k, (1, 1), "SAME")**2), 1)))

  np.testing.assert_allclose(grad_k(new_conv)(x, k), grad_k(lax_conv)(x, k),
                             rtol=1e-5, atol=1e-5)
  # Reverse over reverse: gradient of an input-gradient norm (as in input
  # gradient regularisation) through the custom VJP.
  x0, k0 = x[0, 0], k[0, 0]

  def penalty(conv):
    def inner(k):
      gx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, k, (1, 1), "SAME"))))
      return jnp.sum(gx(x0)**2)
    return jax.grad(inner)

  np.testing.assert_allclose(penalty(new_conv)(k0), penalty(lax_conv)(k0),
                             rtol=1e-4, atol=1e-4)


def test_unsupported_configurations_fall_back_to_lax():
  rs = np.random.RandomState(4)
  x = jnp.asarray(rs.randn(2, 3, 8, 8, 4).astype(np.float32))
  k = jnp.asarray(rs.randn(2, 3, 3, 2, 4).astype(np.float32))
  kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC,
                feature_group_count=2, rhs_dilation=(2, 2))
  got = jax.vmap(lambda a, b: member_conv(a, b, **kwargs))(x, k)
  want = jax.vmap(lambda a, b: lax.conv_general_dilated(a, b, **kwargs))(x, k)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cnn_with_and_without_member_conv_agree_for_stacked_members():
  """CNN(member_conv=True) is CNN(member_conv=False) up to float order."""
  kwargs = dict(features=(8, 16), strides=(1, 2), hidden_size=16,
                use_batch_norm=True)
  fast = models.get_model("cnn", 10, **kwargs)
  plain = models.get_model("cnn", 10, member_conv=False, **kwargs)
  rs = np.random.RandomState(5)
  x = jnp.asarray(rs.rand(6, 8, 8, 1).astype(np.float32))
  labels = jnp.asarray(rs.randint(0, 10, 6))
  variables = jax.vmap(lambda key: fast.init(key, x))(
      jax.random.split(jax.random.key(0), 4))

  def loss(model):
    def f(v):
      logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
      return jnp.mean(jax.nn.logsumexp(logits, -1) -
                      jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])
    return jax.jit(jax.vmap(jax.value_and_grad(f)))

  (l_fast, g_fast), (l_plain, g_plain) = loss(fast)(variables), loss(plain)(
      variables)
  np.testing.assert_allclose(l_fast, l_plain, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stacked", [False, True])
def test_patch_form_only_on_cpu(stacked):
  """Lowered for CUDA (no GPU needed) it is lax convolutions, no patch dots."""
  def loss(x, k):
    return jnp.sum(new_conv(x, k, (2, 2), "SAME")**2)

  grad = jax.grad(loss, (0, 1))
  x = jnp.ones((3, 4, 8, 8, 5))
  k = jnp.ones((3, 3, 3, 5, 6))
  if stacked:
    grad = jax.vmap(grad)
  else:
    x, k = x[0], k[0]
  counts = {}
  for platform in ("cpu", "cuda"):
    text = jax.jit(grad).trace(x, k).lower(
        lowering_platforms=(platform,)).as_text()
    counts[platform] = (text.count("stablehlo.convolution"),
                        text.count("stablehlo.dot_general"))
  # forward, ∂x, ∂W: all three lax convolutions on CUDA.
  assert counts["cuda"] == (3, 0)
  # CPU: ∂x (and, stacked, the forward and ∂W too) as patch matmuls.
  assert counts["cpu"] == ((0, 3) if stacked else (2, 1))
