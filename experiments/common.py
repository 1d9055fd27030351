"""Helpers shared by the experiment binaries (loss comparison, adversarial).

Everything here turns a config of primitives (``ml_collections.ConfigDict``)
into library objects, or turns library results into files. Nothing here trains
by itself: training is always :func:`compsum_jax.training.make_train_step` +
:func:`compsum_jax.training.fit` with an objective assembled from small parts
(model apply + per-example loss), see :func:`make_objective`.

Config fields read here (the experiment's config may hold more):

  dataset, dataset_kwargs, data_dir, data_seed, validation_size, label_noise
      -> :func:`load_data`
  model.name, model.kwargs -> :func:`build_model`
  optimizer (make_optimizer fields, warm-up in epochs) -> :func:`build_optimizer`
  augment, augment_flip -> :func:`make_augment_fn`
  batch_size, eval_batch_size

Members: a sweep over hyper-parameters × seeds is a list of :class:`Member`;
K members train together through the train step's vmapped K-member mode
(``state.hparams`` carries each member's values into ``batch['hparams']``).
Compiled steps are shared through a :class:`StepCache` owned by the caller.
Tables report "mean ± sample std over n seeds" (:data:`STD_CONVENTION`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import flax.linen as nn
import jax
import numpy as np
import optax

from compsum_jax import data as data_lib
from compsum_jax import models as models_lib
from compsum_jax import training

PyTree = Any
LossFn = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], jax.Array]
T = TypeVar("T")

# Short names accepted for datasets in configs.
DATASET_ALIASES = {"svhn": "svhn_cropped"}

# ------------------------------------------------------------ config checks


def config_value(config: Any, field: str) -> Any:
  """``config.a.b`` for ``field='a.b'``; ValueError naming it if missing."""
  value = config
  for part in field.split("."):
    try:
      value = value[part]
    except (KeyError, TypeError, AttributeError):
      raise ValueError(f"config.{field} is missing") from None
  return value


def optional_value(config: Any, field: str) -> Any:
  """``config.<field>`` (top level), or None where the config lacks it."""
  return config.get(field) if hasattr(config, "get") else None


# Config fields that do not change what a run computes: a resumed run may
# change them (e.g. --config.progress=False on the restart).
BOOKKEEPING_FIELDS = ("progress", "tensorboard", "log_every_steps",
                      "keep_checkpoints")


def run_identity(config: Any, extra_bookkeeping: Sequence[str] = ()
                 ) -> dict[str, Any]:
  """The config as JSON without its bookkeeping fields: what a resumed run
  must match (``BOOKKEEPING_FIELDS`` plus ``extra_bookkeeping``)."""
  skip = set(BOOKKEEPING_FIELDS) | set(extra_bookkeeping)
  return {k: v for k, v in to_jsonable(config).items() if k not in skip}


def check_int(config: Any, field: str, *, low: int | None = None,
              high: int | None = None, optional: bool = False) -> int | None:
  """An integer config field in [low, high]; ValueError naming the field.

  With ``optional=True`` the field may also be None (returned as None).
  """
  value = config_value(config, field)
  if optional and value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
      low is not None and value < low) or (high is not None and value > high):
    bounds = (f" >= {low}" if low is not None else "") + (
        f" <= {high}" if high is not None else "")
    none = " or None" if optional else ""
    raise ValueError(f"config.{field} must be an integer{bounds}{none}, got "
                     f"config.{field}={value!r}")
  return int(value)


def check_float(config: Any, field: str, *, low: float = -math.inf,
                high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> float:
  """A finite number in the given interval; ValueError naming the field."""
  value = config_value(config, field)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  v = float(value) if ok else math.nan
  if ok and math.isfinite(v):
    ok = (v > low if low_open else v >= low) and (
        v < high if high_open else v <= high)
  else:
    ok = False
  if not ok:
    interval = (("(" if low_open else "[") + f"{low}, {high}" +
                (")" if high_open else "]"))
    raise ValueError(f"config.{field} must be a finite number in {interval}, "
                     f"got config.{field}={value!r}")
  return v


def check_choice(config: Any, field: str, choices: Sequence[Any]) -> Any:
  """A config field that must be one of ``choices``."""
  value = config_value(config, field)
  if value not in tuple(choices):
    raise ValueError(f"config.{field} must be one of {tuple(choices)}, got "
                     f"config.{field}={value!r}")
  return value


def check_float_sequence(config: Any, field: str, *, low: float = -math.inf,
                         distinct: bool = False) -> tuple[float, ...]:
  """A non-empty sequence of finite numbers ≥ ``low`` (a bare number counts
  as a sequence of one); ValueError naming the field and the bad value."""
  value = config_value(config, field)
  values = (value,) if isinstance(value, numbers.Real) else value
  if not isinstance(values, (tuple, list)) or not values:
    raise ValueError(f"config.{field} must be a non-empty sequence of numbers "
                     f">= {low}, got config.{field}={value!r}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (
        math.isfinite(v) and v >= low):
      raise ValueError(f"config.{field} must hold finite numbers >= {low}, "
                       f"got config.{field}={tuple(values)!r} (bad value "
                       f"{v!r})")
  if distinct and len(set(float(v) for v in values)) != len(values):
    raise ValueError(f"config.{field} has repeated values: config.{field}="
                     f"{tuple(values)!r}")
  return tuple(float(v) for v in values)


def dataset_name(config: Any) -> str:
  """The library's name of ``config.dataset`` (aliases resolved, checked)."""
  name = config_value(config, "dataset")
  name = DATASET_ALIASES.get(name, name)
  if name not in data_lib.DATASET_NAMES:
    known = tuple(data_lib.DATASET_NAMES) + tuple(DATASET_ALIASES)
    raise ValueError(f"config.dataset must be one of {known}, got "
                     f"config.dataset={config_value(config, 'dataset')!r}")
  return name


