"""THE train step (one builder for every experiment) and the evaluation step.

Every experiment plugs in an *objective*

    objective(params, batch_stats, batch, rng) -> (loss, aux),
    aux = {'batch_stats': new_stats or None, 'metrics': {name: scalar}},

and gets a compiled step ``state, metrics = train_step(state, batch)``. The
step inserts ``state.hparams`` into the batch as ``batch['hparams']``, so one
objective serves K vmapped members with different τ.

Data parallelism. With ``mesh`` (a 1-axis mesh named 'data', see
:func:`make_data_mesh`) the step is ``jax.jit`` with ``NamedSharding``: every
leaf of the batch is split on its leading axis over the devices, the state is
replicated, and the state argument is donated. The program is written for the
*global* batch and XLA inserts the all-reduces, so the result equals the
single-device step on the same global batch up to float summation order: the
mean loss and its gradient are over the global batch, and **batch-norm
statistics are computed over the global batch** (synchronised batch norm),
not per device. Random numbers are independent of the sharding
(``jax_threefry_partitionable``, default on). The mesh uses
``AxisType.Auto`` (sharding propagation by the compiler) rather than the
``Explicit`` default of ``jax.make_mesh``: objectives are ordinary
single-device code (reshapes, gathers, attacks) and must not have to carry
sharding annotations. Several processes: call
``compsum_jax.training.distributed.initialize`` first; ``jax.devices()`` then
spans all processes, every process builds the same global batch order but
materialises only the rows of its own devices (:func:`process_batch_rows`),
and :func:`shard_batch` with ``global_batch_size`` assembles the global batch
from the processes' rows. On a mesh of several *CPU* devices
(``--xla_force_host_platform_device_count``) each step waits for its result
before returning: XLA:CPU's in-process all-reduce deadlocked under
back-to-back asynchronous dispatch (see ``_wait_on_host_cpu_mesh``).

Member parallelism. With stacked members a mesh may also have a 'members'
axis (:func:`make_member_mesh`, axes ('members', 'data')): every state leaf
is split on its leading (member) axis over 'members' (:func:`place_state`)
and the batch is replicated along it, so each group of devices trains its
own K / member_shards members and no collective crosses 'members' (members
are independent); within a group the batch is split over 'data' as above.
K must be a multiple of the 'members' size. Results equal the unsharded
vmapped step up to float summation order. On CPU, member groups on
host-platform CPU devices train faster than the one-device vmapped step
(measured speed-ups: benchmarks/results/train_step.md, "member groups"). On
several accelerators the same mesh spreads K models over the cards with no
all-reduce between member groups
(checked on fake CPU devices by counting collectives in the compiled step;
not measured on GPUs here).

Vmapped members. With ``num_members=K`` every state leaf has a leading axis of
size K; the single-member step is ``jax.vmap``-ed over it (same batch for all
members, per-member params, optimizer state, rng and hparams) in one compiled
call. Member k's result equals the single step run on member k alone.
Performance: a convolution vmapped over per-member kernels becomes, by JAX's
default rule, a grouped convolution that XLA:CPU runs slower than K separate
ones; models built on ``compsum_jax.models.member_conv`` (the ``CNN``) run it
as batched matmuls instead, which makes K vmapped members faster than K
sequential steps (measured figures for the digits CNN and MLP:
benchmarks/results/train_step.md, "K = 15 members"). The ResNets use the lax
convolution (their target is a GPU). A ``jax.lax.map`` over members inside the
step was slower still on CPU and is not offered.

Randomness. The step key is ``fold_in(state.rng, state.step)``, split into a
key for the augmentation hook and one for the objective; nothing depends on
how many steps ran in this process, so a resumed run continues the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from compsum_jax.training.distributed import fetch
from compsum_jax.training.state import TrainState, key_data

PyTree = Any
Batch = Mapping[str, Any]
Objective = Callable[[PyTree, PyTree, Batch, jax.Array],
                     tuple[jax.Array, dict[str, Any]]]
AugmentFn = Callable[[jax.Array, Batch], Batch]
EvalFn = Callable[[PyTree, PyTree, Batch, jax.Array], dict[str, jax.Array]]

DATA_AXIS = "data"
MEMBER_AXIS = "members"
_MESH_AXES = ((DATA_AXIS,), (MEMBER_AXIS,), (MEMBER_AXIS, DATA_AXIS))


def make_data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """1-D mesh ('data',) over the first ``num_devices`` devices (default all).

  Uses ``jax.sharding.AxisType.Auto`` (see module doc for why not Explicit).
  """
  available = len(jax.devices())
  n = available if num_devices is None else int(num_devices)
  if not 1 <= n <= available:
    raise ValueError(f"num_devices must be in [1, {available}] (devices "
                     f"available), got num_devices={num_devices!r}")
  return jax.make_mesh((n,), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def make_member_mesh(member_shards: int,
                     data_shards: int | None = None) -> jax.sharding.Mesh:
  """2-D mesh ('members', 'data') of shape (member_shards, data_shards).

  For K stacked members (``num_members=K``, K a multiple of
  ``member_shards``): each group of devices along 'members' trains K /
  member_shards of the members, and within a group the batch is split over
  'data'. ``data_shards`` defaults to (number of devices) / member_shards.
  Uses the first member_shards·data_shards devices.
  """
  available = len(jax.devices())
  if (isinstance(member_shards, bool) or int(member_shards) != member_shards
      or not 1 <= member_shards <= available):
    raise ValueError(f"member_shards must be an integer in [1, {available}] "
                     f"(devices available), got member_shards="
                     f"{member_shards!r}")
  member_shards = int(member_shards)
  if data_shards is None:
    data_shards = available // member_shards
  if (isinstance(data_shards, bool) or int(data_shards) != data_shards or
      data_shards < 1 or member_shards * data_shards > available):
    raise ValueError(f"data_shards must be an integer >= 1 with member_shards"
                     f"·data_shards <= {available} devices, got member_shards"
                     f"={member_shards}, data_shards={data_shards!r}")
  data_shards = int(data_shards)
  return jax.make_mesh((member_shards, data_shards), (MEMBER_AXIS, DATA_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=jax.devices()[:member_shards * data_shards])


def _check_mesh(mesh: jax.sharding.Mesh) -> None:
  if tuple(mesh.axis_names) not in _MESH_AXES:
    raise ValueError(f"mesh axis names must be one of {list(_MESH_AXES)}, "
                     f"got {tuple(mesh.axis_names)}")


def mesh_axis_size(mesh: jax.sharding.Mesh | None, axis: str) -> int:
  """Size of ``axis`` in ``mesh`` (1 when the mesh is None or lacks it)."""
  if mesh is None or axis not in mesh.axis_names:
    return 1
  return int(mesh.shape[axis])


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that puts a full copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over 'data' (replicated otherwise)."""
  return NamedSharding(mesh, P(DATA_AXIS) if DATA_AXIS in mesh.axis_names
                       else P())


