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
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax

from compsum_jax import attacks, data, training
from compsum_jax.attacks import threat_model
from compsum_jax.training import adversarial, smooth_weight
from compsum_jax.training import metrics as metrics_lib
from experiments import adversarial_training_report as report
from experiments import common, run_outcome

RESULTS_JSON = report.RESULTS_JSON
RUN_RESULT = "final.json"
# Config fields that change no run's numbers, besides
# common.BOOKKEEPING_FIELDS (the ν*(h) diagnostic only evaluates, with its
# own keys: training and test numbers are the same with it on or off).
BOOKKEEPING_FIELDS = ("cpu_devices", "nu_threshold")
# Fields that only select which runs exist (each run's own method, τ and seed
# are in its identity).
RUN_SELECTION_FIELDS = ("methods", "seeds")


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
  common.check_choice(config, "norm", threat_model.NORMS)
  if common.optional_value(config, "cpu_devices") is not None:
    common.check_int(config, "cpu_devices", low=1)
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
  check_nu_threshold_config(config)


validate_config = check_config  # the name the binaries use


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


def run_identity(config: Any, run: PlannedRun) -> dict[str, Any]:
  """What a run's numbers depend on: the config without bookkeeping fields,
  without the run-selection fields (methods, seeds) and the other methods'
  sections, plus the run's method, τ and seed. Stored in the run's
  config.json (checked by ``fit`` on resume) and in its final.json."""
  experiment = common.run_identity(
      config, BOOKKEEPING_FIELDS + RUN_SELECTION_FIELDS)
  for method in adversarial.METHODS:
    if method != run.method:
      experiment.pop(method, None)
  if run.tau is not None and isinstance(experiment.get(run.method), dict):
    experiment[run.method] = {k: v for k, v in experiment[run.method].items()
                              if k != "taus"}
  return {"experiment": experiment, "method": run.method, "tau": run.tau,
          "seed": run.seed}


def differing_fields(stored: Any, current: Any, prefix: str = "") -> list[str]:
  """Dotted paths where two JSON values differ (e.g. 'experiment.eps')."""
  if isinstance(stored, dict) and isinstance(current, dict):
    out = []
    for key in sorted(set(stored) | set(current), key=str):
      path = f"{prefix}.{key}" if prefix else str(key)
      if key not in stored or key not in current:
        out.append(path)
      else:
        out += differing_fields(stored[key], current[key], path)
    return out
  return [] if stored == current else [prefix or "(whole record)"]


def stored_identity(run_dir: str) -> dict[str, Any] | None:
  """The identity a run directory was made with (final.json's, else the
  config.json written by ``fit``), or None for a run never started."""
  for name, key in ((RUN_RESULT, "identity"),
                    (metrics_lib.CONFIG_FILE, None)):
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    if key is None:
      return record
    if key in record:
      return record[key]
    # A final.json written without identity: judged by config.json.
  return None


def check_workdir_matches(config: Any, workdir: str) -> None:
  """Refuses a workdir holding runs of a different config.

  Raises:
    run_outcome.ConfigMismatchError: naming the differing fields (as
      ``experiment.<field>`` for config fields) and the runs.
  """
  fields: set[str] = set()
  runs = []
  for planned in runs_of(config):
    run_dir = os.path.join(workdir, run_name(*planned))
    stored = stored_identity(run_dir)
    if stored is None:
      continue
    current = common.to_jsonable(run_identity(config, planned))
    diff = differing_fields(stored, current)
    if diff:
      fields.update(diff)
      runs.append(run_name(*planned))
  if runs:
    shown = ", ".join(f.removeprefix("experiment.") for f in sorted(fields))
    raise run_outcome.ConfigMismatchError(
        f"workdir {workdir} holds runs of a different config (differing "
        f"fields: {shown}; runs: {', '.join(runs)}); use another --workdir, "
        f"restore those values, or pass {run_outcome.NEW_RUN_DIR_FLAG} to "
        "write this config's runs to a new sub-directory of the workdir")


