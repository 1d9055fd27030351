"""Auto-PGD (APGD) of Croce & Hein (2020), untargeted and targeted, ℓ∞ and ℓ2.

F. Croce, M. Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1 and §3.
Written from the paper; the reference implementation (fra1ntz/auto-attack,
``autopgd_base.py``) was read to settle details the paper leaves open.

One run on N iterations, per example (step size η, momentum α = 0.75):

    x⁰ = start on the sphere of radius ε;  η⁽⁰⁾ = 2ε
    z^{k+1} = Π(x^k + η^k u(∇f(x^k)))                             (Alg. 1, l. 8)
    x^{k+1} = Π(x^k + α(z^{k+1} − x^k) + (1 − α)(x^k − x^{k−1}))   (Alg. 1, l. 9)
    with α = 1 at k = 0 (x¹ = z¹).

Checkpoints w_j = ⌈p_j N⌉ with p_0 = 0, p_1 = 0.22 and
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (eq. 4), i.e. windows of
0.22N, 0.19N, … iterations shrinking by 0.03N down to 0.06N, computed in
integers as the reference does (⌊0.22N⌋, −⌊0.03N⌋, ≥ ⌊0.06N⌋, each ≥ 1).
At a checkpoint the step size is halved and the iterate restarted from the
best point x_max (with its gradient) if

    1. Σ_{k=w_{j−1}}^{w_j−1} 1[f(x^{k+1}) > f(x^k)] < ρ·(w_j − w_{j−1}), ρ = 0.75,
    2. or η^{(w_{j−1})} = η^{(w_j)} and f_max^{(w_{j−1})} = f_max^{(w_j)}.

Choices where the paper and the reference differ (documented, deliberate):
  * condition 1 uses the paper's strict "<" (the reference uses "≤") and counts
    the first window from f(x⁰) (the reference compares its first iterate with
    an uninitialised 0 entry of its loss buffer);
  * condition 2 follows the reference in treating the start as if the step had
    just been reduced, so it can first fire at the second checkpoint.

The point returned per example is the last misclassified iterate if one was
found (as the reference's ``x_best_adv``), else the highest-loss iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax.attacks import objectives, threat_model
from compsum_jax.attacks.projected_gradient import better_than

LogitsFn = Callable[[jax.Array], jax.Array]

MOMENTUM = 0.75  # α of Alg. 1
INITIAL_STEP = 2.0  # η⁽⁰⁾ = 2ε
RHO = 0.75  # ρ of condition 1


class APGDResult(NamedTuple):
  """Outcome of :func:`apgd_run` for a batch of B examples.

  Attributes:
    x_adv: returned points [B, ...]: a misclassified iterate if found, else
      ``x_best``.
    x_best: highest-loss iterate [B, ...].
    best_loss: f(x_best), [B].
    misclassified: whether some iterate was misclassified, [B] bool.
    loss_history: f(x^k) for k = 0..N, [N + 1, B] (last restart / target).
    best_loss_history: max_{j≤k} f(x^j), [N + 1, B] (last restart / target).
    step_size: final η per example, [B] (last restart / target).
  """
  x_adv: jax.Array
  x_best: jax.Array
  best_loss: jax.Array
  misclassified: jax.Array
  loss_history: jax.Array
  best_loss_history: jax.Array
  step_size: jax.Array


def checkpoint_schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Checkpoints of eq. (4) in the reference's integer form.

  Returns:
    ``(is_checkpoint, window)``, both of length N: whether the iteration with
    0-based index k ends at a checkpoint (the checkpoint w_j = k + 1), and the
    window length w_j − w_{j−1} there (0 elsewhere).
  """
  first = max(int(0.22 * num_steps), 1)  # p_1 = 0.22
  decrement = max(int(0.03 * num_steps), 1)  # windows shrink by 0.03N
  minimum = max(int(0.06 * num_steps), 1)  # down to 0.06N
  is_checkpoint = np.zeros(num_steps, bool)
  window = np.zeros(num_steps, np.int32)
  k, since = first, 0
  for i in range(num_steps):
    since += 1
    if since == k:
      is_checkpoint[i], window[i] = True, k
      k, since = max(k - decrement, minimum), 0
  return is_checkpoint, window


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _single_run(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                keys: jax.Array, eps: jax.Array, num_steps: int, norm: str,
                objective: objectives.Objective,
                target_labels: jax.Array | None, rho: float,
                stop_when_all_fooled: bool = False) -> APGDResult:
  """One APGD run (Alg. 1) on a batch; see the module docstring. With
  ``stop_when_all_fooled`` the run ends once every example is misclassified."""
  batch = x.shape[0]
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))

  def loss_grad(x_adv):
    def summed(xa):
      z = logits_fn(xa)
      per_example = objective(z, labels, None, target_labels)
      return jnp.sum(per_example), (per_example, z)
    grad, (loss, z) = jax.grad(summed, has_aux=True)(x_adv)
    return loss, grad, jnp.argmax(z, axis=-1) != labels

  x0 = threat_model.random_start(keys, x, eps_b, norm, "boundary")
  loss0, grad0, mis0 = loss_grad(x0)
  is_ckpt_np, window_np = checkpoint_schedule(num_steps)
  is_ckpt, window = jnp.asarray(is_ckpt_np), jnp.asarray(window_np)
  history = jnp.zeros((num_steps + 1, batch), loss0.dtype).at[0].set(loss0)
  best_history = history
  steps_idx = jnp.arange(num_steps)

  state = dict(
      x_cur=x0, x_prev=x0, grad=grad0, step=INITIAL_STEP * eps_b,
      x_best=x0, loss_best=loss0, grad_best=grad0,
      x_adv=x0, found=mis0, history=history, best_history=best_history,
      loss_best_last_check=loss0, reduced_last_check=jnp.ones(batch, bool))

  def body(i, s):
    s = dict(s)
    alpha = jnp.where(i > 0, MOMENTUM, 1.0)
    momentum = s["x_cur"] - s["x_prev"]  # x^k − x^{k−1}
    step_b = _bcast(s["step"], x)
    direction = threat_model.steepest_ascent_direction(s["grad"], norm)
    # z^{k+1} = Π(x^k + η u(∇f(x^k)))
    z = threat_model.project(s["x_cur"] + step_b * direction, x, eps_b, norm)
    # x^{k+1} = Π(x^k + α(z^{k+1} − x^k) + (1 − α)(x^k − x^{k−1}))
    x_new = threat_model.project(
        s["x_cur"] + alpha * (z - s["x_cur"]) + (1.0 - alpha) * momentum,
        x, eps_b, norm)
    loss, grad, mis = loss_grad(x_new)
    s["x_prev"] = s["x_cur"]
    s["x_adv"] = jnp.where(_bcast(mis, x), x_new, s["x_adv"])
    s["found"] = s["found"] | mis
    s["history"] = s["history"].at[i + 1].set(loss)
    improved = loss > s["loss_best"]
    s["x_best"] = jnp.where(_bcast(improved, x), x_new, s["x_best"])
    s["grad_best"] = jnp.where(_bcast(improved, x), grad, s["grad_best"])
    s["loss_best"] = jnp.where(improved, loss, s["loss_best"])
    s["best_history"] = s["best_history"].at[i + 1].set(s["loss_best"])
    s["x_cur"], s["grad"] = x_new, grad

    # Checkpoint w_j = i + 1 with window k = w_j − w_{j−1}.
    k = window[i]
    in_window = (steps_idx >= i + 1 - k) & (steps_idx <= i)
    h = s["history"]
    increases = jnp.sum(
        jnp.where(in_window[:, None], h[1:] > h[:-1], False), axis=0)
    # Condition 1: Σ 1[f(x^{k+1}) > f(x^k)] < ρ·(w_j − w_{j−1}).
    cond1 = increases < rho * k
    # Condition 2: η unchanged and f_max unchanged since the last checkpoint.
    cond2 = ~s["reduced_last_check"] & (
        s["loss_best_last_check"] >= s["loss_best"])
    reduce = is_ckpt[i] & (cond1 | cond2)
    s["step"] = jnp.where(reduce, s["step"] / 2.0, s["step"])  # η ← η/2
    s["x_cur"] = jnp.where(_bcast(reduce, x), s["x_best"], s["x_cur"])
    s["grad"] = jnp.where(_bcast(reduce, x), s["grad_best"], s["grad"])
    s["reduced_last_check"] = jnp.where(is_ckpt[i], reduce,
                                        s["reduced_last_check"])
    s["loss_best_last_check"] = jnp.where(
        is_ckpt[i], s["loss_best"], s["loss_best_last_check"])
    return s

  if stop_when_all_fooled:
    # Every example misclassified: later steps cannot change which are.
    _, s = jax.lax.while_loop(
        lambda c: (c[0] < num_steps) & ~jnp.all(c[1]["found"]),
        lambda c: (c[0] + 1, body(c[0], c[1])), (0, state))
  else:
    s = jax.lax.fori_loop(0, num_steps, body, state)
  x_ret = jnp.where(_bcast(s["found"], x), s["x_adv"], s["x_best"])
  return APGDResult(x_adv=x_ret, x_best=s["x_best"], best_loss=s["loss_best"],
                    misclassified=s["found"], loss_history=s["history"],
                    best_loss_history=s["best_history"], step_size=s["step"])