def state_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of train states and per-member outputs on ``mesh``.

  Replicated, or with a 'members' axis split on the leading (member) axis.
  """
  return NamedSharding(mesh, P(MEMBER_AXIS) if MEMBER_AXIS in mesh.axis_names
                       else P())


def replicate(tree: PyTree, mesh: jax.sharding.Mesh | None) -> PyTree:
  """Places ``tree`` (e.g. a TrainState) replicated on every mesh device."""
  if mesh is None:
    return jax.device_put(tree)
  return _put_global(tree, replicated_sharding(mesh))


def _put_global(tree: PyTree, sharding: NamedSharding) -> PyTree:
  """``device_put`` that also works for a mesh spanning several processes.

  Several processes: every process holds the same host value of ``tree``
  (same seeds) and supplies the pieces for its own devices.
  """
  if jax.process_count() == 1 or sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already global: reshard
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])

  return jax.tree.map(one, tree)


def _leading_sizes(tree: PyTree) -> set[int | None]:
  """Sizes of the leaves' leading axes (None for scalars)."""
  return {np.shape(x)[0] if np.ndim(x) else None
          for x in jax.tree.leaves(tree)}


def place_state(state: PyTree, mesh: jax.sharding.Mesh | None) -> PyTree:
  """Places a train state as the steps built with ``mesh`` expect it.

  Replicated on a ('data',) mesh; on a mesh with a 'members' axis every leaf
  (leading axis K, stacked members) is split over 'members'.
  """
  if mesh is None:
    return jax.device_put(state)
  _check_mesh(mesh)
  shards = mesh_axis_size(mesh, MEMBER_AXIS)
  if shards > 1:
    lead = _leading_sizes(state)
    if len(lead) != 1 or None in lead or next(iter(lead)) % shards:
      raise ValueError(f"a mesh with {shards} 'members' shards needs stacked "
                       "member states whose leading size is a multiple of "
                       f"{shards}; got leading sizes {sorted(lead, key=str)}")
  return _put_global(state, state_sharding(mesh))


