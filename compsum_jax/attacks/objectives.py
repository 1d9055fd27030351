"""Attack objectives: per-example losses that an attack *maximizes*.

Every objective has the signature
``objective(logits_adv, labels, logits_clean, target_labels) -> [B]`` with
``logits_*: [B, n]``, ``labels, target_labels: [B]`` (unused arguments are
ignored), and larger values mean a stronger attack.

  ce             CE(z', y) = logsumexp(z') − z'_y
  margin         max_{i≠y} z'_i − z'_y (minus the margin ρ of docs/math.md (4.2))
  kl             KL(softmax z ‖ softmax z') to the clean prediction (TRADES)
  dlr            −(z'_y − max_{i≠y} z'_i) / (z'_π1 − z'_π3 + 1e-12)
  dlr_targeted   −(z'_y − z'_t) / (z'_π1 − (z'_π3 + z'_π4)/2 + 1e-12)
  smooth_comp_sum  ‖v‖₂ (safe), v = d − d_y·1, d = z' − z (docs/math.md (10.4))

π sorts the logits of one example in decreasing order. DLR and its targeted
version are from Croce & Hein (2020), "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML, eq. (5)
and §3.2.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from compsum_jax import losses
from compsum_jax.losses import adversarial as adversarial_losses

Objective = Callable[[jax.Array, jax.Array, jax.Array | None,
                      jax.Array | None], jax.Array]

# Denominator floor of the DLR losses, as in Croce & Hein (2020).
DLR_EPS = 1e-12
# ε inside the safe norm sqrt(Σ v² + ε) of the smooth comp-sum term.
SMOOTH_NORM_EPS = 1e-12


def _label_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits_adv: jax.Array, labels: jax.Array,
                  logits_clean: jax.Array | None = None,
                  target_labels: jax.Array | None = None) -> jax.Array:
  """CE(z', y) = logsumexp(z') − z'_y = ℓ_τ at τ = 1, shape [B]."""
  del logits_clean, target_labels
  return losses.comp_sum_loss(logits_adv, labels, 1.0)


def negative_margin(logits_adv: jax.Array, labels: jax.Array,
                    logits_clean: jax.Array | None = None,
                    target_labels: jax.Array | None = None) -> jax.Array:
  """max_{i≠y} z'_i − z'_y = −ρ(z', y) (docs/math.md (4.2)); > 0 iff misclassified."""
  del logits_clean, target_labels
  return -losses.margin(logits_adv, labels)  # −(z_y − max_{i≠y} z_i)


def kl_to_clean(logits_adv: jax.Array, labels: jax.Array,
                logits_clean: jax.Array | None = None,
                target_labels: jax.Array | None = None) -> jax.Array:
  """KL(p ‖ p') = Σ_i p_i (log p_i − log p'_i), p = softmax z, p' = softmax z'.

  The TRADES inner objective (Zhang et al. 2019, eq. 5); ``logits_clean`` is
  treated as a constant.
  """
  del labels, target_labels
  if logits_clean is None:
    raise ValueError("loss='kl' needs the clean logits (logits_clean=None)")
  # KL(p‖q) = Σ p (log p − log q), the training loss's formula, clean side fixed.
  return adversarial_losses.kl_divergence_from_logits(
      jax.lax.stop_gradient(logits_clean), logits_adv)


def check_dlr_classes(num_classes: int, targeted: bool) -> None:
  """DLR needs π3, i.e. n ≥ 3; targeted DLR needs π4, i.e. n ≥ 4."""
  need = 4 if targeted else 3
  name = "dlr_targeted" if targeted else "dlr"
  if num_classes < need:
    raise ValueError(f"loss {name!r} needs at least {need} classes (it uses "
                     f"the {need}rd/{need}th largest logit), got "
                     f"num_classes={num_classes}")