def _empty_result(x: jax.Array, num_steps: int) -> APGDResult:
  """A result that any run beats (no misclassification, loss −∞)."""
  batch = x.shape[0]
  return APGDResult(
      x_adv=x, x_best=x, best_loss=jnp.full((batch,), -jnp.inf, x.dtype),
      misclassified=jnp.zeros((batch,), bool),
      loss_history=jnp.zeros((num_steps + 1, batch), x.dtype),
      best_loss_history=jnp.zeros((num_steps + 1, batch), x.dtype),
      step_size=jnp.zeros((batch,), x.dtype))


def _merge(old: APGDResult, new: APGDResult) -> APGDResult:
  """Keeps, per example, the better of two runs (misclassified, then loss)."""
  take = better_than(new.misclassified, new.best_loss, old.misclassified,
                     old.best_loss, "misclassified")
  pick = lambda a, b: jnp.where(_bcast(take, a), a, b)
  return APGDResult(
      x_adv=pick(new.x_adv, old.x_adv), x_best=pick(new.x_best, old.x_best),
      best_loss=jnp.where(take, new.best_loss, old.best_loss),
      misclassified=new.misclassified | old.misclassified,
      loss_history=new.loss_history, best_loss_history=new.best_loss_history,
      step_size=new.step_size)