def check_data_config(config: Any) -> None:
  """Validates the data fields read by :func:`load_data` (before loading)."""
  dataset_name(config)
  check_int(config, "data_seed", low=0)
  check_int(config, "validation_size", low=0)
  kind = config_value(config, "label_noise.kind")
  if kind is not None:
    check_choice(config, "label_noise.kind", data_lib.types.NOISE_KINDS)
  check_float(config, "label_noise.rate", low=0.0, high=1.0, high_open=True)
  check_int(config, "batch_size", low=1)
  check_int(config, "eval_batch_size", low=1)


def check_model_config(config: Any) -> None:
  """Validates ``config.model.name`` (attributes are checked by get_model)."""
  check_choice(config, "model.name", sorted(models_lib.MODELS))


def check_optimizer_config(config: Any) -> None:
  """Validates the optimizer fields that a typo would make silently wrong."""
  check_choice(config, "optimizer.name", ("sgd", "adamw"))
  check_float(config, "optimizer.learning_rate", low=0.0, low_open=True)
  check_float(config, "optimizer.weight_decay", low=0.0)
  check_int(config, "optimizer.warmup_epochs", low=0)


# ---------------------------------------------------------- data and model


def load_data(config: Any) -> data_lib.Dataset:
  """Loads the dataset of ``config`` (noise on training labels only).

  With several processes and a tfds dataset the training split is read on
  demand: each process decodes only the records of its rows of every batch
  (``compsum_jax.data.load_dataset(train_on_demand=True)``), and the channel
  statistics are exact integer sums over the processes' shares. The
  validation and test splits are read whole in every process (they are
  evaluated whole or split into shares after loading).

  Returns:
    A :class:`compsum_jax.data.Dataset`; the test split has clean labels.
  """
  kwargs = dict(config_value(config, "dataset_kwargs") or {})
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in kwargs.items()}
  noise = config_value(config, "label_noise")
  noise = noise.to_dict() if hasattr(noise, "to_dict") else dict(noise)
  name = dataset_name(config)
  if jax.process_count() > 1 and name in data_lib.TFDS_DATASETS:
    kwargs.update(train_on_demand=True,
                  process_share=(jax.process_index(), jax.process_count()),
                  sum_over_processes=training.sum_over_processes)
  return data_lib.load_dataset(
      name, data_dir=config_value(config, "data_dir"),
      seed=int(config_value(config, "data_seed")),
      validation_size=int(config_value(config, "validation_size")),
      label_noise=noise, **kwargs)


