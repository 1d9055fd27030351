"""Hypothesis families as data (pytrees) and their best conditional risks C*.

A family describes the set of score vectors {h(x, ·) : h ∈ H} reachable at a
point x. It is a pytree, so ``jax.vmap`` maps over its parameters exactly as
over p and τ. The interface every family implements:

* ``best_conditional_risk(probs, tau) -> C*``: no input checks, jit/vmap-able;
* ``project_scores(scores) -> scores``: Euclidean projection onto the set of
  reachable score vectors (used by the generic solver
  :func:`projected_gradient_solve`, so a new family — e.g. linear scorers
  with a norm bound — only needs this projection and can delegate
  ``best_conditional_risk`` to that solver).

Families here:

* :class:`CompleteFamily`: symmetric complete H (every score vector); C* has
  the closed form of paper notes §4.1.
* :class:`ScoreBoundedFamily`: scores at x range over [−Λ, Λ]^n (notes §3.4,
  §4.2). C* is computed *exactly* by :func:`solve_score_bounded`.
* :class:`L2BallFamily`: scores in an ℓ2 ball (linear scorers with a norm
  bound); an example of a family added through ``project_scores`` only.

Why the score-bounded problem can be solved exactly (derivation, checked in
tests against SciPy multi-start). ℓ_τ depends on the scores only through
q = softmax(scores): ℓ_τ(s, y) = ψ(q_y), ψ(q) = (1 − q^{τ−1})/(τ − 1)
(−log q at τ = 1). Shifting s does not change q, so the box [−Λ, Λ]^n gives
exactly the polytope P = {q ∈ Δ_n : q_i ≤ R·q_j ∀ i, j}, R = e^{2Λ}, and

  C*(H_Λ, x) = min_{q ∈ P} F(q),   F(q) = Σ_y p_y ψ(q_y).

ψ is convex for τ < 2, linear at τ = 2 and concave for τ > 2 (ψ'' =
(2 − τ)q^{τ−3}); the problem is convex in q for τ ≤ 2 although it is
non-convex in the scores for τ > 1.

* τ < 2: with m = min q fixed, the minimiser is q_y = clip(c·p_y^a, m, R·m),
  a = 1/(2 − τ): the i largest p's sit at R·m, the j smallest at m and the
  rest at κ·m·p^a. Stationarity in m gives
  κ = ((R^{τ−1}·P_top + P_bottom)/(i·R + j))^{−a} and m = 1/(i·R + j + κ·S),
  S = Σ_middle p^a. Enumerating the (n+1)(n+2)/2 pairs (i, j) (plus the
  unconstrained q ∝ p^a) therefore contains the minimiser.
* τ ≥ 2: F is concave, so its minimum is at a vertex of P. The vertices are
  two-level points (k coordinates at R·m, the rest at m); by rearrangement the
  k largest p's take the high level. Enumerating k = 0..n is exact.

Every candidate is mapped back to scores (log q, centred, clipped to the box),
so every candidate is feasible and the minimum over candidates is both an
upper bound and, by the argument above, the exact C*. The returned
certificate has two parts: the KKT residual of the box-constrained problem in
the scores, ‖s − clip(s − ∇C(s), −Λ, Λ)‖_∞, and, for τ ≤ 2, the Frank–Wolfe
duality gap of the convex problem in q, max_{v ∈ P} ⟨∇F(q), q − v⟩, a
rigorous upper bound on C(s) − C*. For τ > 2 the Frank–Wolfe gap is not a bound
(F is concave); there the enumeration of all vertex classes is exact and the
reported gap is 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from compsum_jax import validation
from compsum_jax.theory import _inputs, _numerics, conditional


class HypothesisFamily(Protocol):
  """What the theory functions need from a hypothesis family (a pytree)."""

  def best_conditional_risk(self, probs: jax.Array,
                            tau: jax.Array) -> jax.Array:
    """C*_τ(H, x) for probs [..., n] and τ [...] (no input checks)."""

  def project_scores(self, scores: jax.Array) -> jax.Array:
    """Euclidean projection of scores [..., n] onto the reachable set."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CompleteFamily:
  """Symmetric complete family: every score vector is reachable (notes §1)."""

  def best_conditional_risk(self, probs: jax.Array,
                            tau: jax.Array) -> jax.Array:
    """Closed form of notes §4.1 (see ``complete_best_conditional_risk``)."""
    return conditional.complete_best_conditional_risk_unchecked(probs, tau)

  def project_scores(self, scores: jax.Array) -> jax.Array:
    return scores


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScoreBoundedFamily:
  """Scores at x range over [−Λ, Λ]^n (notes §3.4, §4.2).

  Attributes:
    score_bound: Λ > 0, a float or (traced) array; a pytree leaf, so
      ``jax.vmap`` can map over it.
  """

  score_bound: Any

  def best_conditional_risk(self, probs: jax.Array,
                            tau: jax.Array) -> jax.Array:
    """Exact C*_τ(H_Λ, x) (see module docstring)."""
    return solve_score_bounded(probs, tau, self.score_bound).value

  def project_scores(self, scores: jax.Array) -> jax.Array:
    bound = jnp.asarray(self.score_bound, scores.dtype)[..., None]
    return jnp.clip(scores, -bound, bound)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class L2BallFamily:
  """Scores at x range over the ℓ2 ball {s : ‖s‖₂ ≤ r}.

  This is the family of linear scorers h(x, ·) = W·φ(x) with ‖W‖_F ≤ B at a
  point with ‖φ(x)‖₂ = ρ: {W φ(x) : ‖W‖_F ≤ B} is the ball of radius r = B·ρ.
  It has no closed form; ``best_conditional_risk`` runs the generic
  :func:`projected_gradient_solve` (global for τ ≤ 1, where the objective is
  convex in the scores; a stationary point, hence an upper bound, otherwise).

  Attributes:
    radius: r > 0, float or (traced) array (a pytree leaf).
  """

  radius: Any

  def best_conditional_risk(self, probs: jax.Array,
                            tau: jax.Array) -> jax.Array:
    return projected_gradient_solve(probs, tau, self).value

  def project_scores(self, scores: jax.Array) -> jax.Array:
    radius = jnp.asarray(self.radius, scores.dtype)[..., None]
    norm = jnp.sqrt(jnp.sum(scores * scores, axis=-1, keepdims=True))
    return scores * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-30))


