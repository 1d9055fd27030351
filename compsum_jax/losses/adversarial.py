"""Adversarial training objectives as pure functions of logits.

The outer losses of three adversarial-training methods, given the clean logits
z = h(x) and the logits z' = h(x') at an adversarial point x' produced by an
inner maximisation (an attack, :mod:`compsum_jax.attacks`). Everything here is
per example (the caller reduces), differentiable in both ``logits_clean`` and
``logits_adv`` (no ``stop_gradient``: by Danskin's theorem the gradient of
max_{x'} L(θ, x') is ∇_θ L(θ, x'*), which flows through z(x) and z(x'*)).

  ADV-COMP-SUM (Mao, Mohri & Zhong, ICML 2023; docs/math.md (10.2)–(10.6)):
      L = ℓ_τ(z/ρ, y) + ν·‖Δ̄(z'/ρ, y) − Δ̄(z/ρ, y)‖₂,
      Δ̄(z, y) = (z_1 − z_y, …, z_n − z_y),
    i.e. with v = d − d_y·1, d = z' − z:  L = ℓ_τ(z/ρ, y) + (ν/ρ)·‖v‖₂.
  TRADES (Zhang et al. 2019, "Theoretically principled trade-off between
  robustness and accuracy", ICML, eq. 5):
      L = CE(z, y) + β·KL(softmax z ‖ softmax z')
    with the clean distribution NOT detached (as in the reference code).
  PGD-AT (Madry et al. 2018, eq. 2.1): L = CE(z', y).

The weight decay λ‖θ‖² of ADV-COMP-SUM (docs/math.md (10.6)) is the
optimizer's job (``compsum_jax.training.make_optimizer(weight_decay=λ)``), not
a loss term.

Hyperparameters (τ, ν, ρ, β) are Python floats or (possibly traced) arrays
broadcastable to the batch shape, so members with different values can be
``jax.vmap``-ed. Concrete values are checked (ValueError naming the value);
under ``jit`` wrap with :func:`compsum_jax.validation.with_runtime_checks`.

Shapes: ``logits_*`` [..., n] with n ≥ 2, ``labels`` integer [...]; outputs
[...] in float32 (or wider).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compsum_jax import validation
from compsum_jax.losses.comp_sum import comp_sum_loss

Scalar = float | jax.Array


def _prepare_pair(logits_clean: jax.Array, logits_adv: jax.Array,
                  labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks shapes/labels of a (clean, adversarial) pair; casts to float32+."""
  validation.check_logits(logits_clean, "logits_clean")
  validation.check_logits(logits_adv, "logits_adv")
  if jnp.shape(logits_clean) != jnp.shape(logits_adv):
    raise ValueError(f"logits_clean and logits_adv must have the same shape, "
                     f"got {tuple(jnp.shape(logits_clean))} and "
                     f"{tuple(jnp.shape(logits_adv))}")
  dtype = jnp.promote_types(validation.compute_dtype(logits_clean),
                            validation.compute_dtype(logits_adv))
  validation.check_labels(labels, jnp.shape(logits_clean))
  return (jnp.asarray(logits_clean, dtype), jnp.asarray(logits_adv, dtype),
          jnp.asarray(labels))


def _label_entry(values: jax.Array, labels: jax.Array) -> jax.Array:
  """values[..., y] for every example: [..., n], [...] → [...]."""
  return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def safe_l2_norm(v: jax.Array, *, norm_eps: float = 0.0) -> jax.Array:
  """sqrt(Σ_i v_i² + norm_eps) over the last axis, with a finite gradient at 0.

  With ``norm_eps = 0`` the value is exactly ‖v‖₂ and the gradient v/‖v‖₂ for
  v ≠ 0 and 0 (a subgradient) at v = 0 (double-``where``, never NaN). With
  ``norm_eps > 0`` it is the smoothed norm used by the attacks.

  Args:
    v: [..., n].
    norm_eps: ε ≥ 0 added under the square root.

  Returns:
    [...].
  """
  validation.check_nonnegative(norm_eps, "norm_eps")
  squared = jnp.sum(v * v, axis=-1) + norm_eps  # Σ v² + ε
  positive = squared > 0
  safe = jnp.where(positive, squared, 1.0)
  return jnp.where(positive, jnp.sqrt(safe), 0.0)  # sqrt(Σ v² + ε)


def smooth_adversarial_term(logits_adv: jax.Array, logits_clean: jax.Array,
                            labels: jax.Array, *, norm_eps: float = 0.0
                            ) -> jax.Array:
  """‖Δ̄_h(x', y) − Δ̄_h(x, y)‖₂, the smooth term of ADV-COMP-SUM.

  With d = z(x') − z(x) and v = d − d_y·1 (docs/math.md (10.2), (10.4)),
  returns ‖v‖₂ (or sqrt(‖v‖² + norm_eps), (10.5)). Invariant to adding a
  constant to all logits of z or z'; zero iff z' − z is a constant vector. The
  inner maximisation of ADV-COMP-SUM maximises this over x'
  (``compsum_jax.attacks.pgd`` with ``loss='smooth_comp_sum'``, which computes
  the same formula with the clean logits held constant and ``norm_eps=1e-12``).

  Args:
    logits_adv: z(x'), [..., n].
    logits_clean: z(x), [..., n]; NOT detached (gradient flows through it).
    labels: y, integer [...].
    norm_eps: ε ≥ 0 of the safe norm (0: exact norm, zero subgradient at 0).

  Returns:
    Per-example term, [...].
  """
  logits_clean, logits_adv, labels = _prepare_pair(logits_clean, logits_adv,
                                                   labels)
  d = logits_adv - logits_clean  # d = z(x') − z(x)
  v = d - _label_entry(d, labels)[..., None]  # v = d − d_y·1
  return safe_l2_norm(v, norm_eps=norm_eps)  # ‖v‖₂


def adv_comp_sum_loss(logits_clean: jax.Array, logits_adv: jax.Array,
                      labels: jax.Array, tau: Scalar, nu: Scalar,
                      rho: Scalar = 1.0, *, norm_eps: float = 0.0
                      ) -> jax.Array:
  """Regularised smooth adversarial comp-sum loss (docs/math.md (10.2)–(10.6)).

      L = ℓ_τ(z/ρ, y) + ν·‖Δ̄(z'/ρ, y) − Δ̄(z/ρ, y)‖₂
        = ℓ_τ(z/ρ, y) + (ν/ρ)·‖v‖₂,   v = d − d_y·1,  d = z' − z.

  The 1/ρ is the margin scale of the ρ-margin loss it upper-bounds
  (docs/math.md (10.3), step 1: Φ_ρ(u) ≤ e^{−u/ρ}); ρ = 1 is the loss of
  docs/math.md (10.6). With ν = 0 it is ℓ_τ(z/ρ, y), plain comp-sum training.
  For τ ≥ 1 and ν ≥ 1 it upper-bounds the adversarial comp-sum ρ-margin loss
  (docs/math.md (10.3), step 3).

  Args:
    logits_clean: z = h(x), [..., n].
    logits_adv: z' = h(x'), [..., n], x' from the inner maximisation of the
      smooth term.
    labels: y, integer [...].
    tau: τ ≥ 0 of the comp-sum loss (float or array broadcastable to [...]).
    nu: ν ≥ 0, weight of the smooth term.
    rho: ρ > 0, margin scale.
    norm_eps: ε ≥ 0 of the safe norm in the smooth term.

  Returns:
    Per-example losses, [...].

  Raises:
    ValueError: bad shapes or labels, τ < 0, ν < 0, ρ ≤ 0 (when concrete).
  """
  validation.check_tau(tau)
  validation.check_nonnegative(nu, "nu")
  validation.check_nonnegative(rho, "rho", allow_zero=False)
  logits_clean, logits_adv, labels = _prepare_pair(logits_clean, logits_adv,
                                                   labels)
  rho = jnp.asarray(rho, logits_clean.dtype)
  nu = jnp.asarray(nu, logits_clean.dtype)
  inv_rho = (1.0 / rho)[..., None]
  natural = comp_sum_loss(logits_clean * inv_rho, labels, tau)  # ℓ_τ(z/ρ, y)
  smooth = smooth_adversarial_term(logits_adv * inv_rho,
                                   logits_clean * inv_rho, labels,
                                   norm_eps=norm_eps)
  return natural + nu * smooth  # ℓ_τ(z/ρ, y) + ν‖v/ρ‖₂


def kl_divergence_from_logits(logits_p: jax.Array,
                              logits_q: jax.Array) -> jax.Array:
  """KL(softmax z_p ‖ softmax z_q) = Σ_i p_i (log p_i − log q_i), [..., n] → [...].

  Computed from log-softmax (stable for any finite logits); ≥ 0 up to
  rounding, 0 iff z_p − z_q is constant. Differentiable in both arguments.
  """
  validation.check_logits(logits_p, "logits_p")
  validation.check_logits(logits_q, "logits_q")
  dtype = jnp.promote_types(validation.compute_dtype(logits_p),
                            validation.compute_dtype(logits_q))
  log_p = jax.nn.log_softmax(jnp.asarray(logits_p, dtype), axis=-1)
  log_q = jax.nn.log_softmax(jnp.asarray(logits_q, dtype), axis=-1)
  # KL(p‖q) = Σ_i p_i (log p_i − log q_i)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def trades_loss(logits_clean: jax.Array, logits_adv: jax.Array,
                labels: jax.Array, beta: Scalar = 6.0) -> jax.Array:
  """TRADES loss CE(z, y) + β·KL(softmax z ‖ softmax z') (Zhang et al. 2019, eq. 5).

  The clean distribution softmax z is NOT detached: the gradient of the KL
  term flows through both z and z', as in the reference TRADES code
  (``criterion_kl(log_softmax(model(x_adv)), softmax(model(x_natural)))``).
  The inner maximisation maximises the KL term over x' (attack loss 'kl').

  Args:
    logits_clean: z = h(x), [..., n].
    logits_adv: z' = h(x'), [..., n].
    labels: y, integer [...].
    beta: β ≥ 0 (6 in Zhang et al. and Gowal et al.).

  Returns:
    Per-example losses, [...].
  """
  validation.check_nonnegative(beta, "beta")
  logits_clean, logits_adv, labels = _prepare_pair(logits_clean, logits_adv,
                                                   labels)
  natural = comp_sum_loss(logits_clean, labels, 1.0)  # CE(z, y)
  robust = kl_divergence_from_logits(logits_clean, logits_adv)
  return natural + jnp.asarray(beta, natural.dtype) * robust  # CE + β·KL


def pgd_at_loss(logits_adv: jax.Array, labels: jax.Array) -> jax.Array:
  """PGD adversarial training loss CE(z', y) (Madry et al. 2018, eq. 2.1).

  Args:
    logits_adv: z' = h(x'), [..., n], x' from PGD on the cross-entropy.
    labels: y, integer [...].

  Returns:
    Per-example losses, [...].
  """
  return comp_sum_loss(logits_adv, labels, 1.0)  # CE(z', y) = lse(z') − z'_y
