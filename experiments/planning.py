"""Dry run of an experiment preset: cost, memory and time, before any data.

``plan(config, workdir, experiment)`` builds the preset's model, optimizer,
objective (with its inner attack) and members from the config, with abstract
shapes only (``jax.ShapeDtypeStruct``; the dataset's sizes come from
:data:`DATASET_SHAPES`, nothing is loaded), compiles the real train and eval
steps on the host and writes ``plan.json`` and ``plan.md`` to the workdir:

* FLOPs per train step from XLA's cost analysis, next to the analytical
  matmul count of the same step's jaxpr (``scan`` bodies × length) and the
  pass model F·(passes) with F the model's analytical forward FLOPs;
* bytes of parameters, optimizer state, EMA, batch and XLA's temporaries;
* per accelerator of ``compsum_jax.training.planning.ACCELERATORS``: fit and
  predicted time per epoch and per run at the stated MFU (analytical step
  FLOPs / (peak · MFU); the same count defines MFU);
* a recommendation: the fewest cards, and the member grouping, that fit.

Used by ``--dry_run`` of ``experiments/loss_comparison.py`` and
``experiments/adversarial_training.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import data as data_lib
from compsum_jax import training
from compsum_jax.training import planning
from experiments import common

PLAN_JSON = "plan.json"
PLAN_MD = "plan.md"
EXPERIMENTS = ("loss_comparison", "adversarial_training")


@dataclasses.dataclass(frozen=True)
class DatasetShape:
  """Sizes of a dataset, known without loading it."""

  num_train: int
  num_test: int
  input_shape: tuple[int, ...]
  num_classes: int
  augment: bool


# tfds sizes from the tfds catalog (train/test splits); digits: scikit-learn's
# 1,797 images; synthetic: from dataset_kwargs (see dataset_shape).
DATASET_SHAPES: dict[str, DatasetShape] = {
    "digits": DatasetShape(1797, 360, (8, 8, 1), 10, False),
    "mnist": DatasetShape(60_000, 10_000, (28, 28, 1), 10, False),
    "fashion_mnist": DatasetShape(60_000, 10_000, (28, 28, 1), 10, False),
    "cifar10": DatasetShape(50_000, 10_000, (32, 32, 3), 10, True),
    "cifar100": DatasetShape(50_000, 10_000, (32, 32, 3), 100, True),
    "svhn_cropped": DatasetShape(73_257, 26_032, (32, 32, 3), 10, False),
}


def dataset_shape(config: Any) -> DatasetShape:
  """The sizes the run will see: training split minus the validation hold-out.

  digits: ``dataset_kwargs.test_size`` (default 360) of the 1,797 images are
  test; synthetic: ``dataset_kwargs`` num_train, num_test, num_classes, dim.
  """
  name = common.dataset_name(config)
  kwargs = dict(common.config_value(config, "dataset_kwargs") or {})
  validation = int(common.config_value(config, "validation_size"))
  if name == "synthetic":
    shape = DatasetShape(int(kwargs.get("num_train", 4096)),
                         int(kwargs.get("num_test", 4096)),
                         (int(kwargs.get("dim", 2)),),
                         int(kwargs.get("num_classes", 3)), False)
  elif name == "digits":
    test = int(kwargs.get("test_size", 360))
    shape = DatasetShape(1797 - test, test, (8, 8, 1), 10, False)
  else:
    shape = DATASET_SHAPES[name]
  if not 0 <= validation < shape.num_train:
    raise ValueError(f"config.validation_size={validation} must lie in [0, "
                     f"{shape.num_train}) for dataset {name!r}")
  return dataclasses.replace(shape, num_train=shape.num_train - validation)


def abstract_dataset(config: Any, shape: DatasetShape) -> data_lib.Dataset:
  """A Dataset with no examples, for the builders that read its metadata.

  The normalisation statistics are placeholders (0.5, 0.25): they change no
  shape and no cost.
  """
  channels = shape.input_shape[-1]
  empty = data_lib.ArraySplit(np.zeros((0, *shape.input_shape), np.float32),
                              np.zeros((0,), np.int32))
  return data_lib.Dataset(
      name=common.dataset_name(config), num_classes=shape.num_classes,
      input_shape=shape.input_shape, train=empty, validation=None, test=empty,
      augment=shape.augment, posterior_fn=None,
      meta={"mean": (0.5,) * channels, "std": (0.25,) * channels})


def _batch(batch_size: int, input_shape: Sequence[int], *, eval_mask: bool
           ) -> dict[str, jax.ShapeDtypeStruct]:
  out = {"image": jax.ShapeDtypeStruct((batch_size, *input_shape),
                                       jnp.float32),
         "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  if eval_mask:
    out["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
  return out


def _state_parts(state: Any, num_members: int) -> dict[str, int]:
  """Bytes of one member's params, optimizer state, EMA and batch stats."""
  parts = {"params": state.params, "opt_state": state.opt_state,
           "ema_params": state.ema_params, "batch_stats": state.batch_stats}
  return {k: planning.tree_bytes(v) // num_members for k, v in parts.items()}


@dataclasses.dataclass
class Program:
  """One compiled program of the plan and what it is for."""

  name: str
  cost: planning.StepCost | None  # None: traced, not compiled
  matmul: planning.FlopCount
  num_members: int
  batch_size: int
  calls_per_run: float


def _compile(name: str, fn: Any, args: Sequence[Any], *, num_members: int,
             batch_size: int, calls_per_run: float,
             log: Callable[[str], None]) -> Program:
  cost = planning.step_cost(fn, *args)
  matmul = planning.matmul_flops(fn, *args)
  log(f"  compiled {name}: {cost.compile_seconds:.1f} s, XLA "
      f"{cost.flops:.3g} FLOP, analytical {matmul.flops:.3g} FLOP, peak "
      f"{planning.human_bytes(cost.peak_bytes)}")
  return Program(name, cost, matmul, num_members, batch_size, calls_per_run)


# --- the experiments' builders (coupling to today's experiment modules) ------
# Re-point these few lines when experiments/ is restructured (lib.run, the
# adversarial method registry): they are the only places that know how each
# experiment assembles its objective and its steps.


def _loss_comparison_programs(config: Any, ds: data_lib.Dataset,
                              total_steps: int, num_members: int,
                              stacked: bool):
  """(train step, eval step, abstract state) of the loss comparison."""
  from experiments import loss_comparison_lib as lib  # pylint: disable=g-import-not-at-top

  lib.validate_config(config)
  model = common.build_model(config, ds)
  optimizer, _ = common.build_optimizer(config, total_steps)
  members = common.member_grid({"tau": lib.config_taus(config)},
                               int(config.num_seeds), int(config.seed))
  members = members[:num_members] if stacked else members[:1]
  k = num_members if stacked else None
  train_step = training.make_train_step(
      common.make_objective(model, "comp_sum"), optimizer,
      augment_fn=common.make_augment_fn(config, ds), num_members=k)
  eval_step = training.make_eval_step(
      training.classification_eval_fn(model), num_members=k)
  state = jax.eval_shape(lambda: common.init_states(
      model, optimizer, members, ds.input_shape, stacked=stacked))
  return model, train_step, eval_step, state


def _adversarial_programs(config: Any, ds: data_lib.Dataset,
                          total_steps: int, method: str):
  """(train step, validation eval step, abstract state) of one method."""
  from experiments import adversarial_training_lib as lib  # pylint: disable=g-import-not-at-top

  lib.check_config(config)
  model = common.build_model(config, ds)
  opt_config = dict(config.optimizer.to_dict())
  optimizer = training.make_optimizer(opt_config, total_steps)
  ema_decay = float(config.ema_decay)
  objective = lib.make_objective(model, method,
                                 lib.train_attack_overrides(method, config))
  train_step = training.make_train_step(
      objective, optimizer, ema_decay=ema_decay,
      augment_fn=common.make_augment_fn(config, ds))
  eval_step = training.make_eval_step(
      lib.make_robust_eval_fn(model, {"val": lib.build_eval_attack(
          config.validation_attack)}), use_ema=ema_decay > 0)
  tau = (float(config.adv_comp_sum.taus[0]) if method == "adv_comp_sum"
         else None)
  state = jax.eval_shape(lambda: training.init_train_state(
      model, optimizer, rng=0, input_shape=ds.input_shape,
      hparams=lib.method_hparams(method, config, tau), ema=ema_decay > 0))
  return model, train_step, eval_step, state


def _adversarial_runs(config: Any) -> list[tuple[str, float | None, int]]:
  from experiments import adversarial_training_lib as lib  # pylint: disable=g-import-not-at-top

  return lib.runs_of(config)


def _attack_steps(config: Any, method: str) -> int:
  from experiments import adversarial_training_lib as lib  # pylint: disable=g-import-not-at-top

  if method == "standard":
    return 0
  # Every preset sets train_attack.num_steps (both TRADES recipes keep it).
  attack = lib.train_attack_overrides(method, config)
  if attack.get("num_steps") is None:
    raise ValueError(f"config.train_attack.num_steps is needed to plan "
                     f"method {method!r}")
  return int(attack["num_steps"])

# --- end of the coupling ------------------------------------------------------


def forward_passes(method: str, attack_steps: int) -> float:
  """Forward-pass equivalents per example of one train step (pass model).

  A training pass (forward + backward for parameters and inputs) costs 3 F;
  an attack step (forward + backward for the input only) 2 F.

    standard:            3
    pgd_at:              2·S + 3            (S attack steps, one training pass)
    trades/adv_comp_sum: 1 + 2·S + 2·3      (clean target, S steps, two passes)
  """
  if method == "standard":
    return 3.0
  if method == "pgd_at":
    return 2.0 * attack_steps + 3.0
  if method in ("trades", "adv_comp_sum"):
    return 1.0 + 2.0 * attack_steps + 6.0
  raise ValueError(f"unknown method={method!r}")


def _model_forward_flops(model: Any, state: Any, input_shape: Sequence[int],
                         stacked: bool) -> float:
  params = state.params
  stats = state.batch_stats
  if stacked:  # one member's variables
    params, stats = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), (params, stats))
  variables = {"params": params}
  if jax.tree.leaves(stats):
    variables["batch_stats"] = stats
  return planning.forward_flops(model, variables, input_shape).flops


