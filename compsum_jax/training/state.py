"""TrainState: everything a train step reads and writes, as one pytree.

A single hypothesis has scalar ``step`` and one copy of every field. K
hypotheses trained together by the vmapped step ("members", e.g. 5 values of τ
× 3 seeds) have the SAME structure with a leading axis of size K on every leaf
(``step`` has shape [K], ``rng`` [K, 2], ``hparams['tau']`` [K], ...); use
:func:`stack_states` / :func:`unstack_states` or :func:`init_member_states`.

PRNG keys are stored as raw ``uint32[2]`` key data (``jax.random.PRNGKey``
layout) so checkpoints stay plain arrays; typed keys are converted on entry.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """State of one hypothesis (or K stacked ones) during training.

  Attributes:
    step: int32 number of updates applied so far (shape [] or [K]).
    params: model parameters (the 'params' collection).
    batch_stats: the model's 'batch_stats' collection, or ``{}`` for models
      without batch norm.
    opt_state: optimizer state of ``optimizer.init(params)``.
    ema_params: exponential moving average of ``params`` (same structure), or
      ``None`` when training without EMA.
    rng: uint32 [2] base key; the step's key is ``fold_in(rng, step)``, so the
      random stream is a function of (seed, step) and survives a resume.
    hparams: dict of per-member float32 scalars handed to the objective as
      ``batch['hparams']`` (e.g. ``{'tau': 1.0}``); shape [] or [K] per entry.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  ema_params: PyTree | None
  rng: jax.Array
  hparams: dict[str, jax.Array]


def key_data(rng: jax.Array | int) -> jax.Array:
  """Returns raw uint32 key data for an int seed, typed key or raw key."""
  if isinstance(rng, (int, np.integer)):
    return jax.random.key_data(jax.random.key(int(rng)))
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  if rng.dtype != jnp.uint32 or rng.shape[-1:] != (2,):
    raise ValueError(f"rng must be an int seed, a typed PRNG key or uint32 "
                     f"key data of shape [..., 2], got dtype {rng.dtype} "
                     f"shape {rng.shape}")
  return rng


def _as_hparams(hparams: Mapping[str, Any] | None) -> dict[str, jax.Array]:
  out = {}
  for name, value in (hparams or {}).items():
    arr = np.asarray(jax.device_get(value), dtype=np.float32)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"hparams[{name!r}] must be finite, got {value!r}")
    out[str(name)] = jnp.asarray(arr)
  return out


def create_train_state(params: PyTree, optimizer: optax.GradientTransformation,
                       *, rng: jax.Array | int,
                       batch_stats: PyTree | None = None,
                       hparams: Mapping[str, Any] | None = None,
                       ema: bool = False) -> TrainState:
  """Builds a TrainState at step 0 from initial parameters.

  Args:
    params: initial parameters (pytree of arrays).
    optimizer: the optax transformation the train step will use.
    rng: int seed, typed key or uint32[2] key data; base of the step keys.
    batch_stats: initial batch-norm statistics, or None / {} if none.
    hparams: per-member scalars for the objective, e.g. ``{'tau': 1.0}``.
    ema: keep an EMA copy of the parameters (initialised to ``params``); the
      train step then needs ``ema_decay > 0``.

  Returns:
    The state; every leaf is a jax.Array (no leading member axis).
  """
  params = jax.tree.map(jnp.asarray, params)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=jax.tree.map(jnp.asarray, batch_stats or {}),
      opt_state=jax.jit(optimizer.init)(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      rng=key_data(rng),
      hparams=_as_hparams(hparams))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_state(model: nn.Module, optimizer: optax.GradientTransformation,
                input_shape: tuple[int, ...], ema: bool, rng: jax.Array,
                hparams: dict[str, jax.Array]) -> TrainState:
  """The whole initial state as ONE compiled call per (model, optimizer,
  input_shape, ema) (Flax modules hash by their attributes), so K members
  cost one compilation, not K, and no eager op compiles on its own."""
  init_key, state_key = jax.random.split(jax.random.wrap_key_data(rng))
  variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32),
                         train=False)
  unknown = set(variables) - {"params", "batch_stats"}
  if unknown:
    raise ValueError(f"model has variable collections {sorted(unknown)} that "
                     "TrainState does not hold (only 'params', 'batch_stats')")
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=optimizer.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      rng=jax.random.key_data(state_key), hparams=hparams)


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                     *, rng: jax.Array | int, input_shape: Sequence[int],
                     hparams: Mapping[str, Any] | None = None,
                     ema: bool = False) -> TrainState:
  """Initialises ``model`` on a zero input of shape [1, *input_shape].

  ``rng`` is split in two: one key for ``model.init`` and one that becomes
  ``state.rng`` (the base of the per-step keys). The state equals
  ``create_train_state(variables['params'], optimizer, rng=state_key,
  batch_stats=variables.get('batch_stats'), hparams=hparams, ema=ema)``.
  """
  return _init_state(model, optimizer, tuple(int(d) for d in input_shape),
                     bool(ema), key_data(rng), _as_hparams(hparams))


def init_member_states(model: nn.Module,
                       optimizer: optax.GradientTransformation, *,
                       rngs: Sequence[int] | jax.Array,
                       input_shape: Sequence[int],
                       hparams: Mapping[str, Sequence[float]] | None = None,
                       ema: bool = False) -> TrainState:
  """K member states stacked on a leading axis, member k from ``rngs[k]``.

  Member k equals ``init_train_state(model, optimizer, rng=rngs[k],
  hparams={name: v[k]}, ...)`` exactly.

  Args:
    model: the Flax module.
    optimizer: optax transformation.
    rngs: K int seeds, or K keys ([K, 2] uint32 or typed keys [K]).
    input_shape: per-example input shape.
    hparams: per-member values, each a sequence of length K.
    ema: keep EMA parameters.

  Returns:
    TrainState whose leaves have a leading axis of size K.
  """
  num_members = len(rngs)
  if num_members == 0:
    raise ValueError("rngs must hold at least one member, got an empty "
                     "sequence")
  hparams = dict(hparams or {})
  for name, values in hparams.items():
    if np.shape(values) != (num_members,):
      raise ValueError(f"hparams[{name!r}] must have one value per member "
                       f"(shape ({num_members},)), got shape "
                       f"{np.shape(values)}")
  states = [
      init_train_state(model, optimizer, rng=rngs[k], input_shape=input_shape,
                       hparams={n: v[k] for n, v in hparams.items()}, ema=ema)
      for k in range(num_members)]
  return stack_states(states)


def stack_states(states: Sequence[TrainState]) -> TrainState:
  """Stacks K single states into one with a leading member axis of size K."""
  if not states:
    raise ValueError("stack_states needs at least one state, got none")
  return _stack_trees(*states)


@jax.jit
def _stack_trees(*trees: PyTree) -> PyTree:
  # One compiled call for all leaves (eager jnp.stack compiles per leaf).
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_states(state: TrainState) -> list[TrainState]:
  """Inverse of :func:`stack_states`: the K member states as a list."""
  num_members = int(np.shape(state.step)[0])
  return [jax.tree.map(lambda x, k=k: x[k], state)
          for k in range(num_members)]


def num_params(params: PyTree) -> int:
  """Total number of scalar parameters in a pytree."""
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))

