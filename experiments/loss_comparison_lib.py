"""The loss-comparison experiment: every ℓ_τ trained side by side (issue 5).

For every τ in ``config.taus`` and seed index s < ``config.num_seeds`` one
member h_{τ,s} is trained with the comp-sum loss ℓ_τ (notes §2.1); everything
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
gradient clip in the presets.

Each group of members is a :func:`compsum_jax.training.fit` run in
``<workdir>/members/<first>-<last>`` (checkpoints, resume, metrics.jsonl).
Evaluation (every ``eval_every_epochs`` epochs and at the end) measures, per
member: test accuracy and test ℓ_τ on the CLEAN test labels, ℓ_τ and accuracy
on the (possibly noisy) training labels, and, when the posteriors are known
(``synthetic``), both sides of the H-consistency bound (notes §3.1) on the
test inputs with the exact posteriors p(·|x):

  zero-one estimation error   E_x[ΔC_0-1(h, x)] = E_x[max_y p_y − p_{h(x)}]
  surrogate estimation error  E_x[ΔC_τ(h, x)]   = E_x[C_τ(h, x) − C*_τ(x)]
  check                       E_x[ΔC_0-1] ≤ Γ_τ(E_x[ΔC_τ])

with C*_τ the complete-family closed form (notes §4.1). For the family of all
measurable functions both minimizability gaps vanish, so this is exactly the
H-consistency bound R_0-1(h) − R*_0-1 ≤ Γ_τ(R_τ(h) − R*_τ) on the
distribution (x ~ test sample, y ~ p(·|x)). It is computed in float64 from the
model's float32 logits by ``compsum_jax.theory.consistency_bound_sides``.

Outputs in the workdir: ``results.json`` (per τ mean/std over seeds of the
final test accuracy and surrogate losses, per-member histories, the bound
check, the config), ``results.md`` (the table), ``accuracy_vs_tau.png``,
``training_curves.png`` and, with the bound check, ``bound_check.png``.
``results.json`` holds no timings or absolute paths, so a resumed run writes
the same file as an uninterrupted one; timings go to ``timing.json``.

results.json fields:
  experiment: 'loss_comparison'; config: the full config.
  dataset: name, num_classes, input_shape, num_train, num_test, label_noise
    {kind, rate} (or null), fraction_train_labels_flipped.
  sweep: mode ('vmap' or 'sequential', as actually run), num_members, taus,
    num_seeds, seeds, steps_per_epoch, total_steps, num_epochs, std (how the
    standard deviations are computed).
  per_tau: one entry per τ: tau, loss (name), num_seeds and {mean, std} over
    seeds (final evaluation) of test_accuracy (clean test labels),
    final_surrogate_loss (ℓ_τ on the training labels), test_surrogate_loss
    (ℓ_τ on the test set), test_cross_entropy, train_accuracy.
  members: one entry per member: index, tau, seed, seed_index, final {field:
    value} and history {epoch, step, field: [value per evaluation]} with the
    fields of HISTORY_FIELDS.
  bound_check: {applicable: false, reason} or {applicable: true, statement,
    tolerance, num_checks, num_violations, holds, min_slack, per_tau: [{tau,
    num_checks, num_violations, min_slack, final_zero_one_excess,
    final_surrogate_excess, final_bound}]} (finals are means over seeds).
  files: the table and plots, relative to the workdir.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from compsum_jax import data as data_lib
from compsum_jax import theory, training
from experiments import common

SWEEP_MODES = ("vmap", "sequential", "auto")
# The bound check compares float64 means of O(1) quantities; a violation is a
# slack below −BOUND_TOLERANCE (rounding of the float64 sums is ~1e-13).
BOUND_TOLERANCE = 1e-9
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
TIMING_FILE = "timing.json"
PLOT_ACCURACY = "accuracy_vs_tau.png"
PLOT_CURVES = "training_curves.png"
PLOT_BOUND = "bound_check.png"
MEMBERS_DIR = "members"
# Config fields that do not change what is trained or measured, besides
# common.BOOKKEEPING_FIELDS.
BOOKKEEPING_FIELDS = ("checkpoint_every_epochs", "companion", "cpu_devices",
                      "member_shards")


def tau_name(tau: float) -> str:
  """Name of ℓ_τ in the comp-sum family (notes §2.2 table)."""
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
  taus = common.config_value(config, "taus")
  if isinstance(taus, (int, float)) and not isinstance(taus, bool):
    taus = (taus,)
  if not isinstance(taus, (tuple, list)) or not taus:
    raise ValueError(f"config.taus must be a non-empty sequence of numbers "
                     f"τ ≥ 0, got config.taus={taus!r}")
  for tau in taus:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (
        math.isfinite(tau) and tau >= 0):
      raise ValueError(f"config.taus must hold finite numbers τ ≥ 0, got "
                       f"config.taus={tuple(taus)!r} (bad value {tau!r})")
  if len(set(float(t) for t in taus)) != len(taus):
    raise ValueError(f"config.taus has repeated values: config.taus="
                     f"{tuple(taus)!r}")
  common.check_int(config, "num_seeds", low=1)
  common.check_int(config, "seed", low=0)
  common.check_int(config, "num_epochs", low=1)
  common.check_int(config, "eval_every_epochs", low=1)
  common.check_int(config, "keep_checkpoints", low=1)
  common.check_int(config, "checkpoint_every_epochs", low=1)
  common.check_int(config, "log_every_steps", low=1)
  common.check_choice(config, "sweep_mode", SWEEP_MODES)
  for field in ("cpu_devices", "member_shards"):
    if common.config_value(config, field) is not None:
      common.check_int(config, field, low=1)
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
  taus = config.taus
  if isinstance(taus, (int, float)):
    taus = (taus,)
  return tuple(float(t) for t in taus)


# ----------------------------------------------------------------- setup


@dataclasses.dataclass
class Sweep:
  """Everything built from the config, shared by all members.

  Attributes:
    config: the validated config.
    dataset: the loaded dataset (noisy training labels, clean test labels).
    model: the Flax model.
    members: the τ × seed members, τ-major.
    steps_per_epoch, total_steps: updates per epoch and in the whole run.
    optimizer, schedule: the optax optimizer and its learning-rate schedule.
    augment_fn: on-device augmentation hook, or None.
    objective: ``objective(params, batch_stats, batch, rng)`` for the step.
    posteriors: exact p(·|x) of the test inputs, float64 [N_test, n], when
      the bound check is on; else None.

  The steps' meshes come from :meth:`mesh_for`.
  """

  config: Any
  dataset: data_lib.Dataset
  model: nn.Module
  members: list[common.Member]
  steps_per_epoch: int
  total_steps: int
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  augment_fn: Callable[..., dict] | None
  objective: Callable[..., tuple[jax.Array, dict]]
  posteriors: np.ndarray | None
  compiled: dict[tuple, Any] = dataclasses.field(default_factory=dict)

  @property
  def bound_check(self) -> bool:
    return self.posteriors is not None

  def mesh_for(self, num_members: int | None) -> jax.sharding.Mesh | None:
    """The steps' mesh over every device (None on one device).

    ('data',) for one member; for K stacked members also a 'members' axis
    where K and the device count share a divisor (``common.data_mesh``).
    """
    return self.cached(("mesh", num_members), lambda: common.data_mesh(
        self.config, num_members))

  def cached(self, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per key: sequential members share compiled steps."""
    if key not in self.compiled:
      self.compiled[key] = build()
    return self.compiled[key]


