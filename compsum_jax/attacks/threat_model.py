"""Threat models shared by every attack: input checks, balls, projections, keys.

Conventions (all attacks): inputs ``x`` have shape [B, ...] with pixel values in
[0, 1]; labels have shape [B]; an ℓ∞ ball is {x' : max_i |x'_i − x_i| ≤ ε} and an
ℓ2 ball {x' : ‖x' − x‖₂ ≤ ε}, the norm taken over all non-batch axes, always
intersected with the box [0, 1]^d.

Randomness is per example: a single PRNG key is split into one key per example,
and an array of B keys (shape [B] for typed keys, [B, 2] for raw uint32 keys) is
used as given. The cascade of :mod:`compsum_jax.attacks.evaluation` passes keys
derived from each example's index, so an example's attack does not depend on
which other examples share its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import validation

NORMS = ("linf", "l2")

# Guards the division in ℓ2 normalisation, as in the reference APGD (1e-12).
_NORM_FLOOR = 1e-12


def check_norm(norm: str) -> str:
  """Returns ``norm`` if it is 'linf' or 'l2', else raises ValueError."""
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got norm={norm!r}")
  return norm


def check_eps(eps: Any, name: str = "eps") -> None:
  """ε must be ≥ 0 and finite (checked when concrete)."""
  v = validation.concrete_value(eps)
  if v is None:
    return
  v = np.asarray(v, dtype=np.float64)
  if np.any(~np.isfinite(v)) or np.any(v < 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {name}="
                     f"{v.reshape(-1)[:6].tolist() if v.size > 1 else v.item()}")


def check_positive_int(value: Any, name: str, *, allow_zero: bool = False
                       ) -> int:
  """Returns ``value`` as int if it is an integer ≥ 1 (or ≥ 0)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {name}={value!r}")
  lo = 0 if allow_zero else 1
  if value < lo:
    raise ValueError(f"{name} must be >= {lo}, got {name}={value!r}")
  return int(value)


def check_fraction(value: Any, name: str, *, low_open: bool = True,
                   high: float = 1.0) -> float:
  """Returns ``value`` as float if it is a number in (0, high] (or [0, high])."""
  ok = isinstance(value, (int, float, np.floating)) and not isinstance(
      value, bool)
  if ok:
    v = float(value)
    ok = (v > 0.0 if low_open else v >= 0.0) and v <= high
  if not ok:
    bracket = "(" if low_open else "["
    raise ValueError(f"{name} must be a number in {bracket}0, {high:g}], got "
                     f"{name}={value!r}")
  return float(value)


def check_inputs(x: jax.Array, labels: jax.Array) -> None:
  """x: [B, ...] floats in [0, 1]; labels: integer [B] (values checked later).

  Shape checks always run; the [0, 1] range check runs when ``x`` is concrete.
  """
  xshape = tuple(jnp.shape(x))
  if len(xshape) < 2:
    raise ValueError(f"x must have shape [batch, ...] with at least one "
                     f"feature axis, got shape {xshape}")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"x must be a floating array of pixels in [0, 1], got "
                     f"dtype {jnp.result_type(x)}")
  lshape = tuple(jnp.shape(labels))
  if lshape != xshape[:1]:
    raise ValueError(f"labels must have shape {xshape[:1]} (one per example "
                     f"of x, shape {xshape}), got labels shape {lshape}")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f"labels must be integers, got dtype "
                     f"{jnp.result_type(labels)}")
  v = validation.concrete_value(x)
  if v is None:
    return
  if np.any(np.isnan(v)):
    raise ValueError("x must not contain NaN")
  lo, hi = float(np.min(v)), float(np.max(v))
  if lo < 0.0 or hi > 1.0:
    raise ValueError(f"x must lie in [0, 1] (pixel space; normalise inside "
                     f"the model), got values in [{lo!r}, {hi!r}]")


def check_logits_fn_output(logits: jax.Array, labels: jax.Array) -> None:
  """logits_fn(x) must return [B, n] with n ≥ 2; labels must lie in [0, n)."""
  shape = tuple(jnp.shape(logits))
  if len(shape) != 2:
    raise ValueError(f"logits_fn(x) must return logits of shape "
                     f"[batch, num_classes], got shape {shape}")
  validation.check_logits(logits)
  validation.check_labels(labels, shape)