def build_model(config: Any, dataset: data_lib.Dataset) -> nn.Module:
  """``get_model(config.model.name, n, mean, std, **config.model.kwargs)``.

  The input normalisation uses the training split's per-channel statistics
  (``dataset.meta['mean'/'std']``) unless the config sets them.
  """
  kwargs = dict(config_value(config, "model.kwargs") or {})
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in kwargs.items()}
  std = tuple(max(s, 1e-6) for s in dataset.meta["std"])
  kwargs.setdefault("mean", tuple(dataset.meta["mean"]))
  kwargs.setdefault("std", std)
  return models_lib.get_model(config_value(config, "model.name"),
                              dataset.num_classes, **kwargs)


def configure_cpu_devices(config: Any) -> None:
  """Applies ``config.cpu_devices`` (if set): N host-platform CPU devices.

  Must run before JAX initialises its backends (first thing in ``main``).
  On a CPU-only host several CPU devices let the steps run in parallel on
  the cores: data-parallel batch shards, or member groups on a 'members'
  mesh axis (see :func:`data_mesh`). No effect on GPU/TPU devices.

  Raises:
    ValueError: ``cpu_devices`` is not an integer >= 1, or JAX's backends
      were already initialised with another number of CPU devices.
  """
  if optional_value(config, "cpu_devices") is None:
    return
  count = check_int(config, "cpu_devices", low=1)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as error:
    raise ValueError(f"config.cpu_devices={count} must be applied before JAX "
                     f"starts its backends ({error})") from None


def data_mesh(config: Any, num_members: int | None = None
              ) -> jax.sharding.Mesh | None:
  """The mesh of the experiments' steps over every device; None on one.

  Single members (``num_members=None``): the ('data',) mesh: the global batch
  is split over all devices, the state replicated (see
  ``compsum_jax.training.step``). K stacked members: a ('members', 'data')
  mesh whose 'members' axis has ``config.member_shards`` devices (None: the
  largest number of devices dividing both K and the device count, i.e.
  gcd(K, devices)); each member group trains K / member_shards members on
  its own devices, and the batch is split over the remaining 'data' axis.
  When that 'members' size is 1 this is the ('data',) mesh again.

  Raises:
    ValueError: ``config.batch_size`` or ``config.eval_batch_size`` is not a
      multiple of the 'data' axis size, or ``config.member_shards`` does not
      divide K or exceeds the devices.
  """
  count = jax.device_count()
  if count == 1:
    return None
  shards = 1
  if num_members is not None:
    if optional_value(config, "member_shards") is None:
      shards = math.gcd(int(num_members), count)
    else:
      shards = check_int(config, "member_shards", low=1, high=count)
      if num_members % shards:
        raise ValueError(f"config.member_shards={shards} must divide the "
                         f"{num_members} members (taus × num_seeds)")
  data = count // shards
  for field in ("batch_size", "eval_batch_size"):
    value = int(config_value(config, field))
    if value % data:
      raise ValueError(f"config.{field}={value} must be a multiple of the "
                       f"{data} devices that split every batch (data "
                       f"parallelism over {count} devices"
                       + (f", {shards} member groups" if shards > 1 else "")
                       + ")")
  if shards == 1:
    return training.make_data_mesh()
  return training.make_member_mesh(shards, data)


def steps_per_epoch(config: Any, num_train: int) -> int:
  """Updates per epoch: ⌊N_train / batch_size⌋ (the last partial batch drops).

  Raises:
    ValueError: ``config.batch_size`` exceeds the ``num_train`` examples.
  """
  batch_size = check_int(config, "batch_size", low=1)
  if batch_size > num_train:
    raise ValueError(f"config.batch_size={batch_size} exceeds the "
                     f"{num_train} training examples")
  return int(num_train) // batch_size


def optimizer_settings(config: Any, steps_per_epoch: int) -> dict[str, Any]:
  """``config.optimizer`` as ``training.make_optimizer`` fields.

  The warm-up is given in epochs; it becomes
  ``warmup_steps = warmup_epochs · steps_per_epoch``.
  """
  opt = config_value(config, "optimizer")
  settings = dict(opt.to_dict() if hasattr(opt, "to_dict") else opt)
  if "warmup_steps" in settings:
    raise ValueError("config.optimizer.warmup_steps is derived from "
                     "config.optimizer.warmup_epochs; set that instead, got "
                     f"config.optimizer.warmup_steps="
                     f"{settings['warmup_steps']!r}")
  warmup_epochs = check_int(config, "optimizer.warmup_epochs", low=0)
  del settings["warmup_epochs"]
  settings["warmup_steps"] = warmup_epochs * int(steps_per_epoch)
  return settings


