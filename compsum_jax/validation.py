"""Input checks shared by every room of compsum_jax.

Shape checks run at trace time, so they raise under ``jax.jit`` too. Value checks
(τ ≥ 0, labels in range, probabilities on the simplex) need concrete values: they
run whenever the argument is a concrete array or Python number and are skipped
for tracers (inside ``jit``/``vmap``/``grad``). To get the value checks inside
compiled code, wrap the call with :func:`with_runtime_checks`, which uses
``jax.experimental.checkify``::

    checked = with_runtime_checks(comp_sum_loss)
    err, value = jax.jit(checked)(logits, labels, tau)
    err.throw()  # raises ValueError-like JaxRuntimeError naming the bad value
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# Tolerance on |sum(p) - 1| for probability vectors (absolute, per vector).
PROBS_SUM_ATOL = 1e-4


def concrete_value(x: Any) -> np.ndarray | None:
  """Returns ``x`` as a NumPy array if it is concrete, else ``None`` (tracer)."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError):
    return None


def _describe(v: np.ndarray) -> str:
  v = np.asarray(v)
  if v.size == 1:
    return repr(v.reshape(()).item())
  return np.array2string(v.reshape(-1)[:6], precision=6) + (
      " ..." if v.size > 6 else "")


def check_nonnegative(value: Any, name: str, *, allow_zero: bool = True
                      ) -> None:
  """Raises ValueError if a concrete ``value`` has an entry < 0 (or ≤ 0) or NaN."""
  v = concrete_value(value)
  if v is None:
    return
  v = np.asarray(v, dtype=np.float64)
  bad = np.isnan(v) | ((v < 0) if allow_zero else (v <= 0))
  if np.any(bad):
    need = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be {need} and not NaN, got "
                     f"{name}={_describe(v[bad])}")


def check_tau(tau: Any) -> None:
  """τ must be ≥ 0 and not NaN (eq. 2.1 of the paper notes)."""
  check_nonnegative(tau, "tau")


def check_logits(logits: jax.Array, name: str = "logits") -> None:
  """logits: [..., n] with n ≥ 2 classes (shape check, works under jit)."""
  shape = jnp.shape(logits)
  if len(shape) < 1:
    raise ValueError(f"{name} must have shape [..., num_classes], got a "
                     f"scalar of shape {shape}")
  if shape[-1] < 2:
    raise ValueError(f"{name} must have at least 2 classes on its last axis, "
                     f"got shape {shape} (num_classes={shape[-1]})")


def check_labels(labels: jax.Array, logits_shape: tuple[int, ...]) -> None:
  """labels: integer [...] matching logits [..., n]; values in [0, n)."""
  lshape = tuple(jnp.shape(labels))
  if lshape != tuple(logits_shape[:-1]):
    raise ValueError(f"labels shape {lshape} does not match logits shape "
                     f"{tuple(logits_shape)}: expected labels of shape "
                     f"{tuple(logits_shape[:-1])}")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f"labels must be integers, got dtype "
                     f"{jnp.result_type(labels)}")
  v = concrete_value(labels)
  if v is None:
    return
  n = logits_shape[-1]
  bad = (v < 0) | (v >= n)
  if np.any(bad):
    raise ValueError(f"labels must lie in [0, {n}), got labels="
                     f"{_describe(v[bad])}")


def check_probs(probs: jax.Array, shape: tuple[int, ...] | None = None,
                name: str = "probs") -> None:
  """probs: [..., n] non-negative, each row summing to 1 within PROBS_SUM_ATOL."""
  pshape = tuple(jnp.shape(probs))
  if shape is not None and pshape != tuple(shape):
    raise ValueError(f"{name} shape {pshape} does not match logits shape "
                     f"{tuple(shape)}")
  if len(pshape) < 1 or pshape[-1] < 2:
    raise ValueError(f"{name} must have shape [..., num_classes] with at "
                     f"least 2 classes, got shape {pshape}")
  v = concrete_value(probs)
  if v is None:
    return
  v = np.asarray(v, dtype=np.float64)
  if np.any(np.isnan(v)) or np.any(v < 0):
    bad = v[np.isnan(v) | (v < 0)]
    raise ValueError(f"{name} must be non-negative and not NaN, got entries "
                     f"{_describe(bad)}")
  sums = v.sum(-1)
  off = np.abs(sums - 1.0) > PROBS_SUM_ATOL
  if np.any(off):
    raise ValueError(f"{name} must sum to 1 along the last axis (tolerance "
                     f"{PROBS_SUM_ATOL}), got sums {_describe(sums[off])}")


def compute_dtype(x: jax.Array) -> jnp.dtype:
  """float16/bfloat16 (and integers) compute in float32; float64 stays."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def with_runtime_checks(loss_fn: Callable[..., jax.Array]
                        ) -> Callable[..., tuple[checkify.Error, jax.Array]]:
  """Wraps ``loss_fn(logits, labels, tau, ...)`` with checkify value checks.

  The returned function returns ``(error, value)``; call ``error.throw()``.
  It checks τ ≥ 0, labels in [0, n) and NaN outputs, under ``jit`` as well.
  """

  def checked(logits, labels, tau, *args, **kwargs):
    n = jnp.shape(logits)[-1]
    tau_arr = jnp.asarray(tau)
    checkify.check(jnp.all(tau_arr >= 0), "tau must be >= 0, got tau={t}",
                   t=tau_arr)
    labels_arr = jnp.asarray(labels)
    checkify.check(jnp.all((labels_arr >= 0) & (labels_arr < n)),
                   "labels must lie in [0, {n}), got min {lo} max {hi}",
                   n=jnp.asarray(n), lo=jnp.min(labels_arr),
                   hi=jnp.max(labels_arr))
    return loss_fn(logits, labels, tau, *args, **kwargs)

  return checkify.checkify(functools.wraps(loss_fn)(checked),
                           errors=checkify.user_checks | checkify.nan_checks)
