"""FAB-T: the targeted Fast Adaptive Boundary attack, ℓ∞ (Croce & Hein 2020).

F. Croce, M. Hein, "Minimally distorted adversarial examples with a fast
adaptive boundary attack", ICML 2020, §3 and Algorithm 1; the targeted
version and its settings are those of AutoAttack 'standard' (Croce & Hein,
"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020). Written from the papers; the reference
implementation (fra31/auto-attack, ``fab_base.py``) was read to settle
details the papers leave open.

FAB looks for the smallest perturbation that changes the decision. Per
example, with clean point x⁰, label y and target t (the class with the
(j + 1)-th largest clean logit for target index j):

  linearise  g(z) = f_t(z) − f_y(z) at the iterate x^k:
             π_k = {z : ⟨∇g(x^k), z⟩ = ⟨∇g(x^k), x^k⟩ − g(x^k)};
  project    d1 = P(x^k; π_k), d2 = P(x⁰; π_k) with
             P(p; π) = argmin_{d : p + d ∈ π ∩ [0,1]^d} ‖d‖∞  (eq. 3 of FAB);
  step       α = min(‖d1‖∞ / (‖d1‖∞ + ‖d2‖∞), α_max)
             x^{k+1} = clip_[0,1]((1 − α)(x^k + η·d1) + α(x⁰ + η·d2));
  backtrack  if x^{k+1} is misclassified: record it when ‖x^{k+1} − x⁰‖∞ is
             the smallest so far, then x^{k+1} ← x⁰ + β(x^{k+1} − x⁰).

AutoAttack 'standard': 9 targets, 100 iterations, one run per target starting
at x⁰ (restarts r ≥ 1 start at clip(x⁰ + ε/2·u/‖u‖∞), u ~ U[−1, 1]^d),
α_max = 0.1, η = 1.05, β = 0.9. A point counts as broken when the smallest
misclassified iterate lies within ε; :func:`fab_targeted` returns it, or x
itself otherwise, so its output always lies in the threat model.

When π ∩ [0, 1]^d is empty, P moves every coordinate to the bound of the box
in the direction that decreases the distance to π (the closest the box gets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax.attacks import threat_model

LogitsFn = Callable[[jax.Array], jax.Array]

ALPHA_MAX = 0.1  # α_max: largest weight of the step from x⁰
ETA = 1.05  # η: overshoot of the projection
BETA = 0.9  # β: backward step towards x⁰ after a success
# Floor on ‖d‖∞ in α = ‖d1‖/(‖d1‖ + ‖d2‖), as the reference (1e-8).
_DIST_FLOOR = 1e-8
# Random-start radius of restarts r ≥ 1, as a fraction of ε.
_START_FRACTION = 0.5


class FABResult(NamedTuple):
  """Outcome of :func:`fab_targeted_run` for a batch of B examples.

  Attributes:
    x_adv: the misclassified iterate closest to x found, else x, [B, ...].
    distance: ‖x_adv − x‖∞ where one was found, +∞ elsewhere, [B].
    found: whether a misclassified iterate was found, [B] bool.
  """
  x_adv: jax.Array
  distance: jax.Array
  found: jax.Array


def _bit_pattern_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """Signed integer type of the same width as the float ``dtype``."""
  return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]


def project_linf_hyperplane_box(point: jax.Array, w: jax.Array,
                                b: jax.Array) -> jax.Array:
  """Minimal ℓ∞ step onto a hyperplane inside the box [0, 1]^d, one example.

  Solves min ‖d‖∞ s.t. ⟨w, p + d⟩ = b and p + d ∈ [0, 1]^d for p in the box.
  With c = b − ⟨w, p⟩, s_i = sign(c·w_i) and the room u_i = 1 − p_i (s_i > 0)
  or p_i (s_i < 0), the solution is d_i = s_i·min(δ, u_i), δ the smallest
  value with h(δ) = Σ_i |w_i|·min(δ, u_i) = |c|. If h(max u) < |c| the
  hyperplane does not meet the box and d_i = s_i·u_i.

  h is continuous, non-decreasing and linear between the sorted u_i. Instead
  of sorting (XLA's sort is the slow part on CPU), δ is bracketed by bisection
  over the bit patterns of non-negative floats, which order like the floats:
  ``nbits − 1`` halvings leave two adjacent floats lo < hi with
  h(lo) < |c| ≤ h(hi), so no u_i lies strictly between them and on [lo, hi]
  h(δ) = Σ_{u_i ≤ lo} |w_i| u_i + δ·Σ_{u_i > lo} |w_i|, solved for δ exactly.

  Args:
    point: p, [D] in [0, 1].
    w: normal of the hyperplane, [D].
    b: offset, scalar.

  Returns:
    d, [D].
  """
  c = b - jnp.dot(w, point)
  direction = jnp.sign(w) * jnp.sign(c)  # s_i
  room = jnp.where(direction > 0, 1.0 - point,
                   jnp.where(direction < 0, point, 0.0))  # u_i
  room = jnp.maximum(room, 0.0)  # bit patterns order like the floats ≥ 0
  weight = jnp.abs(w)
  target = jnp.abs(c)
  top = jnp.max(room)

  def reach(delta):  # h(δ) = Σ_i |w_i|·min(δ, u_i)
    return jnp.sum(weight * jnp.minimum(delta, room))

  bits = _bit_pattern_dtype(room.dtype)
  as_float = lambda v: jax.lax.bitcast_convert_type(v, room.dtype)

  def halve(_, bracket):
    lo, hi = bracket
    mid = lo + (hi - lo) // 2
    short = reach(as_float(mid)) < target
    return jnp.where(short, mid, lo), jnp.where(short, hi, mid)

  lo, hi = jax.lax.fori_loop(
      0, 8 * jnp.dtype(bits).itemsize - 1, halve,
      (jnp.zeros((), bits), jax.lax.bitcast_convert_type(top, bits)))
  lo, hi = as_float(lo), as_float(hi)
  # On [lo, hi]: h(δ) = Σ_{u_i ≤ lo} |w_i| u_i + δ·Σ_{u_i > lo} |w_i| = |c|.
  under = room <= lo
  delta = ((target - jnp.sum(jnp.where(under, weight * room, 0.0)))
           / jnp.maximum(jnp.sum(jnp.where(under, 0.0, weight)), 1e-30))
  delta = jnp.where(reach(top) >= target, jnp.clip(delta, lo, hi), top)
  return direction * jnp.minimum(delta, room)


def _single_run(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                target_labels: jax.Array, start: jax.Array, num_steps: int,
                alpha_max: float, eta: float, beta: float) -> FABResult:
  """One FAB-T run (module docstring) from ``start`` on a batch."""
  batch = x.shape[0]
  x0 = x.reshape(batch, -1)
  project = jax.vmap(project_linf_hyperplane_box)

  def diff_and_grad(x_cur):
    def summed(xa):
      z = logits_fn(xa)
      rows = jnp.arange(batch)
      g = z[rows, target_labels] - z[rows, labels]  # g = f_t − f_y
      return jnp.sum(g), g
    grad, g = jax.grad(summed, has_aux=True)(x_cur)
    return g, grad.reshape(batch, -1)

  def body(_, state):
    x_cur, x_best, dist_best = state
    g, w = diff_and_grad(x_cur.reshape(x.shape))
    b = jnp.sum(w * x_cur, axis=-1) - g  # π: ⟨w, z⟩ = ⟨w, x^k⟩ − g(x^k)
    d1 = project(x_cur, w, b)
    d2 = project(x0, w, b)
    a1 = jnp.maximum(jnp.max(jnp.abs(d1), -1), _DIST_FLOOR)[:, None]
    a2 = jnp.maximum(jnp.max(jnp.abs(d2), -1), _DIST_FLOOR)[:, None]
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
    # x^{k+1} = clip((1 − α)(x^k + η d1) + α(x⁰ + η d2))
    x_new = jnp.clip((1.0 - alpha) * (x_cur + eta * d1)
                     + alpha * (x0 + eta * d2), 0.0, 1.0)
    fooled = jnp.argmax(logits_fn(x_new.reshape(x.shape)), -1) != labels
    dist = jnp.max(jnp.abs(x_new - x0), -1)
    better = fooled & (dist < dist_best)
    x_best = jnp.where(better[:, None], x_new, x_best)
    dist_best = jnp.where(better, dist, dist_best)
    # After a success: x^{k+1} ← x⁰ + β(x^{k+1} − x⁰).
    x_new = jnp.where(fooled[:, None], x0 + beta * (x_new - x0), x_new)
    return x_new, x_best, dist_best

  state = (start.reshape(batch, -1), x0,
           jnp.full((batch,), jnp.inf, x.dtype))
  _, x_best, dist_best = jax.lax.fori_loop(0, num_steps, body, state)
  return FABResult(x_best.reshape(x.shape), dist_best, jnp.isfinite(dist_best))


def _merge(old: FABResult, new: FABResult) -> FABResult:
  """Per example, the run with the smaller distance."""
  take = new.distance < old.distance
  return FABResult(
      jnp.where(take.reshape((-1,) + (1,) * (new.x_adv.ndim - 1)),
                new.x_adv, old.x_adv),
      jnp.where(take, new.distance, old.distance), old.found | new.found)


def check_fab_args(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                   eps: float | jax.Array, norm: str, num_steps: int,
                   num_target_classes: int, num_restarts: int,
                   alpha_max: float, eta: float, beta: float) -> int:
  """Argument checks of FAB-T; returns the number of classes n."""
  n = threat_model.check_attack_args(logits_fn, x, labels, eps, norm,
                                     norms=("linf",))
  threat_model.check_positive_int(num_steps, "num_steps")
  threat_model.check_positive_int(num_target_classes, "num_target_classes")
  threat_model.check_positive_int(num_restarts, "num_restarts")
  threat_model.check_fraction(alpha_max, "alpha_max")
  threat_model.check_fraction(beta, "beta")
  if not (isinstance(eta, (int, float)) and not isinstance(eta, bool)
          and eta >= 1.0 and np.isfinite(eta)):
    raise ValueError(f"eta must be a finite number >= 1, got eta={eta!r}")
  return n


def num_runs(num_classes: int, *, num_target_classes: int = 9,
             num_restarts: int = 1) -> int:
  """Runs of a FAB-T call: T = min(T, n − 1) targets times R restarts."""
  return min(num_target_classes, num_classes - 1) * num_restarts


def fab_targeted_run(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                     key: jax.Array, *, eps: float | jax.Array,
                     num_steps: int = 100, norm: str = "linf",
                     num_target_classes: int = 9, num_restarts: int = 1,
                     alpha_max: float = ALPHA_MAX, eta: float = ETA,
                     beta: float = BETA,
                     only_run: int | jax.Array | None = None) -> FABResult:
  """FAB-T with the minimal distances found; see :func:`fab_targeted`.

  Run j attacks target j // R with restart j % R (AutoAttack's order: every
  restart of a target, then the next target); ``only_run=j`` (int or traced
  int32 scalar) runs it alone, exactly as inside the full call; an array
  ``only_run`` ([B] integers) gives example b its own run ``only_run[b]``.
  """
  n = check_fab_args(logits_fn, x, labels, eps, norm, num_steps,
                     num_target_classes, num_restarts, alpha_max, eta, beta)
  total = num_runs(n, num_target_classes=num_target_classes,
                   num_restarts=num_restarts)
  x = jax.lax.stop_gradient(x)
  batch = x.shape[0]
  threat_model.check_only_run(only_run, total, batch)
  keys = threat_model.example_keys(key, batch)
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (batch,))
  # Classes by decreasing clean logit; target j is the (j + 2)-th largest.
  order = jnp.argsort(-jax.lax.stop_gradient(logits_fn(x)), axis=-1)

  per_example = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def run(j):
    # Run j (shared or per example): target j // R, restart j mod R.
    targets = threat_model.target_of(order, j // num_restarts)
    restart = jnp.broadcast_to(j % num_restarts, (batch,))
    u = jax.vmap(lambda k: jax.random.uniform(
        k, x.shape[1:], x.dtype, -1.0, 1.0))(threat_model.fold_in_each(keys, j))
    # Restarts r ≥ 1 start at clip(x + ε/2·u/‖u‖∞).
    radius = _START_FRACTION * eps_b / jnp.maximum(
        threat_model.per_example_norm(u, "linf"), 1e-12)
    start = jnp.where(per_example(restart > 0),
                      jnp.clip(x + per_example(radius) * u, 0.0, 1.0), x)
    return _single_run(logits_fn, x, labels, targets, start, num_steps,
                       alpha_max, eta, beta)

  empty = FABResult(x, jnp.full((batch,), jnp.inf, x.dtype),
                    jnp.zeros((batch,), bool))
  result = threat_model.runs_merged(run, empty, _merge, only_run, total)
  return result._replace(x_adv=jax.lax.stop_gradient(result.x_adv))


def fab_targeted(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                 key: jax.Array, *, eps: float | jax.Array,
                 num_steps: int = 100, norm: str = "linf",
                 num_target_classes: int = 9, num_restarts: int = 1,
                 alpha_max: float = ALPHA_MAX, eta: float = ETA,
                 beta: float = BETA) -> jax.Array:
  """FAB-T (targeted FAB, ℓ∞), the third attack of AutoAttack 'standard'.

  Args:
    logits_fn: maps inputs [B, ...] to logits [B, n]; examples independent.
    x: clean inputs in [0, 1], [B, ...].
    labels: integer [B].
    key: one PRNG key or one per example ([B]); used by restarts r ≥ 1 only.
    eps: ε ≥ 0 (scalar or [B]): points are returned only within it.
    num_steps: iterations per run (AutoAttack: 100).
    norm: 'linf' (the only norm implemented).
    num_target_classes: T ≥ 1, clipped to n − 1 (AutoAttack: 9).
    num_restarts: runs per target (AutoAttack 'standard': 1).
    alpha_max, eta, beta: α_max ∈ (0, 1], η ≥ 1, β ∈ (0, 1] (0.1, 1.05, 0.9).

  Returns:
    [B, ...]: the smallest misclassified point found where it lies within ε
    of x, else x.
  """
  res = fab_targeted_run(
      logits_fn, x, labels, key, eps=eps, num_steps=num_steps, norm=norm,
      num_target_classes=num_target_classes, num_restarts=num_restarts,
      alpha_max=alpha_max, eta=eta, beta=beta)
  return within_eps(res, x, eps)


def within_eps(result: FABResult, x: jax.Array, eps: float | jax.Array
               ) -> jax.Array:
  """x_adv where a point was found within ε (‖x_adv − x‖∞ ≤ ε), else x."""
  eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
  ok = result.found & (result.distance <= eps_b)
  return jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), result.x_adv, x)
