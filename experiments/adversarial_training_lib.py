"""Adversarial training: ADV-COMP-SUM against TRADES and PGD-AT, run by run.

``run(config, workdir)`` plans every (method, τ, seed) run of the config,
trains each through :func:`compsum_jax.training.fit` with its method's
objective from the library registry :mod:`compsum_jax.training.adversarial`
(training attack, training passes, outer loss, hyperparameters), evaluates
it on test and writes ``results.json``; the report (``results.md``,
``robust_vs_clean.png``) is rendered from that file by
``experiments/adversarial_training_report.py``.

What the runs of one experiment share lives in an :class:`Experiment`: the
data (loaded once), the model, the optimizer, the mesh and the compiled
steps (a :class:`common.StepCache`: runs that differ only in seed or in
hyperparameters, which are traced state fields, reuse one program).

Config → run: method m's hyperparameters come from the config section
``config.<m>`` (``config.trades.beta``, ``config.adv_comp_sum.nu``, ...); a
section with a ``taus`` grid runs once per τ. The training attack is the
method's preset with ``config.train_attack`` as overrides, filtered by the
section's ``recipe`` where it has one (``config.trades.recipe``).

Early stopping (Rice et al. 2020): after every ``eval_every_epochs`` epochs
the robust accuracy of the evaluated parameters (EMA if ``ema_decay`` > 0) on
the held-out validation split under ``validation_attack`` (PGD-40 on the
margin by default) is recorded; the checkpoint with the best value is used
for the final test evaluation: clean accuracy, every ``test_attacks`` entry
and the AutoAttack-style cascade of ``compsum_jax.attacks.robust_accuracy``
(its gradient-free Square stage flags gradient masking). A robust point must
also be classified correctly clean, so robust ≤ clean accuracy in every row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import optax

from compsum_jax import attacks, data, training
from compsum_jax.training import adversarial
from experiments import adversarial_training_report as report
from experiments import common

RESULTS_JSON = report.RESULTS_JSON
RUN_RESULT = "final.json"
# Config fields that do not change what a run computes, besides
# common.BOOKKEEPING_FIELDS: a resumed run may change them.
BOOKKEEPING_FIELDS = ("cpu_devices",)


# --- config checks ------------------------------------------------------------


def _section(config: Any, method: str) -> dict[str, Any]:
  """``config.<method>`` as a dict ({} where the config has none)."""
  section = common.optional_value(config, method)
  if section is None:
    return {}
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def _check_attack_spec(spec: Any, name: str) -> None:
  spec = _as_dict(spec)
  if "preset" not in spec or spec["preset"] not in attacks.PRESETS:
    raise ValueError(f"config attack {name!r} needs 'preset' naming one of "
                     f"{sorted(attacks.PRESETS)}, got {spec!r}")


def check_config(config: Any) -> None:
  """Raises ValueError naming the first bad field of an experiment config."""
  methods = tuple(config.methods)
  if not methods:
    raise ValueError("config.methods must name at least one method, got ()")
  for m in methods:
    if m not in adversarial.METHODS:
      raise ValueError(f"config.methods has unknown method {m!r}; known: "
                       f"{tuple(adversarial.METHODS)}")
  if len(set(methods)) != len(methods):
    raise ValueError(f"config.methods has duplicates: {methods}")
  for m in methods:
    method, section = adversarial.METHODS[m], _section(config, m)
    for hparam in method.hparams:
      if hparam.name == "tau" and "taus" in section:
        taus = tuple(section["taus"])
        if not taus:
          raise ValueError(f"config.{m}.taus must hold at least one tau")
        for i, tau in enumerate(taus):
          hparam.check(tau, f"config.{m}.taus[{i}]")
      else:
        hparam.check(common.config_value(config, f"{m}.{hparam.name}"),
                     f"config.{m}.{hparam.name}")
    if "recipe" in section:
      common.check_choice(config, f"{m}.recipe", method.attack_recipes)
  common.check_float(config, "eps", low=0.0)
  threat = _as_dict(config.train_attack)
  for field in ("eps", "step_size"):
    if threat.get(field) is not None:
      common.check_float(config, f"train_attack.{field}", low=0.0)
  if threat.get("num_steps") is not None:
    common.check_int(config, "train_attack.num_steps", low=0)
  if not tuple(config.seeds):
    raise ValueError("config.seeds must hold at least one seed, got ()")
  for i, seed in enumerate(config.seeds):
    common.check_int({f"seeds[{i}]": seed}, f"seeds[{i}]", low=0)
  for field in ("batch_size", "eval_batch_size", "num_epochs",
                "eval_every_epochs", "validation_size"):
    common.check_int(config, field, low=1)
  if config.num_test_examples is not None:
    common.check_int(config, "num_test_examples", low=1)
  common.check_float(config, "ema_decay", low=0.0, high=1.0, high_open=True)
  common.check_int(config, "cpu_devices", low=1, optional=True)
  _check_attack_spec(config.validation_attack, "validation_attack")
  for name, spec in config.test_attacks.items():
    _check_attack_spec(spec, name)
  for name in config.cascade:
    if name not in attacks.PRESETS or attacks.is_cascade(name):
      raise ValueError(f"config.cascade entries must be single-attack presets "
                       f"of {sorted(attacks.PRESETS)}, got {name!r}")


def _as_dict(value: Any) -> dict[str, Any]:
  return dict(value.to_dict() if hasattr(value, "to_dict") else value)


# --- the plan -----------------------------------------------------------------


class PlannedRun(NamedTuple):
  """One run: a method, its τ (None unless the method sweeps τ), a seed."""

  method: str
  tau: float | None
  seed: int


def run_name(method: str, tau: float | None, seed: int) -> str:
  """Directory name of one run, e.g. 'adv_comp_sum_tau1/seed0'."""
  tag = method if tau is None else f"{method}_tau{tau:g}"
  return os.path.join(tag, f"seed{seed}")


def runs_of(config: Any) -> list[PlannedRun]:
  """Every run of the config: methods × (τ grid) × seeds, in that order."""
  out = []
  for method in config.methods:
    section = _section(config, method)
    taus = tuple(section["taus"]) if "taus" in section else (None,)
    for tau in taus:
      for seed in config.seeds:
        out.append(PlannedRun(method, None if tau is None else float(tau),
                              int(seed)))
  return out


def run_hparams(config: Any, run: PlannedRun) -> dict[str, float]:
  """The state's hparams of a run (τ from the run, the rest from the config
  section of its method); read by the objective from ``batch['hparams']``."""
  method = adversarial.get_method(run.method)
  values = {h.name: common.config_value(config, f"{run.method}.{h.name}")
            for h in method.hparams
            if not (h.name == "tau" and run.tau is not None)}
  if run.tau is not None:
    values["tau"] = run.tau
  return method.check_hparams(values)


def train_attack_overrides(config: Any, method: str) -> dict[str, Any]:
  """``config.train_attack`` as overrides of the method's training attack,
  filtered by the method's recipe (``config.<method>.recipe``) if it has
  one; see :meth:`compsum_jax.training.adversarial.Method.
  train_attack_overrides`."""
  return adversarial.get_method(method).train_attack_overrides(
      _as_dict(config.train_attack), _section(config, method).get("recipe"))


# --- what the runs share ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What every run of one experiment shares (built once by :meth:`create`).

  Attributes:
    config: the checked experiment config.
    dataset: the data, loaded once.
    model: the Flax module.
    mesh: the data-parallel mesh, or None on one device.
    steps_per_epoch, total_steps: updates per epoch and per run.
    optimizer, schedule: from ``config.optimizer`` and ``total_steps``.
    augment_fn: the on-device augmentation hook, or None.
    steps: compiled train and eval steps, keyed by what changes the program.
  """

  config: Any
  dataset: data.Dataset
  model: nn.Module
  mesh: jax.sharding.Mesh | None
  steps_per_epoch: int
  total_steps: int
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  augment_fn: Callable[..., Any] | None
  steps: common.StepCache

  @classmethod
  def create(cls, config: Any) -> Experiment:
    """Checks the config, loads the data and builds the shared pieces."""
    check_config(config)
    ds = common.load_data(config)
    plan = common.build_optimizer(config, ds.train.num_examples)
    return cls(config=config, dataset=ds,
               model=common.build_model(config, ds),
               mesh=common.data_mesh(config),
               steps_per_epoch=plan.steps_per_epoch,
               total_steps=plan.total_steps, optimizer=plan.optimizer,
               schedule=plan.schedule,
               augment_fn=common.make_augment_fn(config, ds),
               steps=common.StepCache())

  @property
  def ema_decay(self) -> float:
    """Decay of the parameters' EMA (0: no EMA)."""
    return float(self.config.ema_decay)

  @property
  def use_ema(self) -> bool:
    """Whether the evaluated parameters are the EMA ones."""
    return self.ema_decay > 0

  def train_step(self, method: str, attack: Mapping[str, Any]):
    """The compiled train step of a method with its training attack."""
    return self.steps.get(
        ("train", method, _freeze(attack)),
        lambda: training.make_train_step(
            adversarial.make_objective(self.model, method, attack),
            self.optimizer, ema_decay=self.ema_decay,
            augment_fn=self.augment_fn, mesh=self.mesh))

  def eval_step(self, specs: Mapping[str, Any]):
    """The compiled robust eval step of named attack specs."""
    specs = _as_dict(specs)

    def build():
      attack_fns = {name: build_eval_attack(spec)
                    for name, spec in specs.items()}
      return training.make_eval_step(
          adversarial.make_robust_eval_fn(self.model, attack_fns),
          use_ema=self.use_ema, mesh=self.mesh)

    return self.steps.get(("eval", _freeze(specs)), build)


