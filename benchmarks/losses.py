"""Benchmark: forward+backward time of comp_sum_loss against optax's cross-entropy.

Run by hand from the repository root:

    .venv/bin/python benchmarks/losses.py [--repeats 50] [--out benchmarks/results/losses.md]

For every (batch, classes) and τ it times a jitted ``value_and_grad`` of the mean
loss with respect to the logits, alternating the candidate and the baseline
(``optax.softmax_cross_entropy_with_integer_labels``) inside one process so that
both see the same machine load, and reports the median ratio. Goal: ≤ 1.10.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import _machine  # benchmarks/_machine.py (scripts run from benchmarks/)
import jax
import jax.numpy as jnp
import numpy as np
import optax

from compsum_jax import losses

SHAPES = [(1024, 10), (1024, 100), (8192, 1000)]
TAUS = [0.0, 0.5, 1.0, 1.5, 2.0]


def _timed(fn, *args) -> float:
  start = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - start


def _grad_fn(loss_fn):
  return jax.jit(jax.value_and_grad(lambda lg, y: jnp.mean(loss_fn(lg, y))))


def bench_case(batch: int, n: int, tau: float, repeats: int, inner: int
               ) -> dict:
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(batch, n)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, n, size=batch), jnp.int32)
  cand = _grad_fn(lambda lg, y: losses.comp_sum_loss(lg, y, tau))
  base = _grad_fn(optax.softmax_cross_entropy_with_integer_labels)
  for f in (cand, base):  # compile + warm up
    for _ in range(3):
      jax.block_until_ready(f(logits, labels))

  def run(f):
    return sum(_timed(f, logits, labels) for _ in range(inner)) / inner

  t_cand, t_base, ratios = [], [], []
  for i in range(repeats):
    # Alternate the order so neither side always runs first.
    if i % 2:
      b, c = run(base), run(cand)
    else:
      c, b = run(cand), run(base)
    t_cand.append(c)
    t_base.append(b)
    ratios.append(c / b)
  return dict(batch=batch, classes=n, tau=tau,
              cand_us=1e6 * statistics.median(t_cand),
              base_us=1e6 * statistics.median(t_base),
              ratio=statistics.median(ratios))


def machine_description() -> str:
  cpu = _machine.cpu_model()
  return (f"{cpu}; {os.cpu_count()} CPU cores; devices {jax.devices()}; "
          f"jax {jax.__version__}, optax {optax.__version__}; "
          f"python {platform.python_version()}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default="benchmarks/results/losses.md")
  args = parser.parse_args()
  rows = []
  for batch, n in SHAPES:
    inner = 20 if batch * n <= 1024 * 100 else 3
    for tau in TAUS:
      row = bench_case(batch, n, tau, args.repeats, inner)
      rows.append(row)
      print(f"{batch}x{n} tau={tau}: comp_sum {row['cand_us']:.1f} us, "
            f"optax CE {row['base_us']:.1f} us, ratio {row['ratio']:.3f}",
            flush=True)
  worst = max(r["ratio"] for r in rows)
  lines = [
      "# comp_sum_loss vs optax cross-entropy (forward + backward, jitted)",
      "",
      f"Machine: {machine_description()}",
      f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
      "Command: `.venv/bin/python benchmarks/losses.py "
      f"--repeats {args.repeats}`",
      "",
      "Each cell is the median over repeats of the per-call time of a jitted",
      "`value_and_grad` of the mean loss; the ratio is the median of per-repeat",
      "ratios (comp_sum / optax), both measured alternately in one process.",
      "",
      "| batch × classes | τ | comp_sum_loss (µs) | optax CE (µs) | ratio |",
      "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(f"| {r['batch']}×{r['classes']} | {r['tau']} | "
                 f"{r['cand_us']:.1f} | {r['base_us']:.1f} | {r['ratio']:.3f} |")
  lines += ["", f"Worst ratio: {worst:.3f} (goal ≤ 1.10: "
            f"{'met' if worst <= 1.10 else 'NOT met'})."]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
