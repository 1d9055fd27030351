"""Adversarial training (issue 7): ADV-COMP-SUM against TRADES and PGD-AT.

Everything the binary ``experiments/adversarial_training.py`` needs, in one
readable place. The one train step of ``compsum_jax.training`` is used for
every method; a method is an *objective* assembled here from small parts:

  1. inner maximisation: ``compsum_jax.attacks`` PGD (via a named preset of
     ``compsum_jax.attacks.presets`` with the run's threat model) on the
     method's attack loss, with the model in EVALUATION mode (batch norm uses
     its running statistics and they are not updated), parameters held
     constant — as the reference TRADES code does (``model.eval()`` while
     generating x');
  2. the training passes in TRAINING mode (batch statistics);
  3. the outer loss from ``compsum_jax.losses.adversarial``.

Methods (``Method`` names):

  standard      ℓ_τ(h(x), y)                    (no attack; τ = 1: plain CE)
  pgd_at        CE(h(x'), y), x' = PGD on CE     (Madry et al. 2018)
  trades        CE(h(x), y) + β KL(h(x) ‖ h(x')), x' = PGD on KL (Zhang et al.
                2019); recipe 'original' (ε 0.031, step 0.007, 10 steps,
                start x + 0.001·N(0, I)) or 'eps8_255' (ε 8/255, step 2/255)
  adv_comp_sum  ℓ_τ(h(x)/ρ, y) + ν‖Δ̄(h(x')/ρ) − Δ̄(h(x)/ρ)‖₂, x' = PGD on the
                smooth term (notes §5.4); weight decay in the optimizer.

Batch norm in the training passes (the one documented choice). Methods with
a clean and an adversarial term (trades, adv_comp_sum) run TWO training-mode
forward passes, first on the clean batch and then on the adversarial batch,
each normalised by its OWN batch statistics; the running statistics are
updated by the clean pass and then by the adversarial pass (two momentum
updates per step). This is exactly what the reference PyTorch TRADES code
does (``model.train(); model(x_natural); model(x_adv)``). pgd_at runs one
training pass on x' only, standard one on x only.

Early stopping (notes §6.1, Rice et al. 2020): after every
``eval_every_epochs`` epochs the robust accuracy of the evaluated parameters
(EMA if ``ema_decay`` > 0) on the held-out validation split under the
``validation_attack`` preset (PGD-40 on the margin by default) is recorded,
and the checkpoint with the best value is kept and used for the final test
evaluation.

Final test evaluation (per run): clean accuracy, PGD-20 (CE), PGD-40 margin,
and the AutoAttack-style cascade APGD-CE → APGD-T → Square of
``compsum_jax.attacks.robust_accuracy`` (Square flags gradient masking).
A robust point must also be classified correctly clean, so robust accuracy
≤ clean accuracy in every row.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import attacks, data, losses, training
from compsum_jax.losses import adversarial as adv_losses
from compsum_jax.training import objectives as objectives_lib
from experiments import common

PyTree = Any
LogitsFn = Callable[[jax.Array], jax.Array]

METHODS = ("standard", "pgd_at", "trades", "adv_comp_sum")
TRADES_RECIPES = ("original", "eps8_255")

# The attack preset each method maximises in training (overrides from config).
TRAIN_ATTACK_PRESETS = {
    "pgd_at": "eps8_255",
    "trades": "trades_train",
    "adv_comp_sum": "adv_comp_sum_train",
}

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "robust_vs_clean.png"
RUN_RESULT = "final.json"


# --- the objectives -----------------------------------------------------------


def inference_logits_fn(model: nn.Module, params: PyTree,
                        batch_stats: PyTree) -> LogitsFn:
  """x [B, ...] → logits [B, n] in evaluation mode, parameters held constant.

  Batch norm uses the running statistics (examples are independent and the
  statistics are not updated); ``stop_gradient`` keeps the attack's
  computation out of the parameter gradient.
  """
  params = jax.lax.stop_gradient(params)
  batch_stats = jax.lax.stop_gradient(batch_stats)

  def logits_fn(x: jax.Array) -> jax.Array:
    logits, _ = objectives_lib.apply_model(model, params, batch_stats, x,
                                           train=False)
    return logits

  return logits_fn


def make_train_attack(method: str, attack: Mapping[str, Any]
                      ) -> attacks.presets.AttackFn:
  """The inner maximisation of ``method``: ``(logits_fn, x, y, key) → x'``.

  Args:
    method: 'pgd_at', 'trades' or 'adv_comp_sum'.
    attack: overrides of the method's preset (``TRAIN_ATTACK_PRESETS``):
      primitives such as ``eps``, ``step_size``, ``num_steps``, ``norm``,
      ``random_start``, ``select``.

  Returns:
    An attack function of :func:`compsum_jax.attacks.build_attack`.
  """
  if method not in TRAIN_ATTACK_PRESETS:
    raise ValueError(f"method {method!r} has no inner maximisation; methods "
                     f"with one: {sorted(TRAIN_ATTACK_PRESETS)}")
  return attacks.build_attack(TRAIN_ATTACK_PRESETS[method], **dict(attack))


def _train_pass(model: nn.Module, params: PyTree, batch_stats: PyTree,
                images: jax.Array) -> tuple[jax.Array, PyTree]:
  """Training-mode forward pass; returns (logits, updated running stats)."""
  logits, new_stats = objectives_lib.apply_model(model, params, batch_stats,
                                                 images, train=True)
  return logits, batch_stats if new_stats is None else new_stats


def make_objective(model: nn.Module, method: str,
                   attack: Mapping[str, Any] | None = None
                   ) -> training.step.Objective:
  """``objective(params, batch_stats, batch, rng) → (loss, aux)`` of a method.

  Hyperparameters come from ``batch['hparams']`` (the state's hparams):
  standard: 'tau'; trades: 'beta'; adv_comp_sum: 'tau', 'nu', 'rho'.

  Args:
    model: Flax module (``model.apply(variables, x, train=...)``).
    method: one of :data:`METHODS`.
    attack: overrides of the method's training-attack preset (ignored by
      'standard').

  Returns:
    The objective for :func:`compsum_jax.training.make_train_step`. Its
    metrics: 'accuracy' (clean, pre-update, training mode; for pgd_at the
    accuracy on x'), 'adv_accuracy' (on x'), 'natural_loss' and
    'robust_term' (the KL or smooth term), batch means.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got method="
                     f"{method!r}")
  if method == "standard":
    return objectives_lib.classification_objective(model)
  inner_max = make_train_attack(method, attack or {})

  def objective(params, batch_stats, batch, rng):
    x, y, hp = batch["image"], batch["label"], batch["hparams"]
    # 1. inner max, evaluation-mode batch norm, parameters constant.
    x_adv = inner_max(inference_logits_fn(model, params, batch_stats), x, y,
                      rng)
    x_adv = jax.lax.stop_gradient(x_adv)
    # 2. training passes (clean, then adversarial; see module doc).
    if method == "pgd_at":
      logits_adv, stats = _train_pass(model, params, batch_stats, x_adv)
      per_example = adv_losses.pgd_at_loss(logits_adv, y)  # CE(h(x'), y)
      natural, robust_term = per_example, jnp.zeros_like(per_example)
      clean_acc = jnp.mean(jnp.argmax(logits_adv, -1) == y)
    else:
      logits_clean, stats = _train_pass(model, params, batch_stats, x)
      logits_adv, stats = _train_pass(model, params, stats, x_adv)
      # 3. outer loss.
      if method == "trades":
        per_example = adv_losses.trades_loss(logits_clean, logits_adv, y,
                                             hp["beta"])
        natural = adv_losses.pgd_at_loss(logits_clean, y)  # CE(h(x), y)
        robust_term = adv_losses.kl_divergence_from_logits(logits_clean,
                                                           logits_adv)
      else:
        per_example = adv_losses.adv_comp_sum_loss(
            logits_clean, logits_adv, y, hp["tau"], hp["nu"], hp["rho"])
        # ℓ_τ(h(x)/ρ, y)
        natural = losses.comp_sum_loss(logits_clean / hp["rho"], y, hp["tau"])
        robust_term = adv_losses.smooth_adversarial_term(logits_adv,
                                                         logits_clean, y)
      clean_acc = jnp.mean(jnp.argmax(logits_clean, -1) == y)
    loss = jnp.mean(per_example)  # L = (1/B) Σ_i L_i
    has_stats = bool(jax.tree.leaves(batch_stats))
    return loss, {
        "batch_stats": stats if has_stats else None,
        "metrics": {
            "accuracy": clean_acc,
            "adv_accuracy": jnp.mean(jnp.argmax(logits_adv, -1) == y),
            "natural_loss": jnp.mean(jax.lax.stop_gradient(natural)),
            "robust_term": jnp.mean(jax.lax.stop_gradient(robust_term)),
        }}

  return objective