def _freeze(value: Any) -> Any:
  """Hashable version of nested config primitives."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def build_eval_attack(spec: Mapping[str, Any]) -> attacks.presets.AttackFn:
  """An attack from ``{'preset': name, **overrides}`` (config primitives)."""
  spec = _as_dict(spec)
  return attacks.build_attack(spec.pop("preset"), **spec)


# --- one run ------------------------------------------------------------------


def train_and_evaluate(experiment: Experiment, run: PlannedRun, workdir: str
                       ) -> dict[str, Any]:
  """Trains one run in ``workdir`` and evaluates its best checkpoint on test.

  Resumes from ``workdir``'s checkpoints; if the run already has its final
  results (``final.json``) they are returned without recomputation.

  Returns:
    A JSON-able dict: method, tau, seed, status ('ok' or 'nonfinite'),
    best_step, val metrics of the best checkpoint, and test metrics
    'clean_accuracy', 'robust_<attack>' for every test attack and, with a
    cascade, 'robust_cascade' (worst case over the cascade),
    'gradient_masking_suspected' and 'cascade_stages'.
  """
  config = experiment.config
  os.makedirs(workdir, exist_ok=True)
  final_path = os.path.join(workdir, RUN_RESULT)
  if os.path.exists(final_path):
    with open(final_path, encoding="utf-8") as f:
      return json.load(f)
  ds, mesh = experiment.dataset, experiment.mesh
  train_step = experiment.train_step(
      run.method, train_attack_overrides(config, run.method))
  state = training.init_train_state(
      experiment.model, experiment.optimizer, rng=run.seed,
      input_shape=ds.input_shape, hparams=run_hparams(config, run),
      ema=experiment.use_ema)
  val_step = experiment.eval_step({"val": config.validation_attack})
  eval_batch_size = int(config.eval_batch_size)

  def evaluate_fn(state, epochs_done):
    del epochs_done
    out = common.evaluate_split(val_step, state, ds.validation,
                                eval_batch_size, mesh=mesh, rng=run.seed + 1)
    return {"val_accuracy": float(out["correct"]),
            "val_robust_accuracy": float(out["robust_val"])}

  # The run's identity for resuming (bookkeeping switches may change).
  run_config = {"experiment": common.run_identity(config, BOOKKEEPING_FIELDS),
                "method": run.method, "tau": run.tau, "seed": run.seed}
  record: dict[str, Any] = {"method": run.method, "tau": run.tau,
                            "seed": run.seed, "status": "ok"}
  try:
    result = training.fit(
        workdir=workdir, config=run_config, state=state,
        train_step=train_step, mesh=mesh,
        train_batches=common.epoch_batches(config, ds, mesh),
        steps_per_epoch=experiment.steps_per_epoch,
        num_epochs=int(config.num_epochs), evaluate_fn=evaluate_fn,
        eval_every_epochs=int(config.eval_every_epochs),
        keep_checkpoints=int(config.keep_checkpoints),
        best_metric="val_robust_accuracy", best_mode="max",
        log_every_steps=int(config.log_every_steps),
        learning_rate_fn=experiment.schedule,
        progress=bool(config.progress), tensorboard=bool(config.tensorboard),
        global_batch_size=(int(config.batch_size)
                           if jax.process_count() > 1 else None))
  except training.NonFiniteError as e:
    record.update(status="nonfinite", error=str(e))
    _write_run_result(final_path, record)
    return record
  store = training.CheckpointStore(
      os.path.join(workdir, training.loop.CHECKPOINT_DIR),
      best_metric="val_robust_accuracy")
  try:  # every process takes part in the restore
    best_step = store.best_step()
    best_state, meta = store.restore(result.state, best_step)
  finally:
    store.close()
  record.update(best_step=best_step, best_epoch=meta.get("epoch"),
                final_step=result.step, val=meta.get("metrics") or {})
  record.update(evaluate_test(experiment, best_state, run.seed))
  _write_run_result(final_path, record)
  return record


def _write_run_result(path: str, record: Mapping[str, Any]) -> None:
  """Process 0 writes a run's final.json; every process waits for it."""
  if training.is_primary():
    common.write_json(path, record)
  training.distributed.sync("run_result")  # same name on every host


