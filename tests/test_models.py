"""Tests of compsum_jax.models: parameter counts, collections, normalisation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import models


def _param_count(model, input_shape) -> int:
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + input_shape), train=False))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


def _preact_count(stem: int, stages, blocks: int, num_classes: int,
                  in_ch: int = 3) -> int:
  """Parameter count of a pre-activation ResNet by arithmetic (no biases in
  convolutions, BN scale+bias, shortcut 1×1 conv when the shape changes)."""
  total = 9 * in_ch * stem
  c_in = stem
  for width, stride in stages:
    for b in range(blocks):
      s = stride if b == 0 else 1
      total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
      if s != 1 or c_in != width:
        total += c_in * width
      c_in = width
  return total + 2 * c_in + c_in * num_classes + num_classes


@pytest.mark.parametrize("depth, width, millions", [(28, 10, 36.5),
                                                    (34, 10, 46.2)])
def test_wide_resnet_parameter_counts(depth, width, millions):
  model = models.get_model("wide_resnet", 10, depth=depth, width=width)
  count = _param_count(model, (32, 32, 3))
  assert round(count / 1e6, 1) == millions
  n = (depth - 4) // 6
  k = width
  assert count == _preact_count(16, [(16 * k, 1), (32 * k, 2), (64 * k, 2)],
                                n, 10)


def test_preact_resnet18_parameter_count():
  model = models.get_model("preact_resnet18", 10)
  count = _param_count(model, (32, 32, 3))
  assert round(count / 1e6, 1) == 11.2
  assert count == _preact_count(64, [(64, 1), (128, 2), (256, 2), (512, 2)],
                                2, 10)
  # 100 classes change only the head: 512 · 90 + 90 more parameters.
  assert _param_count(models.get_model("preact_resnet18", 100),
                      (32, 32, 3)) == count + 512 * 90 + 90


def _numpy_init(model, x, seed: int = 0):
  """Variables with the shapes ``model.init`` gives, filled by NumPy.

  Avoids compiling the random initialisers of large models (slow on CPU);
  kernels get He-scaled normals, BN scales 1, biases 0, running var 1.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = math.prod(leaf.shape[:-1])
      return jnp.asarray(rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in),
                         leaf.dtype)
    if "scale" in name or "'var'" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("name, kwargs, shape, has_bn", [
    ("mlp", {}, (8, 8, 1), False),
    ("mlp", {}, (5,), False),
    ("cnn", {}, (8, 8, 1), False),
    ("cnn", {"use_batch_norm": True}, (28, 28, 1), True),
    ("preact_resnet18", {}, (8, 8, 3), True),
    ("wide_resnet", {"depth": 10, "width": 1, "activation": "swish"},
     (8, 8, 3), True),
])
@pytest.mark.slow
def test_forward_shapes_dtypes_and_collections(name, kwargs, shape, has_bn):
  model = models.get_model(name, 7, **kwargs)
  x = jax.random.uniform(jax.random.key(1), (3,) + shape)
  variables = _numpy_init(model, x)
  assert ("batch_stats" in variables) == has_bn
  apply = model.apply
  logits = apply(variables, x, train=False)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  if has_bn:
    logits_t, updates = apply(variables, x, train=True,
                              mutable=["batch_stats"])
    assert logits_t.shape == (3, 7)
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
  else:
    np.testing.assert_array_equal(apply(variables, x, train=True), logits)