def check_attack_args(logits_fn: Any, x: jax.Array, labels: jax.Array,
                      eps: float | jax.Array, norm: str,
                      norms: tuple[str, ...] = NORMS) -> int:
  """The checks every attack runs first; returns the number of classes n.

  Checks the norm (one of ``norms``), ε ≥ 0, x in [0, 1] with one label per
  example, and that ``logits_fn(x)`` has shape [B, n] with labels in [0, n)
  (by ``jax.eval_shape``: nothing is computed).
  """
  if norm not in norms:
    raise ValueError(f"norm must be one of {norms} for this attack, got "
                     f"norm={norm!r}")
  check_eps(eps)
  check_inputs(x, labels)
  out = jax.eval_shape(logits_fn, x)
  check_logits_fn_output(jax.ShapeDtypeStruct(out.shape, out.dtype), labels)
  # Label values (when concrete) against the number of classes.
  validation.check_labels(labels, out.shape)
  return out.shape[-1]


def per_example_norm(v: jax.Array, norm: str) -> jax.Array:
  """‖v_b‖ over the non-batch axes; v: [B, ...] -> [B]."""
  flat = v.reshape(v.shape[0], -1)
  if norm == "linf":
    return jnp.max(jnp.abs(flat), axis=-1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=-1))


def _expand(per_example: jax.Array, like: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ..., 1] broadcastable against ``like`` ([B, ...])."""
  return per_example.reshape((-1,) + (1,) * (like.ndim - 1))


def normalize(v: jax.Array, norm: str) -> jax.Array:
  """v / (‖v‖ + 1e-12) per example, the reference APGD's normalisation."""
  return v / _expand(per_example_norm(v, norm) + _NORM_FLOOR, v)


def steepest_ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """argmax_{‖u‖≤1} ⟨grad, u⟩: sign(g) for ℓ∞, g/‖g‖₂ for ℓ2."""
  if norm == "linf":
    return jnp.sign(grad)  # u = sign(∇)
  return normalize(grad, "l2")  # u = ∇/‖∇‖₂


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array | float,
            norm: str) -> jax.Array:
  """Projection onto {x' : ‖x' − x‖ ≤ ε} ∩ [0, 1]^d, per example.

  For ℓ∞ the two sets are boxes and clipping onto each in turn is the exact
  projection onto their intersection. For ℓ2 the ball projection
  x + (x' − x)·min(1, ε/‖x' − x‖) is followed by clipping to [0, 1]; since x
  lies in the box, clipping only moves each coordinate towards x, so the result
  stays in the ball (not the exact Euclidean projection onto the intersection,
  the same two-step map as the reference APGD).

  Args:
    x_adv: candidate points, [B, ...].
    x: centres of the balls (clean inputs), [B, ...].
    eps: radius ε ≥ 0, a scalar or [B] array.
    norm: 'linf' or 'l2'.

  Returns:
    Projected points, [B, ...].
  """
  eps = jnp.asarray(eps, x.dtype)
  eps_b = _expand(jnp.broadcast_to(eps, x.shape[:1]), x)
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps_b, eps_b)  # |δ_i| ≤ ε
  else:
    length = _expand(per_example_norm(delta, "l2"), x)
    # δ ← δ·min(1, ε/‖δ‖₂), safe at δ = 0.
    scale = jnp.minimum(1.0, eps_b / jnp.maximum(length, _NORM_FLOOR))
    delta = delta * scale
  return jnp.clip(x + delta, 0.0, 1.0)


