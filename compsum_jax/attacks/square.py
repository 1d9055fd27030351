"""Square Attack, ℓ∞ (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020).

A score-based, gradient-free random search: it queries only ``logits_fn`` and
keeps a candidate when it lowers the margin loss. Used in the cascade as the
gradient-masking check: points that Square breaks but the white-box attacks do
not point to obfuscated gradients.

Per example, with images x of shape [H, W, C] (NHWC batches) and ε:

  init:  x̂ = clip_[0,1](x + ε·s) with s ∈ {−1, 1} constant along each column
         and channel (vertical stripes, §3.1 of the paper);
  loss:  L(x̂) = z_y(x̂) − max_{i≠y} z_i(x̂) (the margin; < 0 means fooled);
  step i: side h_i = max(1, min(H − 1, round(sqrt(p_i·H·W)))) with
         p_i = p_init·2^{−m(i)}, m(i) piecewise constant in i (AutoAttack
         'standard', ``rescale_schedule=False``, the default) or in i/Q·10⁴
         (``rescale_schedule=True``: the schedule stretched to the budget Q,
         the paper's code for budgets other than 10⁴);
         a random window (r, c) ∈ [0, H − h_i) × [0, W − h_i) of side h_i is
         set to x + ε·σ_ch with a random sign σ per channel (resampled when it
         would not change the window), clipped to [0, 1]; the candidate is
         kept if its margin is lower (or it is misclassified).

Each step costs one query per still-robust example; an example stops once it
is misclassified or has used ``num_queries`` queries (the initial point is
the first query). Window and signs are drawn per example (as in the paper's
code; the AutoAttack port shares them across the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from compsum_jax import losses
from compsum_jax.attacks import threat_model

LogitsFn = Callable[[jax.Array], jax.Array]

# Fraction schedule of the paper/AutoAttack: p_i = p_init / 2^m for i (or
# i/Q·10⁴ when rescaled) in (10, 50], (50, 200], (200, 500], (500, 1k],
# (1k, 2k], (2k, 4k], (4k, 6k],
# (6k, 8k], (8k, ∞) → m = 1..9.
_P_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Resampling the window signs when they would not change it (paper's code).
_MAX_RESAMPLES = 10


class SquareResult(NamedTuple):
  """Outcome of :func:`square_attack_run`.

  Attributes:
    x_adv: best point per example [B, ...].
    margin: margin z_y − max_{i≠y} z_i at x_adv, [B] (≤ 0 means fooled).
    queries: queries used per example, [B] int32.
  """
  x_adv: jax.Array
  margin: jax.Array
  queries: jax.Array


def p_selection(p_init: float, iteration: jax.Array, num_queries: int,
                rescale_schedule: bool = False) -> jax.Array:
  """Fraction p_i of pixels changed at step i (piecewise halving schedule).

  p_i = p_init·2^{−m(i)}, m counting the boundaries (10, 50, 200, 500, 1k, 2k,
  4k, 6k, 8k) below i, or below i/Q·10⁴ with ``rescale_schedule``.
  """
  scaled = iteration.astype(jnp.int32)
  if rescale_schedule:  # i rescaled to a 10⁴-query budget
    scaled = (iteration.astype(jnp.float32) / num_queries * 10000.0).astype(
        jnp.int32)
  halvings = sum((scaled > b).astype(jnp.int32) for b in _P_BOUNDARIES)
  return p_init / (2.0 ** halvings)  # p_i = p_init·2^{−m(i)}


def square_attack_run(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                      key: jax.Array, *, eps: float | jax.Array,
                      num_queries: int = 5000, p_init: float = 0.8,
                      rescale_schedule: bool = False) -> SquareResult:
  """ℓ∞ Square Attack with its query accounting; see :func:`square_attack`."""
  threat_model.check_attack_args(logits_fn, x, labels, eps, "linf")
  if x.ndim != 4:
    raise ValueError(f"square attack needs images x of shape [B, H, W, C], "
                     f"got shape {tuple(x.shape)}")
  num_queries = threat_model.check_positive_int(num_queries, "num_queries")
  threat_model.check_fraction(p_init, "p_init")
  if not isinstance(rescale_schedule, bool):
    raise ValueError(f"rescale_schedule must be True or False, got "
                     f"rescale_schedule={rescale_schedule!r}")
  batch, height, width, channels = x.shape
  if min(height, width) < 2:
    raise ValueError(f"square attack needs H, W >= 2, got H={height}, "
                     f"W={width}")
  x = jax.lax.stop_gradient(x)
  dtype = x.dtype
  eps_b = jnp.broadcast_to(jnp.asarray(eps, dtype), (batch,))
  eps4 = eps_b[:, None, None, None]
  keys = threat_model.example_keys(key, batch)

  def margin_of(x_query):
    return losses.margin(logits_fn(x_query), labels)  # z_y − max_{i≠y} z_i

  # Vertical stripes: one sign per (column, channel), x̂ = clip(x + ε·s).
  split = jax.vmap(jax.random.split)(keys)  # [B, 2]: stripes, search
  keys = split[:, 1]
  stripes = jax.vmap(lambda k: jax.random.rademacher(
      k, (1, width, channels), dtype))(split[:, 0])
  x_best = jnp.clip(x + eps4 * stripes, 0.0, 1.0)
  margin_best = margin_of(x_best)
  queries = jnp.ones(batch, jnp.int32)
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]

  def propose(k, x_clean, x_cur, eps_i, side):
    """New candidate for one example: window of side ``side`` set to ±ε."""
    k_r, k_c, k_s = jax.random.split(k, 3)
    r0 = jax.random.randint(k_r, (), 0, height - side)
    c0 = jax.random.randint(k_c, (), 0, width - side)
    window = ((rows >= r0) & (rows < r0 + side) & (cols >= c0)
              & (cols < c0 + side))

    def candidate(sign_key):
      signs = jax.random.rademacher(sign_key, (1, 1, channels), dtype)
      return jnp.where(window, jnp.clip(x_clean + eps_i * signs, 0.0, 1.0),
                       x_cur)

    def unchanged(c):
      return jnp.all(jnp.abs(c - x_cur) < 1e-7)

    def cond(state):
      tries, _, cand = state
      return (tries < _MAX_RESAMPLES) & unchanged(cand)

    def body(state):
      tries, sk, _ = state
      sk, sub = jax.random.split(sk)
      return tries + 1, sk, candidate(sub)

    k_s, first = jax.random.split(k_s)
    _, _, cand = jax.lax.while_loop(cond, body, (0, k_s, candidate(first)))
    return cand

  def cond(state):
    i, _, margin_best, queries = state
    active = (margin_best > 0) & (queries < num_queries)
    return (i < num_queries - 1) & jnp.any(active)

  def body(state):
    i, x_best, margin_best, queries = state
    active = (margin_best > 0) & (queries < num_queries)
    p = p_selection(p_init, i, num_queries, rescale_schedule)
    side = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
    side = jnp.clip(side, 1, min(height, width) - 1)
    step_keys = threat_model.fold_in_each(keys, i)
    x_new = jax.vmap(propose, in_axes=(0, 0, 0, 0, None))(
        step_keys, x, x_best, eps_b[:, None, None, None], side)
    margin_new = margin_of(x_new)
    improved = active & (margin_new < margin_best)
    x_best = jnp.where(improved[:, None, None, None], x_new, x_best)
    margin_best = jnp.where(improved, margin_new, margin_best)
    queries = queries + active.astype(jnp.int32)
    return i + 1, x_best, margin_best, queries

  _, x_best, margin_best, queries = jax.lax.while_loop(
      cond, body, (jnp.asarray(0), x_best, margin_best, queries))
  return SquareResult(jax.lax.stop_gradient(x_best), margin_best, queries)


def square_attack(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                  key: jax.Array, *, eps: float | jax.Array,
                  num_queries: int = 5000, p_init: float = 0.8,
                  rescale_schedule: bool = False) -> jax.Array:
  """ℓ∞ Square Attack (Andriushchenko et al. 2020), margin loss, query budget.

  Args:
    logits_fn: maps images [B, H, W, C] to logits [B, n] (queried only, never
      differentiated).
    x: clean images in [0, 1], [B, H, W, C], H, W ≥ 2.
    labels: integer [B].
    key: one PRNG key or one per example ([B]).
    eps: ε ≥ 0 (scalar or [B]).
    num_queries: query budget Q ≥ 1 per example (AutoAttack standard: 5000).
    p_init: initial fraction p_init ∈ (0, 1] of changed pixels (0.8).
    rescale_schedule: False (AutoAttack 'standard'): p halves at fixed
      iterations 10, 50, 200, …; True: the iterations are scaled by Q/10⁴, so
      the whole schedule fits into the budget Q.

  Returns:
    Points in B_∞(x, ε) ∩ [0, 1]^d, [B, H, W, C]; misclassified where the
    attack succeeded, else the lowest-margin point found.
  """
  return square_attack_run(logits_fn, x, labels, key, eps=eps,
                           num_queries=num_queries, p_init=p_init,
                           rescale_schedule=rescale_schedule).x_adv
