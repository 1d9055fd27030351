"""Comp-sum losses: ℓ_τ for every τ ≥ 0, its named members, zero-one and margin."""

from compsum_jax.losses.comp_sum import (
    comp_sum_loss,
    comp_sum_loss_soft,
    cross_entropy_loss,
    generalized_cross_entropy_loss,
    margin,
    mean_absolute_error_loss,
    phi_tau,
    sum_exponential_loss,
    zero_one_loss,
)

__all__ = [
    "comp_sum_loss",
    "comp_sum_loss_soft",
    "cross_entropy_loss",
    "generalized_cross_entropy_loss",
    "margin",
    "mean_absolute_error_loss",
    "phi_tau",
    "sum_exponential_loss",
    "zero_one_loss",
]