def _host_description() -> dict[str, Any]:
  try:
    load = os.getloadavg()[0]
  except OSError:
    load = None
  return {"platform": jax.default_backend(), "devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "load_average_1min": load,
          "machine": platform.processor() or platform.machine()}


def _accelerator_rows(runs: Sequence[Mapping[str, Any]], *, num_members: int,
                      batch_size: int, state_bytes: float, temp_bytes: float,
                      batch_bytes: float, steps_per_epoch: int,
                      num_epochs: int, num_devices: int, member_shards: int,
                      mfu: float, usable_fraction: float,
                      sweep_members: int = 1) -> list[dict[str, Any]]:
  """Fit, time and recommendation per accelerator."""
  rows = []
  data_shards = num_devices // member_shards
  need = planning.grouping_bytes(
      num_members=num_members, member_shards=member_shards,
      data_shards=data_shards, state_bytes_per_member=state_bytes,
      temp_bytes_per_member=temp_bytes, batch_bytes=batch_bytes)
  # FLOPs of one epoch of every run, one after another.
  epoch_flops = sum(r["train_flops_per_step"] for r in runs) * steps_per_epoch
  eval_flops = sum(r["eval_flops_per_run"] for r in runs)
  for acc in planning.ACCELERATORS:
    rec = planning.recommend(
        acc, num_members=num_members, batch_size=batch_size,
        state_bytes_per_member=state_bytes,
        temp_bytes_per_member=temp_bytes, batch_bytes=batch_bytes,
        usable_fraction=usable_fraction)
    # The whole sweep as one vmapped K-member group (memory model).
    rec_sweep = planning.recommend(
        acc, num_members=sweep_members, batch_size=batch_size,
        state_bytes_per_member=state_bytes,
        temp_bytes_per_member=temp_bytes, batch_bytes=batch_bytes,
        usable_fraction=usable_fraction)
    row: dict[str, Any] = {
        "accelerator": acc.name,
        "memory_bytes": acc.memory_bytes,
        "bytes_per_device": need,
        "fits": planning.fits(need, acc, usable_fraction),
        "num_devices": num_devices,
        "recommended": None if rec is None else dataclasses.asdict(rec),
        "recommended_vmapped_sweep": None if rec_sweep is None else
                                     dataclasses.asdict(rec_sweep),
        "source": acc.source,
    }
    for dtype in ("bfloat16", "float32"):
      epoch = planning.predicted_seconds(epoch_flops, acc, dtype=dtype,
                                         mfu=mfu, num_devices=num_devices)
      total = planning.predicted_seconds(
          epoch_flops * num_epochs + eval_flops, acc, dtype=dtype, mfu=mfu,
          num_devices=num_devices)
      row[f"epoch_seconds_{dtype}"] = epoch
      row[f"run_seconds_{dtype}"] = total
    rows.append(row)
  return rows