def num_runs(num_classes: int, *, num_restarts: int = 1,
             num_target_classes: int | None = None) -> int:
  """Runs of an APGD call: R restarts, times T = min(T, n − 1) targets."""
  if num_target_classes is None:
    return num_restarts
  return num_restarts * min(num_target_classes, num_classes - 1)


def _check_common(logits_fn, x, labels, eps, norm, num_steps, num_restarts,
                  rho, stop_when_all_fooled=False) -> int:
  if not isinstance(stop_when_all_fooled, bool):
    raise ValueError(f"stop_when_all_fooled must be True or False, got "
                     f"stop_when_all_fooled={stop_when_all_fooled!r}")
  n = threat_model.check_attack_args(logits_fn, x, labels, eps, norm)
  threat_model.check_positive_int(num_steps, "num_steps")
  threat_model.check_positive_int(num_restarts, "num_restarts")
  threat_model.check_fraction(rho, "rho")
  return n


def apgd_run(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
             key: jax.Array, *, eps: float | jax.Array, num_steps: int = 100,
             norm: str = "linf", loss: str | objectives.Objective = "ce",
             num_restarts: int = 1, rho: float = RHO,
             target_labels: jax.Array | None = None,
             only_run: int | jax.Array | None = None,
             stop_when_all_fooled: bool = False) -> APGDResult:
  """APGD with restarts, returning the full :class:`APGDResult`.

  Same arguments as :func:`apgd`. Restart r uses the per-example keys folded
  with r; the best run per example is kept (misclassified first, then the
  higher best loss). ``only_run=r`` (an int or a traced int32 scalar) runs
  restart r alone, exactly as it runs inside the full call: the early-exit
  evaluation calls it on the points still robust after restarts 0..r−1.
  ``only_run`` may also be one run index per example ([B] integers): example
  b then makes run ``only_run[b]`` alone, so several runs share one batch.
  ``stop_when_all_fooled=True`` ends a run once every example of the batch
  is misclassified (which examples are misclassified is then final; x_adv is
  the last misclassified iterate so far and the loss histories stop there):
  the early-exit evaluation uses it.
  """
  n = _check_common(logits_fn, x, labels, eps, norm, num_steps, num_restarts,
                    rho, stop_when_all_fooled)
  if loss in ("dlr", "dlr_targeted"):
    objectives.check_dlr_classes(n, targeted=loss == "dlr_targeted")
  if loss == "dlr_targeted" and target_labels is None:
    raise ValueError("loss='dlr_targeted' needs target_labels (got None)")
  if loss in objectives.NEEDS_CLEAN_LOGITS or callable(loss):
    logits_clean = jax.lax.stop_gradient(logits_fn(x))
    base = objectives.get_objective(loss)
    objective = lambda z, y, _, t: base(z, y, logits_clean, t)
  else:
    objective = objectives.get_objective(loss)
  x = jax.lax.stop_gradient(x)
  keys = threat_model.example_keys(key, x.shape[0])

  def run(r):
    return _single_run(logits_fn, x, labels,
                       threat_model.fold_in_each(keys, r), eps, num_steps,
                       norm, objective, target_labels, rho,
                       stop_when_all_fooled)

  threat_model.check_only_run(only_run, num_restarts, x.shape[0])
  result = threat_model.runs_merged(run, _empty_result(x, num_steps), _merge,
                                    only_run, num_restarts)
  return result._replace(x_adv=jax.lax.stop_gradient(result.x_adv))


def apgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
         key: jax.Array, *, eps: float | jax.Array, num_steps: int = 100,
         norm: str = "linf", loss: str | objectives.Objective = "ce",
         num_restarts: int = 1, rho: float = RHO,
         target_labels: jax.Array | None = None) -> jax.Array:
  """APGD (Croce & Hein 2020, Alg. 1): APGD-CE with ``loss='ce'``.

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n]; examples independent.
    x: clean inputs in [0, 1], [B, ...].
    labels: integer [B].
    key: one PRNG key or one per example ([B]).
    eps: ε ≥ 0 (scalar or [B]).
    num_steps: N ≥ 1 iterations per restart (N gradient evaluations plus one
      at the start).
    norm: 'linf' or 'l2'.
    loss: an objective name of :mod:`compsum_jax.attacks.objectives` ('ce',
      'dlr', …) or a callable ``(logits_adv, labels, logits_clean,
      target_labels) -> [B]``.
    num_restarts: R ≥ 1.
    rho: ρ ∈ (0, 1] of condition 1.
    target_labels: [B], for ``loss='dlr_targeted'``.

  Returns:
    Adversarial inputs in B(x, ε) ∩ [0, 1]^d, [B, ...]: a misclassified iterate
    where one was found, else the highest-loss iterate.
  """
  return apgd_run(logits_fn, x, labels, key, eps=eps, num_steps=num_steps,
                  norm=norm, loss=loss, num_restarts=num_restarts, rho=rho,
                  target_labels=target_labels).x_adv