def config_run_dir(config: Any, workdir: str) -> str:
  """``<workdir>/config-<hash>``: the directory ``--new_run_dir`` uses, one
  per experiment identity (the same config always maps to the same one)."""
  identity = common.run_identity(config, BOOKKEEPING_FIELDS)
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode(
      "utf-8")).hexdigest()[:10]
  return os.path.join(workdir, f"config-{digest}")


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
    attack_jit_cache: the test cascade's compiled attacks, shared by every
      run (``attacks.robust_accuracy``'s ``jit_cache``).
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
  attack_jit_cache: dict[Any, Any] = dataclasses.field(default_factory=dict)

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


def train_and_evaluate(experiment: Experiment, run: PlannedRun, workdir: str,
                       *, retry_diverged: bool = False) -> dict[str, Any]:
  """Trains one run in ``workdir`` and evaluates its best checkpoint on test.

  Resumes from ``workdir``'s checkpoints; if the run already has its final
  results (``final.json``, made with the same :func:`run_identity`) they are
  returned without recomputation. A run that diverged (status 'nonfinite')
  is trained again from its last good checkpoint only with
  ``retry_diverged``.

  Returns:
    A JSON-able dict: method, tau, seed, status ('ok' or 'nonfinite'),
    identity (:func:`run_identity`), best_step, val metrics of the best
    checkpoint, final_metrics (the evaluation committed with the final
    checkpoint), and test metrics 'clean_accuracy', 'robust_<attack>' for
    every test attack and, with a cascade, 'robust_cascade' (worst case over
    the cascade), 'gradient_masking_suspected' and 'cascade_stages'.

  Raises:
    run_outcome.ConfigMismatchError: ``workdir`` holds this run made with a
      different config.
  """
  config = experiment.config
  identity = common.to_jsonable(run_identity(config, run))
  stored = stored_identity(workdir)
  if stored is not None and stored != identity:
    raise run_outcome.ConfigMismatchError(
        f"{workdir} holds this run made with a different config (differing "
        f"fields: {', '.join(differing_fields(stored, identity))})")
  os.makedirs(workdir, exist_ok=True)
  final_path = os.path.join(workdir, RUN_RESULT)
  if os.path.exists(final_path):
    with open(final_path, encoding="utf-8") as f:
      record = json.load(f)
    if record.get("status") == "ok" or not retry_diverged:
      return record
    os.remove(final_path)  # retry the diverged run from its last checkpoint
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
    out = common.evaluate_split(val_step, state, ds.validation,
                                eval_batch_size, mesh=mesh, rng=run.seed + 1)
    return {"val_accuracy": float(out["correct"]),
            "val_robust_accuracy": float(out["robust_val"]),
            **nu_threshold_metrics(experiment, run, state, epochs_done)}

  # The run's identity for resuming (bookkeeping switches may change).
  run_config = identity
  record: dict[str, Any] = {"method": run.method, "tau": run.tau,
                            "seed": run.seed, "status": "ok",
                            "identity": identity}
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
  best_state, best_step, meta = training.restore_best_checkpoint(
      workdir, result.state, "val_robust_accuracy")
  record.update(best_step=best_step, best_epoch=meta.get("epoch"),
                final_step=result.step, val=meta.get("metrics") or {},
                final_metrics=result.final_metrics)
  record.update(nu_threshold_record(config, run, workdir))
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


# --- ν*(h) at every evaluation of ADV-COMP-SUM runs ---------------------------
# ν*(h) = n^{1−τ}·E[z_y − mean z] / E[sup_{x'} ‖v(x, x')‖₂]: above it the
# constant classifier beats every rescaling of h (compsum_jax.training.
# smooth_weight). Estimated on the validation split with its own PRNG key
# (seed + 5), so it changes nothing the training computes.

# Methods whose outer loss has the smooth term weighted by hparam 'nu'.
NU_THRESHOLD_METHODS = ("adv_comp_sum",)
NU_THRESHOLD_FIELDS = ("nu_threshold", "mean_label_gap",
                       "mean_sup_smooth_term")
# PGD steps of the estimate when config.nu_threshold.num_steps is None: the
# training attack's, and at least this many.
NU_THRESHOLD_MIN_STEPS = 10


class NuAboveThresholdWarning(UserWarning):
  """The configured ν of an ADV-COMP-SUM run is at or above ν*(h)."""


def check_nu_threshold_config(config: Any) -> None:
  """Checks ``config.nu_threshold`` (absent: the diagnostic's defaults)."""
  if common.optional_value(config, "nu_threshold") is None:
    return
  enabled = common.config_value(config, "nu_threshold.enabled")
  if not isinstance(enabled, bool):
    raise ValueError(f"config.nu_threshold.enabled must be True or False, "
                     f"got config.nu_threshold.enabled={enabled!r}")
  for field in ("num_steps", "num_examples"):
    common.check_int(config, f"nu_threshold.{field}", low=1, optional=True)


def _nu_threshold_settings(config: Any) -> dict[str, Any] | None:
  """``config.nu_threshold`` as a dict (defaults if absent); None: off."""
  section = common.optional_value(config, "nu_threshold")
  settings = {"enabled": True, "num_steps": None, "num_examples": None}
  settings.update({} if section is None else _as_dict(section))
  return settings if settings["enabled"] else None


def _eval_apply_fn(experiment: Experiment
                   ) -> Callable[[Any, jax.Array], jax.Array]:
  """``(variables = (params, batch_stats), x) → logits`` in evaluation mode,
  one function per Experiment: the compiled PGD of the estimate is cached on
  its identity, so every evaluation of every run reuses one program."""

  def build():
    model = experiment.model

    def apply_eval(variables, x):
      params, batch_stats = variables
      return training.apply_model(model, params, batch_stats, x,
                                  train=False)[0]

    return apply_eval

  return experiment.steps.get(("nu_threshold_apply",), build)


def nu_threshold_metrics(experiment: Experiment, run: PlannedRun,
                         state: training.TrainState, epochs_done: int
                         ) -> dict[str, float]:
  """ν*(h) of the evaluated parameters (EMA if used) on the validation split.

  Only for :data:`NU_THRESHOLD_METHODS` with ``config.nu_threshold.enabled``
  (else {}). The sup of the smooth term is PGD's with the training attack's
  ε, norm and step size, ``config.nu_threshold.num_steps`` steps (None: the
  training attack's, at least :data:`NU_THRESHOLD_MIN_STEPS`), one restart,
  on the first ``num_examples`` validation examples (None: all), example i
  with its own key (``example_offset``). With several processes each
  estimates its share ``process_slice(N)`` and the sums of z_y − mean z and
  of sup ‖v‖ and the count are added over processes (exact counts, not means
  of means). Warns (:class:`NuAboveThresholdWarning`) when the run's
  ν ≥ ν*(h).

  Returns:
    {'nu_threshold': ν*(h), 'mean_label_gap': E[z_y − mean z],
    'mean_sup_smooth_term': E[sup ‖v‖₂]}.
  """
  config = experiment.config
  settings = _nu_threshold_settings(config)
  if settings is None or run.method not in NU_THRESHOLD_METHODS:
    return {}
  hparams = run_hparams(config, run)
  attack = attacks.presets.resolve(
      adversarial.get_method(run.method).train_attack,
      **train_attack_overrides(config, run.method))
  num_steps = settings["num_steps"] or max(int(attack["num_steps"]),
                                           NU_THRESHOLD_MIN_STEPS)
  split = experiment.dataset.validation
  limit = min(settings["num_examples"] or split.num_examples,
              split.num_examples)
  # Process-local copies of the (replicated) parameters, as for the cascade.
  params = training.fetch(state.ema_params if experiment.use_ema
                          else state.params)
  batch_stats = training.fetch(state.batch_stats)
  # Each process estimates its contiguous share of the examples; example i
  # keeps its global index, hence its PGD key, and the sums and the count are
  # added over processes: E[·] = Σ_p Σ_{i ∈ share p} (·)_i / N.
  share = training.distributed.process_slice(limit)
  sums = {"label_gap": 0.0, "sup_smooth_term": 0.0,
          "count": share.stop - share.start}
  if sums["count"]:
    logits, sup_term = smooth_weight.sup_smooth_term(
        _eval_apply_fn(experiment),
        data.to_float_images(split.images[share]), split.labels[share],
        jax.random.fold_in(jax.random.key(run.seed + 5), epochs_done),
        eps=float(attack["eps"]), norm=attack.get("norm", "linf"),
        step_size=float(attack["step_size"]), num_steps=int(num_steps),
        num_restarts=1, batch_size=int(config.eval_batch_size),
        variables=(params, batch_stats), example_offset=share.start)
    labels = np.asarray(split.labels[share])
    # z_y − mean z per example, float64
    gap = (np.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
           - logits.mean(axis=-1))
    sums.update(label_gap=gap.sum(), sup_smooth_term=sup_term.sum())
  totals = training.sum_over_processes(sums)
  count = int(totals["count"])
  mean_label_gap = float(totals["label_gap"]) / count
  mean_sup_smooth_term = float(totals["sup_smooth_term"]) / count
  nu_threshold = smooth_weight.nu_threshold_value(
      int(experiment.dataset.num_classes), hparams["tau"], mean_label_gap,
      mean_sup_smooth_term)
  if hparams["nu"] >= nu_threshold:
    warnings.warn(
        f"{run_name(*run)}, epoch {epochs_done}: configured nu="
        f"{hparams['nu']:g} exceeds nu*(h)={nu_threshold:.4g} "
        f"(tau={hparams['tau']:g}): heading for the constant classifier",
        NuAboveThresholdWarning, stacklevel=2)
  return {"nu_threshold": nu_threshold, "mean_label_gap": mean_label_gap,
          "mean_sup_smooth_term": mean_sup_smooth_term}


def nu_threshold_record(config: Any, run: PlannedRun, workdir: str
                        ) -> dict[str, Any]:
  """final.json's ν*(h) fields: {} when the diagnostic is off, else 'nu'
  and 'nu_threshold_history' ({epoch, step, nu_threshold, mean_label_gap,
  mean_sup_smooth_term, nu_exceeds_threshold} per evaluation, from the
  run's metrics.jsonl)."""
  if (_nu_threshold_settings(config) is None
      or run.method not in NU_THRESHOLD_METHODS):
    return {}
  nu = run_hparams(config, run)["nu"]
  history = []
  for r in training.read_metrics(workdir):
    if r.get("split") == "eval" and "nu_threshold" in r:
      entry = {k: r[k] for k in ("epoch", "step", *NU_THRESHOLD_FIELDS)}
      # Non-finite values are stored as strings ("inf"); float() reads them.
      entry["nu_exceeds_threshold"] = nu >= float(r["nu_threshold"])
      history.append(entry)
  return {"nu": nu, "nu_threshold_history": history}


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
      jit_cache=experiment.attack_jit_cache, example_offset=share.start)
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