def is_single_key(key: jax.Array) -> bool:
  """True for one PRNG key (typed shape (), or raw uint32 shape (2,))."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key.ndim == 0
  return key.ndim == 1


def example_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """One key per example: splits a single key, or checks a batch of B keys."""
  if is_single_key(key):
    return jax.random.split(key, batch_size)
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if key.shape[0] != batch_size:
    raise ValueError(f"key must be one PRNG key or one key per example "
                     f"({batch_size}), got a key array of shape {key.shape}")
  return key


def fold_in_each(keys: jax.Array, data: int | jax.Array) -> jax.Array:
  """fold_in(k_b, data_b) for every per-example key k_b: ``data`` is one
  integer for all examples or one per example ([B])."""
  if jnp.ndim(data) == 1:
    return jax.vmap(jax.random.fold_in)(keys, data)
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def random_start(keys: jax.Array, x: jax.Array, eps: jax.Array | float,
                 norm: str, kind: str) -> jax.Array:
  """Random starting point in the ball ∩ [0, 1], one draw per example key.

  Kinds:
    'uniform': ℓ∞: x + U[−ε, ε]^d (Madry et al. 2018); ℓ2: x + ε·r·u with u
      uniform on the unit sphere and r = U^{1/d}, i.e. uniform in the ℓ2 ball.
    'gaussian': x + 0.001·N(0, I), the small start of TRADES (Zhang et al.
      2019), projected onto the ball.
    'boundary': the reference APGD start, x + ε·t/‖t‖ with t ~ U[−1, 1]^d for
      ℓ∞ and t ~ N(0, I) for ℓ2 (on the sphere of radius ε).

  Args:
    keys: one PRNG key per example, [B].
    x: clean inputs, [B, ...].
    eps: radius ε (scalar or [B]).
    norm: 'linf' or 'l2'.
    kind: 'uniform', 'gaussian' or 'boundary'.

  Returns:
    Starting points in the ball ∩ [0, 1], [B, ...].
  """
  shape, dtype = x.shape[1:], x.dtype
  eps = jnp.asarray(eps, dtype)
  eps_b = _expand(jnp.broadcast_to(eps, x.shape[:1]), x)
  if kind == "gaussian":
    noise = jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)
    return project(x + 0.001 * noise, x, eps, norm)  # x + 0.001·N(0, I)
  if kind == "uniform" and norm == "linf":
    u = jax.vmap(lambda k: jax.random.uniform(k, shape, dtype, -1.0, 1.0))(keys)
    return project(x + eps_b * u, x, eps, norm)  # x + U[−ε, ε]^d
  if kind == "uniform":
    d = int(np.prod(shape))

    def ball_sample(k):
      k_dir, k_rad = jax.random.split(k)
      g = jax.random.normal(k_dir, shape, dtype)
      r = jax.random.uniform(k_rad, (), dtype) ** (1.0 / d)  # radius U^{1/d}
      return g / (jnp.sqrt(jnp.sum(g * g)) + _NORM_FLOOR) * r

    return project(x + eps_b * jax.vmap(ball_sample)(keys), x, eps, norm)
  if kind == "boundary":
    if norm == "linf":
      t = jax.vmap(
          lambda k: jax.random.uniform(k, shape, dtype, -1.0, 1.0))(keys)
    else:
      t = jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)
    return project(x + eps_b * normalize(t, norm), x, eps, norm)
  raise ValueError(f"random start must be one of 'uniform', 'gaussian', "
                   f"'boundary', got {kind!r}")


def check_only_run(only_run: int | jax.Array | None, num_runs: int,
                   batch: int) -> None:
  """Raises unless ``only_run`` is None, one run index in [0, num_runs) or
  one index per example ([batch] integers, in range where concrete)."""
  if only_run is None:
    return
  shape = tuple(np.shape(only_run))
  if shape not in ((), (batch,)) or not jnp.issubdtype(
      jnp.result_type(only_run), jnp.integer):
    raise ValueError(f"only_run must be an integer or one integer per "
                     f"example (shape ({batch},)), got shape {shape} of "
                     f"dtype {jnp.result_type(only_run)}")
  try:
    values = np.asarray(only_run)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return  # traced: its values are the caller's to keep in range
  if values.size and (values.min() < 0 or values.max() >= num_runs):
    raise ValueError(f"only_run must lie in [0, {num_runs}), got "
                     f"only_run={only_run!r}")


def runs_merged(run: Callable[[int | jax.Array], Any], empty: Any,
                merge: Callable[[Any, Any], Any],
                only_run: int | jax.Array | None, num_runs: int) -> Any:
  """All runs merged in order, the one run ``only_run``, or, for an array
  ``only_run`` [B], run ``only_run[b]`` for example b (one pass: every
  run's randomness and target are per example)."""
  if only_run is None:
    return jax.lax.fori_loop(0, num_runs, lambda r, acc: merge(acc, run(r)),
                             empty)
  if jnp.ndim(only_run) == 1:
    return merge(empty, run(jnp.asarray(only_run, jnp.int32)))
  return jax.lax.fori_loop(only_run, only_run + 1,
                           lambda r, acc: merge(acc, run(r)), empty)


def target_of(order: jax.Array, rank: int | jax.Array) -> jax.Array:
  """order[b, rank_b + 1] per example: the class with the (rank + 2)-th
  largest clean logit (``order``: classes by decreasing clean logit, [B, n];
  ``rank``: one integer or one per example)."""
  rank = jnp.broadcast_to(jnp.asarray(rank, jnp.int32), order.shape[:1])
  return jnp.take_along_axis(order, rank[:, None] + 1, axis=-1)[:, 0]
