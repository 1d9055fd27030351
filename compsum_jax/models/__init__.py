"""Flax linen models with input normalisation inside: inputs in [0, 1]."""

from compsum_jax.models.conv import member_conv
from compsum_jax.models.registry import MODELS, get_model
from compsum_jax.models.resnet import PreActBlock, PreActResNet18, WideResNet
from compsum_jax.models.small import CNN, MLP

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "PreActBlock",
    "PreActResNet18",
    "WideResNet",
    "get_model",
    "member_conv",
]