@dataclasses.dataclass(frozen=True)
class OptimizerPlan:
  """The optimizer of a run and the step counts it was built for.

  Attributes:
    optimizer: the optax transformation.
    schedule: its learning-rate schedule (step -> rate).
    steps_per_epoch: ⌊N_train / batch_size⌋.
    total_steps: steps_per_epoch · num_epochs.
    warmup_steps: warmup_epochs · steps_per_epoch.
  """

  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int


def build_optimizer(config: Any, num_train: int) -> OptimizerPlan:
  """The optimizer of ``config.optimizer`` for ``config.num_epochs`` epochs
  over ``num_train`` training examples in batches of ``config.batch_size``."""
  spe = steps_per_epoch(config, num_train)
  total = spe * check_int(config, "num_epochs", low=1)
  settings = optimizer_settings(config, spe)
  return OptimizerPlan(optimizer=training.make_optimizer(settings, total),
                       schedule=training.make_schedule(settings, total),
                       steps_per_epoch=spe, total_steps=total,
                       warmup_steps=int(settings["warmup_steps"]))


def make_augment_fn(config: Any, dataset: data_lib.Dataset
                    ) -> Callable[[jax.Array, Mapping[str, Any]], dict] | None:
  """The on-device augmentation hook of the train step, or None.

  ``config.augment`` None uses ``dataset.augment``; augmentation is random
  crop with 4-pixel padding, plus a horizontal flip if ``config.augment_flip``.
  """
  augment = config_value(config, "augment")
  if augment is None:
    augment = dataset.augment
  if not augment:
    return None
  if len(dataset.input_shape) != 3:
    raise ValueError(f"config.augment=True needs image inputs [H, W, C], but "
                     f"dataset {dataset.name!r} has input shape "
                     f"{dataset.input_shape}")
  flip = bool(config_value(config, "augment_flip"))

  def augment_fn(key: jax.Array, batch: Mapping[str, Any]) -> dict:
    batch = dict(batch)
    batch["image"] = data_lib.augment_images(key, batch["image"], flip=flip)
    return batch

  return augment_fn


def epoch_batches(config: Any, dataset: data_lib.Dataset,
                  mesh: jax.sharding.Mesh | None = None
                  ) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
  """``epoch -> training batches``: a pure function of (data_seed, epoch).

  Every process visits the same global batch order; with ``mesh`` each
  yields only its rows ``training.process_batch_rows(mesh, B)`` of every
  global batch of B = ``config.batch_size`` rows (all rows in one process):
  pass ``global_batch_size=B`` to ``training.fit``.
  """
  batch_size = int(config_value(config, "batch_size"))
  seed = int(config_value(config, "data_seed"))
  rows = None
  if mesh is not None and jax.process_count() > 1:
    rows = training.process_batch_rows(mesh, batch_size)
  return lambda epoch: data_lib.train_batches(dataset.train, batch_size,
                                              seed=seed, epoch=epoch,
                                              rows=rows)


# ------------------------------------------------------- objective assembly


def comp_sum_per_example(logits: jax.Array, labels: jax.Array,
                         hparams: Mapping[str, jax.Array]) -> jax.Array:
  """ℓ_τ(h(x_i), y_i) with the member's τ = hparams['tau']; [B].

  ℓ_τ(h, x, y) = Φ^τ(Σ_{y'≠y} exp(h(x, y') − h(x, y))), Φ^τ(u) =
  ((1 + u)^{1−τ} − 1)/(1 − τ) (log(1 + u) at τ = 1).
  """
  return training.comp_sum_from_hparams(logits, labels, hparams)


