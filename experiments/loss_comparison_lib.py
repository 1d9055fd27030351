"""The loss-comparison experiment: every ℓ_τ trained side by side.

For every τ in ``config.taus`` and seed index s < ``config.num_seeds`` one
member h_{τ,s} is trained with the comp-sum loss ℓ_τ; everything
else is equal: same data, label noise and batch order (``data_seed``), same
model, optimizer and schedule, and the same initialisation for all τ at a given
seed index (seed ``config.seed + s``). All members go through THE train step
(:func:`compsum_jax.training.make_train_step`) with the objective
``mean_i ℓ_τ(h(x_i), y_i)``, τ read from ``batch['hparams']``:

* ``sweep_mode='vmap'``: the K = |taus|·num_seeds members are one stacked
  state trained by the step's K-member mode (one compiled call per batch);
* ``sweep_mode='sequential'``: one member after another (K runs of the
  single-member step);
* ``sweep_mode='auto'``: vmap, falling back to sequential when the vmapped
  step runs out of device memory.

A member whose loss or gradient becomes NaN/Inf stops its whole group (the
non-finite stop of ``fit``; in 'vmap' mode that is the whole sweep) with a
message naming the diverged τ and seed; ℓ_0 is the usual culprit, hence the
gradient clip in the presets. The other groups still train and the report
is written with the stopped group's members marked as failed (status
'nonfinite', no numbers); then :func:`run` raises
``run_outcome.DivergedRunsError`` (the binary exits 1). A restart trains
such a group again, from its last good checkpoint, only with
``retry_diverged``.

Each group of members is a :func:`compsum_jax.training.fit` run in
``<workdir>/members/<first>-<last>`` (checkpoints, resume, metrics.jsonl).
Evaluation (every ``eval_every_epochs`` epochs and at the end) measures, per
member: test accuracy and test ℓ_τ on the CLEAN test labels, ℓ_τ and accuracy
on the (possibly noisy) training labels, and, when the posteriors are known
(``synthetic``), both sides of the comp-sum H-consistency bound on the
test inputs with the exact posteriors p(·|x):

  zero-one estimation error   E_x[ΔC_0-1(h, x)] = E_x[max_y p_y − p_{h(x)}]
  surrogate estimation error  E_x[ΔC_τ(h, x)]   = E_x[C_τ(h, x) − C*_τ(x)]
  check                       E_x[ΔC_0-1] ≤ Γ_τ(E_x[ΔC_τ])

with C*_τ the complete-family closed form. For the family of all
measurable functions both minimizability gaps vanish, so this is exactly the
H-consistency bound R_0-1(h) − R*_0-1 ≤ Γ_τ(R_τ(h) − R*_τ) on the
distribution (x ~ test sample, y ~ p(·|x)). It is computed in float64 from the
model's float32 logits by ``compsum_jax.theory.member_bound_sides``
(all members of a group in one vmapped call).

This module plans the members, trains them (:func:`training.fit`) and writes
``results.json`` (per τ mean/std over seeds of the final test accuracy and
surrogate losses, per-member histories, the bound check, the config). The
report (``results.md``, ``accuracy_vs_tau.png``, ``training_curves.png`` and,
with the bound check, ``bound_check.png``) is rendered from results.json by
``experiments/loss_comparison_report.py``, also on a finished workdir.
If ``config.companion`` names a preset, :func:`run` then runs it in
``<workdir>/companion_<name>``.
``results.json`` holds no timings or absolute paths, so a resumed run writes
the same file as an uninterrupted one; timings go to ``timing.json``.

results.json fields:
  experiment: 'loss_comparison'; config: the full config.
  dataset: name, num_classes, input_shape, num_train, num_test, label_noise
    {kind, rate} (or null), fraction_train_labels_flipped.
  sweep: mode ('vmap' or 'sequential', as actually run), num_members, taus,
    num_seeds, seeds, steps_per_epoch, total_steps, num_epochs, num_devices,
    mesh, std (how the standard deviations are computed).
  per_tau: one entry per τ: tau, loss (name), num_seeds (finished seeds)
    and {mean, std} over them (final evaluation) of test_accuracy (clean
    test labels), final_surrogate_loss (ℓ_τ on the training labels),
    test_surrogate_loss (ℓ_τ on the test set), test_cross_entropy,
    train_accuracy; with failed members also num_failed, and null instead
    of {mean, std} when no seed of τ finished.
  members: one entry per member: index, tau, seed, seed_index, final {field:
    value} and history {epoch, step, field: [value per evaluation]} with the
    fields of HISTORY_FIELDS. A member of a group that diverged has instead
    status 'nonfinite', group and error (no final, no history).
  failed_groups (only when a group diverged): [{group, members (indices),
    diverged_members (names), step, last_checkpoint_step, error}].
  bound_check: {applicable: false, reason} or {applicable: true, statement,
    tolerance, num_checks, num_violations, holds, min_slack, per_tau: [{tau,
    num_checks, num_violations, min_slack, final_zero_one_excess,
    final_surrogate_excess, final_bound}]} (finals are means over seeds;
    finished members only).
  history_check: one entry per finished group: {group, complete, problems,
    rebuilt_epochs, missing_epochs}. Final values always come from the
    evaluation committed with each group's final checkpoint; a metrics.jsonl
    that lost records is completed from the kept checkpoints, and epochs
    lost for good are listed in missing_epochs.
  files: the table and plots, relative to the workdir.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from compsum_jax import data as data_lib
from compsum_jax import theory, training
from experiments import common, run_outcome
from experiments import loss_comparison_report as report

SWEEP_MODES = ("vmap", "sequential", "auto")
RESULTS_FILE = report.RESULTS_FILE
TIMING_FILE = "timing.json"
MEMBERS_DIR = "members"
# Config fields that do not change what is trained or measured, besides
# common.BOOKKEEPING_FIELDS.
BOOKKEEPING_FIELDS = ("checkpoint_every_epochs", "companion", "cpu_devices",
                      "member_shards")
# results.json's status of a member whose group diverged (as the adversarial
# experiment's runs).
FAILED_STATUS = "nonfinite"


def tau_name(tau: float) -> str:
  """Name of ℓ_τ: 0 sum-exponential, 1 cross-entropy, (1, 2) generalized
  cross-entropy with q = τ − 1, 2 mean absolute error."""
  if tau == 0.0:
    return "sum-exponential"
  if tau == 1.0:
    return "cross-entropy"
  if tau == 2.0:
    return "MAE"
  if 1.0 < tau < 2.0:
    return f"GCE (q={tau - 1.0:g})"
  return "comp-sum"


# ------------------------------------------------------------ validation


def validate_config(config: Any) -> None:
  """Checks every field at start-up; ValueError naming the bad field.

  Raises:
    ValueError: e.g. unknown dataset, τ < 0, label noise rate outside
      [0, 1), num_seeds < 1, unknown sweep mode, bound check on a dataset
      without known posteriors.
  """
  common.check_data_config(config)
  common.check_model_config(config)
  common.check_optimizer_config(config)
  common.check_float_sequence(config, "taus", low=0.0, distinct=True)
  common.check_int(config, "num_seeds", low=1)
  common.check_int(config, "seed", low=0)
  common.check_int(config, "num_epochs", low=1)
  common.check_int(config, "eval_every_epochs", low=1)
  common.check_int(config, "keep_checkpoints", low=1)
  common.check_int(config, "checkpoint_every_epochs", low=1)
  common.check_int(config, "log_every_steps", low=1)
  common.check_choice(config, "sweep_mode", SWEEP_MODES)
  common.check_int(config, "cpu_devices", low=1, optional=True)
  common.check_int(config, "member_shards", low=1, optional=True)
  check = common.config_value(config, "bound_check")
  if check is True and common.dataset_name(config) != "synthetic":
    raise ValueError(f"config.bound_check=True needs known posteriors "
                     f"(dataset 'synthetic'), got config.dataset="
                     f"{config.dataset!r}")
  companion = common.config_value(config, "companion")
  if companion:
    from configs import loss_comparison as presets  # pylint: disable=g-import-not-at-top

    if companion not in presets.PRESETS:
      raise ValueError(f"config.companion must be '' or one of "
                       f"{presets.PRESETS}, got config.companion="
                       f"{companion!r}")


def config_taus(config: Any) -> tuple[float, ...]:
  """``config.taus`` as a tuple of floats (a single number becomes a 1-tuple)."""
  return common.check_float_sequence(config, "taus", low=0.0)


# ----------------------------------------------------------------- setup


@dataclasses.dataclass
class Sweep:
  """Everything built from the config, shared by all members.

  Attributes:
    config: the validated config.
    dataset: the loaded dataset (noisy training labels, clean test labels).
    model: the Flax model.
    members: the τ × seed members, τ-major.
    plan: the optimizer, its schedule and the step counts
      (steps_per_epoch, total_steps, warmup_steps).
    augment_fn: on-device augmentation hook, or None.
    objective: ``objective(params, batch_stats, batch, rng)`` for the step.
    posteriors: exact p(·|x) of the test inputs, float64 [N_test, n], when
      the bound check is on; else None.
    steps: compiled steps and meshes, built once per key (members trained
      one after another share them).
  """

  config: Any
  dataset: data_lib.Dataset
  model: nn.Module
  members: list[common.Member]
  plan: common.OptimizerPlan
  augment_fn: Callable[..., dict] | None
  objective: Callable[..., tuple[jax.Array, dict]]
  posteriors: np.ndarray | None
  steps: common.StepCache = dataclasses.field(
      default_factory=common.StepCache)

  @property
  def optimizer(self) -> optax.GradientTransformation:
    return self.plan.optimizer

  @property
  def steps_per_epoch(self) -> int:
    return self.plan.steps_per_epoch

  @property
  def total_steps(self) -> int:
    return self.plan.total_steps

  @property
  def bound_check(self) -> bool:
    return self.posteriors is not None

  def mesh_for(self, num_members: int | None) -> jax.sharding.Mesh | None:
    """The steps' mesh over every device (None on one device).

    ('data',) for one member; for K stacked members also a 'members' axis
    where K and the device count share a divisor (``common.data_mesh``).
    """
    return self.steps.get(("mesh", num_members), lambda: common.data_mesh(
        self.config, num_members))


def build_sweep(config: Any, dataset: data_lib.Dataset | None = None
                ) -> Sweep:
  """Validates ``config`` and builds data, model, members and optimizer.

  ``dataset``: the already loaded data of ``config`` (None: load it).
  """
  validate_config(config)
  if dataset is None:
    dataset = common.load_data(config)
  model = common.build_model(config, dataset)
  members = common.member_grid({"tau": config_taus(config)},
                               int(config.num_seeds), int(config.seed))
  plan = common.build_optimizer(config, dataset.train.num_examples)
  check = config.bound_check
  if check is None:
    check = dataset.posterior_fn is not None
  posteriors = None
  if check:
    posteriors = np.asarray(dataset.posterior_fn(
        np.asarray(dataset.test.images, np.float64)), np.float64)
  sweep = Sweep(config=config, dataset=dataset, model=model, members=members,
                plan=plan, augment_fn=common.make_augment_fn(config, dataset),
                objective=common.make_objective(model),
                posteriors=posteriors)
  # The mesh of the sweep mode's first group, built now so that a bad batch
  # size or member_shards fails before any training.
  sweep.mesh_for(None if config.sweep_mode == "sequential"
                 else len(members))
  return sweep


def group_dir(workdir: str, group: Sequence[common.Member], stacked: bool
              ) -> str:
  """``<workdir>/members/<first>-<last>`` (+ '-vmap' for stacked groups)."""
  name = f"{group[0].index:03d}-{group[-1].index:03d}"
  if stacked:
    name += "-vmap"
  return os.path.join(workdir, MEMBERS_DIR, name)


# ----------------------------------------------------------------- training


def make_evaluate_fn(sweep: Sweep, group: Sequence[common.Member], *,
                     stacked: bool
                     ) -> Callable[[training.TrainState, int], dict]:
  """``evaluate_fn(state, epochs_done)`` for :func:`training.fit`.

  Returns per member (lists [K] for a stacked group, numbers otherwise):
  test_accuracy, test_loss (ℓ_τ), test_cross_entropy on the clean test
  labels; train_accuracy, train_loss on the training labels; and with the
  bound check zero_one_excess, surrogate_excess, bound, slack.
  """
  config = sweep.config
  num_members = len(group) if stacked else None
  mesh = sweep.mesh_for(num_members)
  eval_step = sweep.steps.get(("eval_step", num_members), lambda: (
      training.make_eval_step(training.classification_eval_fn(sweep.model),
                              num_members=num_members, mesh=mesh)))
  logits_fn = sweep.steps.get(("logits_fn", stacked), lambda: (
      common.make_logits_fn(sweep.model, stacked=stacked)))
  batch_size = int(config.eval_batch_size)
  taus = [m.hparams["tau"] for m in group]

  def evaluate_fn(state: training.TrainState, epochs_done: int) -> dict:
    del epochs_done
    test = common.evaluate_split(eval_step, state, sweep.dataset.test,
                                 batch_size, mesh=mesh)
    train = common.evaluate_split(eval_step, state, sweep.dataset.train,
                                  batch_size, mesh=mesh)
    out = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
           "test_cross_entropy": test["cross_entropy"],
           "train_accuracy": train["accuracy"], "train_loss": train["loss"]}
    if sweep.bound_check:
      logits = common.predict_logits(logits_fn, state, sweep.dataset.test,
                                     batch_size, mesh=mesh)
      if not stacked:
        logits = logits[None]
      sides = theory.member_bound_sides(logits, sweep.posteriors, taus)
      out.update({k: v if stacked else v[0]
                  for k, v in sides._asdict().items()})
    return out

  return evaluate_fn


def train_group(sweep: Sweep, group: Sequence[common.Member], workdir: str,
                *, stacked: bool, retry_diverged: bool = False
                ) -> training.FitResult:
  """Trains one group of members with :func:`training.fit` (resumable).

  Args:
    sweep: from :func:`build_sweep`.
    group: the members; with ``stacked`` they train as one K-member state
      through the vmapped step, else ``group`` must hold one member.
    workdir: the group's run directory.
    stacked: K-member mode (True) or single-member mode.
    retry_diverged: train again a group that diverged on an earlier start
      (else such a group is refused).

  Returns:
    The FitResult (final state: stacked [K, ...] or single).

  Raises:
    training.NonFiniteError: the group diverged (``diverged.json`` written).
    run_outcome.DivergedBeforeError: it diverged on an earlier start.
  """
  config = sweep.config
  run_outcome.check_not_diverged(workdir, retry_diverged)
  state = common.init_states(sweep.model, sweep.optimizer, group,
                             sweep.dataset.input_shape, stacked=stacked)
  num_members = len(group) if stacked else None
  mesh = sweep.mesh_for(num_members)
  train_step = sweep.steps.get(("train_step", num_members), lambda: (
      training.make_train_step(sweep.objective, sweep.optimizer,
                               augment_fn=sweep.augment_fn,
                               num_members=num_members, mesh=mesh)))
  # The run's identity for resuming: the config without the bookkeeping
  # switches, so e.g. --config.progress=False may change between starts.
  identity = common.run_identity(config, BOOKKEEPING_FIELDS)
  run_config = {"experiment": "loss_comparison", "config": identity,
                "members": [m.index for m in group],
                "taus": [m.hparams["tau"] for m in group],
                "seeds": [m.seed for m in group], "stacked": stacked}
  several = jax.process_count() > 1
  try:
    return training.fit(
        workdir=workdir, config=run_config, state=state,
        train_step=train_step, mesh=mesh,
        train_batches=common.epoch_batches(config, sweep.dataset, mesh),
        steps_per_epoch=sweep.steps_per_epoch,
        num_epochs=int(config.num_epochs),
        evaluate_fn=make_evaluate_fn(sweep, group, stacked=stacked),
        eval_every_epochs=int(config.eval_every_epochs),
        keep_checkpoints=int(config.keep_checkpoints),
        checkpoint_every_epochs=int(config.checkpoint_every_epochs),
        log_every_steps=int(config.log_every_steps),
        learning_rate_fn=sweep.plan.schedule, progress=bool(config.progress),
        tensorboard=bool(config.tensorboard),
        global_batch_size=int(config.batch_size) if several else None)
  except training.NonFiniteError as error:
    bad = error.members if error.members is not None else [0]
    names = [f"tau={group[k].hparams['tau']:g} seed={group[k].seed}"
             for k in bad]
    if training.is_primary():  # process 0 writes every file
      print(f"loss_comparison: diverged members {names}; lower "
            "config.optimizer.learning_rate or set "
            "config.optimizer.grad_clip")
      run_outcome.mark_diverged(workdir, error, members=names)
    # Every process stops at the same step (the finite check is global);
    # all read the marker after this.
    training.distributed.sync("diverged")  # same name on every host
    raise


def eval_history(group_workdir: str) -> list[dict[str, Any]]:
  """The 'eval' records of a group's metrics.jsonl, one per step, by step.

  Process 0 writes the file; with several processes every process waits
  here until it is written, then reads it (the workdir is shared).
  """
  training.distributed.sync("eval_history")  # same name on every host
  by_step = {}
  for record in training.read_metrics(group_workdir):
    if record.get("split") == "eval":
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]


@dataclasses.dataclass
class GroupOutcome:
  """A finished group's results, final values from its final checkpoint.

  Attributes:
    histories: per member {field: [value per evaluation]} (metrics.jsonl,
      completed from the kept checkpoints where the log lacks records).
    finals: per member {field: value} of the evaluation committed with the
      final checkpoint (never the last log record).
    history_check: {group, complete, problems, rebuilt_epochs,
      missing_epochs}: what was wrong with metrics.jsonl (paths relative to
      the experiment's workdir), which epochs were recovered from the
      checkpoints and which are lost for good.
  """

  histories: list[dict[str, list[float]]]
  finals: list[dict[str, float]]
  history_check: dict[str, Any]


def group_outcome(gdir: str, group: Sequence[common.Member], stacked: bool,
                  final_metrics: Mapping[str, Any] | None, workdir: str
                  ) -> GroupOutcome:
  """Final values from state and the history checked against them.

  Args:
    gdir: the group's run directory.
    group: its members.
    stacked: whether they were trained as one K-member state.
    final_metrics: ``FitResult.final_metrics`` (None: read from the final
      checkpoint with ``training.final_evaluation``).
    workdir: the experiment's workdir (paths in the report are relative).

  Raises:
    training.RunNotFinishedError: the group has no final checkpoint.
  """
  if final_metrics is None:
    _, final_metrics = training.final_evaluation(gdir)
  check = training.check_history(gdir)
  records = check.records
  rebuilt_epochs: list[int] = []
  if not check.complete:
    # The evaluations stored with the kept checkpoints are the committed
    # ones: they fill gaps and replace disagreeing log records.
    by_step = {int(r["step"]): r for r in records}
    for record in training.rebuild_eval_history(gdir):
      by_step[int(record["step"])] = record
      rebuilt_epochs.append(int(record["epoch"]))
    records = [by_step[s] for s in sorted(by_step)]
  seen = {int(r["epoch"]) for r in records}
  missing = [e for e in check.expected_epochs if e not in seen]
  prefix = os.path.abspath(workdir) + os.sep
  history_check = {
      "group": os.path.relpath(gdir, workdir),
      "complete": check.complete,
      "problems": [p.replace(prefix, "") for p in check.problems],
      "rebuilt_epochs": sorted(set(rebuilt_epochs)),
      "missing_epochs": missing}
  final = {name: final_metrics[name] for name in HISTORY_FIELDS
           if name in final_metrics}
  finals = [{name: float(v[k] if stacked else v) for name, v in final.items()}
            for k in range(len(group))]
  return GroupOutcome(histories=member_histories(records, group, stacked),
                      finals=finals, history_check=history_check)


HISTORY_FIELDS = ("test_accuracy", "test_loss", "test_cross_entropy",
                  "train_accuracy", "train_loss", "zero_one_excess",
                  "surrogate_excess", "bound", "slack")


def member_histories(records: Sequence[Mapping[str, Any]],
                     group: Sequence[common.Member], stacked: bool
                     ) -> list[dict[str, list[float]]]:
  """Per-member histories {field: [value per evaluation]} from eval records.

  Values are floats (the 'nan'/'inf' strings of ``to_jsonable`` too).
  """
  histories = []
  for k in range(len(group)):
    history: dict[str, list[Any]] = {"epoch": [], "step": []}
    for record in records:
      history["epoch"].append(int(record["epoch"]))
      history["step"].append(int(record["step"]))
      for name in HISTORY_FIELDS:
        if name in record:
          value = record[name][k] if stacked else record[name]
          history.setdefault(name, []).append(float(value))
    histories.append(history)
  return histories


def failed_group(gdir: str, group: Sequence[common.Member], workdir: str
                 ) -> dict[str, Any]:
  """The record of a group that diverged, now or on an earlier start.

  Read from the group's ``diverged.json`` (so a restart that does not retry
  it reports the same record). Paths are relative to ``workdir``.

  Returns:
    {group, members (indices), diverged_members (names of the members whose
    loss or gradient became non-finite), step, last_checkpoint_step, error}.
  """
  marker = run_outcome.diverged_marker(gdir) or {}
  prefix = os.path.abspath(workdir) + os.sep
  return {"group": os.path.relpath(gdir, workdir),
          "members": [m.index for m in group],
          "diverged_members": [str(name) for name in
                               marker.get("members") or []],
          "step": marker.get("step"),
          "last_checkpoint_step": marker.get("last_checkpoint_step"),
          "error": str(marker.get("message", "diverged (NaN/Inf)")).replace(
              prefix, "")}


@dataclasses.dataclass
class SweepOutcome:
  """What :func:`run_sweep` trained: per member histories and final values.

  Attributes:
    histories: per member {field: [value per evaluation]}, member order
      (None for a member of a failed group).
    finals: per member {field: value} from the final checkpoints (None for
      a member of a failed group).
    history_checks: one :attr:`GroupOutcome.history_check` per finished
      group.
    mode: the mode actually used, 'vmap' or 'sequential'.
    failed_groups: one :func:`failed_group` record per group that diverged
      (now, or on an earlier start and not retried).
  """

  histories: list[dict[str, list[float]] | None]
  finals: list[dict[str, float] | None]
  history_checks: list[dict[str, Any]]
  mode: str
  failed_groups: list[dict[str, Any]] = dataclasses.field(
      default_factory=list)


def _train_or_fail(sweep: Sweep, group: Sequence[common.Member], gdir: str,
                   workdir: str, log: Callable[[str], None], *, stacked: bool,
                   retry_diverged: bool
                   ) -> GroupOutcome | dict[str, Any]:
  """Trains one group: its :class:`GroupOutcome`, or its
  :func:`failed_group` record if it diverged (now or on an earlier start)."""
  try:
    fitted = train_group(sweep, group, gdir, stacked=stacked,
                         retry_diverged=retry_diverged)
  except training.NonFiniteError:
    return failed_group(gdir, group, workdir)
  except run_outcome.DivergedBeforeError:
    record = failed_group(gdir, group, workdir)
    log(f"loss_comparison: {record['group']} diverged on an earlier start; "
        f"not trained again (pass {run_outcome.RETRY_FLAG} to retry it)")
    return record
  return group_outcome(gdir, group, stacked, fitted.final_metrics, workdir)


def run_sweep(sweep: Sweep, workdir: str, log: Callable[[str], None] = print,
              *, retry_diverged: bool = False) -> SweepOutcome:
  """Trains every member (resuming where possible).

  'vmap'/'auto' train all members as one stacked group ('auto' falls back
  to one member after another when that runs out of device memory);
  'sequential' trains one member after another. Final values come from each
  group's final checkpoint (:func:`group_outcome`). A group that diverges
  (NaN/Inf) is recorded in ``failed_groups`` and the other groups still
  train; a group that diverged on an earlier start is trained again only
  with ``retry_diverged`` (from its last good checkpoint).
  """
  mode = sweep.config.sweep_mode
  if mode in ("vmap", "auto"):
    group = sweep.members
    gdir = group_dir(workdir, group, stacked=True)
    try:
      result = _train_or_fail(sweep, group, gdir, workdir, log, stacked=True,
                              retry_diverged=retry_diverged)
    except Exception as error:  # pylint: disable=broad-except
      if mode != "auto" or not training.is_device_out_of_memory(error):
        raise
      log(f"vmapped sweep of {len(group)} members ran out of device memory "
          f"({type(error).__name__}); falling back to sequential members")
    else:
      if isinstance(result, GroupOutcome):
        return SweepOutcome(result.histories, result.finals,
                            [result.history_check], "vmap")
      return SweepOutcome([None] * len(group), [None] * len(group), [],
                          "vmap", failed_groups=[result])
  histories, finals, checks, failed = [], [], [], []
  for member in sweep.members:
    gdir = group_dir(workdir, [member], stacked=False)
    log(f"member {member.index + 1}/{len(sweep.members)}: "
        f"tau={member.hparams['tau']:g} seed={member.seed}")
    result = _train_or_fail(sweep, [member], gdir, workdir, log,
                            stacked=False, retry_diverged=retry_diverged)
    if isinstance(result, GroupOutcome):
      histories += result.histories
      finals += result.finals
      checks.append(result.history_check)
    else:
      histories.append(None)
      finals.append(None)
      failed.append(result)
  return SweepOutcome(histories, finals, checks, "sequential",
                      failed_groups=failed)


# ------------------------------------------------------------------ results


def summarize(sweep: Sweep, outcome: SweepOutcome) -> dict[str, Any]:
  """The content of results.json (see module docstring); deterministic."""
  config = sweep.config
  taus = config_taus(config)
  mode = outcome.mode
  failed_by_index = {index: group for group in outcome.failed_groups
                     for index in group["members"]}
  members_out = []
  for member, history, final in zip(sweep.members, outcome.histories,
                                    outcome.finals, strict=True):
    entry = {"index": member.index, "tau": member.hparams["tau"],
             "seed": member.seed, "seed_index": member.seed_index}
    failed = failed_by_index.get(member.index)
    if failed is None:
      entry.update(final=final, history=dict(history))
    else:  # no final numbers: its group stopped on a NaN/Inf
      entry.update(status=FAILED_STATUS, group=failed["group"],
                   error=failed["error"])
    members_out.append(entry)
  per_tau = []
  for tau in taus:
    finals = [m["final"] for m in members_out
              if m["tau"] == tau and "final" in m]
    num_failed = sum(m["tau"] == tau and "final" not in m
                     for m in members_out)
    # num_seeds counts the finished seeds, over which the statistics are.
    row = {"tau": tau, "loss": tau_name(tau), "num_seeds": len(finals)}
    if num_failed:
      row["num_failed"] = num_failed
    for name, key in (("test_accuracy", "test_accuracy"),
                      ("final_surrogate_loss", "train_loss"),
                      ("test_surrogate_loss", "test_loss"),
                      ("test_cross_entropy", "test_cross_entropy"),
                      ("train_accuracy", "train_accuracy")):
      if finals:
        mean, std = common.mean_and_std([f[key] for f in finals])
        row[name] = {"mean": mean, "std": std}
      else:
        row[name] = None  # every seed of this τ failed
    per_tau.append(row)
  train = sweep.dataset.train
  noise = sweep.dataset.meta.get("label_noise")
  flipped = (float(np.mean(train.flipped)) if train.flipped is not None
             else 0.0)
  results = {
      "experiment": "loss_comparison",
      "config": common.to_jsonable(config),
      "dataset": {"name": sweep.dataset.name,
                  "num_classes": sweep.dataset.num_classes,
                  "input_shape": list(sweep.dataset.input_shape),
                  "num_train": train.num_examples,
                  "num_test": sweep.dataset.test.num_examples,
                  "label_noise": noise,
                  "fraction_train_labels_flipped": flipped},
      "sweep": {"mode": mode, "num_members": len(sweep.members),
                "taus": list(taus), "num_seeds": int(config.num_seeds),
                "seeds": sorted({m.seed for m in sweep.members}),
                "steps_per_epoch": sweep.steps_per_epoch,
                "total_steps": sweep.total_steps,
                "warmup_steps": sweep.plan.warmup_steps,
                "num_epochs": int(config.num_epochs),
                "num_devices": jax.device_count(),
                "mesh": _mesh_shape(sweep.mesh_for(
                    len(sweep.members) if mode == "vmap" else None)),
                "std": "sample standard deviation over seeds (ddof=1)"},
      "run": training.distributed.run_record(sweep.mesh_for(
          len(sweep.members) if mode == "vmap" else None)),
      "per_tau": per_tau,
      "members": members_out,
      "bound_check": _bound_summary(sweep, members_out),
      "history_check": outcome.history_checks,
      "files": {"table": report.TABLE_FILE,
                "accuracy_plot": report.PLOT_ACCURACY,
                "curves_plot": report.PLOT_CURVES},
  }
  if outcome.failed_groups:
    results["failed_groups"] = outcome.failed_groups
  if results["bound_check"]["applicable"]:
    results["files"]["bound_plot"] = report.PLOT_BOUND
  return results


def _bound_summary(sweep: Sweep, members: Sequence[Mapping[str, Any]]
                   ) -> dict[str, Any]:
  """results.json's bound_check: the counts of theory.bound_check_summary."""
  if not sweep.bound_check:
    return {"applicable": False,
            "reason": f"dataset {sweep.dataset.name!r} has no known "
                      "posteriors p(y|x); use the 'synthetic' preset"}
  finished = [m for m in members if "final" in m]
  if not finished:
    return {"applicable": False,
            "reason": "no member finished (every group diverged)"}
  summary = theory.bound_check_summary(
      [{"tau": m["tau"], "slack": m["history"]["slack"],
        **{k: m["final"][k] for k in ("zero_one_excess", "surrogate_excess",
                                      "bound")}} for m in finished])
  statement = ("E_x[ΔC_0-1(h,x)] <= Γ_τ(E_x[ΔC_τ(h,x)]) at every "
               "evaluation of every member (complete family, minimizability "
               "gaps 0; test inputs, exact posteriors)")
  if len(finished) < len(members):
    statement += "; members of diverged groups not checked"
  return {"applicable": True, "statement": statement, **summary}


