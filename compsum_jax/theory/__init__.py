"""H-consistency theory of comp-sum losses, jitted and vmapped (notes §1, §3–§5.2).

Reference: Mao, Mohri & Zhong, "Cross-Entropy Loss Functions: Theoretical
Analysis and Applications", ICML 2023 (arXiv 2304.07288).

* Bound functions: :func:`transform` (T_τ), :func:`inverse_transform` (Γ_τ),
  :func:`zero_one_bound`, :func:`adversarial_constant`,
  :func:`adversarial_zero_one_bound`.
* Conditional quantities: :func:`conditional_risk`,
  :func:`best_conditional_risk`, :func:`conditional_regret`,
  :func:`zero_one_conditional_regret`.
* Hypothesis families as pytrees: :class:`CompleteFamily`,
  :class:`ScoreBoundedFamily` (exact solver :func:`solve_score_bounded` with a
  certificate), :class:`L2BallFamily`; generic
  :func:`projected_gradient_solve` for any family with ``project_scores``.
* Gaps: :func:`pointwise_best_risk`, :func:`minimizability_gap`,
  :func:`deterministic_minimizability_gap`, :func:`consistency_bound_sides`,
  :func:`constant_score_zero_one_bound` (differentiable in τ: choose τ by
  gradient descent).
* Trained members: :func:`member_bound_sides` (vmapped over K members),
  :func:`bound_check_summary`, :func:`gamma_curve`.
* Checks: :func:`bound_slack`, :func:`verify_bound`,
  :func:`adversarial_slack_search`, :func:`tightness_curve`.
"""

from compsum_jax.theory.bounds import (
    adversarial_constant,
    adversarial_zero_one_bound,
    inverse_transform,
    transform,
    zero_one_bound,
)
from compsum_jax.theory.checks import (
    AdversarialResult,
    Verification,
    adversarial_slack_search,
    bound_slack,
    constrained_probs,
    min_surrogate_regret_given_prediction,
    predicted_class_candidates,
    random_pairs,
    tightness_curve,
    verify_bound,
)
from compsum_jax.theory.conditional import (
    complete_best_conditional_risk,
    conditional_risk,
    zero_one_best_conditional_risk,
    zero_one_conditional_regret,
)
from compsum_jax.theory.empirical import (
    MemberBoundSides,
    bound_check_summary,
    gamma_curve,
    member_bound_sides,
)
from compsum_jax.theory.families import (
    BoxSolution,
    CompleteFamily,
    FamilySolution,
    HypothesisFamily,
    L2BallFamily,
    ScoreBoundedFamily,
    projected_gradient_solve,
    resolve_family,
    score_bounded_certificate,
    solve_score_bounded,
)
from compsum_jax.theory.gaps import (
    BoundSides,
    consistency_bound_sides,
    constant_score_zero_one_bound,
    deterministic_best_conditional_risk,
    deterministic_minimizability_gap,
    minimizability_gap,
    pointwise_best_risk,
    zero_one_minimizability_gap,
)
from compsum_jax.theory.regret import (
    best_conditional_risk,
    conditional_regret,
)

__all__ = [
    "AdversarialResult",
    "BoundSides",
    "BoxSolution",
    "CompleteFamily",
    "FamilySolution",
    "HypothesisFamily",
    "L2BallFamily",
    "MemberBoundSides",
    "ScoreBoundedFamily",
    "Verification",
    "adversarial_constant",
    "adversarial_slack_search",
    "adversarial_zero_one_bound",
    "best_conditional_risk",
    "bound_check_summary",
    "bound_slack",
    "complete_best_conditional_risk",
    "conditional_regret",
    "conditional_risk",
    "consistency_bound_sides",
    "constant_score_zero_one_bound",
    "constrained_probs",
    "deterministic_best_conditional_risk",
    "deterministic_minimizability_gap",
    "gamma_curve",
    "inverse_transform",
    "member_bound_sides",
    "min_surrogate_regret_given_prediction",
    "minimizability_gap",
    "pointwise_best_risk",
    "predicted_class_candidates",
    "projected_gradient_solve",
    "random_pairs",
    "resolve_family",
    "score_bounded_certificate",
    "solve_score_bounded",
    "tightness_curve",
    "transform",
    "verify_bound",
    "zero_one_bound",
    "zero_one_best_conditional_risk",
    "zero_one_conditional_regret",
    "zero_one_minimizability_gap",
]