def run(config: Any, workdir: str, log: Callable[[str], None] | None = None,
        *, new_run_dir: bool = False, retry_diverged: bool = False
        ) -> dict[str, Any]:
  """Every run of the config, then results.json and the report.

  The experiment owns ``workdir`` while it runs (``training.workdir_lock``).
  Runs already in the workdir must have been made with this config (each
  run's :func:`run_identity`): a different config is refused before any data
  is loaded, naming the differing fields, unless ``new_run_dir``, which puts
  this config's runs into :func:`config_run_dir`.

  Args:
    config: the experiment config (``configs/adversarial_training.py``).
    workdir: output directory (one sub-directory per run).
    log: called with progress lines and a one-line summary after each run
      (e.g. ``print``).
    new_run_dir: write the runs to ``<workdir>/config-<hash>`` (one per
      config) instead of ``workdir`` itself.
    retry_diverged: train again runs that diverged on an earlier start.

  Returns:
    The results dict written to ``results.json``: 'config', 'runs' (one
    record per run, see :func:`train_and_evaluate`), 'summary' (mean and
    sample std over seeds per (method, τ)). A diverged run is a record
    with status 'nonfinite' (see :func:`failed_runs`).

  Raises:
    ValueError: a bad config field.
    run_outcome.ConfigMismatchError: the workdir holds runs of another
      config.
    training.WorkdirBusyError: another run owns ``workdir``.
  """
  check_config(config)
  say = log if log is not None else (lambda line: None)
  with run_outcome.owned_workdir(workdir, process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    run_dir = config_run_dir(config, workdir) if new_run_dir else workdir
    if new_run_dir:
      say(f"adversarial_training: this config's runs go to {run_dir}")
    check_workdir_matches(config, run_dir)
    planned = runs_of(config)
    say(f"adversarial_training: {len(planned)} runs "
        f"({', '.join(run_name(*p) for p in planned)}); loading "
        f"{config.dataset} and building the model")
    experiment = Experiment.create(config)
    os.makedirs(run_dir, exist_ok=True)
    columns = report.test_columns(common.to_jsonable(config))
    records = []
    for i, planned_run in enumerate(planned):
      start = time.perf_counter()
      name = run_name(*planned_run)
      say(f"[{i + 1}/{len(planned)}] {name}: training "
          f"({config.num_epochs} epochs; first run compiles the steps)")
      record = train_and_evaluate(experiment, planned_run,
                                  os.path.join(run_dir, name),
                                  retry_diverged=retry_diverged)
      records.append(record)
      scores = " ".join(f"{k}={record[k]:.3f}" for k in columns
                        if k in record)
      say(f"[{i + 1}/{len(planned)}] {name}: {record['status']} {scores} "
          f"({time.perf_counter() - start:.0f} s)")
    results = {"config": common.to_jsonable(config), "runs": records,
               "summary": report.summarize(records, columns),
               "run": training.distributed.run_record(experiment.mesh)}
    if training.is_primary():  # process 0 writes every file
      common.write_json(os.path.join(run_dir, RESULTS_JSON), results)
      report.write_report(results, run_dir)
    training.distributed.sync("results")  # same name on every host
  return results


def failed_runs(results: Mapping[str, Any]) -> list[str]:
  """Names of the runs of ``results`` whose status is not 'ok'."""
  return [run_name(r["method"], r["tau"], r["seed"]) for r in results["runs"]
          if r.get("status") != "ok"]