def _mesh_shape(mesh: jax.sharding.Mesh | None) -> dict[str, int]:
  """{'members': groups, 'data': batch shards} of the steps' mesh."""
  if mesh is None:
    return {"members": 1, "data": 1}
  return {"members": training.mesh_axis_size(mesh, training.MEMBER_AXIS),
          "data": training.mesh_axis_size(mesh, training.DATA_AXIS)}


# ---------------------------------------------------------------------- run


def run_one(config: Any, workdir: str, log: Callable[[str], None] = print,
            dataset: data_lib.Dataset | None = None, *,
            retry_diverged: bool = False
            ) -> tuple[dict[str, Any], dict[str, str]]:
  """One sweep: build, train (resumable), write results.json and the report.

  Args:
    config: the experiment config (see ``configs/loss_comparison.py``).
    workdir: output directory; re-running with the same workdir resumes.
    log: where progress lines go.
    dataset: the loaded data of ``config`` (None: load it).
    retry_diverged: train again groups that diverged on an earlier start.

  Returns:
    (results dict as written to results.json, {name: path} of the outputs).
  """
  start = time.perf_counter()
  sweep = build_sweep(config, dataset)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  log(f"loss_comparison: {len(sweep.members)} members (taus "
      f"{list(config_taus(config))} × {config.num_seeds} seeds) on "
      f"{sweep.dataset.name}, {sweep.total_steps} steps, mode "
      f"{config.sweep_mode}; workdir {workdir}")
  outcome = run_sweep(sweep, workdir, log, retry_diverged=retry_diverged)
  train_seconds = time.perf_counter() - start
  mode = outcome.mode
  results = summarize(sweep, outcome)
  for check in outcome.history_checks:
    if not check["complete"]:
      log(f"loss_comparison: metrics history of {check['group']} was "
          f"incomplete ({'; '.join(check['problems'])}); recovered epochs "
          f"{check['rebuilt_epochs']} from the checkpoints; lost for good: "
          f"{check['missing_epochs'] or 'none'} (final values come from the "
          "final checkpoint)")
  # The files process 0 writes (the others return the same paths).
  paths = {"results": os.path.join(workdir, RESULTS_FILE),
           **{name: os.path.join(workdir, rel)
              for name, rel in results["files"].items()}}
  if training.is_primary():  # process 0 writes every file
    common.write_json(os.path.join(workdir, RESULTS_FILE), results)
    paths = report.write_report(results, workdir)
    common.write_json(os.path.join(workdir, TIMING_FILE),
                      {"wall_seconds_this_process":
                       time.perf_counter() - start,
                       "train_seconds_this_process": train_seconds,
                       "mode": mode, "backend": jax.default_backend()})
  training.distributed.sync("results")  # same name on every host
  return results, paths


