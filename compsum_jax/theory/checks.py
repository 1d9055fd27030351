"""Numerical checks of the pointwise bound T_τ(ΔC_{0-1}) ≤ ΔC_τ and its tightness.

* :func:`bound_slack`: ΔC_τ(h, x) − T_τ(ΔC_{0-1}(h, x)), ≥ 0 iff the bound
  holds at (p, scores) (symmetric complete family, notes §3.1).
* :func:`random_pairs` / :func:`verify_bound`: the minimum slack over many
  random (p, scores) pairs, in one compiled call.
* :func:`adversarial_slack_search`: multi-start gradient descent on the slack.
* :func:`tightness_curve`: for each t, the smallest ΔC_τ found over (p, scores)
  with ΔC_{0-1} = t exactly, and the ratio T_τ(t)/inf ΔC_τ (1 = tight, > 1
  would be a counterexample to the bound).

Searches fix the labels (class 0 most likely, class 1 predicted, which loses
no generality), parametrise every p with p_0 − p_1 = t
(:func:`constrained_probs`) and minimise over the scores exactly for each p
(:func:`predicted_class_candidates`). The search over p is local, so its
minimum is an upper bound on the infimum and the tightness ratio it reports is
a lower bound on the true one.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import validation
from compsum_jax.theory import _inputs, bounds, conditional


@jax.jit
def _slack_unchecked(scores: jax.Array, probs: jax.Array,
                     tau: jax.Array) -> jax.Array:
  n = scores.shape[-1]
  surrogate = (conditional.conditional_risk(scores, probs, tau) -
               conditional.complete_best_conditional_risk_unchecked(probs,
                                                                    tau))
  zero_one = conditional.zero_one_conditional_regret(scores, probs)
  zero_one = jnp.clip(zero_one, 0.0, 1.0)
  return surrogate - bounds._transform_unchecked(  # pylint: disable=protected-access
      zero_one, tau, jnp.asarray(n, surrogate.dtype))


def bound_slack(scores: jax.Array, probs: jax.Array,
                tau: jax.Array | float) -> jax.Array:
  """ΔC_τ(h, x) − T_τ(ΔC_{0-1}(h, x)) for the complete family (notes §3.1).

  Args:
    scores: shape [..., n].
    probs: shape [..., n], on the simplex.
    tau: τ ≥ 0 broadcastable to [...].

  Returns:
    Slack, shape [...]; ≥ 0 iff T_τ(ΔC_{0-1}) ≤ ΔC_τ at that pair.
  """
  validation.check_logits(scores, "scores")
  validation.check_probs(probs, jnp.shape(scores))
  _inputs.check_scores_and_probs(scores, probs)
  validation.check_tau(tau)
  dtype = jnp.promote_types(validation.compute_dtype(scores),
                            validation.compute_dtype(probs))
  scores = jnp.asarray(scores, dtype)
  probs = jnp.asarray(probs, dtype)
  tau = jnp.broadcast_to(jnp.asarray(tau, dtype), probs.shape[:-1])
  return _slack_unchecked(scores, probs, tau)


def random_pairs(key: jax.Array, num_pairs: int, num_classes: int,
                 tau: float | jax.Array = 1.0,
                 dtype: jnp.dtype = jnp.float32
                 ) -> tuple[jax.Array, jax.Array]:
  """Random (scores, probs) pairs covering easy and critical regions.

  p = softmax(β·g), g ~ N(0, I), β ∈ {0.1, 1, 3, 10} per pair (flat to
  peaked), and with probability 0.3 each class except the most likely one
  gets p_y = 0 exactly. Half the scores are N(0, σ²) with
  σ ∈ {0.01, 0.3, 1, 4}; the other half are the complete-family optimum
  log p^{1/(2−τ)} plus small noise, where the regret is small and the bound is
  tested hardest. (Gaussian logits instead of a Dirichlet keep the compiled
  sampler small: ``jax.random.gamma`` compiles slowly on CPU.)

  Returns:
    (scores [num_pairs, n], probs [num_pairs, n]).
  """
  k_beta, k_logits, k_zero, k_scale, k_noise, k_mode = jax.random.split(key, 6)
  shape = (num_pairs, num_classes)
  betas = jnp.asarray([0.1, 1.0, 3.0, 10.0], dtype)
  beta = betas[jax.random.randint(k_beta, (num_pairs,), 0, 4)][:, None]
  logits = beta * jax.random.normal(k_logits, shape, dtype)
  is_max = logits >= jnp.max(logits, axis=-1, keepdims=True)
  zero = jax.random.bernoulli(k_zero, 0.3, shape) & ~is_max
  probs = jax.nn.softmax(jnp.where(zero, -jnp.inf, logits), axis=-1)
  scales = jnp.asarray([0.01, 0.3, 1.0, 4.0], dtype)
  scale = scales[jax.random.randint(k_scale, (num_pairs,), 0, 4)][:, None]
  noise = jax.random.normal(k_noise, shape, dtype)
  a = 1.0 / (2.0 - jnp.minimum(jnp.asarray(tau, dtype), 1.9))
  optimal = a * jnp.log(jnp.maximum(probs, jnp.finfo(dtype).tiny))
  near = optimal + 0.1 * scale * noise
  near = jnp.maximum(near, jnp.max(near, -1, keepdims=True) - 50.0)
  use_near = jax.random.bernoulli(k_mode, 0.5, (num_pairs, 1))
  scores = jnp.where(use_near, near, scale * noise)
  return scores, probs


class Verification(NamedTuple):
  """Result of :func:`verify_bound`.

  Attributes:
    num_checked: number of (p, scores) pairs evaluated.
    min_slack: smallest slack ΔC_τ − T_τ(ΔC_{0-1}) seen.
    worst_scores: scores at the minimum, shape [n].
    worst_probs: probs at the minimum, shape [n].
  """

  num_checked: int
  min_slack: jax.Array
  worst_scores: jax.Array
  worst_probs: jax.Array


def verify_bound(key: jax.Array, tau: float | jax.Array, num_classes: int,
                 num_pairs: int = 100_000,
                 dtype: jnp.dtype = jnp.float32) -> Verification:
  """Minimum slack of the pointwise bound over ``num_pairs`` random pairs.

  Use ``dtype=jnp.float64`` under ``with jax.enable_x64(True):`` for
  verification (float32 rounding alone gives slacks of about −1e-6).
  """
  validation.check_tau(tau)
  bounds.check_num_classes(num_classes)
  scores, probs, slack = _verify(key, jnp.asarray(tau, dtype), num_classes,
                                 num_pairs, dtype)
  i = jnp.argmin(slack)
  return Verification(num_pairs, slack[i], scores[i], probs[i])


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _verify(key, tau, num_classes, num_pairs, dtype):
  scores, probs = random_pairs(key, num_pairs, num_classes, tau, dtype)
  slack = _slack_unchecked(scores, probs, jnp.broadcast_to(tau, (num_pairs,)))
  return scores, probs, slack


def constrained_probs(params: dict[str, jax.Array], t: jax.Array
                      ) -> jax.Array:
  """p with p_0 = max_y p_y and p_0 − p_1 = t exactly, from params {"z": [n−2]}.

  p = (1, a_1, a_2..)/Z with a_j = σ(z_j)·min(1, (1−t)/(t·Σσ(z))) for j ≥ 2
  and a_1 = (1 − t − t·A)/(1 + t), A = Σ_{j≥2} a_j, so (1 − a_1)/Z = t. Every
  such p is reached (up to the boundary a_j ∈ {0, 1}).
  """
  sig = jax.nn.sigmoid(params["z"])
  total = jnp.sum(sig)
  scale = jnp.minimum(1.0, (1.0 - t) / jnp.maximum(t * total, 1e-30))
  rest = sig * scale
  a1 = jnp.maximum((1.0 - t - t * jnp.sum(rest)) / (1.0 + t), 0.0)
  unnorm = jnp.concatenate([jnp.ones((1,), rest.dtype), a1[None], rest])
  return unnorm / jnp.sum(unnorm)


# Scores of classes that should vanish sit this far below the maximum.
_VANISH = 60.0


@jax.jit
def predicted_class_candidates(probs: jax.Array, tau: jax.Array
                               ) -> jax.Array:
  """Score vectors containing inf{C_τ(s, p) : argmax s = 1} (ties allowed).

  Derivation (same reduction as :mod:`compsum_jax.theory.families`): C_τ is
  F(q) = Σ p_y ψ(q_y) of q = softmax(s), and the constraint is the cone
  q_1 ≥ q_j. For τ < 2 (F convex) the minimiser ties a set S ∋ 1 at the top,
  S = {1} ∪ (the k−1 most likely other classes), and puts the rest at
  q ∝ p^a, a = 1/(2−τ), with S acting as one class of probability p_S/|S|.
  For τ ≥ 2 (F concave) the minimum is at a vertex q = 1_S/|S|. Both families
  of candidates, k = 1..n, are returned (each made feasible by capping the
  classes outside S at the top level), so the minimum of C_τ over them is the
  constrained infimum for every τ.

  Args:
    probs: shape [n] (single problem).
    tau: scalar τ.

  Returns:
    Scores, shape [2n, n]; class 1 is (weakly) the argmax of each row.
  """
  n = probs.shape[-1]
  below_two = tau < 2.0
  a = 1.0 / (2.0 - jnp.where(below_two, tau, 0.0))
  # Order in which classes other than 1 join S: decreasing p.
  key = jnp.where(jnp.arange(n) == 1, jnp.inf, probs)
  order = jnp.argsort(-key)  # class 1 first, then others by decreasing p
  rank = jnp.zeros((n,), order.dtype).at[order].set(
      jnp.arange(n, dtype=order.dtype))
  sizes = jnp.arange(1, n + 1)
  in_set = rank[None, :] < sizes[:, None]  # [n, n]: S_k membership
  p_set = jnp.sum(jnp.where(in_set, probs[None, :], 0.0), axis=-1)
  log_p = jnp.log(jnp.maximum(probs, jnp.finfo(probs.dtype).tiny))
  level = a * jnp.log(p_set / sizes)  # log of S's common q, up to a shift
  pooled = jnp.where(in_set, level[:, None],
                     jnp.minimum(a * log_p[None, :], level[:, None]))
  pooled = jnp.maximum(pooled, level[:, None] - _VANISH)
  uniform = jnp.where(in_set, 0.0, -_VANISH)
  return jnp.concatenate([pooled, uniform], axis=0)


@jax.jit
def min_surrogate_regret_given_prediction(probs: jax.Array, tau: jax.Array
                                          ) -> jax.Array:
  """inf{ΔC_τ(s, p) : argmax s = 1} for the complete family (single p [n])."""
  candidates = predicted_class_candidates(probs, tau)
  risks = jax.vmap(conditional.conditional_risk, in_axes=(0, None, None))(
      candidates, probs, tau)
  risks = jnp.where(jnp.isnan(risks), jnp.inf, risks)
  return (jnp.min(risks) -
          conditional.complete_best_conditional_risk_unchecked(probs, tau))


def _adam_minimize(objective, params, num_steps: int, learning_rate: float):
  """Plain Adam in lax.scan; returns the best params seen and its value."""
  zeros = jax.tree.map(jnp.zeros_like, params)
  b1, b2, eps = 0.9, 0.999, 1e-12

  def step(state, i):
    params, m, v, best_params, best_value = state
    value, grad = jax.value_and_grad(objective)(params)
    grad = jax.tree.map(lambda g: jnp.nan_to_num(g, posinf=0.0, neginf=0.0),
                        grad)
    better = value < best_value
    best_value = jnp.where(better, value, best_value)
    best_params = jax.tree.map(lambda b, p: jnp.where(better, p, b),
                               best_params, params)
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grad)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grad)
    k = i + 1.0
    params = jax.tree.map(
        lambda p, m, v: p - learning_rate * (m / (1 - b1**k)) /
        (jnp.sqrt(v / (1 - b2**k)) + eps), params, m, v)
    return (params, m, v, best_params, best_value), None

  init_value = objective(params)
  state = (params, zeros, zeros, params, init_value)
  state, _ = jax.lax.scan(step, state,
                          jnp.arange(num_steps, dtype=init_value.dtype))
  _, _, _, best_params, _ = state
  return best_params, objective(best_params)


def _random_params(key, num_starts: int, num_classes: int, dtype):
  """Random starts for the rest-mass logits z, centred at 0, −4 or −8 (a third
  of the starts each): heavy and light tails are both explored, since the
  min(1, ·) in :func:`constrained_probs` has zero gradient when it binds.
  """
  centre = jnp.asarray([0.0, -4.0, -8.0], dtype)[
      jnp.arange(num_starts) % 3][:, None]
  z = centre + 3.0 * jax.random.normal(key, (num_starts, num_classes - 2),
                                       dtype)
  return {"z": z}


def tightness_curve(tau: float | jax.Array, num_classes: int,
                    ts: jax.Array, *, key: jax.Array | None = None,
                    num_starts: int = 24, num_steps: int = 300,
                    learning_rate: float = 0.1) -> jax.Array:
  """T_τ(t)/inf{ΔC_τ(h, x) : ΔC_{0-1}(h, x) = t} for each t (notes §3.3).

  1 means tight; a ratio above 1 would be a counterexample to the bound. For
  each t, the scores are minimised exactly given p
  (:func:`min_surrogate_regret_given_prediction`) and p is searched by
  ``num_starts`` Adam runs over :func:`constrained_probs` (vmapped over starts
  and t, one compiled call). The search over p is local, so the ratio is a
  lower bound on the true ratio. At n = 2, p is fixed by t and the value is
  exact.

  Args:
    tau: τ ≥ 0 (scalar).
    num_classes: n ≥ 2.
    ts: zero-one regrets in (0, 1], shape [k].
    key: PRNG key for the starts (default ``jax.random.key(0)``).
    num_starts: random starts per t.
    num_steps: Adam steps per start.
    learning_rate: Adam step size.

  Returns:
    Ratios, shape [k].
  """
  validation.check_tau(tau)
  bounds.check_num_classes(num_classes)
  bounds._check_unit_interval(ts, "ts")  # pylint: disable=protected-access
  v = validation.concrete_value(ts)
  if v is not None and np.any(np.asarray(v) <= 0):
    raise ValueError(f"ts must be > 0 (the ratio is 0/0 at t = 0), got "
                     f"ts={np.asarray(v)[np.asarray(v) <= 0]}")
  ts = jnp.asarray(ts, validation.compute_dtype(jnp.asarray(ts)))
  key = jax.random.key(0) if key is None else key
  tau_arr = jnp.asarray(tau, ts.dtype)
  infimum = _tightness_search(key, tau_arr, num_classes, ts, num_starts,
                              num_steps, learning_rate)
  target = bounds._transform_unchecked(  # pylint: disable=protected-access
      ts, tau_arr, jnp.asarray(num_classes, ts.dtype))
  return target / infimum


@functools.partial(jax.jit, static_argnums=(2, 4, 5, 6))
def _tightness_search(key, tau, num_classes, ts, num_starts, num_steps,
                      learning_rate):
  keys = jax.random.split(key, ts.shape[0])

  def per_t(k, t):
    starts = _random_params(k, num_starts, num_classes, ts.dtype)
    objective = lambda params: min_surrogate_regret_given_prediction(
        constrained_probs(params, t), tau)
    run = lambda p: _adam_minimize(objective, p, num_steps, learning_rate)[1]
    return jnp.min(jax.vmap(run)(starts))

  return jax.vmap(per_t)(keys, ts)


class AdversarialResult(NamedTuple):
  """Result of :func:`adversarial_slack_search`.

  Attributes:
    num_checked: number of (p, scores) pairs evaluated (starts × steps × the
      2n score candidates per p).
    min_slack: smallest slack found, recomputed with :func:`bound_slack`.
    scores: scores at the minimum, shape [n].
    probs: probs at the minimum, shape [n].
  """

  num_checked: int
  min_slack: jax.Array
  scores: jax.Array
  probs: jax.Array


def adversarial_slack_search(key: jax.Array, tau: float | jax.Array,
                             num_classes: int, num_starts: int = 64,
                             num_steps: int = 300,
                             learning_rate: float = 0.1,
                             dtype: jnp.dtype = jnp.float32
                             ) -> AdversarialResult:
  """Multi-start search for the smallest slack ΔC_τ − T_τ(ΔC_{0-1}) (§3.1).

  Searches (t, p) by Adam, t = σ(w) and p = :func:`constrained_probs`, with the
  scores minimised exactly for each p; the best pair's slack is then
  recomputed with :func:`bound_slack` on explicit scores whose argmax is the
  predicted class (the tie at the top is broken by 1e-9 in its favour), so a
  clearly negative value is a genuine counterexample.
  """
  validation.check_tau(tau)
  bounds.check_num_classes(num_classes)
  tau_arr = jnp.asarray(tau, dtype)
  scores, probs = _adversarial(key, tau_arr, num_classes, num_starts,
                               num_steps, learning_rate, dtype)
  slack = bound_slack(scores, probs, jnp.broadcast_to(tau_arr, (num_starts,)))
  i = jnp.argmin(slack)
  return AdversarialResult(num_starts * num_steps * 2 * num_classes, slack[i],
                           scores[i], probs[i])


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _adversarial(key, tau, num_classes, num_starts, num_steps, learning_rate,
                 dtype):
  kp, kw = jax.random.split(key)
  starts = _random_params(kp, num_starts, num_classes, dtype)
  starts["w"] = 2.0 * jax.random.normal(kw, (num_starts,), dtype)
  n = jnp.asarray(num_classes, dtype)

  def objective(params):
    t = jax.nn.sigmoid(params["w"])
    probs = constrained_probs(params, t)
    return (min_surrogate_regret_given_prediction(probs, tau) -
            bounds._transform_unchecked(t, tau, n))  # pylint: disable=protected-access

  def run(params):
    best, _ = _adam_minimize(objective, params, num_steps, learning_rate)
    probs = constrained_probs(best, jax.nn.sigmoid(best["w"]))
    candidates = predicted_class_candidates(probs, tau)
    risks = jax.vmap(conditional.conditional_risk, in_axes=(0, None, None))(
        candidates, probs, tau)
    scores = candidates[jnp.argmin(jnp.where(jnp.isnan(risks), jnp.inf,
                                             risks))]
    # Break the tie at the top in favour of class 1 (the predicted class).
    return scores.at[1].add(1e-9), probs

  return jax.vmap(run)(starts)
