"""Adversarial attacks in JAX: FGSM, PGD, APGD, FAB-T, Square and AutoAttack.

All attacks are pure functions of ``logits_fn(x) -> logits`` on inputs in
[0, 1], batched, with explicit PRNG keys; see the module docstrings:

* :mod:`~compsum_jax.attacks.projected_gradient`: ``fgsm``, ``pgd`` (ℓ∞/ℓ2, sign or Adam
  steps, restarts, losses 'ce', 'margin', 'kl', 'dlr', 'dlr_targeted',
  'smooth_comp_sum');
* :mod:`~compsum_jax.attacks.auto_pgd`: ``apgd`` (APGD-CE/-DLR), ``apgd_targeted``
  (APGD-T) of Croce & Hein (2020);
* :mod:`~compsum_jax.attacks.fab`: ``fab_targeted`` (FAB-T, ℓ∞) of Croce &
  Hein (2020);
* :mod:`~compsum_jax.attacks.square`: ``square_attack`` (ℓ∞, query budget);
* :mod:`~compsum_jax.attacks.evaluation`: ``robust_accuracy`` (cascade) and
  ``sanity_checks``;
* :mod:`~compsum_jax.attacks.presets`: named configs ('aa_standard' is
  AutoAttack 'standard'), the registry ``ATTACKS`` of what each attack is,
  and ``build_attack``;
* :mod:`~compsum_jax.attacks.threat_model`: balls, projections, keys and the
  argument checks shared by the attacks.
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
from compsum_jax.attacks.fab import (
    FABResult,
    fab_targeted,
    fab_targeted_run,
    project_linf_hyperplane_box,
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
    ATTACKS,
    PRESETS,
    Attack,
    AttackKind,
    Cascade,
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
    "ATTACKS",
    "Attack",
    "AttackKind",
    "AttackStage",
    "Cascade",
    "FABResult",
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
    "fab_targeted",
    "fab_targeted_run",
    "fgsm",
    "get_objective",
    "get_preset",
    "is_cascade",
    "kl_to_clean",
    "negative_margin",
    "per_example_norm",
    "pgd",
    "project",
    "project_linf_hyperplane_box",
    "robust_accuracy",
    "sanity_checks",
    "smooth_comp_sum_term",
    "square_attack",
    "square_attack_run",
]