def resolve_family(score_bound: Any = None,
                   family: Any = None) -> Any:
  """The family meant by ``score_bound``/``family`` (shorthand handling).

  ``family`` wins when given; otherwise ``score_bound=None`` is the complete
  family and a number or array Λ the score-bounded family.

  Raises:
    ValueError: both given, or a concrete Λ ≤ 0 or NaN.
  """
  if family is not None:
    if score_bound is not None:
      raise ValueError("pass either score_bound or family, not both (got "
                       f"score_bound={score_bound!r}, family={family!r})")
    if isinstance(family, ScoreBoundedFamily):
      _inputs.check_score_bound(family.score_bound)
    return family
  if score_bound is None:
    return CompleteFamily()
  _inputs.check_score_bound(score_bound)
  return ScoreBoundedFamily(score_bound)


class BoxSolution(NamedTuple):
  """Result of :func:`solve_score_bounded`; batch shape [...] of the inputs.

  Attributes:
    value: C*_τ(H_Λ, x), shape [...].
    scores: a minimiser in [−Λ, Λ]^n, shape [..., n].
    kkt_residual: ‖s − clip(s − ∇_s C(s), −Λ, Λ)‖_∞ at the minimiser.
    duality_gap: Frank–Wolfe gap in q = softmax(s), an upper bound on
      value − C* for τ ≤ 2; 0 for τ > 2 (exact vertex enumeration).
  """

  value: jax.Array
  scores: jax.Array
  kkt_residual: jax.Array
  duality_gap: jax.Array


def _risk(scores: jax.Array, probs: jax.Array, tau: jax.Array) -> jax.Array:
  return conditional.conditional_risk(scores, probs, tau)


