"""Tests of compsum_jax.data: digits, synthetic posteriors, noise, batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.datasets import load_digits

from compsum_jax import data


def _row_multiset(images: np.ndarray) -> list[bytes]:
  return sorted(np.ascontiguousarray(im).tobytes() for im in images)


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range():
  ds = data.load_dataset("digits", seed=0)
  assert ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
  assert ds.validation is None and not ds.augment and ds.posterior_fn is None
  for split in (ds.train, ds.test):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    assert split.images.min() >= 0.0 and split.images.max() <= 1.0
  assert len(ds.train) + len(ds.test) == 1797 and len(ds.test) == 360


def test_digits_is_a_partition_of_sklearn_digits():
  ds = data.load_dataset("digits", seed=3)
  bunch = load_digits()
  expected = (bunch.images / 16.0).astype(np.float32)[..., None]
  got = np.concatenate([ds.train.images, ds.test.images])
  assert _row_multiset(got) == _row_multiset(expected)
  # Labels travel with their images: (image, label) pairs as a multiset.
  got_labels = np.concatenate([ds.train.labels, ds.test.labels])
  assert _pair_multiset(got, got_labels) == _pair_multiset(expected,
                                                           bunch.target)


def test_digits_file_reader_equals_sklearn_in_order(monkeypatch):
  from compsum_jax.data import offline

  bunch = load_digits()
  pixels, labels = offline._digits_arrays()  # the CSV read directly
  np.testing.assert_array_equal(pixels, bunch.images)
  np.testing.assert_array_equal(labels, bunch.target)
  # Without the file where scikit-learn keeps it: sklearn's own loader.
  monkeypatch.setattr(offline.importlib.util, "find_spec", lambda name: None)
  pixels, labels = offline._digits_arrays()
  np.testing.assert_array_equal(pixels, bunch.images)
  np.testing.assert_array_equal(labels, bunch.target)


def _pair_multiset(images, labels) -> list[bytes]:
  return sorted(im.tobytes() + bytes([int(y)])
                for im, y in zip(images, labels, strict=True))


def test_digits_test_split_is_stratified_and_fixed_by_seed():
  a = data.load_dataset("digits", seed=5)
  b = data.load_dataset("digits", seed=5)
  c = data.load_dataset("digits", seed=6)
  np.testing.assert_array_equal(a.test.images, b.test.images)
  assert not np.array_equal(a.test.images, c.test.images)
  full_counts = np.bincount(load_digits().target, minlength=10)
  test_counts = np.bincount(a.test.labels, minlength=10)
  # Largest-remainder quotas: within one example of the proportional share.
  assert np.all(np.abs(test_counts - 360 * full_counts / 1797) < 1.0)


def test_validation_split_is_held_out_with_clean_labels():
  noise = data.LabelNoise("asymmetric", 0.4)
  clean = data.load_dataset("digits", seed=1, validation_size=300)
  noisy = data.load_dataset("digits", seed=1, validation_size=300,
                            label_noise=noise)
  assert len(noisy.validation) == 300 and len(noisy.train) == 1797 - 360 - 300
  # The validation split is identical with and without noise: clean labels.
  np.testing.assert_array_equal(noisy.validation.images,
                                clean.validation.images)
  np.testing.assert_array_equal(noisy.validation.labels,
                                clean.validation.labels)
  assert noisy.validation.flipped is None and noisy.test.flipped is None
  np.testing.assert_array_equal(noisy.test.labels, clean.test.labels)
  # The training images are the same, only labels changed, and clean_labels
  # are the labels of the noise-free load.
  np.testing.assert_array_equal(noisy.train.images, clean.train.images)
  np.testing.assert_array_equal(noisy.train.clean_labels, clean.train.labels)
  # train + validation + test is still all of digits.
  everything = np.concatenate([noisy.train.images, noisy.validation.images,
                               noisy.test.images])
  want = (load_digits().images / 16.0).astype(np.float32)[..., None]
  assert _row_multiset(everything) == _row_multiset(want)


@pytest.mark.parametrize("size", [-1, 1437, 2.5, True])
def test_bad_validation_size_raises(size):
  with pytest.raises(ValueError, match="validation_size"):
    data.load_dataset("digits", validation_size=size)


# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.8])
def test_load_dataset_noise_rate_is_exact(kind, rate):
  ds = data.load_dataset("digits", seed=2, validation_size=100,
                         label_noise={"kind": kind, "rate": rate})
  n = len(ds.train)
  assert ds.train.flipped.sum() == int(round(rate * n))
  np.testing.assert_array_equal(ds.train.flipped,
                                ds.train.labels != ds.train.clean_labels)
  assert ds.meta["label_noise"] == {"kind": kind, "rate": rate}


@settings(max_examples=60, deadline=None)
@given(n_examples=st.integers(0, 400), num_classes=st.integers(2, 12),
       rate=st.floats(0.0, 1.0), kind=st.sampled_from(["symmetric",
                                                       "asymmetric"]),
       seed=st.integers(0, 2**31))
def test_flip_labels_properties(n_examples, num_classes, rate, kind, seed):
  rng = np.random.default_rng(seed)
  clean = rng.integers(0, num_classes, n_examples)
  noisy, flipped = data.flip_labels(clean, num_classes,
                                    data.LabelNoise(kind, rate),
                                    np.random.default_rng(seed + 1))
  assert noisy.dtype == np.int32 and flipped.dtype == bool
  assert flipped.sum() == round(rate * n_examples)
  np.testing.assert_array_equal(flipped, noisy != clean)
  assert np.all((noisy >= 0) & (noisy < num_classes))
  if kind == "asymmetric":
    np.testing.assert_array_equal(noisy[flipped],
                                  (clean[flipped] + 1) % num_classes)


def test_symmetric_noise_is_uniform_over_other_classes():
  num_classes, n_examples = 7, 70_000
  clean = np.arange(n_examples) % num_classes
  noisy, flipped = data.flip_labels(clean, num_classes,
                                    data.LabelNoise("symmetric", 0.5),
                                    np.random.default_rng(0))
  offsets = (noisy[flipped] - clean[flipped]) % num_classes
  counts = np.bincount(offsets, minlength=num_classes)
  assert counts[0] == 0
  # Chi-square goodness of fit to uniform on {1, …, n−1}.
  p_value = stats.chisquare(counts[1:]).pvalue
  assert p_value > 1e-3
  # The flipped examples are spread over the classes too.
  p_class = stats.chisquare(np.bincount(clean[flipped],
                                        minlength=num_classes)).pvalue
  assert p_class > 1e-3


def test_label_noise_from_primitives_and_bad_values():
  assert data.LabelNoise.from_value(None) is None
  assert data.LabelNoise.from_value({"kind": None, "rate": 0.3}) is None
  assert data.LabelNoise.from_value(("asymmetric", 0.1)) == data.LabelNoise(
      "asymmetric", 0.1)
  assert data.LabelNoise.from_value({"kind": "symmetric", "rate": 0.25}
                                    ) == data.LabelNoise("symmetric", 0.25)
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict({"kind": "symmetric", "rate": 0.5})
  assert data.LabelNoise.from_value(cfg) == data.LabelNoise("symmetric", 0.5)
  with pytest.raises(ValueError, match="kind='pairflip'"):
    data.LabelNoise("pairflip", 0.1)
  for bad in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="rate"):
      data.LabelNoise("symmetric", bad)
  with pytest.raises(ValueError, match="label_noise"):
    data.LabelNoise.from_value("symmetric")
  with pytest.raises(ValueError, match="unknown keys"):
    data.LabelNoise.from_value({"kind": "symmetric", "rat": 0.1})


# ---------------------------------------------------------------- synthetic


def test_synthetic_posterior_matches_scipy_densities():
  ds = data.load_dataset("synthetic", seed=4, num_classes=4, dim=3,
                         separation=2.0, sigma=0.7, priors=[1, 2, 3, 4],
                         num_train=64, num_test=500)
  means = np.asarray(ds.meta["means"])
  priors = np.asarray(ds.meta["priors"])
  x = ds.test.images.astype(np.float64)
  # Bayes' rule with scipy's Gaussian densities (independent computation).
  joint = np.stack([priors[k] * stats.multivariate_normal(
      means[k], 0.49 * np.eye(3)).pdf(x) for k in range(4)], axis=-1)
  want = joint / joint.sum(-1, keepdims=True)
  got = ds.posterior_fn(ds.test.images)
  assert got.shape == (500, 4)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(priors, np.array([1, 2, 3, 4]) / 10)
  # The JAX path agrees with the float64 NumPy path.
  got_jax = ds.posterior_fn(jnp.asarray(x, jnp.float32))
  assert isinstance(got_jax, jax.Array)
  np.testing.assert_allclose(np.asarray(got_jax), want, atol=1e-5)
  got_jit = jax.jit(ds.posterior_fn)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(got_jit), want, atol=1e-5)


def test_synthetic_geometry_and_sampling_statistics():
  ds = data.load_dataset("synthetic", seed=0, num_classes=3, dim=5,
                         separation=2.5, num_train=20_000, num_test=100)
  means = np.asarray(ds.meta["means"])
  dists = [np.linalg.norm(means[i] - means[j]) for i in range(3)
           for j in range(i + 1, 3)]
  np.testing.assert_allclose(dists, 2.5, rtol=1e-12)
  assert ds.input_shape == (5,) and ds.train.images.dtype == np.float32
  # Class frequencies: binomial, uniform priors (5 standard errors).
  freq = np.bincount(ds.train.labels, minlength=3) / 20_000
  assert np.all(np.abs(freq - 1 / 3) < 5 * np.sqrt(2 / 9 / 20_000))
  # Calibration: E[p(y|x)] = π and P(Bayes correct) = E[max_y p(y|x)].
  post = ds.posterior_fn(ds.train.images)
  np.testing.assert_allclose(post.mean(0), 1 / 3, atol=0.015)
  bayes_acc = np.mean(post.argmax(-1) == ds.train.labels)
  se = np.sqrt(0.25 / 20_000)
  assert abs(bayes_acc - post.max(-1).mean()) < 5 * se
  # Per-class sample mean and variance: μ_y and σ² = 1.
  for k in range(3):
    xk = ds.train.images[ds.train.labels == k].astype(np.float64)
    np.testing.assert_allclose(xk.mean(0), means[k], atol=0.06)
    np.testing.assert_allclose(xk.var(0), 1.0, atol=0.08)


def test_synthetic_more_classes_than_dimensions_and_determinism():
  a = data.load_dataset("synthetic", seed=9, num_classes=6, dim=2)
  b = data.load_dataset("synthetic", seed=9, num_classes=6, dim=2)
  c = data.load_dataset("synthetic", seed=10, num_classes=6, dim=2)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  assert not np.array_equal(a.train.images, c.train.images)
  assert not np.array_equal(a.train.images, a.test.images)
  np.testing.assert_allclose(a.posterior_fn(a.test.images).sum(-1), 1.0)
  # mixture_seed fixes the distribution while seed changes the sample.
  d = data.load_dataset("synthetic", seed=10, mixture_seed=9, num_classes=6,
                        dim=2)
  assert d.meta["means"] == a.meta["means"] != c.meta["means"]
  assert not np.array_equal(d.train.images, a.train.images)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes"),
    ({"dim": 0}, "dim"),
    ({"separation": -1.0}, "separation"),
    ({"sigma": 0.0}, "sigma"),
    ({"priors": [0.5, 0.5]}, "priors"),
    ({"priors": [1.0, -1.0, 1.0]}, "priors"),
    ({"num_train": 0}, "num_train"),
])
def test_synthetic_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.load_dataset("synthetic", **kwargs)


def test_bad_name_seed_and_options():
  with pytest.raises(ValueError, match="name='imagenet'"):
    data.load_dataset("imagenet")
  with pytest.raises(ValueError, match="seed"):
    data.load_dataset("digits", seed=-1)
  with pytest.raises(ValueError, match=r"no option\(s\) \['num_train'\]"):
    data.load_dataset("digits", num_train=10)
  with pytest.raises(ValueError, match="test_size"):
    data.load_dataset("digits", test_size=5)


def test_synthetic_posterior_rejects_bad_shape():
  ds = data.load_dataset("synthetic", dim=3, num_train=8, num_test=8)
  with pytest.raises(ValueError, match=r"\[N, 3\]"):
    ds.posterior_fn(np.zeros((4, 2)))