def companion_config(config: Any) -> Any:
  """The preset ``config.companion`` (no companion of its own), with the
  main run's bookkeeping switches (progress, tensorboard)."""
  from configs import loss_comparison as presets  # pylint: disable=g-import-not-at-top

  companion = presets.get_config(config.companion)
  companion.companion = ""
  companion.progress = config.progress
  companion.tensorboard = config.tensorboard
  return companion


def run(config: Any, workdir: str, log: Callable[[str], None] = print, *,
        retry_diverged: bool = False
        ) -> tuple[dict[str, Any], dict[str, str]]:
  """The experiment: the sweep of ``config`` in ``workdir``, then, if
  ``config.companion`` names a preset, that sweep in
  ``<workdir>/companion_<name>`` (the bound check of the digits demo).

  The run owns ``workdir`` (``training.workdir_lock``, companion included):
  a second run on it fails at once naming the owner. A start that fails
  before writing anything leaves no directory behind. Each sweep loads its
  data once. The reports go to ``log``.

  Args:
    config: the experiment config.
    workdir: output directory; re-running with the same workdir resumes.
    log: where progress lines go.
    retry_diverged: train again groups that diverged on an earlier start
      (else they are refused with ``run_outcome.DivergedBeforeError``).

  Returns:
    (results, {name: path}) of the main sweep.

  Raises:
    training.WorkdirBusyError: another run owns ``workdir``.
    run_outcome.DivergedRunsError: a group diverged (now, or on an earlier
      start and not retried); raised after every sweep ran and wrote its
      report, which lists the group's members as failed (the error carries
      the main sweep's results and paths).
  """
  validate_config(config)
  companion = companion_config(config) if config.companion else None
  if companion is not None:
    validate_config(companion)  # fail before the main sweep trains
  with run_outcome.owned_workdir(workdir, process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    return _run_locked(config, companion, workdir, log, retry_diverged)


def _run_locked(config: Any, companion: Any, workdir: str,
                log: Callable[[str], None], retry_diverged: bool
                ) -> tuple[dict[str, Any], dict[str, str]]:
  """:func:`run` once the workdir lock is held."""
  results, paths = run_one(config, workdir, log,
                           retry_diverged=retry_diverged)
  log(report.console_report(
      f"loss comparison on {results['dataset']['name']}", paths))
  failures = failed_group_names(results)
  num_groups = _num_groups(results)
  if companion is None:
    log("\nBound-check summary:\n" + report.bound_summary_text(results))
  else:
    sub = os.path.join(workdir, f"companion_{config.companion}")
    log(f"\nCompanion run '{config.companion}' for the bound check in {sub}")
    results_c, paths_c = run_one(companion, sub, log,
                                 retry_diverged=retry_diverged)
    log(report.console_report(f"companion: {results_c['dataset']['name']}",
                              paths_c))
    log("\nBound-check summary (companion run):\n"
        + report.bound_summary_text(results_c))
    failures += [os.path.join(os.path.basename(sub), name)
                 for name in failed_group_names(results_c)]
    num_groups += _num_groups(results_c)
  if failures:
    raise run_outcome.DivergedRunsError(
        f"{len(failures)} of {num_groups} member groups diverged (NaN/Inf "
        f"loss or gradient): {'; '.join(failures)}; results.json and "
        "results.md list their members as failed; pass "
        f"{run_outcome.RETRY_FLAG} to train them again from their last good "
        "checkpoint", results, paths)
  return results, paths


def _num_groups(results: Mapping[str, Any]) -> int:
  """How many groups the sweep of ``results`` trained: one stacked group
  ('vmap') or one per member ('sequential')."""
  sweep = results["sweep"]
  return 1 if sweep["mode"] == "vmap" else int(sweep["num_members"])


def failed_group_names(results: Mapping[str, Any]) -> list[str]:
  """One 'members/000-000 (tau=0 seed=0 diverged at step 7)' per failed
  group of ``results`` (empty when every member finished)."""
  names = []
  for group in results.get("failed_groups", []):
    who = ", ".join(group["diverged_members"]) or "a member"
    names.append(f"{group['group']} ({who} diverged at step "
                 f"{group['step']})")
  return names