class _Candidates(NamedTuple):
  """Per-candidate quantities of the active-set enumeration (one problem).

  Candidate f < (n+1)² is the pair (i, j) = (f // (n+1), f % (n+1)): i top
  entries at R·m, j bottom entries at m, the rest at κ·m·p^a; pairs with
  i + j > n are infeasible (``valid`` False, ``violation`` +inf). The last
  candidate is the unconstrained q ∝ p^a, stored as i = j = 0, log κ =
  −log Σ p^a, log m = 0, so that one formula gives every row of log q
  (:func:`_candidate_log_q`). Every array is O(n²) scalars; log q is built
  only for the rows that are evaluated.
  """

  log_m: jax.Array  # [G]
  log_kappa: jax.Array  # [G]
  valid: jax.Array  # [G]
  violation: jax.Array  # [G]
  num_top: jax.Array  # [G] i
  num_bottom: jax.Array  # [G] j
  a: jax.Array  # exponent 1/(2 − τ) (τ < 2)
  log_p: jax.Array  # [n], −∞ where p = 0
  log_r: jax.Array  # log R = 2Λ


def _two_level_rows(n: int) -> np.ndarray:
  """Flat indices of the pairs (k, n − k), k = 0..n (the vertices of P)."""
  k = np.arange(n + 1)
  return k * (n + 1) + (n - k)


def _feasible_rows(n: int) -> np.ndarray:
  """Flat indices of every pair with i + j ≤ n, then the unconstrained row."""
  index = np.arange((n + 1) ** 2)
  feasible = index // (n + 1) + index % (n + 1) <= n
  return np.append(np.flatnonzero(feasible), (n + 1) ** 2)


