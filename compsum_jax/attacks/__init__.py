"""Adversarial attacks in JAX: FGSM, PGD, APGD, Square and an AutoAttack-style cascade."""

from compsum_jax.attacks.objectives import (
    OBJECTIVES,
    cross_entropy,
    dlr,
    dlr_targeted,
    get_objective,
    kl_to_clean,
    negative_margin,
    smooth_comp_sum_term,
)
from compsum_jax.attacks.pgd import fgsm, pgd
from compsum_jax.attacks.threat_model import per_example_norm, project

__all__ = [
    "OBJECTIVES",
    "cross_entropy",
    "dlr",
    "dlr_targeted",
    "fgsm",
    "get_objective",
    "kl_to_clean",
    "negative_margin",
    "per_example_norm",
    "pgd",
    "project",
    "smooth_comp_sum_term",
]