def build_sweep(config: Any) -> Sweep:
  """Validates ``config`` and builds data, model, members and optimizer."""
  validate_config(config)
  dataset = common.load_data(config)
  model = common.build_model(config, dataset)
  members = common.member_grid({"tau": config_taus(config)},
                               int(config.num_seeds), int(config.seed))
  spe = common.steps_per_epoch(config, dataset)
  total = spe * int(config.num_epochs)
  optimizer, schedule = common.build_optimizer(config, total)
  check = config.bound_check
  if check is None:
    check = dataset.posterior_fn is not None
  posteriors = None
  if check:
    posteriors = np.asarray(dataset.posterior_fn(
        np.asarray(dataset.test.images, np.float64)), np.float64)
  sweep = Sweep(config=config, dataset=dataset, model=model, members=members,
                steps_per_epoch=spe, total_steps=total, optimizer=optimizer,
                schedule=schedule,
                augment_fn=common.make_augment_fn(config, dataset),
                objective=common.make_objective(model, "comp_sum"),
                posteriors=posteriors)
  # The mesh of the sweep mode's first group, built now so that a bad batch
  # size or member_shards fails before any training.
  sweep.mesh_for(None if config.sweep_mode == "sequential"
                 else len(members))
  return sweep


def member_groups(members: Sequence[common.Member], mode: str
                  ) -> list[list[common.Member]]:
  """'vmap'/'auto': one group of all members; 'sequential': one per member."""
  if mode == "sequential":
    return [[m] for m in members]
  return [list(members)]