def _candidates(p_sorted: jax.Array, tau: jax.Array,
                bound: jax.Array) -> _Candidates:
  """Every active-set candidate (module docstring) of one sorted problem.

  Args:
    p_sorted: p in decreasing order, shape [n].
    tau: scalar τ.
    bound: scalar Λ.

  Returns:
    :class:`_Candidates` for G = (n+1)² + 1 candidates. ``violation``
    (used for τ < 2) is how far, in log units, a candidate is from the
    optimality conditions of the convex problem: with v_y = log κ + a·log p_y
    the unclipped level log(q_y/m), the minimiser has v_y ≥ log R on its top
    group, v_y ≤ 0 on its bottom group and 0 ≤ v_y ≤ log R in between
    (q_y = clip(κ·m·p_y^a, m, R·m)); p is sorted and a > 0, so each group's
    boundary entries decide. For the unconstrained candidate it is the
    excess of a·(log p_1 − log p_n) over log R. The minimiser's violation
    is 0 up to rounding.
  """
  n = p_sorted.shape[-1]
  dtype = p_sorted.dtype
  flat = jnp.arange((n + 1) ** 2)
  i, j = flat // (n + 1), flat % (n + 1)
  feasible = i + j <= n
  has_middle = i + j < n

  below_two = tau < 2.0
  tau_safe = jnp.where(below_two, tau, 0.0)
  a = 1.0 / (2.0 - tau_safe)  # q ∝ p^a is the complete-family optimum
  support = p_sorted > 0
  log_p = jnp.where(support, jnp.log(jnp.where(support, p_sorted, 1.0)),
                    -jnp.inf)
  log_r = 2.0 * bound  # log R, R = e^{2Λ}

  # n + 1 prefix / suffix log-sums (index k: Σ_{l<k} resp. Σ_{l≥k}),
  # gathered per candidate.
  minus_inf = jnp.full((1,), -jnp.inf, dtype)

  def log_prefix(log_terms):  # log Σ_{l<k} e^{x_l}, k = 0..n
    return jnp.concatenate([minus_inf, jax.lax.cumlogsumexp(log_terms)])

  def log_suffix(log_terms):  # log Σ_{l≥k} e^{x_l}, k = 0..n
    return jnp.concatenate(
        [jax.lax.cumlogsumexp(log_terms, reverse=True), minus_inf])

  log_p_top = log_prefix(log_p)[i]  # P_top = Σ_{k<i} p_k
  bottom_start = jnp.clip(n - j, 0, n)
  log_p_bottom = log_suffix(log_p)[bottom_start]  # P_bottom = Σ_{k≥n−j} p_k
  # S = Σ_{i ≤ k < n−j} p_k^a = T(i) − T(n − j), T(k) = Σ_{l≥k} p_l^a. The
  # bottom terms are each at most the smallest middle term, so the
  # subtraction loses at most a factor n + 1 of relative precision.
  log_tail_a = log_suffix(a * log_p)
  hi, lo = log_tail_a[i], log_tail_a[bottom_start]
  ratio = jnp.exp(jnp.where(has_middle, lo - hi, -jnp.inf))
  log_s_middle = jnp.where(has_middle,
                           hi + jnp.log1p(-jnp.minimum(ratio, 1.0)), -jnp.inf)
  log_i = jnp.log(i.astype(dtype))  # −∞ at i = 0
  log_j = jnp.log(j.astype(dtype))
  log_ir_j = jnp.logaddexp(log_i + log_r, log_j)  # log(i·R + j)
  # log W = log(R^{τ−1} P_top + P_bottom)
  log_w = jnp.logaddexp((tau_safe - 1.0) * log_r + log_p_top, log_p_bottom)
  # κ = (W/(iR + j))^{−a}   (stationarity in m)
  log_kappa = -a * (log_w - log_ir_j)
  # m = 1/(iR + j + κ S)
  log_m = -jnp.where(has_middle,
                     jnp.logaddexp(log_ir_j, log_kappa + log_s_middle),
                     log_ir_j)
  mixed_ok = below_two & (i + j > 0)

  # Optimality conditions at the group boundaries (docstring).
  def level(k):
    return log_kappa + a * log_p[jnp.clip(k, 0, n - 1)]

  relu = lambda z: jnp.maximum(z, 0.0)  # noqa: E731
  zero = jnp.zeros((), dtype)
  violation = jnp.maximum(
      jnp.maximum(jnp.where(i > 0, relu(log_r - level(i - 1)), zero),
                  jnp.where(j > 0, relu(level(n - j)), zero)),
      jnp.where(has_middle,
                jnp.maximum(relu(level(i) - log_r), relu(-level(n - j - 1))),
                zero))
  violation = jnp.where(feasible, violation, jnp.inf)
  spread = a * (log_p[0] - log_p[-1])  # does q ∝ p^a fit into the box?
  violation = jnp.concatenate([violation, relu(spread - log_r)[None]])
  # NaN (a degenerate candidate, e.g. ∞ − ∞ with zero probabilities) counts
  # as infinitely far.
  violation = jnp.where(jnp.isnan(violation), jnp.inf, violation)
  log_m = jnp.concatenate([log_m, jnp.zeros((1,), dtype)])
  log_kappa = jnp.concatenate([log_kappa,
                               -jax.nn.logsumexp(a * log_p)[None]])
  valid = jnp.concatenate([feasible & (~has_middle | mixed_ok),
                           below_two[None]])
  no_group = jnp.zeros((1,), i.dtype)
  return _Candidates(log_m, log_kappa, valid, violation,
                     jnp.concatenate([i, no_group]),
                     jnp.concatenate([j, no_group]), a, log_p, log_r)


def _candidate_log_q(cands: _Candidates, rows: Any) -> jax.Array:
  """log q [len(rows), n] of the candidates ``rows`` (static or traced)."""
  n = cands.log_p.shape[-1]
  index = jnp.arange(n)
  top = index[None, :] < cands.num_top[rows][:, None]
  bottom = index[None, :] >= n - cands.num_bottom[rows][:, None]
  log_m = cands.log_m[rows][:, None]
  middle = (cands.log_kappa[rows][:, None] + log_m +
            cands.a * cands.log_p[None, :])
  return jnp.where(top, log_m + cands.log_r, jnp.where(bottom, log_m, middle))


