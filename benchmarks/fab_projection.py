"""FAB-T's ℓ∞ projection: bisection on float bit patterns vs a sort (CPU).

Run by hand: ``.venv/bin/python benchmarks/fab_projection.py``; writes
``benchmarks/results/fab_projection.md``.

Both compute d = argmin ‖d‖∞ s.t. ⟨w, p + d⟩ = b, p + d ∈ [0, 1]^D for a
batch (FAB's step, docs/math.md (11.8)). The baseline is the sorted closed
form the library used before (argsort of the rooms, cumulative sums, the
first breakpoint that reaches |c|), written here; the library's
``fab.project_linf_hyperplane_box`` brackets δ by bisection and solves the
linear piece. Each is timed inside one jitted loop of 20 projections, so
dispatch is not measured; the ratio is taken within the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from _machine import cpu_model, load_average, write_report  # noqa: E402

from compsum_jax.attacks import fab  # noqa: E402

LOOP = 20


def sorted_projection(point: jax.Array, w: jax.Array, b: jax.Array
                      ) -> jax.Array:
  """The sorted closed form (one example): h(δ) = Σ|w_i| min(δ, u_i) is
  linear between the sorted rooms u_(k); solve on the first piece that
  reaches |c|."""
  c = b - jnp.dot(w, point)
  direction = jnp.sign(w) * jnp.sign(c)
  room = jnp.where(direction > 0, 1.0 - point,
                   jnp.where(direction < 0, point, 0.0))
  weight, target = jnp.abs(w), jnp.abs(c)
  order = jnp.argsort(room)
  room_s, weight_s = room[order], weight[order]
  below = jnp.cumsum(weight_s * room_s) - weight_s * room_s
  above = jnp.cumsum(weight_s[::-1])[::-1]
  reach = below + room_s * above
  k = jnp.argmax(reach >= target)
  delta = (target - below[k]) / jnp.maximum(above[k], 1e-30)
  delta = jnp.where(reach[-1] >= target, jnp.maximum(delta, 0.0), room_s[-1])
  return direction * jnp.minimum(delta, room)


def _ms_per_projection(project, p, w, b, repeats: int) -> float:
  batched = jax.vmap(project)
  loop = jax.jit(lambda p, w, b: jax.lax.fori_loop(
      0, LOOP, lambda i, c: c + 1e-9 * batched(c, w, b), p))
  jax.block_until_ready(loop(p, w, b))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(loop(p, w, b))
    best = min(best, (time.perf_counter() - start) / LOOP * 1e3)
  return best


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dims", type=int, nargs="+",
                      default=[64, 784, 3072])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out",
                      default="benchmarks/results/fab_projection.md")
  args = parser.parse_args()
  load_start = load_average()
  rows = []
  for dim in args.dims:
    k1, k2 = jax.random.split(jax.random.key(dim))
    p = jax.random.uniform(k1, (args.batch, dim))
    w = jax.random.normal(k2, (args.batch, dim))
    # Offsets that some rows reach inside the box and some do not.
    b = jnp.sum(w * 0.5, -1) + 0.3 * jnp.sqrt(float(dim)) * jnp.linspace(
        -2.0, 2.0, args.batch)
    old = _ms_per_projection(sorted_projection, p, w, b, args.repeats)
    new = _ms_per_projection(fab.project_linf_hyperplane_box, p, w, b,
                             args.repeats)
    diff = float(jnp.max(jnp.abs(
        jax.vmap(sorted_projection)(p, w, b)
        - jax.vmap(fab.project_linf_hyperplane_box)(p, w, b))))
    rows.append((dim, old, new, diff))
    print(rows[-1], flush=True)
  load_end = load_average()
  lines = [
      "# FAB-T ℓ∞ projection: bisection (library) vs sorted closed form",
      "",
      f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, shared; "
      f"load average at start {load_start[0]:.1f}, at end {load_end[0]:.1f}",
      f"- jax {jax.__version__} ({jax.default_backend()}); batch "
      f"{args.batch}; best of {args.repeats} timings of a jitted loop of "
      f"{LOOP} projections",
      "",
      "| D | sorted ms | bisection ms | speed-up | max abs difference |",
      "|---|---|---|---|---|",
  ]
  lines += [f"| {d} | {o:.2f} | {n:.2f} | {o / n:.1f}× | {e:.1e} |"
            for d, o, n, e in rows]
  lines += ["", "Command: `.venv/bin/python benchmarks/fab_projection.py`"]
  write_report(args.out, lines)


if __name__ == "__main__":
  main()