def process_batch_rows(mesh: jax.sharding.Mesh | None,
                       global_batch_size: int) -> np.ndarray:
  """Rows of a global batch of B rows that this process's devices hold.

  The train and eval steps split a batch's leading axis over the mesh's
  'data' axis (device j of 'data' holds rows [j·B/n, (j+1)·B/n)) and
  replicate it along 'members'. A process materialises only the union of
  its devices' rows: all B rows in a single-process run or when the process
  holds a whole 'data' row of the mesh (e.g. member groups, one process per
  group), B / num_processes rows with one device per process on a ('data',)
  mesh.

  Returns:
    Sorted int64 row indices into the global batch.
  """
  b = global_batch_size
  if isinstance(b, bool) or int(b) != b or b < 1:
    raise ValueError(f"global_batch_size must be a positive integer, got "
                     f"global_batch_size={global_batch_size!r}")
  b = int(b)
  if mesh is None:
    return np.arange(b)
  _check_mesh(mesh)
  n = mesh_axis_size(mesh, DATA_AXIS)
  if b % n:
    raise ValueError(f"global_batch_size={b} must be divisible by the {n} "
                     f"devices of the mesh's '{DATA_AXIS}' axis")
  rows = set()
  index_map = batch_sharding(mesh).addressable_devices_indices_map((b,))
  for index in index_map.values():
    rows.update(range(b)[index[0]])
  return np.array(sorted(rows), np.int64)


def shard_batch(batch: Batch, mesh: jax.sharding.Mesh | None, *,
                global_batch_size: int | None = None) -> dict:
  """Moves a host batch (dict of arrays [B, ...]) onto the devices.

  With a mesh, B must be divisible by the size of its 'data' axis; each
  device gets B / n consecutive rows (the whole batch, replicated, along a
  'members' axis).

  Several processes: either every process passes the same global batch
  (``global_batch_size`` None; each contributes its devices' rows), or,
  with ``global_batch_size=B``, each process passes only its own rows
  ``process_batch_rows(mesh, B)`` of the global batch, in that order (what
  ``compsum_jax.data``'s batch helpers yield with ``rows=``), and the global
  [B, ...] array is assembled from the processes' pieces. Single-process,
  both forms give the same array.
  """
  batch = dict(batch)
  if mesh is None:
    if global_batch_size is not None:
      _check_local_rows(batch, np.arange(int(global_batch_size)))
    return jax.device_put(batch)
  _check_mesh(mesh)
  n = mesh_axis_size(mesh, DATA_AXIS)
  sharding = batch_sharding(mesh)
  if global_batch_size is not None:
    rows = process_batch_rows(mesh, global_batch_size)
    _check_local_rows(batch, rows)
    return {name: _assemble(np.asarray(x), rows, int(global_batch_size),
                            sharding) for name, x in batch.items()}
  for name, x in batch.items():
    b = np.shape(x)[0] if np.ndim(x) else None
    if b is None or b % n:
      raise ValueError(f"batch[{name!r}] has leading size {b}, which must be "
                       f"divisible by the {n} devices of the mesh's "
                       f"'{DATA_AXIS}' axis")
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  out = {}
  for name, x in batch.items():
    x = np.asarray(x)
    out[name] = jax.make_array_from_callback(
        x.shape, sharding, lambda index, x=x: x[index])
  return out


def _check_local_rows(batch: Mapping[str, Any], rows: np.ndarray) -> None:
  for name, x in batch.items():
    b = np.shape(x)[0] if np.ndim(x) else None
    if b != len(rows):
      raise ValueError(f"batch[{name!r}] has leading size {b}, but this "
                       f"process holds {len(rows)} rows of the global batch "
                       "(process_batch_rows); pass those rows only")