@pytest.mark.slow
def test_batch_norm_train_mode_uses_batch_statistics():
  model = models.get_model("cnn", 3, use_batch_norm=True)
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  full, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  half, _ = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
  # With batch statistics an example's logits depend on the rest of the batch.
  assert not np.allclose(full[:2], half, atol=1e-6)
  # In eval mode they do not.
  np.testing.assert_allclose(model.apply(variables, x, train=False)[:2],
                             model.apply(variables, x[:2], train=False),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_mlp_matches_numpy_forward_with_normalisation():
  mean, std = (0.3,), (0.2,)
  model = models.get_model("mlp", 4, hidden_sizes=(6, 5), mean=mean, std=std,
                           activation="swish")
  x = np.random.default_rng(0).uniform(size=(9, 3, 2, 1)).astype(np.float32)
  variables = model.init(jax.random.key(2), x)
  got = np.asarray(model.apply(variables, x))
  params = jax.tree.map(lambda a: np.asarray(a, np.float64),
                        variables["params"])
  h = ((x.astype(np.float64) - 0.3) / 0.2).reshape(9, -1)
  for layer in ("Dense_0", "Dense_1"):
    z = h @ params[layer]["kernel"] + params[layer]["bias"]
    h = z / (1.0 + np.exp(-z))  # swish
  want = h @ params["Dense_2"]["kernel"] + params["Dense_2"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_per_channel_normalisation_is_inside_the_model():
  mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  normed = models.get_model("cnn", 5, mean=mean, std=std)
  plain = models.get_model("cnn", 5, mean=0.0, std=1.0)
  variables = normed.init(jax.random.key(0), x)
  x_std = (x - jnp.asarray(mean)) / jnp.asarray(std)
  np.testing.assert_allclose(normed.apply(variables, x),
                             plain.apply(variables, x_std), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="2 entries but the input has 3"):
    models.get_model("cnn", 5, mean=(0.1, 0.2)).init(jax.random.key(0), x)


def test_cnn_uses_strided_convolutions_not_max_pool():
  model = models.get_model("cnn", 10, use_batch_norm=True)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
    return out.sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
  assert "reduce_window" not in jaxpr and "select_and_scatter" not in jaxpr


@pytest.mark.slow
def test_bfloat16_compute_gives_float32_logits_close_to_float32():
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  f32 = models.get_model("cnn", 10, use_batch_norm=True)
  bf16 = models.get_model("cnn", 10, use_batch_norm=True, dtype=jnp.bfloat16)
  variables = f32.init(jax.random.key(0), x)
  a = f32.apply(variables, x)
  b = bf16.apply(variables, x)
  assert b.dtype == jnp.float32
  rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
  assert 0 < rel < 0.05
  # Every model keeps float32 parameters and returns float32 logits in bf16.
  for name, kwargs in [("mlp", {}), ("preact_resnet18", {}),
                       ("wide_resnet", {"depth": 16, "width": 2})]:
    model = models.get_model(name, 10, dtype=jnp.bfloat16, **kwargs)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32
               for leaf in jax.tree.leaves(variables))
    out = jax.eval_shape(model.apply, variables, x)
    assert out.dtype == jnp.float32 and out.shape == (4, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.slow
def test_relu_and_swish_differ(name):
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  relu = models.get_model(name, 10)
  swish = models.get_model(name, 10, activation="swish")
  variables = relu.init(jax.random.key(0), x)
  assert not np.allclose(relu.apply(variables, x), swish.apply(variables, x))


@pytest.mark.parametrize("call, match", [
    (lambda: models.get_model("vgg", 10), "name='vgg'"),
    (lambda: models.get_model("mlp", 1), "num_classes=1"),
    (lambda: models.get_model("mlp", 2.5), "num_classes=2.5"),
    (lambda: models.get_model("cnn", 10, activation="tanh"),
     "activation='tanh'"),
    (lambda: models.get_model("wide_resnet", 10, depth=27), "depth=27"),
    (lambda: models.get_model("wide_resnet", 10, width=0), "width=0"),
    (lambda: models.get_model("cnn", 10, hidden_sizes=(3,)),
     "hidden_sizes"),
])
def test_bad_arguments_raise_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_cnn_rejects_flat_input_and_mismatched_strides():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    models.get_model("cnn", 3).init(jax.random.key(0), jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="strides"):
    models.get_model("cnn", 3, features=(8, 16), strides=(2,)).init(
        jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