def _scores_in_box(log_q: jax.Array, bound: jax.Array) -> jax.Array:
  """Centre log q so that max + min = 0 and clip into [−Λ, Λ] (feasible)."""
  finite = jnp.isfinite(log_q)
  hi = jnp.max(jnp.where(finite, log_q, -jnp.inf), axis=-1, keepdims=True)
  lo = jnp.min(jnp.where(finite, log_q, jnp.inf), axis=-1, keepdims=True)
  centred = jnp.where(finite, log_q - 0.5 * (hi + lo), -bound)
  return jnp.clip(centred, -bound, bound)


def _frank_wolfe_gap(scores: jax.Array, probs: jax.Array, tau: jax.Array,
                     bound: jax.Array) -> jax.Array:
  """max_{v∈P} ⟨∇F(q), q − v⟩, F(q) = Σ p_y ψ(q_y), q = softmax(s) (n-vector)."""
  n = probs.shape[-1]
  log_q = jax.nn.log_softmax(scores)
  q = jnp.exp(log_q)
  # ∇F(q)_y = p_y ψ'(q_y) = −p_y q_y^{τ−2}; clamped so that an overflow gives
  # a huge (useless but valid) gap instead of NaN.
  grad = -jnp.where(probs > 0, probs * jnp.exp((tau - 2.0) * log_q), 0.0)
  grad = jnp.maximum(grad, -0.25 * jnp.finfo(grad.dtype).max / n)
  g_sorted = jnp.sort(grad)
  prefix = jnp.concatenate([jnp.zeros((1,), grad.dtype), jnp.cumsum(g_sorted)])
  total = prefix[-1]
  k = jnp.arange(n + 1, dtype=grad.dtype)
  inv_r = jnp.exp(-2.0 * bound)
  # Vertex with the k smallest gradients at R·m, others at m, m = 1/(kR+n−k):
  # ⟨g, v⟩ = (Σ_top g + (Σ_rest g)/R)/(k + (n − k)/R).
  lin = (prefix + (total - prefix) * inv_r) / (k + (n - k) * inv_r)
  # k = 0 is the uniform point (0/0 above when e^{−2Λ} underflows).
  lin = lin.at[0].set(total / n)
  return jnp.sum(grad * q) - jnp.min(lin)


def _certificate_one(scores: jax.Array, probs: jax.Array, tau: jax.Array,
                     bound: jax.Array) -> tuple[jax.Array, jax.Array]:
  grad = jax.grad(_risk)(scores, probs, tau)
  kkt = jnp.max(jnp.abs(scores - jnp.clip(scores - grad, -bound, bound)))
  gap = jnp.where(tau <= 2.0,
                  jnp.maximum(_frank_wolfe_gap(scores, probs, tau, bound),
                              0.0), 0.0)
  return kkt, gap


def score_bounded_certificate(scores: jax.Array, probs: jax.Array,
                              tau: jax.Array | float,
                              score_bound: jax.Array | float
                              ) -> tuple[jax.Array, jax.Array]:
  """Optimality certificate of scores in [−Λ, Λ]^n for min C_τ(s, x).

  Args:
    scores: feasible scores, shape [..., n] (entries in [−Λ, Λ]).
    probs: shape [..., n].
    tau: τ ≥ 0 broadcastable to [...].
    score_bound: Λ > 0 broadcastable to [...].

  Returns:
    (kkt_residual, duality_gap), each shape [...]: the projected-gradient
    residual ‖s − clip(s − ∇C(s), −Λ, Λ)‖_∞, and for τ ≤ 2 the Frank–Wolfe gap
    in q = softmax(s), which bounds C_τ(s) − C*_τ(H_Λ, x) from above (convex
    problem in q, module docstring); 0 for τ > 2, where it is no bound.
  """
  validation.check_probs(probs, jnp.shape(scores))
  _inputs.check_scores_and_probs(scores, probs)
  validation.check_tau(tau)
  _inputs.check_score_bound(score_bound)
  dtype = validation.compute_dtype(probs)
  probs = jnp.asarray(probs, dtype)
  batch = probs.shape[:-1]
  return _certificate_batched(
      jnp.asarray(scores, dtype), probs,
      jnp.broadcast_to(jnp.asarray(tau, dtype), batch),
      jnp.broadcast_to(jnp.asarray(score_bound, dtype), batch))