def group_dir(workdir: str, group: Sequence[common.Member], stacked: bool
              ) -> str:
  """``<workdir>/members/<first>-<last>`` (+ '-vmap' for stacked groups)."""
  name = f"{group[0].index:03d}-{group[-1].index:03d}"
  if stacked:
    name += "-vmap"
  return os.path.join(workdir, MEMBERS_DIR, name)


# ------------------------------------------------------------- bound check


def bound_check_values(logits: np.ndarray, posteriors: np.ndarray,
                       taus: Sequence[float]) -> dict[str, np.ndarray]:
  """Both sides of the H-consistency bound for K members (notes §3.1).

  Uses ``compsum_jax.theory.consistency_bound_sides`` in float64 with the
  complete family (both minimizability gaps 0).

  Args:
    logits: float [K, N, n], member k's scores on the N evaluation inputs.
    posteriors: float64 [N, n], exact p(·|x) of those inputs.
    taus: the K members' τ.

  Returns:
    float64 arrays [K]: 'zero_one_excess' E_x[ΔC_0-1], 'surrogate_excess'
    E_x[ΔC_τ], 'bound' Γ_τ(E_x[ΔC_τ]) and 'slack' = bound − zero_one_excess
    (≥ 0 iff the bound holds).
  """
  logits = np.asarray(logits)
  if logits.ndim != 3 or logits.shape[0] != len(taus) or (
      logits.shape[1:] != posteriors.shape):
    raise ValueError(f"logits must have shape [K={len(taus)}, "
                     f"{posteriors.shape[0]}, {posteriors.shape[1]}], got "
                     f"{logits.shape}")
  out = {name: np.zeros(len(taus)) for name in
         ("zero_one_excess", "surrogate_excess", "bound", "slack")}
  with jax.enable_x64(True):
    probs = jnp.asarray(posteriors, jnp.float64)
    for k, tau in enumerate(taus):
      sides = theory.consistency_bound_sides(
          jnp.asarray(logits[k], jnp.float64), probs, float(tau))
      zero_one = float(sides.zero_one_excess)
      bound = float(sides.bound)
      out["zero_one_excess"][k] = zero_one
      out["surrogate_excess"][k] = float(sides.surrogate_excess)
      out["bound"][k] = bound
      out["slack"][k] = bound - zero_one
  return out


