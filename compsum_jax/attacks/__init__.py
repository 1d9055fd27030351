"""Adversarial attacks in JAX: FGSM, PGD, APGD, Square and an AutoAttack-style cascade.

All attacks are pure functions of ``logits_fn(x) -> logits`` on inputs in
[0, 1], batched, with explicit PRNG keys; see the module docstrings:

* :mod:`~compsum_jax.attacks.projected_gradient`: ``fgsm``, ``pgd`` (ℓ∞/ℓ2, sign or Adam
  steps, restarts, losses 'ce', 'margin', 'kl', 'dlr', 'dlr_targeted',
  'smooth_comp_sum');
* :mod:`~compsum_jax.attacks.auto_pgd`: ``apgd`` (APGD-CE/-DLR), ``apgd_targeted``
  (APGD-T) of Croce & Hein (2020);
* :mod:`~compsum_jax.attacks.square`: ``square_attack`` (ℓ∞, query budget);
* :mod:`~compsum_jax.attacks.evaluation`: ``robust_accuracy`` (cascade) and
  ``sanity_checks``;
* :mod:`~compsum_jax.attacks.presets`: named configs and ``build_attack``.
"""

from compsum_jax.attacks.auto_pgd import (
    APGDResult,
    apgd,
    apgd_run,
    apgd_targeted,
    apgd_targeted_run,
    checkpoint_schedule,
)
from compsum_jax.attacks.evaluation import (
    AttackStage,
    RobustAccuracyReport,
    SanityReport,
    robust_accuracy,
    sanity_checks,
)
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
from compsum_jax.attacks.presets import (
    PRESETS,
    build_attack,
    get_preset,
    is_cascade,
)
from compsum_jax.attacks.projected_gradient import fgsm, pgd
from compsum_jax.attacks.square import (
    SquareResult,
    square_attack,
    square_attack_run,
)
from compsum_jax.attacks.threat_model import per_example_norm, project

__all__ = [
    "APGDResult",
    "AttackStage",
    "OBJECTIVES",
    "PRESETS",
    "RobustAccuracyReport",
    "SanityReport",
    "SquareResult",
    "apgd",
    "apgd_run",
    "apgd_targeted",
    "apgd_targeted_run",
    "build_attack",
    "checkpoint_schedule",
    "cross_entropy",
    "dlr",
    "dlr_targeted",
    "fgsm",
    "get_objective",
    "get_preset",
    "is_cascade",
    "kl_to_clean",
    "negative_margin",
    "per_example_norm",
    "pgd",
    "project",
    "robust_accuracy",
    "sanity_checks",
    "smooth_comp_sum_term",
    "square_attack",
    "square_attack_run",
]