def _assemble(local: np.ndarray, rows: np.ndarray, global_batch_size: int,
              sharding: NamedSharding) -> jax.Array:
  """Global [B, ...] array from this process's rows ``local`` = x[rows]."""
  shape = (global_batch_size,) + local.shape[1:]
  pieces = []
  for device, index in sharding.addressable_devices_indices_map(
      shape).items():
    wanted = np.arange(global_batch_size)[index[0]]
    # position of global row r in the local array: searchsorted(rows, r)
    pieces.append(jax.device_put(local[np.searchsorted(rows, wanted)],
                                 device))
  return jax.make_array_from_single_device_arrays(shape, sharding, pieces)


def _check_members_on_mesh(mesh: jax.sharding.Mesh,
                           num_members: int | None) -> None:
  shards = mesh_axis_size(mesh, MEMBER_AXIS)
  if MEMBER_AXIS in mesh.axis_names and num_members is None:
    raise ValueError(f"a mesh with a '{MEMBER_AXIS}' axis needs stacked "
                     "members: pass num_members=K")
  if num_members is not None and num_members % shards:
    raise ValueError(f"num_members={num_members} must be a multiple of the "
                     f"mesh's '{MEMBER_AXIS}' axis size {shards}")


def _wait_on_host_cpu_mesh(compiled: Callable[..., Any],
                           mesh: jax.sharding.Mesh) -> Callable[..., Any]:
  """Blocks each call until done when ``mesh`` has several CPU devices.

  XLA:CPU's in-process all-reduce deadlocked when many small data-parallel
  steps over host-platform CPU devices were dispatched back to back
  (``--xla_force_host_platform_device_count=4``: runs of thousands of async
  MLP steps aborted with "Termination timeout for all reduce …"; waiting on
  each result avoided it, see benchmarks/results/train_step.md, "Caveat").
  On CPU the host would wait for the cores anyway, so waiting costs little.
  GPU/TPU meshes keep asynchronous dispatch. ``.lower`` etc. stay reachable.
  """
  devices = list(mesh.devices.flat)
  if (mesh_axis_size(mesh, DATA_AXIS) < 2 or
      any(d.platform != "cpu" for d in devices)):
    # Without a 'data' axis of size > 1 the steps have no collectives: each
    # device runs its own members (see make_train_step).
    return compiled

  def wait(*args, **kwargs):
    return jax.block_until_ready(compiled(*args, **kwargs))

  wait.lower = compiled.lower  # type: ignore[attr-defined]
  wait.trace = compiled.trace  # type: ignore[attr-defined]
  wait.__wrapped__ = compiled  # type: ignore[attr-defined]
  return wait


def _tree_all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _check_aux(aux: Any) -> None:
  if not isinstance(aux, Mapping) or "metrics" not in aux:
    raise ValueError("objective must return (loss, aux) with aux a dict "
                     "{'batch_stats': new_stats_or_None, 'metrics': dict}, got "
                     f"aux={type(aux).__name__}"
                     f"{sorted(aux) if isinstance(aux, Mapping) else ''}")


