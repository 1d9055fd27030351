"""Where the time of a K-member vmapped train step goes on this CPU (by hand).

    .venv/bin/python benchmarks/member_step_breakdown.py

Explains the K = 15 rows of benchmarks/results/train_step.md: for each part
of the digits CNN (16-32, BN, batch 64) and MLP (256-256) steps it times the
part for all 15 members in one vmapped call against 15 calls for one member
(both jitted, compilation excluded, best of 5 rounds), so one sees which
parts gain from running members together (matmuls with a shared input or a
large batch) and which do not (memory-bound batch norm, ReLU and patch
extraction: the same bytes are moved either way). Writes
benchmarks/results/member_step_breakdown.md.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import _machine  # noqa: E402

from compsum_jax import models  # noqa: E402
from compsum_jax.models import conv as conv_lib  # noqa: E402

K = 15


def best_ms(fn, *args, calls=20, rounds=5):
  """Best-of-rounds milliseconds per call of jitted ``fn``."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / calls)
  return 1e3 * best


def pair(single_fn, single_args, stacked_fn, stacked_args):
  """(ms for 15 single calls, ms for one stacked call)."""
  return (K * best_ms(jax.jit(single_fn), *single_args),
          best_ms(jax.jit(stacked_fn), *stacked_args))


def model_rows(rs):
  """Loss forward and loss gradient of whole models, single vs stacked."""
  rows = []
  nets = [("digits CNN (16-32, BN)", "cnn",
           dict(features=(16, 32), strides=(1, 2), hidden_size=64,
                use_batch_norm=True)),
          ("MLP (256-256)", "mlp", dict(hidden_sizes=(256, 256)))]
  x = jnp.asarray(rs.rand(64, 8, 8, 1).astype(np.float32))
  y = jnp.asarray(rs.randint(0, 10, 64))
  for name, kind, kwargs in nets:
    model = models.get_model(kind, 10, **kwargs)
    stacked = jax.vmap(lambda key, m=model: m.init(key, x))(
        jax.random.split(jax.random.key(0), K))
    single = jax.tree.map(lambda a: a[0], stacked)

    def loss(variables, model=model):
      logits, _ = model.apply(variables, x, train=True,
                              mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    rows.append((f"{name}: loss forward", *pair(loss, (single,),
                                                jax.vmap(loss), (stacked,))))
    grad = jax.grad(loss)
    rows.append((f"{name}: loss gradient (forward + backward)",
                 *pair(grad, (single,), jax.vmap(grad), (stacked,))))
  return rows


def part_rows(rs):
  """The parts of those steps, on the activations' real shapes."""
  rows = []
  h = jnp.asarray(rs.randn(K, 64, 8, 8, 16).astype(np.float32))
  kernel = jnp.asarray(rs.randn(K, 3, 3, 16, 32).astype(np.float32) * 0.1)
  pads = ((0, 1), (0, 1))

  def bn_relu(a):
    mean = a.mean((0, 1, 2))
    var = ((a - mean)**2).mean((0, 1, 2))
    return jax.nn.relu((a - mean) * lax.rsqrt(var + 1e-5))

  def bn_relu_grad(a):
    return jax.grad(lambda a: jnp.sum(bn_relu(a) * a))(a)

  rows.append(("batch norm + ReLU forward, [64, 8, 8, 16]",
               *pair(bn_relu, (h[0],), jax.vmap(bn_relu), (h,))))
  rows.append(("batch norm + ReLU forward + backward, [64, 8, 8, 16]",
               *pair(bn_relu_grad, (h[0],), jax.vmap(bn_relu_grad), (h,))))

  def lax_conv(x, k):
    return lax.conv_general_dilated(x, k, (2, 2), pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def patch_conv(x, k):
    return conv_lib._patch_conv(x, k, (2, 2), pads, None)  # noqa: SLF001

  rows.append(("conv 3×3 16→32 stride 2 forward (stacked: member_conv)",
               *pair(lax_conv, (h[0], kernel[0]), patch_conv, (h, kernel))))
  rows.append(("conv 3×3 16→32 stride 2 forward (stacked: grouped lax)",
               *pair(lax_conv, (h[0], kernel[0]), jax.vmap(lax_conv),
                     (h, kernel))))
  patches = jnp.asarray(rs.randn(K, 64 * 16, 144).astype(np.float32))
  weights = kernel.reshape(K, 144, 32)
  rows.append(("  its matmul alone [1024, 144] · [144, 32]",
               *pair(jnp.matmul, (patches[0], weights[0]), jnp.matmul,
                     (patches, weights))))

  def conv_grads(x, k):
    return jax.grad(lambda x, k: jnp.sum(lax_conv(x, k)**2), (0, 1))(x, k)

  def patch_grads(x, k):
    return jax.grad(lambda x, k: jnp.sum(patch_conv(x, k)**2), (0, 1))(x, k)

  rows.append(("same conv, forward + backward (stacked: member_conv)",
               *pair(conv_grads, (h[0], kernel[0]), patch_grads,
                     (h, kernel))))
  a = jnp.asarray(rs.randn(K, 64, 256).astype(np.float32))
  b = jnp.asarray(rs.randn(K, 256, 256).astype(np.float32))
  rows.append(("MLP hidden matmul [64, 256] · [256, 256]",
               *pair(jnp.matmul, (a[0], b[0]), jnp.matmul, (a, b))))
  return rows


def main():
  rs = np.random.RandomState(0)
  started = datetime.datetime.now(datetime.UTC)
  load_start = os.getloadavg()
  rows = model_rows(rs) + part_rows(rs)
  lines = [
      "# Where a K = 15 vmapped train step spends its time (CPU)",
      "",
      f"Produced by `benchmarks/member_step_breakdown.py` on "
      f"{started:%Y-%m-%d %H:%M} UTC. CPU: {_machine.cpu_model()}, "
      f"{os.cpu_count()} logical cores, jax {jax.__version__}; load average "
      f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end.",
      "",
      "Each row: 15 jitted calls for one member against one jitted call for "
      "15 stacked members (vmapped), same shapes as the digits rows of "
      "train_step.md; best of 5 rounds of 20 calls.",
      "",
      "| part | 15 × single (ms) | stacked (ms) | single / stacked |",
      "|---|---|---|---|",
  ]
  for name, single, stacked in rows:
    lines.append(f"| {name} | {single:.2f} | {stacked:.2f} | "
                 f"{single / stacked:.2f}× |")
    print(lines[-1], flush=True)
  path = os.path.join(REPO, "benchmarks", "results",
                      "member_step_breakdown.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("wrote", path)


if __name__ == "__main__":
  main()