def plan(config: Any, workdir: str, experiment: str, *,
         num_devices: int | None = None, mfu: float = planning.DEFAULT_MFU,
         usable_fraction: float = planning.DEFAULT_USABLE_FRACTION,
         compile_all_methods: bool = False,
         log: Callable[[str], None] = print) -> dict[str, Any]:
  """Plans ``experiment`` with ``config``; writes plan.json and plan.md.

  Args:
    config: the experiment's config (a preset of configs/<experiment>.py).
    workdir: where plan.json / plan.md go (created).
    experiment: 'loss_comparison' or 'adversarial_training'.
    num_devices: cards of the planned run (default: ``config.member_shards``
      for a vmapped sweep, else 1).
    mfu: assumed model-FLOPs utilisation (analytical FLOPs / (t · peak)).
    usable_fraction: share of a card's memory the program may use.
    compile_all_methods: adversarial training: compile every method's train
      step (default: only the costliest, whose memory bounds every run; the
      others are traced for their analytical FLOPs).
    log: progress lines.

  Returns:
    The plan (the content of plan.json).
  """
  if experiment not in EXPERIMENTS:
    raise ValueError(f"experiment must be one of {EXPERIMENTS}, got "
                     f"experiment={experiment!r}")
  start = time.perf_counter()
  shape = dataset_shape(config)
  ds = abstract_dataset(config, shape)
  batch_size = common.check_int(config, "batch_size", low=1)
  eval_batch_size = common.check_int(config, "eval_batch_size", low=1)
  if batch_size > shape.num_train:
    raise ValueError(f"config.batch_size={batch_size} exceeds the "
                     f"{shape.num_train} training examples")
  steps_per_epoch = shape.num_train // batch_size
  num_epochs = common.check_int(config, "num_epochs", low=1)
  eval_every = common.check_int(config, "eval_every_epochs", low=1)
  num_evals = math.ceil(num_epochs / eval_every)
  total_steps = steps_per_epoch * num_epochs
  train_batch = _batch(batch_size, shape.input_shape, eval_mask=False)
  eval_batch = _batch(eval_batch_size, shape.input_shape, eval_mask=True)
  rng = jax.eval_shape(lambda: training.key_data(0))
  log(f"planning {experiment} on {common.dataset_name(config)} "
      f"({shape.num_train} train examples, {steps_per_epoch} steps/epoch, "
      f"{num_epochs} epochs) ...")
  programs: list[Program] = []
  runs: list[dict[str, Any]] = []
  if experiment == "loss_comparison":
    from experiments import loss_comparison_lib as lib  # pylint: disable=g-import-not-at-top

    lib.validate_config(config)
    k = len(lib.config_taus(config)) * int(config.num_seeds)
    mode = config.sweep_mode
    stacked = mode != "sequential"
    # The one-member program: the sequential mode's, and the memory model's
    # anchor for the recommendation.
    model, step1, eval1, state1 = _loss_comparison_programs(
        config, ds, total_steps, k, stacked=False)
    eval_batches = math.ceil(shape.num_test / eval_batch_size) + math.ceil(
        shape.num_train / eval_batch_size)
    single = _compile("train step (1 member)", step1, (state1, train_batch),
                      num_members=1, batch_size=batch_size,
                      calls_per_run=total_steps * k, log=log)
    single_eval = _compile("eval step (1 member)", eval1,
                           (state1, eval_batch, rng), num_members=1,
                           batch_size=eval_batch_size,
                           calls_per_run=eval_batches * num_evals * k,
                           log=log)
    programs += [single, single_eval]
    forward = _model_forward_flops(model, state1, shape.input_shape, False)
    state_parts = _state_parts(state1, 1)
    if stacked:
      _, step_k, eval_k, state_k = _loss_comparison_programs(
          config, ds, total_steps, k, stacked=True)
      programs.append(_compile(
          f"train step ({k} members, vmapped)", step_k,
          (state_k, train_batch), num_members=k, batch_size=batch_size,
          calls_per_run=total_steps, log=log))
      programs.append(_compile(
          f"eval step ({k} members, vmapped)", eval_k,
          (state_k, eval_batch, rng), num_members=k,
          batch_size=eval_batch_size,
          calls_per_run=eval_batches * num_evals, log=log))
    for tau_seed in range(k):
      runs.append({"name": f"member {tau_seed}", "method": "comp_sum",
                   "train_flops_per_step": single.matmul.flops,
                   "eval_flops_per_run": single_eval.matmul.flops *
                                         eval_batches * num_evals,
                   "passes_per_example": forward_passes("standard", 0)})
    num_members = k if stacked else 1
    member_shards = int(config.member_shards or 1) if stacked else 1
    method_rows = [{"method": "comp_sum (every τ)", "attack_steps": 0,
                    "passes_per_example": 3.0,
                    "pass_model_flops_per_step": 3.0 * forward * batch_size,
                    "analytical_flops_per_step": single.matmul.flops,
                    "xla_flops_per_step": single.cost.flops}]
  else:
    mode = "sequential"
    k = 1
    num_members = 1
    member_shards = 1
    val_size = int(config.validation_size)
    eval_batches = math.ceil(val_size / eval_batch_size)
    method_rows = []
    per_method: dict[str, dict[str, Any]] = {}
    model = state1 = None
    built = {}
    for method in dict.fromkeys(m for m, _, _ in _adversarial_runs(config)):
      model, step, evals, state = _adversarial_programs(config, ds,
                                                        total_steps, method)
      built[method] = (step, state, planning.matmul_flops(step, state,
                                                          train_batch))
    # XLA compiles the costliest method's step (the largest program: the
    # memory bound of every run) or, with compile_all_methods, every one;
    # the others are traced only (analytical count).
    costliest = max(built, key=lambda m: built[m][2].flops)
    forward = _model_forward_flops(model, state, shape.input_shape, False)
    for method, (step, state, matmul) in built.items():
      if compile_all_methods or method == costliest:
        program = _compile(f"train step ({method})", step,
                           (state, train_batch), num_members=1,
                           batch_size=batch_size, calls_per_run=total_steps,
                           log=log)
      else:
        log(f"  traced train step ({method}): analytical "
            f"{matmul.flops:.3g} FLOP (not compiled)")
        program = Program(f"train step ({method}), traced only", None,
                          matmul, 1, batch_size, total_steps)
      programs.append(program)
      per_method[method] = {"train": program}
      state1 = state
      steps = _attack_steps(config, method)
      passes = forward_passes(method, steps)
      method_rows.append({
          "method": method, "attack_steps": steps,
          "passes_per_example": passes,
          "pass_model_flops_per_step": passes * forward * batch_size,
          "analytical_flops_per_step": matmul.flops,
          "xla_flops_per_step": None if program.cost is None
                                else program.cost.flops})
    # The validation eval step (same for every method): compiled once.
    val_program = _compile(f"validation eval step "
                           f"({config.validation_attack.preset})", evals,
                           (state1, eval_batch, rng), num_members=1,
                           batch_size=eval_batch_size,
                           calls_per_run=eval_batches * num_evals, log=log)
    programs.append(val_program)
    for method, tau, seed in _adversarial_runs(config):
      runs.append({
          "name": f"{method}" + ("" if tau is None else f" tau={tau:g}") +
                  f" seed={seed}", "method": method,
          "train_flops_per_step": per_method[method]["train"].matmul.flops,
          "eval_flops_per_run": val_program.matmul.flops * eval_batches *
                                num_evals})
    state_parts = _state_parts(state1, 1)
    single = per_method[costliest]["train"]
  if num_devices is None:
    num_devices = member_shards
  if num_devices % member_shards:
    raise ValueError(f"num_devices={num_devices} must be a multiple of "
                     f"member_shards={member_shards}")
  state_bytes = float(sum(state_parts.values()))
  batch_bytes = float(planning.tree_bytes(train_batch))
  rows = _accelerator_rows(
      runs, num_members=num_members, batch_size=batch_size,
      state_bytes=state_bytes, temp_bytes=float(single.cost.temp_bytes),
      batch_bytes=batch_bytes, steps_per_epoch=steps_per_epoch,
      num_epochs=num_epochs, num_devices=num_devices,
      member_shards=member_shards, mfu=mfu, usable_fraction=usable_fraction,
      sweep_members=k)
  if mode != "sequential":
    # The sweep trains as one vmapped group: its step replaces K single ones.
    vmapped = programs[2]
    scale = vmapped.matmul.flops / max(single.matmul.flops * k, 1.0)
    for row in rows:
      for key in list(row):
        if key.startswith(("epoch_seconds", "run_seconds")) and row[key]:
          row[key] *= scale
  result = {
      "experiment": experiment,
      "dataset": {"name": common.dataset_name(config),
                  **dataclasses.asdict(shape)},
      "model": {"name": config.model.name,
                "kwargs": common.to_jsonable(config.model.kwargs),
                "forward_flops_per_example": forward},
      "sweep": {"mode": mode, "num_members": k, "num_runs": len(runs),
                "member_shards": member_shards, "num_devices": num_devices},
      "schedule": {"batch_size": batch_size,
                   "eval_batch_size": eval_batch_size,
                   "steps_per_epoch": steps_per_epoch,
                   "num_epochs": num_epochs, "total_steps": total_steps,
                   "num_evaluations": num_evals},
      "methods": method_rows,
      "memory_per_member": {**state_parts, "batch": int(batch_bytes),
                            "xla_temp_one_member": single.cost.temp_bytes},
      "programs": [{"name": p.name, "num_members": p.num_members,
                    "batch_size": p.batch_size,
                    "calls_per_run": p.calls_per_run,
                    **(dataclasses.asdict(p.cost) if p.cost else
                       {"compiled": False}),
                    "analytical_flops": p.matmul.flops,
                    "analytical_while_loops": p.matmul.num_while_loops,
                    "xla_over_analytical": p.cost.flops / p.matmul.flops
                    if p.cost and p.matmul.flops else None}
                   for p in programs],
      "assumptions": {
          "mfu": mfu, "usable_memory_fraction": usable_fraction,
          "mfu_source": "default until a measured GPU run exists",
          "time": "analytical step FLOPs / (devices · peak · MFU); perfect "
                  "scaling over devices; evaluation included, test-time "
                  "attacks (cascade) not included",
          "memory": "(K/m)·(state₁ + temp₁/d) + batch/d per card"},
      "accelerators": rows,
      "host": _host_description(),
      "plan_seconds": time.perf_counter() - start,
  }
  os.makedirs(workdir, exist_ok=True)
  common.write_json(os.path.join(workdir, PLAN_JSON), result)
  common.write_text(os.path.join(workdir, PLAN_MD), plan_markdown(result))
  return result