def method_hparams(method: str, config: Any, tau: float | None = None
                   ) -> dict[str, float]:
  """The state's hparams of a run (read by the objective)."""
  if method == "standard":
    return {"tau": float(config.standard.tau)}
  if method == "trades":
    return {"beta": float(config.trades.beta)}
  if method == "adv_comp_sum":
    if tau is None:
      raise ValueError("adv_comp_sum needs a tau")
    return {"tau": float(tau), "nu": float(config.adv_comp_sum.nu),
            "rho": float(config.adv_comp_sum.rho)}
  return {}


def train_attack_overrides(method: str, config: Any) -> dict[str, Any]:
  """Preset overrides of the training attack of ``method`` from the config.

  pgd_at and adv_comp_sum use ``config.train_attack`` (the run's threat
  model); trades uses its recipe: 'original' keeps the TRADES preset (ε
  0.031, step 0.007, 10 steps, Gaussian start) with only ``num_steps`` and
  ``norm`` taken from the config, 'eps8_255' uses ``config.train_attack``.
  """
  base = {k: v for k, v in _as_dict(config.train_attack).items()
          if v is not None}
  if method == "trades":
    recipe = config.trades.recipe
    if recipe == "original":
      return {k: v for k, v in base.items() if k in ("num_steps", "norm")}
    return base
  return base


