"""Offline datasets: scikit-learn ``digits`` and ``synthetic`` Gaussian mixtures.

Both need no download and no network, so the default tests and the ``digits``
demo run anywhere.

Synthetic Gaussian mixture (known posterior). With class priors π_y, means μ_y
and a shared isotropic covariance σ²I in R^d, examples are drawn as

    y ~ Categorical(π),   x | y ~ N(μ_y, σ² I),

and Bayes' rule gives the exact posterior (the Gaussian normalisers cancel
because the covariance is shared):

    p(y | x) = softmax_y( log π_y − ‖x − μ_y‖² / (2σ²) ).

Means: for n ≤ d they are ``separation/√2`` times n orthonormal vectors (a
random orthonormal frame from the seed), so every pair of means is exactly
``separation`` apart; for n > d they are i.i.d. N(0, separation²/(2d) · I), so
pairs are ``separation`` apart in root-mean-square.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax.data.types import ArraySplit

# Independent random streams derived from the seed: np.random.SeedSequence
# entropy (seed, stream).
STREAM_TEST_SPLIT = 0
STREAM_VALIDATION = 1
STREAM_NOISE = 2
STREAM_SYNTHETIC_MEANS = 3
STREAM_SYNTHETIC_TRAIN = 4
STREAM_SYNTHETIC_TEST = 5


def rng_for(seed: int, stream: int) -> np.random.Generator:
  """A NumPy generator that is a pure function of (seed, stream)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or (
      seed < 0):
    raise ValueError(f"seed must be a non-negative integer, got seed={seed!r}")
  return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def load_digits_splits(seed: int = 0, test_size: int = 360
                       ) -> tuple[ArraySplit, ArraySplit]:
  """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes).

  Pixels (integers 0..16) are scaled to [0, 1] as float32 x = v / 16 and shaped
  [N, 8, 8, 1]. The test split has ``test_size`` examples, stratified by class,
  and is a pure function of ``seed``.

  Returns:
    (train, test) ArraySplits.
  """
  pixels, labels = _digits_arrays()
  images = (pixels.astype(np.float32) / 16.0)[..., None]  # x = v / 16
  labels = labels.astype(np.int32)
  n_total = len(labels)
  if not 10 <= int(test_size) <= n_total - 10:
    raise ValueError(f"digits test_size must lie in [10, {n_total - 10}], got "
                     f"test_size={test_size!r}")
  test_idx = _stratified_indices(labels, int(test_size),
                                 rng_for(seed, STREAM_TEST_SPLIT))
  is_test = np.zeros(n_total, dtype=bool)
  is_test[test_idx] = True
  train = ArraySplit(images[~is_test], labels[~is_test])
  test = ArraySplit(images[is_test], labels[is_test])
  return train, test


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """(pixels [1797, 8, 8] in 0..16, labels [1797]) of scikit-learn's digits.

  Read straight from the CSV file scikit-learn ships
  (``sklearn/datasets/data/digits.csv.gz``: 64 pixel columns, then the
  label), found without importing scikit-learn, whose import takes over a
  second; falls back to ``sklearn.datasets.load_digits`` if the file is not
  where scikit-learn keeps it.
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data",
                        "digits.csv.gz")
    if os.path.exists(path):
      table = np.loadtxt(path, delimiter=",")
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  bunch = load_digits()
  return bunch.images, bunch.target


def _stratified_indices(labels: np.ndarray, size: int,
                        rng: np.random.Generator) -> np.ndarray:
  """``size`` indices whose class counts are proportional to ``labels``'.

  Each class gets floor(size · N_c / N) picks; the remaining picks go to the
  classes with the largest fractional parts (largest-remainder method).
  """
  classes, counts = np.unique(labels, return_counts=True)
  quota = size * counts / counts.sum()
  picks = np.floor(quota).astype(int)
  order = np.argsort(-(quota - picks), kind="stable")
  picks[order[:size - picks.sum()]] += 1
  chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
            for c, k in zip(classes, picks, strict=True)]
  return np.sort(np.concatenate(chosen))


class GaussianMixture:
  """n-class Gaussian mixture with shared covariance σ²I and an exact posterior.

  Attributes:
    means: float64 [n, d] class means μ_y.
    priors: float64 [n] class priors π_y (sum to 1).
    sigma: the standard deviation σ of every coordinate.
  """

  def __init__(self, means: np.ndarray, priors: np.ndarray, sigma: float):
    self.means = np.asarray(means, np.float64)
    self.priors = np.asarray(priors, np.float64)
    self.sigma = float(sigma)

  @property
  def num_classes(self) -> int:
    return self.means.shape[0]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def sample(self, num_examples: int, rng: np.random.Generator
             ) -> ArraySplit:
    """Draws y ~ Categorical(π), x | y ~ N(μ_y, σ²I); x float32 [N, d]."""
    labels = rng.choice(self.num_classes, size=num_examples, p=self.priors)
    noise = rng.standard_normal((num_examples, self.dim))
    x = self.means[labels] + self.sigma * noise  # x = μ_y + σ ε
    return ArraySplit(x.astype(np.float32), labels.astype(np.int32))

  def log_posterior(self, x: Any) -> Any:
    """log p(y|x) [N, n] for x [N, d] (float64 NumPy for NumPy input, else JAX).

    log p(y|x) = log π_y − ‖x − μ_y‖²/(2σ²) − logsumexp_y'(same), by Bayes' rule.
    """
    if isinstance(x, jax.Array):  # includes tracers under jit/vmap/grad
      xp, x = jnp, jnp.asarray(x)
      means = jnp.asarray(self.means, x.dtype)
      log_priors = jnp.log(jnp.asarray(self.priors, x.dtype))
    else:
      xp, x = np, np.asarray(x, np.float64)
      means, log_priors = self.means, np.log(self.priors)
    if x.ndim != 2 or x.shape[-1] != self.dim:
      raise ValueError(f"x must have shape [N, {self.dim}], got shape "
                       f"{tuple(x.shape)}")
    # ‖x − μ_y‖² expanded as ‖x‖² − 2 x·μ_y + ‖μ_y‖² (one matmul).
    sq_dist = ((x * x).sum(-1, keepdims=True) - 2.0 * x @ means.T
               + (means * means).sum(-1)[None, :])
    scores = log_priors[None, :] - sq_dist / (2.0 * self.sigma**2)
    shift = scores.max(-1, keepdims=True)
    log_norm = shift + xp.log(xp.exp(scores - shift).sum(-1, keepdims=True))
    return scores - log_norm  # log softmax

  def posterior(self, x: Any) -> Any:
    """p(y|x) = softmax_y(log π_y − ‖x − μ_y‖²/(2σ²)), shape [N, n]."""
    log_p = self.log_posterior(x)
    return jnp.exp(log_p) if isinstance(log_p, jax.Array) else np.exp(log_p)

  __call__ = posterior


def make_gaussian_mixture(*, num_classes: int = 3, dim: int = 2,
                          separation: float = 3.0, sigma: float = 1.0,
                          priors: Sequence[float] | None = None,
                          seed: int = 0) -> GaussianMixture:
  """Builds the mixture described in the module docstring, from the seed.

  Args:
    num_classes: n ≥ 2.
    dim: d ≥ 1.
    separation: distance between class means (exact for n ≤ d, RMS otherwise),
      > 0.
    sigma: per-coordinate standard deviation σ > 0.
    priors: class priors π (n positive numbers, normalised to sum 1); None for
      uniform.
    seed: non-negative integer.
  """
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or (
      num_classes < 2):
    raise ValueError(f"num_classes must be an integer >= 2, got "
                     f"num_classes={num_classes!r}")
  if isinstance(dim, bool) or int(dim) != dim or dim < 1:
    raise ValueError(f"dim must be an integer >= 1, got dim={dim!r}")
  if not (np.isfinite(separation) and separation > 0):
    raise ValueError(f"separation must be finite and > 0, got "
                     f"separation={separation!r}")
  if not (np.isfinite(sigma) and sigma > 0):
    raise ValueError(f"sigma must be finite and > 0, got sigma={sigma!r}")
  num_classes, dim = int(num_classes), int(dim)
  if priors is None:
    pi = np.full(num_classes, 1.0 / num_classes)
  else:
    pi = np.asarray(priors, np.float64)
    if pi.shape != (num_classes,) or not np.all(np.isfinite(pi)) or np.any(
        pi <= 0):
      raise ValueError(f"priors must be {num_classes} positive finite numbers, "
                       f"got priors={priors!r}")
    pi = pi / pi.sum()
  rng = rng_for(seed, STREAM_SYNTHETIC_MEANS)
  radius = separation / np.sqrt(2.0)
  if num_classes <= dim:
    # QR of a Gaussian matrix: orthonormal columns, so ‖μ_i − μ_j‖ = separation.
    q, r = np.linalg.qr(rng.standard_normal((dim, num_classes)))
    q = q * np.sign(np.diag(r))[None, :]
    means = radius * q.T
  else:
    # E‖μ_i − μ_j‖² = 2 d · separation²/(2d) = separation².
    means = rng.standard_normal((num_classes, dim)) * (radius / np.sqrt(dim))
  return GaussianMixture(means, pi, sigma)


def load_synthetic_splits(seed: int = 0, *, num_train: int = 4096,
                          num_test: int = 4096, mixture_seed: int | None = None,
                          **mixture_kwargs
                          ) -> tuple[ArraySplit, ArraySplit, GaussianMixture]:
  """Samples train and test splits from :func:`make_gaussian_mixture`.

  Args:
    seed: seeds the samples (and the mixture when ``mixture_seed`` is None).
    num_train, num_test: split sizes.
    mixture_seed: seeds the class means instead of ``seed``, so runs with
      different ``seed`` can share one distribution and differ only in the
      sample.
    **mixture_kwargs: ``num_classes``, ``dim``, ``separation``, ``sigma``,
      ``priors`` of :func:`make_gaussian_mixture`.

  Returns:
    (train, test, mixture); ``mixture.posterior`` is the exact p(y|x).
  """
  for name, value in (("num_train", num_train), ("num_test", num_test)):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f"{name} must be a positive integer, got "
                       f"{name}={value!r}")
  mixture = make_gaussian_mixture(
      seed=seed if mixture_seed is None else mixture_seed, **mixture_kwargs)
  train = mixture.sample(int(num_train), rng_for(seed, STREAM_SYNTHETIC_TRAIN))
  test = mixture.sample(int(num_test), rng_for(seed, STREAM_SYNTHETIC_TEST))
  return train, test, mixture