def make_objective(model: nn.Module, loss_fn: LossFn = comp_sum_per_example
                   ) -> Callable[..., tuple[jax.Array, dict]]:
  """Supervised objective for the train step.

  ``objective(params, batch_stats, batch, rng) = (1/B) Σ_i ℓ(h_θ(x_i), y_i;
  batch['hparams'])`` with h_θ = ``model.apply`` in training mode; this is
  :func:`compsum_jax.training.classification_objective` with ``loss_fn``.
  """
  return training.classification_objective(model, loss_fn)


# ------------------------------------------------------------- step cache


class StepCache(Generic[T]):
  """Compiled steps (or anything costly) built once per key.

  One cache per experiment run, owned by the caller; members trained one
  after another share its entries, so a step compiles once per program.
  """

  def __init__(self) -> None:
    self._entries: dict[Hashable, Any] = {}

  def get(self, key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` on the first call with ``key``; the same object after."""
    if key not in self._entries:
      self._entries[key] = build()
    return self._entries[key]

  def __len__(self) -> int:
    return len(self._entries)


# ----------------------------------------------------------------- members


@dataclasses.dataclass(frozen=True)
class Member:
  """One hypothesis of a sweep.

  Attributes:
    index: position k in the sweep (0-based).
    hparams: the member's per-member scalars, e.g. {'tau': 0.5}.
    seed_index: s ∈ {0, …, num_seeds − 1}.
    seed: the initialisation seed (base seed + s).
  """

  index: int
  hparams: Mapping[str, float]
  seed_index: int
  seed: int


def member_grid(values: Mapping[str, Sequence[float]], num_seeds: int,
                base_seed: int) -> list[Member]:
  """The sweep ``values × seeds``, hparams-major.

  Args:
    values: one sequence per hyper-parameter name, all of the same length V
      (zipped, not crossed), e.g. {'tau': (0, 1, 2)}.
    num_seeds: S ≥ 1.
    base_seed: seed of seed index 0; seed index s uses ``base_seed + s``.

  Returns:
    V·S members, member k = (value k // S, seed index k % S).
  """
  lengths = {len(v) for v in values.values()}
  if len(lengths) != 1:
    raise ValueError(f"hyper-parameter value lists must have one common "
                     f"length, got lengths {sorted(lengths)}")
  (num_values,) = lengths
  members = []
  for v in range(num_values):
    for s in range(num_seeds):
      members.append(Member(
          index=len(members),
          hparams={name: float(vals[v]) for name, vals in values.items()},
          seed_index=s, seed=int(base_seed) + s))
  return members


def init_states(model: nn.Module, optimizer: optax.GradientTransformation,
                members: Sequence[Member], input_shape: Sequence[int], *,
                stacked: bool) -> training.TrainState:
  """Initial state of ``members``: stacked [K, ...] or, for one, unstacked.

  Member k's state is ``training.init_train_state(model, optimizer,
  rng=members[k].seed, input_shape=input_shape, hparams=members[k].hparams)``
  (the library compiles that initialiser once per model, optimizer and shape).
  """
  if not members:
    raise ValueError("init_states needs at least one member, got none")
  if not stacked and len(members) != 1:
    raise ValueError(f"stacked=False needs exactly one member, got "
                     f"{len(members)}")
  names = sorted(members[0].hparams)
  for m in members:
    if sorted(m.hparams) != names:
      raise ValueError(f"members must share hyper-parameter names, got "
                       f"{sorted(m.hparams)} and {names}")
  if not stacked:
    (member,) = members
    return training.init_train_state(model, optimizer, rng=member.seed,
                                     input_shape=input_shape,
                                     hparams=dict(member.hparams))
  return training.init_member_states(
      model, optimizer, rngs=[m.seed for m in members],
      input_shape=input_shape,
      hparams={n: [float(m.hparams[n]) for m in members] for n in names})


# -------------------------------------------------------------- evaluation


def evaluate_split(eval_step: Callable[..., dict], state: training.TrainState,
                   split: data_lib.ArraySplit, batch_size: int,
                   labels: np.ndarray | None = None,
                   mesh: jax.sharding.Mesh | None = None,
                   rng: jax.Array | int = 0) -> dict[str, Any]:
  """Exact averages of ``eval_step`` over a split (see training.evaluate).

  Args:
    eval_step: from :func:`compsum_jax.training.make_eval_step`.
    state: single or stacked member state.
    split: the split to evaluate.
    batch_size: evaluation batch size.
    labels: labels to use instead of ``split.labels`` (e.g. the clean labels
      of a noisy training split), shape [N].
    mesh: the mesh ``eval_step`` was built with (batches are sharded on it;
      with several processes each reads only its rows of every batch).
    rng: the evaluation key (batch i uses ``fold_in(rng, i)``).

  Returns:
    ``training.evaluate``'s dict (values [K] for stacked states).
  """
  if labels is not None:
    split = data_lib.ArraySplit(split.images, np.asarray(labels, np.int32))
  if mesh is None or jax.process_count() == 1:
    return training.evaluate(eval_step, state,
                             data_lib.eval_batches(split, batch_size),
                             mesh=mesh, rng=rng)
  # Several processes: each materialises its rows of every global batch;
  # the compiled step sums over the global batch (exact counts).
  rows = training.process_batch_rows(mesh, batch_size)
  return training.evaluate(eval_step, state,
                           data_lib.eval_batches(split, batch_size, rows=rows),
                           mesh=mesh, rng=rng, global_batch_size=batch_size)


def make_logits_fn(model: nn.Module, *, stacked: bool
                   ) -> Callable[[training.TrainState, jax.Array], jax.Array]:
  """Compiled ``(state, images [B, ...]) -> logits`` in inference mode.

  Logits have shape [B, n], or [K, B, n] for a stacked state.
  """

  def logits_fn(state, images):
    logits, _ = training.apply_model(model, state.params, state.batch_stats,
                                     images, train=False)
    return logits

  if stacked:
    logits_fn = jax.vmap(logits_fn, in_axes=(0, None))
  return jax.jit(logits_fn)


def predict_logits(logits_fn: Callable[..., jax.Array],
                   state: training.TrainState, split: data_lib.ArraySplit,
                   batch_size: int, mesh: jax.sharding.Mesh | None = None
                   ) -> np.ndarray:
  """Logits of the whole split as float32 NumPy, [N, n] or [K, N, n].

  With several processes pass the state's ``mesh``: each process then feeds
  its rows of every batch and every process gets all logits (a collective).
  """
  distributed = mesh is not None and jax.process_count() > 1
  rows = training.process_batch_rows(mesh, batch_size) if distributed else None
  outputs = []
  for batch in data_lib.eval_batches(split, batch_size, rows=rows):
    real = min(batch_size, split.num_examples - batch_size * len(outputs))
    images = batch["image"]
    if distributed:
      images = training.shard_batch({"image": images}, mesh,
                                    global_batch_size=batch_size)["image"]
    out = np.asarray(training.fetch(logits_fn(state, images)))
    outputs.append(out[..., :real, :])
  return np.concatenate(outputs, axis=-2)


# ---------------------------------------------------------------- results


# How every table of the experiments reports spread over seeds.
STD_CONVENTION = "mean ± sample std (ddof = 1) over n seeds"


def std_caption(num_seeds: int) -> str:
  """'mean ± sample std over n = 3 seeds': the caption of tables and plots."""
  return f"mean ± sample std over n = {int(num_seeds)} seeds"


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof = 1; 0.0 for one value).

  s = sqrt(Σ (v_i − v̄)² / (m − 1)).
  """
  v = np.asarray(values, np.float64)
  if v.size == 0:
    raise ValueError("mean_and_std needs at least one value")
  std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
  return float(np.mean(v)), std


def to_jsonable(value: Any) -> Any:
  """ConfigDicts, NumPy/JAX values → JSON types (non-finite floats as str)."""
  return training.metrics.to_jsonable(value)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` atomically (tmp file + rename)."""
  path = os.fspath(path)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as sorted, indented JSON, atomically (tmp + rename)."""
  write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True)
             + "\n")


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value stored at ``path``."""
  with open(os.fspath(path), encoding="utf-8") as f:
    return json.load(f)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]
                   ) -> str:
  """A GitHub markdown table (cells converted with ``str``)."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    if len(row) != len(header):
      raise ValueError(f"markdown_table row has {len(row)} cells, header "
                       f"has {len(header)}")
    lines.append("| " + " | ".join(str(c) for c in row) + " |")
  return "\n".join(lines) + "\n"


def pyplot():
  """matplotlib.pyplot with the non-interactive Agg backend (files only)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt
