"""``get_model``: every model by name (configs hold names, never modules)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from compsum_jax.models import common
from compsum_jax.models.resnet import (
    PreActResNet18,
    WideResNet,
    check_wide_resnet_shape,
)
from compsum_jax.models.small import CNN, MLP

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
}


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds a model by name.

  Args:
    name: 'mlp', 'cnn', 'preact_resnet18' or 'wide_resnet'.
    num_classes: n ≥ 2, the number of logits.
    **kwargs: the model's attributes, e.g. ``mean``/``std`` (input
      normalisation), ``dtype``, ``activation``; 'cnn': ``use_batch_norm``,
      ``features``, ``strides``; 'mlp': ``hidden_sizes``; 'wide_resnet':
      ``depth``, ``width``.

  Returns:
    An unbound ``flax.linen.Module``; call ``model.apply(variables, x,
    train=...)`` on x [B, *input_shape] in [0, 1] for logits [B, n] float32.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model name={name!r}; expected one of "
                     f"{sorted(MODELS)}")
  common.check_num_classes(num_classes)
  if "activation" in kwargs:
    common.get_activation(kwargs["activation"])
  if name == "wide_resnet":
    check_wide_resnet_shape(kwargs.get("depth", 28), kwargs.get("width", 10))
  cls = MODELS[name]
  known = set(cls.__dataclass_fields__) - {"parent", "name", "num_classes"}
  unknown = set(kwargs) - known
  if unknown:
    raise ValueError(f"model {name!r} has no attribute(s) {sorted(unknown)}; "
                     f"known: {sorted(known)}")
  return cls(num_classes=int(num_classes), **kwargs)