@jax.jit
def _certificate_batched(scores, probs, tau, bound):
  fn = _certificate_one
  for _ in probs.shape[:-1]:
    fn = jax.vmap(fn)
  return fn(scores, probs, tau, bound)


# How many mixed candidates (not two-level) get their risk evaluated: those
# with the smallest optimality-condition violation (_candidates). For
# τ < 2 the minimiser satisfies the conditions exactly, so it is among them
# (ties only between candidates with the same q); for τ ≥ 2 only the n + 1
# two-level candidates are valid, and they are always evaluated. Tests check
# this against the full enumeration (keep_mixed=None).
_KEEP_MIXED = 4


def _smallest_indices(values: jax.Array, k: int) -> jax.Array:
  """Indices of the k smallest entries of a vector (k rounds of argmin).

  On XLA:CPU ``lax.top_k`` sorts the whole vector; k rounds of argmin are
  cheaper for small k.
  """
  picked = []
  for _ in range(k):
    index = jnp.argmin(values)
    picked.append(index)
    values = values.at[index].set(jnp.inf)
  return jnp.stack(picked)


def _per_label_losses(scores: jax.Array, tau: jax.Array) -> jax.Array:
  """ℓ_τ(s, y) for every y: Φ^τ(e^{c_y} − 1) = c_y·φ((1−τ)c_y), c_y = CE_y.

  c_y = logsumexp(s) − s_y and φ(x) = expm1(x)/x; finite for finite scores.
  """
  ce = jnp.maximum(jax.nn.logsumexp(scores) - scores, 0.0)
  return ce * _numerics.expm1_ratio((1.0 - tau) * ce)


def _minimiser_one(probs: jax.Array, tau: jax.Array, bound: jax.Array,
                   keep_mixed: int | None) -> tuple[jax.Array, jax.Array]:
  """(C*, a minimiser s*) of one problem by the active-set enumeration."""
  n = probs.shape[-1]
  order = jnp.argsort(-probs)
  p_sorted = probs[order]
  cands = _candidates(p_sorted, tau, bound)
  num_rows = (n + 1) ** 2 + 1
  two_level = _two_level_rows(n)
  mixed_count = n * (n + 1) // 2 + 1  # pairs with i + j < n, unconstrained
  if keep_mixed is not None and keep_mixed < mixed_count:
    is_mixed = np.ones(num_rows, bool)
    is_mixed[two_level] = False
    selection = jnp.where(jnp.asarray(is_mixed), cands.violation, jnp.inf)
    rows = jnp.concatenate([jnp.asarray(two_level),
                            _smallest_indices(selection, keep_mixed)])
  else:
    rows = _feasible_rows(n)
  log_q, valid = _candidate_log_q(cands, rows), cands.valid[rows]
  candidates = _scores_in_box(log_q, bound)
  values = jax.vmap(_risk, in_axes=(0, None, None))(candidates, p_sorted, tau)
  values = jnp.where(valid & ~jnp.isnan(values), values, jnp.inf)
  best = jnp.argmin(values)
  scores = jnp.zeros_like(probs).at[order].set(candidates[best])
  return values[best], scores


def _solve_one(probs: jax.Array, tau: jax.Array, bound: jax.Array,
               keep_mixed: int | None = _KEEP_MIXED) -> BoxSolution:
  """Exact solve of one problem; value differentiable by the envelope theorem.

  The enumeration runs on stopped inputs; the value is then re-expressed as
  C(s*) with s* = Λ·u* (u* = s*/Λ held fixed), which has the envelope-theorem
  derivatives of C*:

    ∂C*/∂p_y = ℓ_τ(s*, y),  ∂C*/∂τ = Σ_y p_y ∂_τℓ_τ(s*, y),
    ∂C*/∂Λ = ∇_sC(s*)·s*/Λ,

  the exact (one-sided at a switch of minimiser) first derivatives; the
  minimiser and the certificate carry no derivative.
  """
  value, scores = _minimiser_one(jax.lax.stop_gradient(probs),
                                 jax.lax.stop_gradient(tau),
                                 jax.lax.stop_gradient(bound), keep_mixed)
  fixed_bound = jax.lax.stop_gradient(bound)
  direction = scores / fixed_bound  # u* = s*/Λ
  live_scores = scores + (bound - fixed_bound) * direction  # = s*, ∂/∂Λ = u*
  # C(s*) = Σ_y p_y ℓ_τ(s*, y), linear in p (unnormalised p included).
  live_value = jnp.sum(probs * _per_label_losses(live_scores, tau))
  value = value + (live_value - jax.lax.stop_gradient(live_value))
  kkt, gap = _certificate_one(scores, jax.lax.stop_gradient(probs),
                              jax.lax.stop_gradient(tau), fixed_bound)
  return BoxSolution(value, scores, kkt, gap)