def apgd_targeted_run(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                      key: jax.Array, *, eps: float | jax.Array,
                      num_steps: int = 100, norm: str = "linf",
                      num_target_classes: int = 9, num_restarts: int = 1,
                      rho: float = RHO,
                      only_run: int | jax.Array | None = None,
                      stop_when_all_fooled: bool = False) -> APGDResult:
  """APGD-T with the full :class:`APGDResult`; see :func:`apgd_targeted`.

  Run j = r·T + t attacks target t with restart r; ``only_run=j`` (int or
  traced int32 scalar) runs it alone, as inside the full call; an array
  ``only_run`` ([B] integers) gives example b its own run ``only_run[b]``;
  ``stop_when_all_fooled`` as in :func:`apgd_run`.
  """
  n = _check_common(logits_fn, x, labels, eps, norm, num_steps, num_restarts,
                    rho, stop_when_all_fooled)
  objectives.check_dlr_classes(n, targeted=True)
  threat_model.check_positive_int(num_target_classes, "num_target_classes")
  num_targets = min(num_target_classes, n - 1)
  x = jax.lax.stop_gradient(x)
  keys = threat_model.example_keys(key, x.shape[0])
  # Classes by decreasing clean logit; target t_j is the (j + 2)-th largest.
  order = jnp.argsort(-jax.lax.stop_gradient(logits_fn(x)), axis=-1)
  objective = objectives.get_objective("dlr_targeted")

  def run(j):
    # Run j: target t = j mod T, restart j // T (j per example or shared).
    targets = threat_model.target_of(order, j % num_targets)
    run_keys = threat_model.fold_in_each(keys, j)
    return _single_run(logits_fn, x, labels, run_keys, eps, num_steps, norm,
                       objective, targets, rho, stop_when_all_fooled)

  threat_model.check_only_run(only_run, num_targets * num_restarts, x.shape[0])
  result = threat_model.runs_merged(run, _empty_result(x, num_steps), _merge,
                                    only_run, num_targets * num_restarts)
  return result._replace(x_adv=jax.lax.stop_gradient(result.x_adv))


def apgd_targeted(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                  key: jax.Array, *, eps: float | jax.Array,
                  num_steps: int = 100, norm: str = "linf",
                  num_target_classes: int = 9, num_restarts: int = 1,
                  rho: float = RHO) -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss against the top other classes.

  For j = 1..T (T = min(num_target_classes, n − 1)), the target t_j is the
  class with the (j + 1)-th largest clean logit, and APGD maximizes
  DLR_t = −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 1e-12) (Croce & Hein 2020,
  §3.2); AutoAttack standard uses T = 9 with one restart each and N = 100.
  Needs n ≥ 4 classes.

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n].
    x: clean inputs in [0, 1], [B, ...].
    labels: integer [B].
    key: one PRNG key or one per example ([B]).
    eps: ε ≥ 0.
    num_steps: N ≥ 1 iterations per target and restart.
    norm: 'linf' or 'l2'.
    num_target_classes: T ≥ 1 (clipped to n − 1).
    num_restarts: restarts per target class.
    rho: ρ of condition 1.

  Returns:
    Adversarial inputs [B, ...], a misclassified point where one was found.
  """
  return apgd_targeted_run(
      logits_fn, x, labels, key, eps=eps, num_steps=num_steps, norm=norm,
      num_target_classes=num_target_classes, num_restarts=num_restarts,
      rho=rho).x_adv


def num_forward_passes(num_steps: int, num_restarts: int = 1,
                       num_targets: int = 1) -> int:
  """Gradient evaluations of an APGD call: (N + 1) per run."""
  return (num_steps + 1) * num_restarts * num_targets