# --- evaluation ---------------------------------------------------------------


def make_robust_eval_fn(model: nn.Module,
                        attack_fns: Mapping[str, attacks.presets.AttackFn]
                        ) -> training.step.EvalFn:
  """Per-example clean and robust correctness for ``make_eval_step``.

  Returns ``eval_fn(params, batch_stats, batch, rng) → {'correct': bool [B],
  'robust_<name>': bool [B]}``, robust = correct on x AND on the attack's x'
  (so robust ≤ clean), evaluation-mode batch norm.
  """

  def eval_fn(params, batch_stats, batch, rng):
    logits_fn = inference_logits_fn(model, params, batch_stats)
    x, y = batch["image"], batch["label"]
    correct = jnp.argmax(logits_fn(x), -1) == y
    out = {"correct": correct}
    key = jax.random.wrap_key_data(rng) if rng.dtype == jnp.uint32 else rng
    for i, (name, attack_fn) in enumerate(sorted(attack_fns.items())):
      x_adv = attack_fn(logits_fn, x, y, jax.random.fold_in(key, i))
      out[f"robust_{name}"] = correct & (jnp.argmax(logits_fn(x_adv), -1) == y)
    return out

  return eval_fn


def build_eval_attack(spec: Mapping[str, Any]) -> attacks.presets.AttackFn:
  """An attack from ``{'preset': name, **overrides}`` (config primitives)."""
  spec = dict(spec)
  preset = spec.pop("preset")
  return attacks.build_attack(preset, **{k: v for k, v in spec.items()
                                         if v is not None})


# --- compiled steps, shared by runs with the same program ---------------------
#
# Runs that differ only in seed or in hparams (τ, ν, ρ, β are traced state
# fields) compile to the same programs; building the jitted steps once per
# distinct key avoids recompiling them for every run of a sweep.

_STEP_CACHE: dict[Any, Any] = {}


