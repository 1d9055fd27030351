"""Calibrates the planner's time model on the CPU presets (digits).

Run by hand (not part of the tests)::

    .venv/bin/python benchmarks/plan_calibration.py

1. Measures this CPU's float32 peak as a large jitted matmul: 2·n³ / t
   (median of several calls, n = 1024).

Time t is this process's CPU time (``time.process_time``, all its threads),
not wall time: on a machine shared with other jobs the wall time measures the
load, the CPU time what the work costs. Peak and step are measured alike, so
their ratio holds for an idle machine with the same cores.
2. For each digits preset train step (the planner's own builders in
   ``experiments/planning.py``) computes the planner's analytical FLOPs per
   step, the predicted step time at that measured peak (MFU 100 %), and
   measures the real step on random inputs of the preset's shapes (warm-up
   excluded, median of ``--steps`` calls).
3. Records measured / predicted and the implied MFU = predicted / measured in
   ``benchmarks/results/plan_calibration.md`` with the machine description.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _machine  # noqa: E402
from compsum_jax.training import planning  # noqa: E402
from configs import adversarial_training as adv_configs  # noqa: E402
from configs import loss_comparison as lc_configs  # noqa: E402
from experiments import planning as exp_planning  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "plan_calibration.md")


def measured_peak_flops(n: int = 1024, repeats: int = 7) -> float:
  """2·n³ / t of a float32 n×n matmul (median over ``repeats`` calls)."""
  a = jnp.ones((n, n), jnp.float32)
  b = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.process_time()
    matmul(a, b).block_until_ready()
    times.append(time.process_time() - start)
  return 2.0 * n**3 / statistics.median(times)


def _concrete(tree, rng: np.random.Generator):
  """Arrays of the abstract shapes: small normal floats, ones for hparams."""
  def fill(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype)
    return jnp.zeros(s.shape, s.dtype)
  return jax.tree.map(fill, tree)


def _batch(shape, batch_size: int, rng: np.random.Generator) -> dict:
  return {"image": jnp.asarray(rng.random((batch_size, *shape.input_shape)),
                               jnp.float32),
          "label": jnp.asarray(rng.integers(0, shape.num_classes, batch_size),
                               jnp.int32)}


def time_step(step, state, batch, steps: int) -> float:
  """Median CPU seconds of one call (warm-up excluded); state threaded."""
  state, _ = step(state, batch)  # compile + warm-up
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.process_time()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.process_time() - start)
  return statistics.median(times)


def cases():
  """(label, config, experiment, builder) of the digits train steps."""
  lc = lc_configs.get_config("digits")
  adv = adv_configs.get_config("digits")
  out = [("loss_comparison digits, MLP, 15 members vmapped", lc, "lc", True),
         ("loss_comparison digits, MLP, 1 member", lc, "lc", False)]
  for method in ("standard", "trades"):
    out.append((f"adversarial digits, CNN+BN, {method}", adv, method, None))
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  peak = measured_peak_flops()
  print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
  rows = []
  for label, config, kind, stacked in cases():
    shape = exp_planning.dataset_shape(config)
    ds = exp_planning.abstract_dataset(config, shape)
    total = (shape.num_train // int(config.batch_size)) * int(
        config.num_epochs)
    if kind == "lc":
      k = len(config.taus) * int(config.num_seeds)
      _, step, _, state = exp_planning._loss_comparison_programs(  # pylint: disable=protected-access
          config, ds, total, k, stacked=stacked)
    else:
      _, step, _, state = exp_planning._adversarial_programs(  # pylint: disable=protected-access
          config, ds, total, kind)
    batch = _batch(shape, int(config.batch_size), rng)
    flops = planning.matmul_flops(step, state, batch).flops
    predicted = flops / peak
    measured = time_step(step, _concrete(state, rng), batch, args.steps)
    rows.append((label, flops, predicted, measured))
    print(f"{label}: {flops / 1e6:.1f} MFLOP/step, predicted "
          f"{predicted * 1e3:.2f} ms at peak, measured {measured * 1e3:.2f} "
          f"ms, measured/predicted {measured / predicted:.1f}")
  load = _machine.load_average()
  lines = [
      "# Planner calibration on the CPU presets (digits)", "",
      f"Measured {datetime.date.today().isoformat()} on {_machine.cpu_model()}"
      f" ({os.cpu_count()} cores), load average {load[0]:.1f} / "
      f"{load[1]:.1f} / {load[2]:.1f} (1/5/15 min), jax "
      f"{jax.__version__}, `python benchmarks/plan_calibration.py`.", "",
      f"CPU float32 peak, measured as a 1024×1024 matmul: "
      f"{peak / 1e9:.1f} GFLOP per CPU-second. All times are process CPU "
      "times (the machine was shared), so the ratios hold for an idle "
      "machine.", "",
      "Analytical FLOPs per step: the planner's count of the step's "
      "convolutions and matmuls (`planning.matmul_flops`). Predicted time = "
      "FLOPs / measured peak (MFU 100 %); implied MFU = predicted / measured.",
      "",
      "| train step | analytical FLOP/step | predicted at peak | measured | "
      "measured / predicted | implied MFU |",
      "|---|---|---|---|---|---|"]
  for label, flops, predicted, measured in rows:
    lines.append(f"| {label} | {flops / 1e6:.1f} M | {predicted * 1e3:.2f} ms"
                 f" | {measured * 1e3:.2f} ms | {measured / predicted:.1f} | "
                 f"{predicted / measured:.1%} |")
  lines += ["", "These digits steps are small (batch 64 or 128, MFLOPs to a "
            "GFLOP per step), so per-call overhead and element-wise work "
            "weigh more than in a paper-scale step; the ratios calibrate the "
            "time model on this CPU only and say nothing about a GPU's MFU. "
            "The planner's default stays 40 % until a GPU run is measured.",
            ""]
  with open(RESULTS, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print(f"wrote {RESULTS}")


if __name__ == "__main__":
  main()