def solve_score_bounded(probs: jax.Array, tau: jax.Array | float,
                        score_bound: jax.Array | float) -> BoxSolution:
  """Exact C*_τ(H_Λ, x) = min_{s ∈ [−Λ,Λ]^n} Σ_y p_y ℓ_τ(s, y), with certificate.

  Finite active-set enumeration (module docstring): p is sorted once, the
  O(n²) candidates (i, j) are scored by O(1) optimality conditions from
  prefix/suffix log-sums, and only the n + 1 two-level candidates and the
  few mixed ones closest to the conditions get their O(n) risk evaluated:
  O(n²) memory and compile size, no iteration, cost independent of p, τ, Λ.

  Derivatives (``jax.grad``/``jvp`` in p, τ and Λ) follow the envelope
  theorem at the minimiser s*: ∂C*/∂p_y = ℓ_τ(s*, y), ∂C*/∂τ =
  Σ_y p_y ∂_τℓ_τ(s*, y), ∂C*/∂Λ = ∇_sC(s*)·s*/Λ (exact where the minimiser
  is unique; one of the one-sided derivatives where it switches). The
  returned scores and certificate carry no derivative.

  Args:
    probs: p(·|x), shape [..., n] on the simplex.
    tau: τ ≥ 0, broadcastable to [...].
    score_bound: Λ > 0, broadcastable to [...].

  Returns:
    :class:`BoxSolution` with batch shape [...].

  Raises:
    ValueError: concrete probs off the simplex or not finite, τ < 0, Λ not
      finite and > 0.
  """
  validation.check_probs(probs)
  _inputs.check_finite(probs, "probs")
  validation.check_tau(tau)
  _inputs.check_score_bound(score_bound)
  dtype = validation.compute_dtype(probs)
  probs = jnp.asarray(probs, dtype)
  batch = probs.shape[:-1]
  tau = jnp.broadcast_to(jnp.asarray(tau, dtype), batch)
  bound = jnp.broadcast_to(jnp.asarray(score_bound, dtype), batch)
  return _solve_batched(probs, tau, bound)


# On CPU, large batches are solved in chunks of this many problems
# (``jax.lax.map`` with ``batch_size``) so that the per-chunk intermediates
# stay in cache (measurements: benchmarks/results/theory.md). Accelerators
# take the whole batch at once.
_CPU_CHUNK = 1024


def _map_problems(fn: Any, *args: jax.Array) -> Any:
  """fn over the leading batch axes of args (all share batch shape [...])."""
  batch = args[0].shape[:-1]
  size = int(np.prod(batch, dtype=int))
  flat = [jnp.reshape(a, (size,) + a.shape[len(batch):]) for a in args]

  def vmapped(*xs):
    return jax.vmap(fn)(*xs)

  def chunked(*xs):
    return jax.lax.map(lambda xs: fn(*xs), xs, batch_size=_CPU_CHUNK)

  if size > _CPU_CHUNK:
    out = jax.lax.platform_dependent(*flat, cpu=chunked, default=vmapped)
  else:
    out = vmapped(*flat)
  return jax.tree.map(lambda x: jnp.reshape(x, batch + x.shape[1:]), out)


