"""FGSM and projected gradient ascent (PGD) in ℓ∞ and ℓ2 balls.

PGD (Madry et al. 2018, "Towards deep learning models resistant to adversarial
attacks", eq. 2): starting from x⁰ in the ball B(x, ε) ∩ [0, 1]^d,

    x^{k+1} = Π_{B(x, ε) ∩ [0,1]^d}( x^k + α_k · u(∇_x L(x^k)) ),

with u(g) = sign(g) for ℓ∞ and g/‖g‖₂ for ℓ2 (steepest ascent), or with the
Adam direction of Gowal et al. (2020) (``optimizer='adam'``; α_k is then Adam's
learning rate). FGSM (Goodfellow et al. 2015) is one step of size ε from x.

All functions are pure functions of ``logits_fn(x) -> [B, n]`` (which must
treat the examples of a batch independently, e.g. a model in eval mode), take
explicit keys, use ``jax.lax`` loops, and can be wrapped in ``jax.jit`` with
``logits_fn`` closed over and the keyword options static.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from compsum_jax.attacks import objectives, threat_model

LogitsFn = Callable[[jax.Array], jax.Array]
Schedule = Callable[[jax.Array], jax.Array]

SELECT_MODES = ("misclassified", "loss", "last")
OPTIMIZERS = ("sign", "adam")


def _start_kind(random_start: bool | str | None) -> str | None:
  """True → 'uniform'; False/None → no random start; or a kind by name."""
  if random_start is True:
    return "uniform"
  if random_start is False or random_start is None:
    return None
  if random_start in ("uniform", "gaussian", "boundary"):
    return random_start
  raise ValueError(f"random_start must be True, False, 'uniform', 'gaussian' "
                   f"or 'boundary', got random_start={random_start!r}")


def _as_schedule(step_size: float | Schedule) -> Schedule:
  if callable(step_size):
    return step_size
  threat_model.check_eps(step_size, "step_size")
  return lambda _: step_size


# The argument checks shared by every attack live in ``threat_model``.
check_attack_args = threat_model.check_attack_args


def better_than(mis_new: jax.Array, loss_new: jax.Array, mis_best: jax.Array,
                loss_best: jax.Array, select: str) -> jax.Array:
  """Whether a new point beats the best so far, per example ([B] booleans).

  'misclassified': a misclassified point beats a correctly classified one;
  otherwise the higher loss wins. 'loss': the higher loss wins.
  """
  higher = loss_new > loss_best
  if select == "loss":
    return higher
  return (mis_new & ~mis_best) | ((mis_new == mis_best) & higher)


def _where_b(cond: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.where(cond.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def pgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array,
        *, eps: float | jax.Array, step_size: float | Schedule,
        num_steps: int, norm: str = "linf",
        loss: str | objectives.Objective = "ce",
        random_start: bool | str = True, num_restarts: int = 1,
        optimizer: str = "sign", select: str = "misclassified",
        target_labels: jax.Array | None = None) -> jax.Array:
  """Projected gradient ascent on an attack loss, with restarts.

  x^{k+1} = Π_{B(x,ε)∩[0,1]^d}(x^k + α_k u(∇L(x^k))) (Madry et al. 2018, eq. 2),
  u = sign for ℓ∞, ∇/‖∇‖₂ for ℓ2, or the Adam direction (``optimizer='adam'``,
  Gowal et al. 2020). Every iterate x⁰, …, x^N of every restart is a candidate
  and the best one per example is returned (see ``select``).

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n]; examples independent.
    x: clean inputs in [0, 1], [B, ...].
    labels: true labels, integer [B].
    key: one PRNG key, or one key per example ([B]); see ``threat_model``.
    eps: radius ε ≥ 0 of the threat model (scalar or [B]).
    step_size: α ≥ 0, or a schedule ``step -> α_k`` (e.g. an optax schedule);
      for ``optimizer='adam'`` the learning rate.
    num_steps: N ≥ 0 gradient steps per restart.
    norm: 'linf' or 'l2'.
    loss: 'ce', 'margin', 'kl', 'dlr', 'dlr_targeted', 'smooth_comp_sum' (see
      :mod:`compsum_jax.attacks.objectives`) or a callable
      ``(logits_adv, labels, logits_clean, target_labels) -> [B]`` to maximize.
    random_start: True or 'uniform' (uniform in the ball), 'gaussian' (TRADES:
      x + 0.001·N(0, I)), 'boundary' (APGD's start on the ball's surface), or
      False (start at x).
    num_restarts: R ≥ 1 independent runs (restart r uses the per-example keys
      folded with r).
    optimizer: 'sign' (steepest ascent) or 'adam'.
    select: which iterate is returned. 'misclassified' (default): a
      misclassified iterate if any, the highest-loss one among them, else the
      highest-loss iterate; 'loss': the highest-loss iterate; 'last': the last
      iterate (TRADES, Gowal et al.), needs ``num_restarts == 1``.
    target_labels: target classes [B], only for ``loss='dlr_targeted'`` or a
      callable that uses them.

  Returns:
    Adversarial inputs in B(x, ε) ∩ [0, 1]^d, [B, ...], without gradient.

  Raises:
    ValueError: ε < 0, x outside [0, 1] (when concrete), bad norm, loss, start,
      optimizer or select, num_steps < 0, num_restarts < 1, or too few classes
      for a DLR loss.
  """
  n = check_attack_args(logits_fn, x, labels, eps, norm)
  num_steps = threat_model.check_positive_int(num_steps, "num_steps",
                                              allow_zero=True)
  num_restarts = threat_model.check_positive_int(num_restarts, "num_restarts")
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got "
                     f"optimizer={optimizer!r}")
  if select not in SELECT_MODES:
    raise ValueError(f"select must be one of {SELECT_MODES}, got "
                     f"select={select!r}")
  if select == "last" and num_restarts != 1:
    raise ValueError(f"select='last' needs num_restarts=1, got "
                     f"num_restarts={num_restarts}")
  start = _start_kind(random_start)
  schedule = _as_schedule(step_size)
  objective = objectives.get_objective(loss)
  if loss in ("dlr", "dlr_targeted"):
    objectives.check_dlr_classes(n, targeted=loss == "dlr_targeted")
  if loss == "dlr_targeted" and target_labels is None:
    raise ValueError("loss='dlr_targeted' needs target_labels (got None)")

  x = jax.lax.stop_gradient(x)
  batch = x.shape[0]
  keys = threat_model.example_keys(key, batch)
  needs_clean = callable(loss) or loss in objectives.NEEDS_CLEAN_LOGITS
  logits_clean = (jax.lax.stop_gradient(logits_fn(x)) if needs_clean
                  else None)
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-9)

  def summed_loss(x_adv):
    z = logits_fn(x_adv)
    per_example = objective(z, labels, logits_clean, target_labels)
    return jnp.sum(per_example), (per_example, z)

  grad_fn = jax.grad(summed_loss, has_aux=True)

  def update_best(best, x_new, loss_new, z_new):
    best_x, best_mis, best_loss = best
    mis_new = jnp.argmax(z_new, axis=-1) != labels
    take = better_than(mis_new, loss_new, best_mis, best_loss, select)
    return (_where_b(take, x_new, best_x), jnp.where(take, mis_new, best_mis),
            jnp.where(take, loss_new, best_loss))

  def one_run(restart, best):
    x_adv = x
    if start is not None:
      x_adv = threat_model.random_start(
          threat_model.fold_in_each(keys, restart), x, eps, norm, start)

    def step(k, state):
      x_adv, opt_state, best = state
      grad, (loss_k, z_k) = grad_fn(x_adv)
      if select != "last":
        best = update_best(best, x_adv, loss_k, z_k)
      alpha = jnp.asarray(schedule(k), x.dtype)
      if optimizer == "sign":
        direction = threat_model.steepest_ascent_direction(grad, norm)
      else:
        direction, opt_state = adam.update(grad, opt_state)
      # x^{k+1} = Π(x^k + α_k u(∇L(x^k)))
      x_next = threat_model.project(x_adv + alpha * direction, x, eps, norm)
      return x_next, opt_state, best

    x_adv, _, best = jax.lax.fori_loop(
        0, num_steps, step, (x_adv, adam.init(x), best))
    if select == "last":
      return (x_adv,) + best[1:]
    _, (loss_last, z_last) = summed_loss(x_adv)
    return update_best(best, x_adv, loss_last, z_last)

  best = (x, jnp.zeros((batch,), bool),
          jnp.full((batch,), -jnp.inf, x.dtype))
  best = jax.lax.fori_loop(0, num_restarts, one_run, best)
  return jax.lax.stop_gradient(best[0])


def fgsm(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, *,
         eps: float | jax.Array, norm: str = "linf",
         loss: str | objectives.Objective = "ce",
         target_labels: jax.Array | None = None) -> jax.Array:
  """Fast gradient (sign) method: one step of size ε from x.

  x' = clip_[0,1](x + ε·sign(∇_x L(x))) for ℓ∞ (Goodfellow et al. 2015) and
  x' = clip_[0,1](x + ε·∇/‖∇‖₂) for ℓ2 (the fast gradient method).

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n].
    x: clean inputs in [0, 1], [B, ...].
    labels: integer [B].
    eps: ε ≥ 0.
    norm: 'linf' or 'l2'.
    loss: as in :func:`pgd` (default cross-entropy); 'smooth_comp_sum' has no
      gradient at x and returns x.
    target_labels: for 'dlr_targeted'.

  Returns:
    Adversarial inputs, [B, ...].
  """
  return pgd(logits_fn, x, labels, jax.random.key(0), eps=eps, step_size=eps,
             num_steps=1, norm=norm, loss=loss, random_start=False,
             select="last", target_labels=target_labels)