def gamma_curve(surrogate_excess: np.ndarray, tau: float,
                num_classes: int) -> np.ndarray:
  """Γ_τ(s) on a grid of s (float64), for plots (notes §3.1–3.2)."""
  with jax.enable_x64(True):
    return np.asarray(theory.inverse_transform(
        jnp.asarray(surrogate_excess, jnp.float64), float(tau), num_classes))


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
  eval_step = sweep.cached(("eval_step", num_members), lambda: (
      training.make_eval_step(training.classification_eval_fn(sweep.model),
                              num_members=num_members, mesh=mesh)))
  logits_fn = sweep.cached(("logits_fn", stacked), lambda: (
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
                                     batch_size)
      if not stacked:
        logits = logits[None]
      values = bound_check_values(logits, sweep.posteriors, taus)
      out.update({k: v if stacked else v[0] for k, v in values.items()})
    return out

  return evaluate_fn


def _is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or (
      "out of memory" in text)


def train_group(sweep: Sweep, group: Sequence[common.Member], workdir: str,
                *, stacked: bool) -> training.FitResult:
  """Trains one group of members with :func:`training.fit` (resumable).

  Args:
    sweep: from :func:`build_sweep`.
    group: the members; with ``stacked`` they train as one K-member state
      through the vmapped step, else ``group`` must hold one member.
    workdir: the group's run directory.
    stacked: K-member mode (True) or single-member mode.

  Returns:
    The FitResult (final state: stacked [K, ...] or single).
  """
  config = sweep.config
  state = common.init_states(sweep.model, sweep.optimizer, group,
                             sweep.dataset.input_shape, stacked=stacked)
  num_members = len(group) if stacked else None
  mesh = sweep.mesh_for(num_members)
  train_step = sweep.cached(("train_step", num_members), lambda: (
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
  try:
    return training.fit(
        workdir=workdir, config=run_config, state=state,
        train_step=train_step, mesh=mesh,
        train_batches=common.epoch_batches(config, sweep.dataset),
        steps_per_epoch=sweep.steps_per_epoch,
        num_epochs=int(config.num_epochs),
        evaluate_fn=make_evaluate_fn(sweep, group, stacked=stacked),
        eval_every_epochs=int(config.eval_every_epochs),
        keep_checkpoints=int(config.keep_checkpoints),
        checkpoint_every_epochs=int(config.checkpoint_every_epochs),
        log_every_steps=int(config.log_every_steps),
        learning_rate_fn=sweep.schedule, progress=bool(config.progress),
        tensorboard=bool(config.tensorboard))
  except training.NonFiniteError as error:
    bad = error.members if error.members is not None else [0]
    names = [f"tau={group[k].hparams['tau']:g} seed={group[k].seed}"
             for k in bad]
    print(f"loss_comparison: diverged members {names}; lower "
          "config.optimizer.learning_rate or set config.optimizer.grad_clip")
    raise


def eval_history(group_workdir: str) -> list[dict[str, Any]]:
  """The 'eval' records of a group's metrics.jsonl, one per step, by step."""
  by_step = {}
  for record in training.read_metrics(group_workdir):
    if record.get("split") == "eval":
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]


HISTORY_FIELDS = ("test_accuracy", "test_loss", "test_cross_entropy",
                  "train_accuracy", "train_loss", "zero_one_excess",
                  "surrogate_excess", "bound", "slack")


def member_histories(records: Sequence[Mapping[str, Any]],
                     group: Sequence[common.Member], stacked: bool
                     ) -> list[dict[str, list[float]]]:
  """Per-member histories {field: [value per evaluation]} from eval records."""
  histories = []
  for k in range(len(group)):
    history: dict[str, list[Any]] = {"epoch": [], "step": []}
    for record in records:
      history["epoch"].append(int(record["epoch"]))
      history["step"].append(int(record["step"]))
      for name in HISTORY_FIELDS:
        if name in record:
          value = record[name][k] if stacked else record[name]
          history.setdefault(name, []).append(_as_float(value))
    histories.append(history)
  return histories


def _as_float(value: Any) -> float:
  """JSON metric value → float ('nan'/'inf' strings from to_jsonable too)."""
  return float(value)


def run_sweep(sweep: Sweep, workdir: str, log: Callable[[str], None] = print
              ) -> tuple[list[dict[str, list[float]]], str]:
  """Trains every member (resuming where possible); returns histories, mode.

  Returns:
    (histories in member order, the mode actually used: 'vmap' or
    'sequential').
  """
  mode = sweep.config.sweep_mode
  histories: list[dict | None] = [None] * len(sweep.members)
  if mode in ("vmap", "auto"):
    group = sweep.members
    gdir = group_dir(workdir, group, stacked=True)
    try:
      train_group(sweep, group, gdir, stacked=True)
    except Exception as error:  # pylint: disable=broad-except
      if mode != "auto" or not _is_out_of_memory(error):
        raise
      log(f"vmapped sweep of {len(group)} members ran out of memory "
          f"({type(error).__name__}); falling back to sequential members")
      mode = "sequential"
    else:
      for k, h in enumerate(member_histories(eval_history(gdir), group,
                                             stacked=True)):
        histories[k] = h
      return histories, "vmap"
  for group in member_groups(sweep.members, "sequential"):
    gdir = group_dir(workdir, group, stacked=False)
    log(f"member {group[0].index + 1}/{len(sweep.members)}: "
        f"tau={group[0].hparams['tau']:g} seed={group[0].seed}")
    train_group(sweep, group, gdir, stacked=False)
    (h,) = member_histories(eval_history(gdir), group, stacked=False)
    histories[group[0].index] = h
  return histories, "sequential"


# ------------------------------------------------------------------ results


def summarize(sweep: Sweep, histories: Sequence[Mapping[str, list]],
              mode: str) -> dict[str, Any]:
  """The content of results.json (see module docstring); deterministic."""
  config = sweep.config
  taus = config_taus(config)
  members_out = []
  for member, history in zip(sweep.members, histories, strict=True):
    final = {name: values[-1] for name, values in history.items()
             if name not in ("epoch", "step")}
    members_out.append({"index": member.index, "tau": member.hparams["tau"],
                        "seed": member.seed, "seed_index": member.seed_index,
                        "final": final, "history": dict(history)})
  per_tau = []
  for tau in taus:
    finals = [m["final"] for m in members_out if m["tau"] == tau]
    row = {"tau": tau, "loss": tau_name(tau), "num_seeds": len(finals)}
    for name, key in (("test_accuracy", "test_accuracy"),
                      ("final_surrogate_loss", "train_loss"),
                      ("test_surrogate_loss", "test_loss"),
                      ("test_cross_entropy", "test_cross_entropy"),
                      ("train_accuracy", "train_accuracy")):
      mean, std = common.mean_and_std([f[key] for f in finals])
      row[name] = {"mean": mean, "std": std}
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
                "num_epochs": int(config.num_epochs),
                "num_devices": jax.device_count(),
                "mesh": _mesh_shape(sweep.mesh_for(
                    len(sweep.members) if mode == "vmap" else None)),
                "std": "sample standard deviation over seeds (ddof=1)"},
      "per_tau": per_tau,
      "members": members_out,
      "bound_check": _bound_summary(sweep, members_out),
      "files": {"table": TABLE_FILE, "accuracy_plot": PLOT_ACCURACY,
                "curves_plot": PLOT_CURVES},
  }
  if sweep.bound_check:
    results["files"]["bound_plot"] = PLOT_BOUND
  return results