def evaluate_test(experiment: Experiment, state: training.TrainState,
                  seed: int) -> dict[str, Any]:
  """Clean and robust test accuracy of ``state`` (see the module doc)."""
  config = experiment.config
  test = experiment.dataset.test
  if config.num_test_examples is not None:
    limit = int(config.num_test_examples)
    test = data.ArraySplit(test.images[:limit], test.labels[:limit])
  eval_batch_size = int(config.eval_batch_size)
  eval_step = experiment.eval_step(config.test_attacks)
  start = time.perf_counter()
  out = common.evaluate_split(eval_step, state, test, eval_batch_size,
                             mesh=experiment.mesh, rng=seed + 2)
  record: dict[str, Any] = {
      "num_test_examples": int(out["count"]),
      "clean_accuracy": float(out["correct"]),
  }
  for name in config.test_attacks:
    record[f"robust_{name}"] = float(out[f"robust_{name}"])
  if config.cascade:
    record.update(cascade_test(experiment, state, test, seed))
  record["test_eval_seconds"] = time.perf_counter() - start
  return record


def cascade_test(experiment: Experiment, state: training.TrainState,
                 test: data.ArraySplit, seed: int) -> dict[str, Any]:
  """The attack cascade's robust accuracy on ``test``, with exact counts.

  With several processes each attacks its contiguous share
  ``process_slice(N)`` of the test points on its own devices (example i keeps
  its global index, hence its attack keys), and the counts are summed over
  processes: robust accuracy = Σ_p robust_p / N.
  """
  config = experiment.config
  # Process-local copies of the (replicated) parameters for host-side loops.
  params = training.fetch(state.ema_params if experiment.use_ema
                          else state.params)
  batch_stats = training.fetch(state.batch_stats)
  share = training.distributed.process_slice(test.num_examples)
  cascade = attacks.robust_accuracy(
      adversarial.inference_logits_fn(experiment.model, params, batch_stats),
      data.to_float_images(test.images[share]), test.labels[share],
      jax.random.key(seed + 3), attacks=list(config.cascade),
      eps=float(config.eps), norm=config.norm,
      batch_size=int(config.eval_batch_size),
      overrides=_as_dict(config.cascade_overrides) or None,
      example_offset=share.start)
  counts = training.sum_over_processes({
      "num": cascade.num_examples, "clean": cascade.num_clean_correct,
      "robust": cascade.num_robust,
      # Points broken by Square but by none of the gradient attacks before it.
      "gradient_free_only": cascade.num_broken_only_by_gradient_free,
      "attacked": [s.num_attacked for s in cascade.stages],
      "broken": [s.num_broken for s in cascade.stages],
      "after": [s.num_robust_after for s in cascade.stages]})
  num = int(counts["num"])
  return {
      # The exact attacks behind robust_cascade (stated in results.md).
      "cascade_attack_configuration": cascade.attack_configuration,
      "robust_cascade": int(counts["robust"]) / num,
      "cascade_clean_accuracy": int(counts["clean"]) / num,
      "gradient_masking_suspected": int(counts["gradient_free_only"]) > 0,
      "num_broken_only_by_gradient_free": int(counts["gradient_free_only"]),
      "cascade_stages": [
          {"name": s.name, "attacked": int(attacked), "broken": int(broken),
           "robust_accuracy_after": int(after) / num}
          for s, attacked, broken, after in zip(
              cascade.stages, counts["attacked"], counts["broken"],
              counts["after"], strict=True)]}