def make_train_step(objective: Objective,
                    optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.0,
                    mesh: jax.sharding.Mesh | None = None,
                    num_members: int | None = None,
                    augment_fn: AugmentFn | None = None,
                    donate: bool = True,
                    jit: bool = True
                    ) -> Callable[[TrainState, Batch],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """Builds the compiled train step ``(state, batch) -> (state, metrics)``.

  One update:  (L, aux), g = ∇_params objective(params, batch_stats,
  batch ∪ {'hparams'}, k_obj);  u, opt ← optimizer.update(g, opt, params);
  params ← params + u;  ema ← d·ema + (1 − d)·params  (if ema_decay d > 0).

  Args:
    objective: ``objective(params, batch_stats, batch, rng) -> (loss, aux)``
      with scalar ``loss`` (the mean over the global batch) and ``aux =
      {'batch_stats': new_stats or None, 'metrics': {name: scalar}}``.
      ``batch['hparams']`` holds the member's ``state.hparams``.
    optimizer: an optax transformation, e.g. from :func:`make_optimizer`.
    ema_decay: d ∈ [0, 1); 0 keeps ``state.ema_params`` untouched (may be
      None). With d > 0 the state needs ``ema_params`` (``ema=True`` at init).
    mesh: a ('data',) mesh for data parallelism, or with stacked members a
      ('members',) / ('members', 'data') mesh (:func:`make_member_mesh`) that
      also splits the members over devices (module doc); None: default
      device, no sharding constraints. Place the state with
      :func:`place_state` and batches with :func:`shard_batch`.
    num_members: K to train K stacked members (leading axis K on every state
      leaf) with one vmapped call; None for a single member.
    augment_fn: optional on-device hook ``augment_fn(key, batch) -> batch``
      applied inside the compiled step before the objective (e.g. random
      crop + flip via ``compsum_jax.data.augment_images``); each member gets
      its own key.
    donate: donate the input state's buffers to the output (the caller must
      not use the old state afterwards).
    jit: compile (default). ``jit=False`` returns the plain function (for
      composing into a larger jitted program or debugging).

  Returns:
    ``train_step(state, batch) -> (new_state, metrics)``. ``metrics`` holds
    the objective's metrics plus 'loss', 'grad_norm' (global ℓ2 norm of the
    gradient) and 'finite' (1.0 if loss and gradients are finite); with K
    members each metric has shape [K].
  """
  ema_decay = float(ema_decay)
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"ema_decay must lie in [0, 1), got ema_decay="
                     f"{ema_decay!r}")
  if num_members is not None and (int(num_members) != num_members or
                                  num_members < 1):
    raise ValueError(f"num_members must be None or an integer >= 1, got "
                     f"num_members={num_members!r}")
  if mesh is not None:
    _check_mesh(mesh)
    _check_members_on_mesh(mesh, num_members)

  def single_step(state: TrainState, batch: Batch):
    if ema_decay > 0 and state.ema_params is None:
      raise ValueError("ema_decay > 0 needs a state with ema_params; build it "
                       "with ema=True")
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                  state.step)
    augment_key, objective_key = jax.random.split(step_key)
    batch = dict(batch)
    if augment_fn is not None:
      batch = dict(augment_fn(augment_key, batch))
    batch["hparams"] = state.hparams
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, state.batch_stats, batch,
                                 objective_key)
    _check_aux(aux)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    new_stats = aux.get("batch_stats")
    batch_stats = state.batch_stats if new_stats is None else new_stats
    ema_params = state.ema_params
    if ema_decay > 0:
      # ema ← d·ema + (1 − d)·params
      ema_params = jax.tree.map(
          lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
          state.ema_params, params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {name: jnp.asarray(value, jnp.float32)
               for name, value in dict(aux["metrics"]).items()}
    metrics.update(loss=jnp.asarray(loss, jnp.float32), grad_norm=grad_norm,
                   finite=finite.astype(jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema_params)
    return new_state, metrics

  step_fn = single_step
  if num_members is not None:
    step_fn = jax.vmap(single_step, in_axes=(0, None))

  def checked_step(state: TrainState, batch: Batch):
    if num_members is not None:
      lead = _leading_sizes(state)
      if lead != {num_members}:
        raise ValueError(f"num_members={num_members} but the state leaves "
                         f"have leading sizes {sorted(lead, key=str)}; stack "
                         "member states with stack_states/init_member_states")
    return step_fn(state, batch)

  if not jit:
    return checked_step
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(checked_step, donate_argnums=donate_argnums)
  states = state_sharding(mesh)
  return _wait_on_host_cpu_mesh(
      jax.jit(checked_step, in_shardings=(states, batch_sharding(mesh)),
              out_shardings=(states, states),
              donate_argnums=donate_argnums), mesh)


def make_eval_step(eval_fn: EvalFn, *, mesh: jax.sharding.Mesh | None = None,
                   num_members: int | None = None, use_ema: bool = False
                   ) -> Callable[[TrainState, Batch, jax.Array],
                                 dict[str, jax.Array]]:
  """Builds ``eval_step(state, batch, rng) -> masked per-batch sums``.

  ``eval_fn(params, batch_stats, batch, rng) -> {name: values [B]}`` gives
  per-example values (e.g. 'correct' as bool/int, 'loss' as float);
  ``batch['hparams']`` holds the member's hparams and ``batch['mask']``
  (float [B], 1 real / 0 padding) marks the padded tail of the last batch.
  The step returns Σ_i mask_i·v_i for every name (int32 for bool/integer
  values, so counts are exact; float32 otherwise) and 'count' = Σ_i mask_i
  (int32). With K members each sum has shape [K].

  Args:
    eval_fn: per-example evaluation function (see above).
    mesh: the train step's mesh: batch split over 'data', state replicated
      or split over 'members' (not donated); per-member sums come back split
      over 'members' like the state.
    num_members: K for stacked member states, or None.
    use_ema: evaluate ``state.ema_params`` instead of ``state.params``.

  Returns:
    The compiled eval step.
  """
  if mesh is not None:
    _check_mesh(mesh)
    _check_members_on_mesh(mesh, num_members)

  def single_eval(state: TrainState, batch: Batch, rng: jax.Array):
    params = state.ema_params if use_ema else state.params
    if params is None:
      raise ValueError("use_ema=True needs a state with ema_params")
    batch = dict(batch)
    if "mask" not in batch:
      raise ValueError("eval batches need a 'mask' entry (float [B], 1 for "
                       "real examples, 0 for padding); use eval_batches")
    mask = batch["mask"]
    batch["hparams"] = state.hparams
    values = eval_fn(params, state.batch_stats, batch, rng)
    sums = {}
    for name, v in values.items():
      if jnp.shape(v) != jnp.shape(mask):
        raise ValueError(f"eval_fn value {name!r} must be per-example with "
                         f"shape {jnp.shape(mask)}, got {jnp.shape(v)}")
      if jnp.issubdtype(v.dtype, jnp.integer) or v.dtype == jnp.bool_:
        # exact integer count Σ_i 1{mask_i > 0}·v_i
        sums[name] = jnp.sum(jnp.where(mask > 0, v.astype(jnp.int32), 0))
      else:
        # Σ_i mask_i·v_i (padding rows are zeroed even if v_i is inf/NaN)
        sums[name] = jnp.sum(jnp.where(mask > 0, mask * v, 0.0),
                             dtype=jnp.float32)
    sums["count"] = jnp.sum((mask > 0).astype(jnp.int32))
    return sums

  fn = single_eval
  if num_members is not None:
    fn = jax.vmap(single_eval, in_axes=(0, None, None))
  if mesh is None:
    return jax.jit(fn)
  states = state_sharding(mesh)
  return _wait_on_host_cpu_mesh(
      jax.jit(fn, in_shardings=(states, batch_sharding(mesh),
                                replicated_sharding(mesh)),
              out_shardings=states), mesh)


def evaluate(eval_step: Callable[..., dict[str, jax.Array]],
             state: TrainState, batches: Iterable[Batch], *,
             mesh: jax.sharding.Mesh | None = None,
             rng: jax.Array | int = 0,
             global_batch_size: int | None = None) -> dict[str, Any]:
  """Runs ``eval_step`` over all ``batches`` and returns exact averages.

  Per-batch sums are accumulated on the host in int64 / float64. Batch i uses
  the key ``fold_in(rng, i)``. With several processes, pass each process's
  rows of every global batch and ``global_batch_size`` (see
  :func:`shard_batch`): the compiled step sums over the global batch, so
  every process gets the same exact totals (counts, not means of means).

  Returns:
    ``{'count': N, name: Σ v / N, name + '_sum': Σ v}`` for every value
    ``name`` of the eval function, and 'accuracy' = correct / N when there is
    a 'correct' value; NumPy scalars, or arrays [K] for members. Integer
    sums (e.g. correct counts) stay exact integers.
  """
  base = jax.random.wrap_key_data(key_data(rng))
  totals: dict[str, np.ndarray] = {}
  pending = []
  for i, batch in enumerate(batches):
    key = jax.random.key_data(jax.random.fold_in(base, i))
    pending.append(eval_step(
        state, shard_batch(batch, mesh, global_batch_size=global_batch_size),
        key))
    if len(pending) >= 8:  # bounded in-flight results, keeps dispatch async
      _accumulate(totals, pending.pop(0))
  for sums in pending:
    _accumulate(totals, sums)
  if not totals:
    raise ValueError("evaluate got no batches")
  count = totals.pop("count")
  if np.any(count == 0):
    raise ValueError("evaluate saw no real (mask > 0) examples")
  out: dict[str, Any] = {"count": count}
  for name, total in totals.items():
    out[name] = total / count
    out[name + "_sum"] = total
  if "correct" in totals:
    out["accuracy"] = out["correct"]
  return out


def _accumulate(totals: dict[str, np.ndarray], sums: Mapping[str, Any]) -> None:
  for name, value in fetch(dict(sums)).items():
    value = np.asarray(value)
    value = (value.astype(np.int64) if np.issubdtype(value.dtype, np.integer)
             else value.astype(np.float64))
    totals[name] = totals[name] + value if name in totals else value