def _bound_summary(sweep: Sweep, members: Sequence[Mapping[str, Any]]
                   ) -> dict[str, Any]:
  if not sweep.bound_check:
    return {"applicable": False,
            "reason": f"dataset {sweep.dataset.name!r} has no known "
                      "posteriors p(y|x); use the 'synthetic' preset"}
  per_tau = []
  all_slacks = []
  for tau in config_taus(sweep.config):
    slacks = [s for m in members if m["tau"] == tau
              for s in m["history"]["slack"]]
    finals = [m["final"] for m in members if m["tau"] == tau]
    all_slacks += slacks
    per_tau.append({
        "tau": tau, "num_checks": len(slacks),
        "num_violations": int(sum(s < -BOUND_TOLERANCE for s in slacks)),
        "min_slack": float(min(slacks)),
        "final_zero_one_excess": common.mean_and_std(
            [f["zero_one_excess"] for f in finals])[0],
        "final_surrogate_excess": common.mean_and_std(
            [f["surrogate_excess"] for f in finals])[0],
        "final_bound": common.mean_and_std([f["bound"] for f in finals])[0]})
  violations = int(sum(s < -BOUND_TOLERANCE for s in all_slacks))
  return {"applicable": True,
          "statement": "E_x[ΔC_0-1(h,x)] <= Γ_τ(E_x[ΔC_τ(h,x)]) at every "
                       "evaluation of every member (complete family, "
                       "minimizability gaps 0; test inputs, exact "
                       "posteriors)",
          "tolerance": BOUND_TOLERANCE,
          "num_checks": len(all_slacks), "num_violations": violations,
          "holds": violations == 0, "min_slack": float(min(all_slacks)),
          "per_tau": per_tau}


def _devices_text(sweep_results: Mapping[str, Any]) -> str:
  """' on 4 devices (2 member groups × batch split 2)' or '' on one."""
  count, mesh = sweep_results["num_devices"], sweep_results["mesh"]
  if count == 1:
    return ""
  return (f" on {count} devices ({mesh['members']} member groups × batch "
          f"split {mesh['data']})")


def _mesh_shape(mesh: jax.sharding.Mesh | None) -> dict[str, int]:
  """{'members': groups, 'data': batch shards} of the steps' mesh."""
  if mesh is None:
    return {"members": 1, "data": 1}
  return {"members": training.mesh_axis_size(mesh, training.MEMBER_AXIS),
          "data": training.mesh_axis_size(mesh, training.DATA_AXIS)}


