"""Comp-sum losses: ℓ_τ for every τ ≥ 0, its named members, zero-one and margin,
and the adversarial objectives (ADV-COMP-SUM, TRADES, PGD-AT) as functions of logits."""

from compsum_jax.losses.adversarial import (
    adv_comp_sum_loss,
    kl_divergence_from_logits,
    pgd_at_loss,
    safe_l2_norm,
    smooth_adversarial_term,
    trades_loss,
)
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
    "adv_comp_sum_loss",
    "kl_divergence_from_logits",
    "pgd_at_loss",
    "safe_l2_norm",
    "smooth_adversarial_term",
    "trades_loss",
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