def dlr(logits_adv: jax.Array, labels: jax.Array,
        logits_clean: jax.Array | None = None,
        target_labels: jax.Array | None = None) -> jax.Array:
  """Difference of logits ratio, Croce & Hein (2020) eq. (5), shape [B].

  DLR(z, y) = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12); invariant to
  shifting and (positively) rescaling the logits. Needs n ≥ 3 classes.
  """
  del logits_clean, target_labels
  check_dlr_classes(logits_adv.shape[-1], targeted=False)
  top3 = jax.lax.top_k(logits_adv, 3)[0]
  neg_margin = -losses.margin(logits_adv, labels)
  # −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
  return neg_margin / (top3[..., 0] - top3[..., 2] + DLR_EPS)


def dlr_targeted(logits_adv: jax.Array, labels: jax.Array,
                 logits_clean: jax.Array | None = None,
                 target_labels: jax.Array | None = None) -> jax.Array:
  """Targeted DLR, Croce & Hein (2020) §3.2, shape [B]. Needs n ≥ 4 classes.

  DLR_t(z, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12).
  """
  del logits_clean
  check_dlr_classes(logits_adv.shape[-1], targeted=True)
  if target_labels is None:
    raise ValueError("loss='dlr_targeted' needs target_labels (got None)")
  top4 = jax.lax.top_k(logits_adv, 4)[0]
  z_y = _label_logit(logits_adv, labels)
  z_t = _label_logit(logits_adv, target_labels)
  # −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)
  return -(z_y - z_t) / (top4[..., 0] - 0.5 * (top4[..., 2] + top4[..., 3])
                         + DLR_EPS)


def smooth_comp_sum_term(logits_adv: jax.Array, labels: jax.Array,
                         logits_clean: jax.Array | None = None,
                         target_labels: jax.Array | None = None, *,
                         norm_eps: float = SMOOTH_NORM_EPS) -> jax.Array:
  """Smooth adversarial comp-sum term ‖Δ̄_h(x', y) − Δ̄_h(x, y)‖₂ (docs/math.md (10.2)–(10.4)).

  With d = z(x') − z(x) and v = d − d_y·1 (docs/math.md (10.4)), returns the safe norm
  sqrt(Σ_i v_i² + norm_eps): equal to ‖v‖₂ up to norm_eps, with gradient
  v/sqrt(Σv² + norm_eps) that is 0 (not NaN) at v = 0. Since ‖v‖ has no
  gradient information at x' = x, attacks on it need a random start.

  Args:
    logits_adv: z(x'), [B, n].
    labels: y, [B].
    logits_clean: z(x), [B, n]; a constant for the attack.
    target_labels: unused.
    norm_eps: ε ≥ 0 of the safe norm.

  Returns:
    The term, shape [B].
  """
  del target_labels
  if logits_clean is None:
    raise ValueError("loss='smooth_comp_sum' needs the clean logits "
                     "(logits_clean=None)")
  # ‖v‖₂ (safe), v = d − d_y·1, d = z(x') − z(x): the training loss's term with
  # the clean logits held constant.
  return adversarial_losses.smooth_adversarial_term(
      logits_adv, jax.lax.stop_gradient(logits_clean), labels,
      norm_eps=norm_eps)


OBJECTIVES: dict[str, Objective] = {
    "ce": cross_entropy,
    "margin": negative_margin,
    "kl": kl_to_clean,
    "dlr": dlr,
    "dlr_targeted": dlr_targeted,
    "smooth_comp_sum": smooth_comp_sum_term,
}

# Objectives that need the clean logits z(x) (one extra forward pass).
NEEDS_CLEAN_LOGITS = frozenset({"kl", "smooth_comp_sum"})


def get_objective(loss: str | Objective) -> Objective:
  """Resolves a loss name (see module doc) or passes a callable through."""
  if callable(loss):
    return loss
  if loss not in OBJECTIVES:
    raise ValueError(f"loss must be one of {sorted(OBJECTIVES)} or a callable "
                     f"(logits_adv, labels, logits_clean, target_labels) -> "
                     f"[B], got loss={loss!r}")
  return OBJECTIVES[loss]