def results_table(results: Mapping[str, Any]) -> str:
  """results.md: header facts and the per-τ table (mean ± std over seeds)."""
  ds, sw = results["dataset"], results["sweep"]
  config = results["config"]
  noise = ds["label_noise"] or {"kind": None, "rate": 0.0}
  lines = [
      "# Loss comparison: comp-sum losses ℓ_τ side by side", "",
      f"- dataset: `{ds['name']}` ({ds['num_train']} train / "
      f"{ds['num_test']} test, {ds['num_classes']} classes); label noise "
      f"on training labels: {noise['kind']} at rate {noise['rate']:g} "
      f"({100 * ds['fraction_train_labels_flipped']:.1f}% flipped); test "
      "labels clean",
      f"- model: `{config['model']['name']}`; optimizer: "
      f"`{config['optimizer']['name']}` lr {config['optimizer']['learning_rate']:g}"
      f" ({config['optimizer']['schedule']}); {sw['num_epochs']} epochs, "
      f"batch {config['batch_size']}",
      f"- {sw['num_members']} members = {len(sw['taus'])} τ × "
      f"{sw['num_seeds']} seeds {sw['seeds']}, trained in '{sw['mode']}' "
      f"mode{_devices_text(sw)}; mean ± sample std over seeds", ""]
  header = ["τ", "loss", "test accuracy (%)", "final train ℓ_τ",
            "test ℓ_τ", "test CE"]
  check = results["bound_check"]
  if check["applicable"]:
    header += ["bound checks", "min slack"]
  rows = []
  for i, row in enumerate(results["per_tau"]):
    cells = [f"{row['tau']:g}", row["loss"],
             _pm(row["test_accuracy"], 100.0, 2),
             _pm(row["final_surrogate_loss"], 1.0, 4),
             _pm(row["test_surrogate_loss"], 1.0, 4),
             _pm(row["test_cross_entropy"], 1.0, 4)]
    if check["applicable"]:
      t = check["per_tau"][i]
      cells += [f"{t['num_checks'] - t['num_violations']}/{t['num_checks']}"
                " hold", f"{t['min_slack']:.3g}"]
    rows.append(cells)
  text = "\n".join(lines) + "\n" + common.markdown_table(header, rows)
  text += "\n" + bound_summary_text(results) + "\n"
  return text


def _pm(stat: Mapping[str, float], scale: float, digits: int) -> str:
  mean, std = stat["mean"] * scale, stat["std"] * scale
  if not (math.isfinite(mean) and math.isfinite(std)):
    return f"{mean} ± {std}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def bound_summary_text(results: Mapping[str, Any]) -> str:
  """One paragraph summarising the H-consistency bound check."""
  check = results["bound_check"]
  if not check["applicable"]:
    return f"Bound check: not applicable ({check['reason']})."
  verdict = ("HOLDS at every checkpoint" if check["holds"] else
             f"VIOLATED {check['num_violations']} times")
  lines = [f"Bound check E[ΔC_0-1] ≤ Γ_τ(E[ΔC_τ]): {verdict} "
           f"({check['num_checks']} checks, min slack "
           f"{check['min_slack']:.4g})."]
  for t in check["per_tau"]:
    lines.append(
        f"  τ={t['tau']:g}: final E[ΔC_0-1]={t['final_zero_one_excess']:.4f}"
        f" ≤ Γ_τ(E[ΔC_τ]={t['final_surrogate_excess']:.4f}) = "
        f"{t['final_bound']:.4f}; {t['num_checks']} checks, min slack "
        f"{t['min_slack']:.4g}")
  return "\n".join(lines)


# -------------------------------------------------------------------- plots


