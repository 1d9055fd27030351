"""Config blocks shared by the experiment presets (primitives only)."""

from __future__ import annotations

import ml_collections


def optimizer_config(*, learning_rate: float = 0.1, weight_decay: float = 5e-4,
                     warmup_epochs: int = 0, grad_clip: float | None = None
                     ) -> ml_collections.ConfigDict:
  """SGD + Nesterov momentum 0.9, cosine schedule, decay on kernels only.

  The fields are ``compsum_jax.training.make_optimizer``'s, except
  ``warmup_epochs``: the linear warm-up length in epochs, turned into
  ``warmup_steps = warmup_epochs · ⌊N_train / batch_size⌋`` by
  ``experiments.common.build_optimizer`` once the dataset is loaded (so it
  follows ``--config.batch_size`` and ``--config.validation_size``).
  """
  return ml_collections.ConfigDict({
      "name": "sgd",
      "learning_rate": learning_rate,
      "momentum": 0.9,
      "nesterov": True,
      "weight_decay": weight_decay,
      "weight_decay_mask": "kernels",
      "schedule": "cosine",
      "warmup_epochs": warmup_epochs,
      "grad_clip": (ml_collections.config_dict.placeholder(float)
                    if grad_clip is None else grad_clip),
  })