def _flops(x: float) -> str:
  for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12),
                      ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if x >= scale:
      return f"{x / scale:.3g} {unit}"
  return f"{x:.3g} FLOP"


def _grouping(rec: Mapping[str, Any] | None) -> str:
  if rec is None:
    return "none ≤ 64"
  return (f"{rec['num_devices']} ({rec['member_shards']} × "
          f"{rec['data_shards']})")


def plan_markdown(result: Mapping[str, Any]) -> str:
  """plan.md: the plan as tables (every time and memory figure a PREDICTION)."""
  s = result["schedule"]
  sw = result["sweep"]
  lines = [
      f"# Plan (PREDICTION, not a measurement): {result['experiment']} on "
      f"{result['dataset']['name']}", "",
      f"Model {result['model']['name']} {result['model']['kwargs']}: "
      f"{_flops(result['model']['forward_flops_per_example'])} forward per "
      f"example (analytical). Batch {s['batch_size']}, "
      f"{s['steps_per_epoch']} steps/epoch × {s['num_epochs']} epochs = "
      f"{s['total_steps']} steps per run; sweep {sw['mode']}, "
      f"{sw['num_members']} member(s), {sw['num_runs']} run(s).", "",
      "## FLOPs per train step", "",
      common.markdown_table(
          ["method", "attack steps", "passes/example", "pass model",
           "analytical (jaxpr)", "XLA cost analysis", "XLA / analytical"],
          [[m["method"], m["attack_steps"], f"{m['passes_per_example']:g}",
            _flops(m["pass_model_flops_per_step"]),
            _flops(m["analytical_flops_per_step"]),
            "not compiled" if m["xla_flops_per_step"] is None else
            _flops(m["xla_flops_per_step"]),
            "–" if m["xla_flops_per_step"] is None else
            f"{m['xla_flops_per_step'] / m['analytical_flops_per_step']:.2f}"]
           for m in result["methods"]]),
      "XLA's cost analysis counts a while-loop body once (the attack's "
      "fori_loop), so it undercounts attack steps; the analytical count "
      "multiplies scan bodies by their length and counts only convolutions "
      "and matmuls.", "",
      "## Compiled programs (host compile, per device)", "",
      common.markdown_table(
          ["program", "members", "batch", "compile s", "arguments", "outputs",
           "temporaries", "peak"],
          [[p["name"], p["num_members"], p["batch_size"],
            f"{p['compile_seconds']:.1f}",
            planning.human_bytes(p["argument_bytes"]),
            planning.human_bytes(p["output_bytes"]),
            planning.human_bytes(p["temp_bytes"]),
            planning.human_bytes(p["peak_bytes"])]
           for p in result["programs"] if "peak_bytes" in p]),
      "Memory per member: " + ", ".join(
          f"{k} {planning.human_bytes(v)}"
          for k, v in result["memory_per_member"].items()) + ".", "",
      f"## Accelerators (MFU {result['assumptions']['mfu']:.0%}, "
      f"{result['assumptions']['usable_memory_fraction']:.0%} of memory "
      f"usable; {sw['num_devices']} card(s), {sw['member_shards']} member "
      "group(s))", "",
      common.markdown_table(
          ["card", "memory", "need/card", "fits", "epoch of all runs, bf16",
           "all runs, bf16", "all runs, fp32",
           "fewest cards that fit (groups × data)",
           f"vmapped sweep of {sw['num_members']}: fewest cards"],
          [[r["accelerator"], planning.human_bytes(r["memory_bytes"]),
            planning.human_bytes(r["bytes_per_device"]),
            "yes" if r["fits"] else "NO",
            planning.human_seconds(r["epoch_seconds_bfloat16"]),
            planning.human_seconds(r["run_seconds_bfloat16"]),
            planning.human_seconds(r["run_seconds_float32"]),
            _grouping(r["recommended"]),
            _grouping(r["recommended_vmapped_sweep"])]
           for r in result["accelerators"]]),
      f"Times are for all {sw['num_runs']} run(s) of the preset, one after "
      "another" + (" (one vmapped group)" if sw["mode"] != "sequential" else
                   "") + ": " + result["assumptions"]["time"] + ". Memory: " +
      result["assumptions"]["memory"] + " (state₁ = params + optimizer + "
      "EMA + batch stats of one member, temp₁ = XLA's temporaries of the "
      "one-member step at the full batch).", "",
      f"Host: {result['host']}; plan took {result['plan_seconds']:.0f} s.",
      ""]
  return "\n".join(lines)
