"""Standard supervised objective and evaluation function for the train step.

``classification_objective(model)`` is the comp-sum objective of the loss
comparison: the batch mean of ℓ_τ(h(x), y) with τ = ``batch['hparams']['tau']``
(per member). Adversarial objectives are built the same way by the
experiments (an attack inside the objective), not by a second train step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from compsum_jax.losses import comp_sum_loss

PyTree = Any
LossFn = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], jax.Array]


def comp_sum_from_hparams(logits: jax.Array, labels: jax.Array,
                          hparams: Mapping[str, jax.Array]) -> jax.Array:
  """Per-example ℓ_τ(h, y), τ = hparams['tau'] (docs/math.md (2.3)); [B]."""
  if "tau" not in hparams:
    raise ValueError("the comp-sum objective needs hparams['tau'] (create the "
                     f"state with hparams={{'tau': ...}}), got hparams keys "
                     f"{sorted(hparams)}")
  return comp_sum_loss(logits, labels, hparams["tau"])


def apply_model(model: nn.Module, params: PyTree, batch_stats: PyTree,
                images: jax.Array, *, train: bool
                ) -> tuple[jax.Array, PyTree | None]:
  """Logits [B, n] and, for batch-norm models with ``train=True``, new stats.

  Models without batch norm (empty ``batch_stats``) are applied without a
  'batch_stats' collection, and the returned stats are None.
  """
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
    if train:
      logits, updates = model.apply(variables, images, train=True,
                                    mutable=["batch_stats"])
      return logits, updates["batch_stats"]
  return model.apply(variables, images, train=train), None


def classification_objective(model: nn.Module,
                             loss_fn: LossFn = comp_sum_from_hparams
                             ) -> Callable[..., tuple[jax.Array, dict]]:
  """Objective L(θ) = (1/B) Σ_i loss_fn(h_θ(x_i), y_i, hparams) for the step.

  Args:
    model: Flax module called as ``model.apply(variables, x, train=True)``.
    loss_fn: per-example loss ``(logits [B, n], labels [B], hparams) -> [B]``;
      default ℓ_τ with τ = hparams['tau'].

  Returns:
    ``objective(params, batch_stats, batch, rng) -> (loss, aux)`` with
    metrics 'accuracy' (batch accuracy of the pre-update parameters).
  """

  def objective(params, batch_stats, batch, rng):
    del rng  # deterministic models; dropout would take it here
    logits, new_stats = apply_model(model, params, batch_stats,
                                    batch["image"], train=True)
    per_example = loss_fn(logits, batch["label"], batch["hparams"])
    # L = (1/B) Σ_i ℓ(h(x_i), y_i)
    loss = jnp.mean(per_example)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"batch_stats": new_stats,
                  "metrics": {"accuracy": accuracy}}

  return objective


def classification_eval_fn(model: nn.Module,
                           loss_fn: LossFn | None = comp_sum_from_hparams
                           ) -> Callable[..., dict[str, jax.Array]]:
  """Per-example evaluation values for :func:`make_eval_step`.

  Returns ``eval_fn(params, batch_stats, batch, rng) -> {'correct': bool [B],
  'cross_entropy': [B], 'loss': [B]}`` in inference mode (batch-norm running
  statistics); 'loss' is ``loss_fn`` (default ℓ_τ with the member's τ) and is
  omitted when ``loss_fn`` is None. Ties in argmax go to the lowest index.
  """

  def eval_fn(params, batch_stats, batch, rng):
    del rng
    logits, _ = apply_model(model, params, batch_stats, batch["image"],
                            train=False)
    labels = batch["label"]
    out = {"correct": jnp.argmax(logits, -1) == labels,
           # CE = logsumexp(h) − h_y
           "cross_entropy": comp_sum_loss(logits, labels, 1.0)}
    if loss_fn is not None:
      out["loss"] = loss_fn(logits, labels, batch["hparams"])
    return out

  return eval_fn