@jax.jit
def _solve_batched(probs: jax.Array, tau: jax.Array,
                   bound: jax.Array) -> BoxSolution:
  return _map_problems(_solve_one, probs, tau, bound)


class FamilySolution(NamedTuple):
  """Result of :func:`projected_gradient_solve` (batch shape [...]).

  Attributes:
    value: C(s) at the returned scores (an upper bound on C*).
    scores: shape [..., n].
    kkt_residual: ‖s − P(s − ∇C(s))‖_∞, P the family's projection; 0 at a
      stationary point.
  """

  value: jax.Array
  scores: jax.Array
  kkt_residual: jax.Array


def projected_gradient_solve(probs: jax.Array, tau: jax.Array | float,
                             family: Any,
                             init_scores: jax.Array | None = None,
                             num_steps: int = 300) -> FamilySolution:
  """Generic min_{s reachable} C_τ(s, x) by projected gradient descent.

  Works for any family with ``project_scores``; each step tries 24 step sizes
  η·2^{−k} in parallel and keeps the best (a vectorised line search), inside
  ``jax.lax.fori_loop``. For τ ≤ 1 the objective is convex in s and for τ ≤ 2
  convex in softmax(s) over a convex set (module docstring), so for the box
  family stationary points are global minima; in general (τ > 2, or a
  family whose reachable set is not convex in softmax coordinates) it returns
  a stationary point only, i.e. an upper bound on C*.

  Args:
    probs: shape [..., n].
    tau: τ ≥ 0 broadcastable to [...].
    family: a family pytree (see :class:`HypothesisFamily`) whose leaves are
      broadcastable to the batch shape [...] (one family per problem).
    init_scores: starting scores [..., n]; default the projection of
      log p^{1/(2−τ)} (the complete-family optimum), with −∞ replaced by −10.
    num_steps: number of projected-gradient steps.

  Returns:
    :class:`FamilySolution`.
  """
  validation.check_probs(probs)
  validation.check_tau(tau)
  dtype = validation.compute_dtype(probs)
  probs = jnp.asarray(probs, dtype)
  batch = probs.shape[:-1]
  tau = jnp.broadcast_to(jnp.asarray(tau, dtype), batch)
  if init_scores is None:
    a = 1.0 / (2.0 - jnp.minimum(tau, 1.9))
    init_scores = jnp.where(
        probs > 0, a[..., None] * jnp.log(jnp.where(probs > 0, probs, 1.0)),
        -10.0)
  init_scores = jnp.broadcast_to(jnp.asarray(init_scores, dtype),
                                 probs.shape)
  family = jax.tree.map(
      lambda leaf: jnp.broadcast_to(jnp.asarray(leaf, dtype), batch), family)
  return _projected_gradient_batched(probs, tau, init_scores, family,
                                     num_steps)


@functools.partial(jax.jit, static_argnums=(4,))
def _projected_gradient_batched(probs, tau, init_scores, family, num_steps):
  dtype = probs.dtype
  step_sizes = 2.0 ** -jnp.arange(24, dtype=dtype)

  def solve_one(p, t, s0, family):
    f = lambda s: _risk(s, p, t)
    s0 = family.project_scores(s0)

    def body(_, state):
      s, eta = state
      g = jax.grad(f)(s)
      trials = jax.vmap(lambda h: family.project_scores(s - h * g))(
          eta * step_sizes)
      values = jax.vmap(f)(trials)
      k = jnp.argmin(values)
      improved = values[k] < f(s)
      s_new = jnp.where(improved, trials[k], s)
      eta_new = jnp.where(improved, 4.0 * eta * step_sizes[k], eta)
      return s_new, jnp.clip(eta_new, 1e-8, 1e8)

    s, _ = jax.lax.fori_loop(0, num_steps, body, (s0, jnp.asarray(1.0, dtype)))
    g = jax.grad(f)(s)
    kkt = jnp.max(jnp.abs(s - family.project_scores(s - g)))
    return FamilySolution(f(s), s, kkt)

  solve = solve_one
  for _ in probs.shape[:-1]:
    solve = jax.vmap(solve)
  return solve(probs, tau, init_scores, family)