# --- the experiment -----------------------------------------------------------


def run(config: Any, workdir: str, log: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
  """Every run of the config, then results.json and the report.

  Args:
    config: the experiment config (``configs/adversarial_training.py``).
    workdir: output directory (one sub-directory per run).
    log: called with a one-line summary after each run (e.g. ``print``).

  Returns:
    The results dict written to ``results.json``: 'config', 'runs' (one
    record per run, see :func:`train_and_evaluate`) and 'summary' (mean and
    sample std over seeds per (method, τ)).
  """
  experiment = Experiment.create(config)
  os.makedirs(workdir, exist_ok=True)
  columns = report.test_columns(common.to_jsonable(config))
  planned = runs_of(config)
  records = []
  for i, planned_run in enumerate(planned):
    start = time.perf_counter()
    name = run_name(*planned_run)
    record = train_and_evaluate(experiment, planned_run,
                                os.path.join(workdir, name))
    records.append(record)
    if log is not None:
      scores = " ".join(f"{k}={record[k]:.3f}" for k in columns
                        if k in record)
      log(f"[{i + 1}/{len(planned)}] {name}: {record['status']} {scores} "
          f"({time.perf_counter() - start:.0f} s)")
  results = {"config": common.to_jsonable(config), "runs": records,
             "summary": report.summarize(records, columns),
             "run": training.distributed.run_record(experiment.mesh)}
  if training.is_primary():  # process 0 writes every file
    common.write_json(os.path.join(workdir, RESULTS_JSON), results)
    report.write_report(results, workdir)
  training.distributed.sync("results")  # same name on every host
  return results
