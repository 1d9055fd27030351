r"""Adversarial-training methods: the registry of objectives for the train step.

A method is an *objective* of :func:`compsum_jax.training.make_train_step`,
never a second training loop. Every objective is assembled in
:func:`make_objective` from three parts that each :class:`Method` declares:

  1. inner maximisation: its training attack, a named preset of
     :mod:`compsum_jax.attacks` (with overrides such as the run's ε), run on
     the model in EVALUATION mode (batch norm uses its running statistics and
     does not update them) with the parameters held constant, as the
     reference TRADES code does (``model.eval()`` while generating x');
  2. training-mode forward passes, in the method's order, on the clean batch
     x and/or the adversarial batch x'. Each pass is normalised by its OWN
     batch statistics, and the running statistics are updated by each pass in
     turn (two momentum updates per step for clean-then-adversarial, exactly
     the reference TRADES code's ``model(x_natural); model(x_adv)``);
  3. the outer loss of :mod:`compsum_jax.losses.adversarial` on those logits,
     with the hyperparameters read from ``batch['hparams']`` (the state's
     per-member ``hparams``, so a τ or β grid trains as vmapped members).

The registry :data:`METHODS` (z = h(x), z' = h(x'), both in training mode):

  standard      ℓ_τ(z, y)                        no attack (τ = 1: plain CE)
  pgd_at        CE(z', y), x' = PGD on CE         (Madry et al. 2018, eq. 2.1)
  trades        CE(z, y) + β·KL(softmax z ‖ softmax z'), x' = PGD on the KL
                term (Zhang et al. 2019, eq. 5)
  adv_comp_sum  ℓ_τ(z/ρ, y) + ν·‖Δ̄(z'/ρ, y) − Δ̄(z/ρ, y)‖₂, x' = PGD on the
                smooth term, Δ̄(z, y) = (z_1 − z_y, …, z_n − z_y) (Mao, Mohri
                & Zhong 2023); the weight decay λ‖θ‖² is the optimizer's.

Adding a method is one :data:`METHODS` entry: its training-attack preset,
its training passes, its outer loss and its hyperparameters.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from compsum_jax import attacks, losses
from compsum_jax.losses import adversarial as adversarial_losses
from compsum_jax.training.objectives import (
  apply_model,
  classification_objective,
)
from compsum_jax.training.step import EvalFn, Objective

PyTree = Any
LogitsFn = Callable[[jax.Array], jax.Array]

# The training-mode passes a method may run (in its declared order).
CLEAN = "clean"
ADVERSARIAL = "adversarial"


class OuterTerms(NamedTuple):
  """Per-example outer loss and its two parts, each [B].

  Attributes:
    loss: L_i, the per-example training loss (the objective is its mean).
    natural: the clean part of L_i (reported as the 'natural_loss' metric).
    robust: the adversarial part of L_i (the 'robust_term' metric).
  """

  loss: jax.Array
  natural: jax.Array
  robust: jax.Array


# outer_loss(z or None, z' or None, labels [B], hparams) -> OuterTerms.
OuterLossFn = Callable[[jax.Array | None, jax.Array | None, jax.Array,
                        Mapping[str, jax.Array]], OuterTerms]


@dataclasses.dataclass(frozen=True)
class HParam:
  """A method hyperparameter (read from ``batch['hparams'][name]``).

  Attributes:
    name: e.g. 'tau'.
    low: the smallest allowed value.
    low_open: whether ``low`` itself is excluded (ρ > 0).
  """

  name: str
  low: float = 0.0
  low_open: bool = False

  def check(self, value: Any, label: str | None = None) -> float:
    """``value`` as a float; ValueError naming ``label`` if out of range."""
    label = label or self.name
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (math.isfinite(v) and (v > self.low if self.low_open
                                  else v >= self.low)):
      need = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
      raise ValueError(f"{label} must be a finite number {need}, got "
                       f"{label}={value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class Method:
  """One adversarial-training method (module doc: the three parts).

  Attributes:
    name: the registry key, as configs write it.
    train_attack: attack preset of the inner maximisation
      (``compsum_jax.attacks.PRESETS``); None: no attack.
    passes: training-mode forward passes in order, each CLEAN (on x) or
      ADVERSARIAL (on x'); the 'accuracy' metric is that of the first.
    outer_loss: per-example outer loss of the passes' logits.
    hparams: the hyperparameters the outer loss reads.
    attack_recipes: recipe name -> the names of the run's threat-model
      overrides the training attack takes (None: all of them; the others
      keep the preset's values). The first recipe is the default.
  """

  name: str
  train_attack: str | None
  passes: tuple[str, ...]
  outer_loss: OuterLossFn
  hparams: tuple[HParam, ...]
  attack_recipes: Mapping[str, tuple[str, ...] | None] = dataclasses.field(
      default_factory=lambda: types.MappingProxyType({"default": None}))

  @property
  def hparam_names(self) -> tuple[str, ...]:
    """Names of :attr:`hparams`, in order."""
    return tuple(h.name for h in self.hparams)

  def check_hparams(self, values: Mapping[str, Any]) -> dict[str, float]:
    """The method's hyperparameters as floats; ValueError if any is missing,
    unknown or out of range."""
    if set(values) != set(self.hparam_names):
      raise ValueError(f"method {self.name!r} takes hyperparameters "
                       f"{sorted(self.hparam_names)}, got {sorted(values)}")
    return {h.name: h.check(values[h.name], f"{self.name} {h.name}")
            for h in self.hparams}

  def train_attack_overrides(self, threat_model: Mapping[str, Any],
                             recipe: str | None = None) -> dict[str, Any]:
    """The training attack's preset overrides under ``recipe``.

    Args:
      threat_model: overrides such as ``eps``, ``step_size``, ``num_steps``,
        ``norm`` (None values are dropped).
      recipe: a key of :attr:`attack_recipes`; None: the first.
    """
    recipe = next(iter(self.attack_recipes)) if recipe is None else recipe
    if recipe not in self.attack_recipes:
      raise ValueError(f"method {self.name!r} has attack recipes "
                       f"{tuple(self.attack_recipes)}, got recipe={recipe!r}")
    taken = self.attack_recipes[recipe]
    return {k: v for k, v in dict(threat_model).items()
            if v is not None and (taken is None or k in taken)}


# --- the outer losses ---------------------------------------------------------


def _comp_sum_outer(logits_clean, logits_adv, labels, hp) -> OuterTerms:
  del logits_adv
  # ℓ_τ(z, y)
  per_example = losses.comp_sum_loss(logits_clean, labels, hp["tau"])
  return OuterTerms(per_example, per_example, jnp.zeros_like(per_example))


def _pgd_at_outer(logits_clean, logits_adv, labels, hp) -> OuterTerms:
  del logits_clean, hp
  per_example = adversarial_losses.pgd_at_loss(logits_adv, labels)  # CE(z', y)
  return OuterTerms(per_example, per_example, jnp.zeros_like(per_example))


def _trades_outer(logits_clean, logits_adv, labels, hp) -> OuterTerms:
  # CE(z, y) + β·KL(softmax z ‖ softmax z')
  return OuterTerms(
      adversarial_losses.trades_loss(logits_clean, logits_adv, labels,
                                     hp["beta"]),
      adversarial_losses.pgd_at_loss(logits_clean, labels),
      adversarial_losses.kl_divergence_from_logits(logits_clean, logits_adv))


def _adv_comp_sum_outer(logits_clean, logits_adv, labels, hp) -> OuterTerms:
  # ℓ_τ(z/ρ, y) + ν·‖Δ̄(z'/ρ, y) − Δ̄(z/ρ, y)‖₂
  return OuterTerms(
      adversarial_losses.adv_comp_sum_loss(logits_clean, logits_adv, labels,
                                           hp["tau"], hp["nu"], hp["rho"]),
      losses.comp_sum_loss(logits_clean / hp["rho"], labels, hp["tau"]),
      adversarial_losses.smooth_adversarial_term(logits_adv, logits_clean,
                                                 labels))


_TAU = HParam("tau")

METHODS: Mapping[str, Method] = types.MappingProxyType({m.name: m for m in (
    Method("standard", train_attack=None, passes=(CLEAN,),
           outer_loss=_comp_sum_outer, hparams=(_TAU,)),
    Method("pgd_at", train_attack="eps8_255", passes=(ADVERSARIAL,),
           outer_loss=_pgd_at_outer, hparams=()),
    # 'original': TRADES' own attack (ε 0.031, step 0.007, 10 steps,
    # Gaussian start) with only num_steps and norm from the run;
    # 'eps8_255': the run's threat model.
    Method("trades", train_attack="trades_train", passes=(CLEAN, ADVERSARIAL),
           outer_loss=_trades_outer, hparams=(HParam("beta"),),
           attack_recipes=types.MappingProxyType(
               {"eps8_255": None, "original": ("num_steps", "norm")})),
    Method("adv_comp_sum", train_attack="adv_comp_sum_train",
           passes=(CLEAN, ADVERSARIAL), outer_loss=_adv_comp_sum_outer,
           hparams=(_TAU, HParam("nu"), HParam("rho", low_open=True))),
)})


def get_method(method: str | Method) -> Method:
  """The registry entry of a method name (a Method is returned as is)."""
  if isinstance(method, Method):
    return method
  if method not in METHODS:
    raise ValueError(f"method must be one of {tuple(METHODS)}, got "
                     f"method={method!r}")
  return METHODS[method]


# --- the parts ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _InferenceApply:
  """(params, batch_stats, x) → logits of ``model`` in evaluation mode; equal
  (and hashing alike) for equal models, so compiled attacks are shared."""

  model: nn.Module

  def __call__(self, params: PyTree, batch_stats: PyTree,
               x: jax.Array) -> jax.Array:
    params = jax.lax.stop_gradient(params)
    batch_stats = jax.lax.stop_gradient(batch_stats)
    logits, _ = apply_model(self.model, params, batch_stats, x, train=False)
    return logits


def inference_logits_fn(model: nn.Module, params: PyTree,
                        batch_stats: PyTree) -> LogitsFn:
  """x [B, ...] → logits [B, n] in evaluation mode, parameters held constant.

  Batch norm uses the running statistics (examples are independent and the
  statistics are not updated); ``stop_gradient`` keeps the attack's
  computation out of the parameter gradient. Returned as a
  ``jax.tree_util.Partial`` whose leaves are the parameters: compiled
  attacks take them as an argument (``attacks.robust_accuracy`` compiles
  once for every parameter value of the same model).
  """
  return jax.tree_util.Partial(_InferenceApply(model), params, batch_stats)


def make_train_attack(method: str | Method,
                      overrides: Mapping[str, Any] | None = None
                      ) -> attacks.presets.AttackFn:
  """The inner maximisation of ``method``: ``(logits_fn, x, y, key) → x'``.

  Args:
    method: a registry name (or entry) with a training attack.
    overrides: replacements of the preset's values (``eps``, ``step_size``,
      ``num_steps``, ``norm``, ``random_start``, ...); None values ignored.
  """
  method = get_method(method)
  if method.train_attack is None:
    with_attack = sorted(n for n, m in METHODS.items() if m.train_attack)
    raise ValueError(f"method {method.name!r} has no inner maximisation; "
                     f"methods with one: {with_attack}")
  return attacks.build_attack(method.train_attack, **dict(overrides or {}))


def _train_pass(model: nn.Module, params: PyTree, batch_stats: PyTree,
                images: jax.Array) -> tuple[jax.Array, PyTree]:
  """Training-mode forward pass; returns (logits, updated running stats)."""
  logits, new_stats = apply_model(model, params, batch_stats, images,
                                  train=True)
  return logits, batch_stats if new_stats is None else new_stats


def make_objective(model: nn.Module, method: str | Method,
                   attack: Mapping[str, Any] | None = None) -> Objective:
  """``objective(params, batch_stats, batch, rng) → (loss, aux)`` of a method.

  Args:
    model: Flax module (``model.apply(variables, x, train=...)``).
    method: a name of :data:`METHODS` (or an entry).
    attack: overrides of the method's training-attack preset (ignored by
      methods without an attack).

  Returns:
    The objective for :func:`compsum_jax.training.make_train_step`; its loss
    is the batch mean (1/B) Σ_i L_i of the outer loss. Metrics: 'accuracy'
    (of the first training pass, pre-update: clean, or x' for pgd_at) and,
    for methods with an attack, 'adv_accuracy' (on x'), 'natural_loss' and
    'robust_term' (batch means of the outer loss's parts).
  """
  method = get_method(method)
  if method.train_attack is None:
    # No attack: one training pass on x, the library's plain objective.
    return classification_objective(
        model, lambda z, y, hp: method.outer_loss(z, None, y, hp).loss)
  inner_max = make_train_attack(method, attack)

  def objective(params, batch_stats, batch, rng):
    x, y, hp = batch["image"], batch["label"], batch["hparams"]
    # 1. inner max: evaluation-mode batch norm, parameters constant.
    x_adv = jax.lax.stop_gradient(
        inner_max(inference_logits_fn(model, params, batch_stats), x, y, rng))
    inputs = {CLEAN: x, ADVERSARIAL: x_adv}
    # 2. training passes in order, running statistics threaded through.
    logits, stats = {}, batch_stats
    for name in method.passes:
      logits[name], stats = _train_pass(model, params, stats, inputs[name])
    # 3. outer loss.
    terms = method.outer_loss(logits.get(CLEAN), logits[ADVERSARIAL], y, hp)
    loss = jnp.mean(terms.loss)  # L = (1/B) Σ_i L_i
    has_stats = bool(jax.tree.leaves(batch_stats))
    return loss, {
        "batch_stats": stats if has_stats else None,
        "metrics": {
            "accuracy": _accuracy(logits[method.passes[0]], y),
            "adv_accuracy": _accuracy(logits[ADVERSARIAL], y),
            "natural_loss": jnp.mean(jax.lax.stop_gradient(terms.natural)),
            "robust_term": jnp.mean(jax.lax.stop_gradient(terms.robust)),
        }}

  return objective


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Batch accuracy (1/B) Σ_i [argmax h(x_i) = y_i]."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def make_robust_eval_fn(model: nn.Module,
                        attack_fns: Mapping[str, attacks.presets.AttackFn]
                        ) -> EvalFn:
  """Per-example clean and robust correctness for ``make_eval_step``.

  Returns ``eval_fn(params, batch_stats, batch, rng) → {'correct': bool [B],
  'robust_<name>': bool [B]}``: robust = correct on x AND on the attack's x'
  (so robust ≤ clean), evaluation-mode batch norm; attack i (in name order)
  gets the key fold_in(rng, i).
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