def _freeze(value: Any) -> Any:
  """Hashable version of nested config primitives."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def cached_train_step(model: nn.Module, method: str,
                      attack: Mapping[str, Any], optimizer_config: Any,
                      total_steps: int, ema_decay: float, augment_fn: Any,
                      augment_key: Any, mesh: Any = None):
  """(optimizer, train step) of a method, built once per distinct program."""
  key = ("train", model, method, _freeze(attack), _freeze(optimizer_config),
         int(total_steps), float(ema_decay), augment_key, mesh)
  if key not in _STEP_CACHE:
    optimizer = training.make_optimizer(_as_dict(optimizer_config),
                                        total_steps)
    step = training.make_train_step(make_objective(model, method, attack),
                                    optimizer, ema_decay=ema_decay,
                                    augment_fn=augment_fn, mesh=mesh)
    _STEP_CACHE[key] = (optimizer, step)
  return _STEP_CACHE[key]


def cached_eval_step(model: nn.Module, specs: Mapping[str, Any],
                     use_ema: bool, mesh: Any = None):
  """Robust eval step for named attack specs, built once per program."""
  key = ("eval", model, _freeze(specs), bool(use_ema), mesh)
  if key not in _STEP_CACHE:
    attack_fns = {name: build_eval_attack(spec)
                  for name, spec in _as_dict(specs).items()}
    _STEP_CACHE[key] = training.make_eval_step(
        make_robust_eval_fn(model, attack_fns), use_ema=use_ema, mesh=mesh)
  return _STEP_CACHE[key]


# --- config checks ------------------------------------------------------------


def _as_dict(value: Any) -> dict[str, Any]:
  return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _check_number(value: Any, name: str, *, low: float = 0.0,
                  low_open: bool = False) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"config.{name} must be a number, got {value!r}") from None
  if math.isnan(v) or math.isinf(v) or v < low or (low_open and v == low):
    need = f"> {low}" if low_open else f">= {low}"
    raise ValueError(f"config.{name} must be a finite number {need}, got "
                     f"{name}={value!r}")
  return v


def _check_int(value: Any, name: str, low: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < low):
    raise ValueError(f"config.{name} must be an integer >= {low}, got "
                     f"{name}={value!r}")
  return int(value)


def check_config(config: Any) -> None:
  """Raises ValueError naming the first bad field of an experiment config."""
  methods = tuple(config.methods)
  if not methods:
    raise ValueError("config.methods must name at least one method, got ()")
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"config.methods has unknown method {m!r}; known: "
                       f"{METHODS}")
  if len(set(methods)) != len(methods):
    raise ValueError(f"config.methods has duplicates: {methods}")
  if "adv_comp_sum" in methods:
    taus = tuple(config.adv_comp_sum.taus)
    if not taus:
      raise ValueError("config.adv_comp_sum.taus must hold at least one tau")
    for t in taus:
      _check_number(t, "adv_comp_sum.taus entry")
    _check_number(config.adv_comp_sum.nu, "adv_comp_sum.nu")
    _check_number(config.adv_comp_sum.rho, "adv_comp_sum.rho", low_open=True)
  _check_number(config.trades.beta, "trades.beta")
  if config.trades.recipe not in TRADES_RECIPES:
    raise ValueError(f"config.trades.recipe must be one of {TRADES_RECIPES}, "
                     f"got recipe={config.trades.recipe!r}")
  _check_number(config.standard.tau, "standard.tau")
  _check_number(config.eps, "eps")
  ta = _as_dict(config.train_attack)
  for field in ("eps", "step_size"):
    if ta.get(field) is not None:
      _check_number(ta[field], f"train_attack.{field}")
  if ta.get("num_steps") is not None:
    _check_int(ta["num_steps"], "train_attack.num_steps", low=0)
  seeds = tuple(config.seeds)
  if not seeds:
    raise ValueError("config.seeds must hold at least one seed, got ()")
  for s in seeds:
    _check_int(s, "seeds entry", low=0)
  for field in ("batch_size", "eval_batch_size", "num_epochs",
                "eval_every_epochs"):
    _check_int(config[field], field)
  _check_int(config.validation_size, "validation_size", low=1)
  if config.num_test_examples is not None:
    _check_int(config.num_test_examples, "num_test_examples")
  ema = float(config.ema_decay)
  if not 0.0 <= ema < 1.0:
    raise ValueError(f"config.ema_decay must lie in [0, 1), got "
                     f"ema_decay={config.ema_decay!r}")
  for name in ("validation_attack", *config.test_attacks.keys()):
    spec = (config.validation_attack if name == "validation_attack"
            else config.test_attacks[name])
    spec = _as_dict(spec)
    if "preset" not in spec or spec["preset"] not in attacks.PRESETS:
      raise ValueError(f"config attack {name!r} needs 'preset' naming one of "
                       f"{sorted(attacks.PRESETS)}, got {spec!r}")
  for name in config.cascade:
    if name not in attacks.PRESETS or attacks.is_cascade(name):
      raise ValueError(f"config.cascade entries must be single-attack presets "
                       f"of {sorted(attacks.PRESETS)}, got {name!r}")


# --- one run ------------------------------------------------------------------


def run_name(method: str, tau: float | None, seed: int) -> str:
  """Directory name of one run, e.g. 'adv_comp_sum_tau1/seed0'."""
  tag = method if tau is None else f"{method}_tau{tau:g}"
  return os.path.join(tag, f"seed{seed}")


def runs_of(config: Any) -> list[tuple[str, float | None, int]]:
  """(method, τ or None, seed) of every run, in order."""
  out = []
  for method in config.methods:
    taus = (tuple(config.adv_comp_sum.taus) if method == "adv_comp_sum"
            else (None,))
    for tau in taus:
      for seed in config.seeds:
        out.append((method, None if tau is None else float(tau), int(seed)))
  return out


def _subset(split: data.ArraySplit, limit: int | None) -> data.ArraySplit:
  if limit is None or limit >= split.num_examples:
    return split
  return data.ArraySplit(split.images[:limit], split.labels[:limit])


def train_and_evaluate(config: Any, method: str, tau: float | None, seed: int,
                       workdir: str) -> dict[str, Any]:
  """Trains one (method, τ, seed) run in ``workdir`` and evaluates it on test.

  Resumes from ``workdir``'s checkpoints; if the run already has its final
  results (``final.json``) they are returned without recomputation.

  Returns:
    A JSON-able dict: method, tau, seed, status ('ok' or 'nonfinite'),
    best_step, val metrics of the best checkpoint, and test metrics
    'clean_accuracy', 'robust_<attack>' for every test attack and, with a
    cascade, 'robust_cascade' (worst case over the cascade),
    'gradient_masking_suspected' and 'cascade_stages'.
  """
  os.makedirs(workdir, exist_ok=True)
  final_path = os.path.join(workdir, RUN_RESULT)
  if os.path.exists(final_path):
    with open(final_path, encoding="utf-8") as f:
      return json.load(f)
  ds = common.load_data(config)
  model = common.build_model(config, ds)
  batch_size = int(config.batch_size)
  steps_per_epoch = data.num_train_batches(ds.train, batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size={batch_size} exceeds the "
                     f"{ds.train.num_examples} training examples")
  num_epochs = int(config.num_epochs)
  total_steps = steps_per_epoch * num_epochs
  opt_cfg = common.optimizer_settings(config, steps_per_epoch)
  ema_decay = float(config.ema_decay)
  augment_fn = common.make_augment_fn(config, ds)
  mesh = common.data_mesh(config)
  optimizer, train_step = cached_train_step(
      model, method, train_attack_overrides(method, config), opt_cfg,
      total_steps, ema_decay, augment_fn,
      (augment_fn is not None, bool(config.augment_flip)), mesh)
  state = training.init_train_state(
      model, optimizer, rng=seed, input_shape=ds.input_shape,
      hparams=method_hparams(method, config, tau), ema=ema_decay > 0)
  use_ema = ema_decay > 0
  val_step = cached_eval_step(model, {"val": config.validation_attack},
                              use_ema, mesh)
  eval_bs = int(config.eval_batch_size)

  def evaluate_fn(state, epochs_done):
    del epochs_done
    out = training.evaluate(val_step, state,
                            data.eval_batches(ds.validation, eval_bs),
                            mesh=mesh, rng=seed + 1)
    return {"val_accuracy": float(out["correct"]),
            "val_robust_accuracy": float(out["robust_val"])}

  # The run's identity for resuming (bookkeeping switches may change).
  run_config = {"experiment": common.run_identity(config), "method": method,
                "tau": tau, "seed": seed}
  status = "ok"
  error = None
  try:
    result = training.fit(
        workdir=workdir, config=run_config, state=state, train_step=train_step,
        mesh=mesh, train_batches=common.epoch_batches(config, ds),
        steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
        evaluate_fn=evaluate_fn,
        eval_every_epochs=int(config.eval_every_epochs),
        keep_checkpoints=int(config.keep_checkpoints),
        best_metric="val_robust_accuracy", best_mode="max",
        log_every_steps=int(config.log_every_steps),
        learning_rate_fn=training.make_schedule(opt_cfg, total_steps),
        progress=bool(config.progress), tensorboard=bool(config.tensorboard))
  except training.NonFiniteError as e:
    status, error = "nonfinite", str(e)
    result = None
  record: dict[str, Any] = {"method": method, "tau": tau, "seed": seed,
                            "status": status}
  if result is None:
    record["error"] = error
    _write_json(final_path, record)
    return record
  store = training.CheckpointStore(
      os.path.join(workdir, training.loop.CHECKPOINT_DIR),
      best_metric="val_robust_accuracy")
  try:
    best_step = store.best_step()
    best_state, meta = store.restore(result.state, best_step)
  finally:
    store.close()
  record.update(best_step=best_step, best_epoch=meta.get("epoch"),
                final_step=result.step,
                val=meta.get("metrics") or {})
  record.update(evaluate_test(config, model, best_state, ds, seed,
                              use_ema=use_ema))
  _write_json(final_path, record)
  return record


def evaluate_test(config: Any, model: nn.Module, state: training.TrainState,
                  ds: data.Dataset, seed: int, *, use_ema: bool
                  ) -> dict[str, Any]:
  """Clean and robust test accuracy of ``state`` (see the module doc)."""
  params = state.ema_params if use_ema else state.params
  test = _subset(ds.test, config.num_test_examples)
  eval_bs = int(config.eval_batch_size)
  names = list(_as_dict(config.test_attacks))
  mesh = common.data_mesh(config)
  eval_step = cached_eval_step(model, config.test_attacks, use_ema, mesh)
  start = time.perf_counter()
  out = training.evaluate(eval_step, state, data.eval_batches(test, eval_bs),
                          mesh=mesh, rng=seed + 2)
  record: dict[str, Any] = {
      "num_test_examples": int(out["count"]),
      "clean_accuracy": float(out["correct"]),
  }
  for name in names:
    record[f"robust_{name}"] = float(out[f"robust_{name}"])
  if config.cascade:
    logits_fn = inference_logits_fn(model, params, state.batch_stats)
    report = attacks.robust_accuracy(
        logits_fn, data.to_float_images(test.images), test.labels,
        jax.random.key(seed + 3), attacks=list(config.cascade),
        eps=float(config.eps), norm=config.norm, batch_size=eval_bs,
        overrides=_as_dict(config.cascade_overrides) or None)
    record["robust_cascade"] = float(report.robust_accuracy)
    record["cascade_clean_accuracy"] = float(report.clean_accuracy)
    record["gradient_masking_suspected"] = bool(
        report.gradient_masking_suspected)
    # Points broken by Square but by none of the gradient attacks before it.
    record["num_broken_only_by_gradient_free"] = int(
        report.num_broken_only_by_gradient_free)
    record["cascade_stages"] = [
        {"name": s.name, "attacked": s.num_attacked, "broken": s.num_broken,
         "robust_accuracy_after": s.robust_accuracy_after}
        for s in report.stages]
  record["test_eval_seconds"] = time.perf_counter() - start
  return record


# --- the experiment -----------------------------------------------------------


def run_experiment(config: Any, workdir: str,
                   log: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
  """Every (method, τ, seed) run, then results.json, results.md and the plot.

  Args:
    config: the experiment config (``configs/adversarial_training.py``).
    workdir: output directory (one sub-directory per run).
    log: called with a one-line summary after each run (e.g. ``print``).

  Returns:
    The results dict written to ``results.json``.
  """
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  runs = []
  todo = runs_of(config)
  for i, (method, tau, seed) in enumerate(todo):
    start = time.perf_counter()
    run = train_and_evaluate(config, method, tau, seed,
                             os.path.join(workdir, run_name(method, tau, seed)))
    runs.append(run)
    if log is not None:
      scores = " ".join(f"{k}={run[k]:.3f}" for k in _test_columns(config)
                        if k in run)
      log(f"[{i + 1}/{len(todo)}] {run_name(method, tau, seed)}: "
          f"{run['status']} {scores} ({time.perf_counter() - start:.0f} s)")
  results = {"config": training.metrics.to_jsonable(config), "runs": runs,
             "summary": summarize(runs, _test_columns(config))}
  _write_json(os.path.join(workdir, RESULTS_JSON), results)
  with open(os.path.join(workdir, RESULTS_MD), "w", encoding="utf-8") as f:
    f.write(results_markdown(results, config))
  plot_robust_vs_clean(results["summary"], os.path.join(workdir, RESULTS_PNG))
  return results


def _test_columns(config: Any) -> list[str]:
  cols = ["clean_accuracy"] + [f"robust_{n}" for n in config.test_attacks]
  if config.cascade:
    cols.append("robust_cascade")
  return cols


def summarize(runs: Sequence[Mapping[str, Any]], columns: Sequence[str]
              ) -> list[dict[str, Any]]:
  """Mean ± std over seeds per (method, τ) of every test column."""
  groups: dict[tuple[str, float | None], list[Mapping[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["method"], r["tau"]), []).append(r)
  rows = []
  for (method, tau), group in groups.items():
    ok = [r for r in group if r.get("status") == "ok"]
    row: dict[str, Any] = {"method": method, "tau": tau,
                           "num_seeds": len(ok), "num_failed": len(group) -
                           len(ok)}
    for col in columns:
      values = [r[col] for r in ok if col in r]
      if values:
        row[col] = float(np.mean(values))
        row[col + "_std"] = float(np.std(values))
    row["gradient_masking_suspected"] = any(
        r.get("gradient_masking_suspected", False) for r in ok)
    row["num_broken_only_by_gradient_free"] = int(sum(
        r.get("num_broken_only_by_gradient_free", 0) for r in ok))
    rows.append(row)
  return rows


def _label(row: Mapping[str, Any]) -> str:
  return row["method"] if row["tau"] is None else (
      f"{row['method']} (τ={row['tau']:g})")


def results_markdown(results: Mapping[str, Any], config: Any) -> str:
  """The results table: mean ± std over seeds, accuracies in %."""
  cols = _test_columns(config)
  lines = [f"# Adversarial training: {config.dataset}, {config.norm} "
           f"eps={float(config.eps):.4g}", "",
           "Test accuracy (%), mean ± std over seeds; early stopping on "
           f"validation {config.validation_attack.preset} robust accuracy "
           f"({config.validation_size} held-out examples).", "",
           "Masking? counts test points (summed over seeds) that the "
           "gradient-free Square attack broke after every gradient-based "
           "attack had failed on them.", "",
           "| method | seeds | " + " | ".join(cols) + " | masking? |",
           "|---|---|" + "---|" * len(cols) + "---|"]
  for row in results["summary"]:
    cells = []
    for c in cols:
      if c in row:
        cells.append(f"{100 * row[c]:.2f} ± {100 * row[c + '_std']:.2f}")
      else:
        cells.append("–")
    seeds = f"{row['num_seeds']}" + (f" ({row['num_failed']} failed)"
                                     if row["num_failed"] else "")
    masked = row["num_broken_only_by_gradient_free"]
    flag = f"YES ({masked} points)" if masked else "no"
    lines.append(f"| {_label(row)} | {seeds} | " + " | ".join(cells) +
                 f" | {flag} |")
  failed = [r for r in results["runs"] if r.get("status") != "ok"]
  if failed:
    lines += ["", "Failed runs:"] + [
        f"- {r['method']} τ={r['tau']} seed {r['seed']}: {r.get('error')}"
        for r in failed]
  return "\n".join(lines) + "\n"


def plot_robust_vs_clean(summary: Sequence[Mapping[str, Any]], path: str
                         ) -> None:
  """Scatter of robust (cascade, else last robust column) vs clean accuracy."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for row in summary:
    robust_cols = [k for k in row if k.startswith("robust_") and
                   not k.endswith("_std")]
    if "clean_accuracy" not in row or not robust_cols:
      continue
    col = "robust_cascade" if "robust_cascade" in row else robust_cols[-1]
    ax.errorbar(100 * row["clean_accuracy"], 100 * row[col],
                xerr=100 * row["clean_accuracy_std"],
                yerr=100 * row[col + "_std"], fmt="o", capsize=3,
                label=f"{_label(row)} [{col[len('robust_'):]}]")
  ax.set_xlabel("clean test accuracy (%)")
  ax.set_ylabel("robust test accuracy (%)")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  else:  # every run failed: say so instead of an empty legend
    ax.text(0.5, 0.5, "no finished run", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(training.metrics.to_jsonable(value), f, indent=2)
  os.replace(tmp, path)