def plot_accuracy(results: Mapping[str, Any], path: str) -> None:
  """Test accuracy (mean ± std over seeds) against τ."""
  plt = common.pyplot()
  rows = results["per_tau"]
  taus = [r["tau"] for r in rows]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.errorbar(taus, [100 * r["test_accuracy"]["mean"] for r in rows],
              yerr=[100 * r["test_accuracy"]["std"] for r in rows],
              marker="o", capsize=4)
  ax.set_xlabel("τ (0 sum-exp, 1 CE, (1,2) GCE, 2 MAE)")
  ax.set_ylabel("clean test accuracy (%)")
  noise = results["dataset"]["label_noise"] or {"rate": 0.0, "kind": None}
  ax.set_title(f"{results['dataset']['name']}, noise {noise['kind']} "
               f"{noise['rate']:g}")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(results: Mapping[str, Any], path: str) -> None:
  """Test accuracy and training ℓ_τ against epochs, per τ (mean ± sample std)."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for row in results["per_tau"]:
    tau = row["tau"]
    hist = [m["history"] for m in results["members"] if m["tau"] == tau]
    epochs = hist[0]["epoch"]
    for ax, key, scale in ((axes[0], "test_accuracy", 100.0),
                           (axes[1], "train_loss", 1.0)):
      values = scale * np.asarray([h[key] for h in hist], np.float64)
      mean = values.mean(0)
      std = values.std(0, ddof=1) if len(values) > 1 else 0.0 * mean
      ax.plot(epochs, mean, marker=".", label=f"τ={tau:g} ({row['loss']})")
      ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
  axes[0].set_ylabel("clean test accuracy (%)")
  axes[1].set_ylabel("ℓ_τ on the training labels")
  axes[1].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bound(results: Mapping[str, Any], path: str) -> None:
  """Every checkpoint (E[ΔC_τ], E[ΔC_0-1]) against the Γ_τ curve, per τ."""
  plt = common.pyplot()
  rows = results["per_tau"]
  n = results["dataset"]["num_classes"]
  fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.4),
                           squeeze=False)
  for ax, row in zip(axes[0], rows, strict=True):
    tau = row["tau"]
    hist = [m["history"] for m in results["members"] if m["tau"] == tau]
    s = np.concatenate([h["surrogate_excess"] for h in hist])
    z = np.concatenate([h["zero_one_excess"] for h in hist])
    e = np.concatenate([h["epoch"] for h in hist])
    grid = np.linspace(0.0, max(float(s.max()) * 1.15, 1e-6), 200)
    ax.plot(grid, gamma_curve(grid, tau, n), "k-", label="Γ_τ(s)")
    points = ax.scatter(s, z, c=e, cmap="viridis", s=18,
                        label="checkpoints")
    ax.set_title(f"τ={tau:g} ({row['loss']})", fontsize=9)
    ax.set_xlabel("E[ΔC_τ] (surrogate)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("E[ΔC_0-1] (zero-one)")
  axes[0][0].legend(fontsize=7)
  fig.colorbar(points, ax=axes[0].tolist(), label="epoch", shrink=0.8)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def write_outputs(results: Mapping[str, Any], workdir: str
                  ) -> dict[str, str]:
  """Writes results.json, results.md and the plots; returns their paths."""
  paths = {name: os.path.join(workdir, rel)
           for name, rel in results["files"].items()}
  common.write_json(os.path.join(workdir, RESULTS_FILE), results)
  common.write_text(paths["table"], results_table(results))
  plot_accuracy(results, paths["accuracy_plot"])
  plot_curves(results, paths["curves_plot"])
  if "bound_plot" in paths:
    plot_bound(results, paths["bound_plot"])
  return {"results": os.path.join(workdir, RESULTS_FILE), **paths}


def run(config: Any, workdir: str, log: Callable[[str], None] = print
        ) -> tuple[dict[str, Any], dict[str, str]]:
  """The whole experiment: build, train (resumable), summarise, write.

  Args:
    config: the experiment config (see ``configs/loss_comparison.py``).
    workdir: output directory; re-running with the same workdir resumes.
    log: where progress lines go.

  Returns:
    (results dict as written to results.json, {name: path} of the outputs).
  """
  start = time.perf_counter()
  sweep = build_sweep(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  log(f"loss_comparison: {len(sweep.members)} members (taus "
      f"{list(config_taus(config))} × {config.num_seeds} seeds) on "
      f"{sweep.dataset.name}, {sweep.total_steps} steps, mode "
      f"{config.sweep_mode}; workdir {workdir}")
  histories, mode = run_sweep(sweep, workdir, log)
  train_seconds = time.perf_counter() - start
  results = summarize(sweep, histories, mode)
  paths = write_outputs(results, workdir)
  common.write_json(os.path.join(workdir, TIMING_FILE),
                    {"wall_seconds_this_process":
                     time.perf_counter() - start,
                     "train_seconds_this_process": train_seconds,
                     "mode": mode, "backend": jax.default_backend()})
  return results, paths
