r"""GPU benchmark: one WRN-28-10 ADV-COMP-SUM train step with a 10-step attack.

Measures images/s and model-FLOPs utilisation (MFU) of the registry's
ADV-COMP-SUM objective (``compsum_jax.training.adversarial``) inside the
one train step, bfloat16 compute (float32 parameters), on random 32×32×3
inputs, and standard training of the same model in the same process as the
baseline. Run by hand on an accelerator machine::

  python benchmarks/gpu_adversarial_step.py --out benchmarks/results/adversarial.md

(``--out`` replaces the GPU section of that file and keeps the CPU section.)

Model FLOPs per step. F = FLOPs of one forward pass of the batch, from XLA's
cost analysis of the forward program (no loops in it, so the count is
exact for what XLA runs). With the usual convention backward = 2 × forward:

  attack:   1 F (clean logits) + k × 3 F (forward + input gradient per step,
            counted as a full backward) + 1 F (loss of the last iterate)
  training: 2 passes (clean, adversarial) × 3 F
  total:    (3k + 8) F;  standard training: 3 F.

MFU = model FLOPs per second / the card's peak dense bfloat16 FLOP/s (table
below by device name, or ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compsum_jax import models, training  # noqa: E402
from compsum_jax.training import adversarial  # noqa: E402

# Peak dense bfloat16 tensor FLOP/s (vendor data sheets), by device_kind text.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A10G", 70.0), ("A10", 125.0),
    ("L40S", 362.0), ("L4", 121.0), ("V100", 125.0), ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0), ("TPU v6e", 918.0),
)

GPU_MARKER = "<!-- GPU section: written by benchmarks/gpu_adversarial_step.py -->"


def peak_tflops(device_kind: str) -> float | None:
  """Peak bf16 TFLOP/s of a device by name (first matching entry)."""
  for name, value in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return value
  return None


def forward_flops(model, params, batch_stats, images) -> float:
  """XLA's FLOP count of one forward pass on ``images``."""
  fn = jax.jit(lambda p, s, x: model.apply(
      {"params": p, "batch_stats": s}, x, train=False))
  analysis = fn.lower(params, batch_stats, images).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


def time_steps(step, state, batch, steps: int, repeats: int
               ) -> tuple[float, float]:
  """(median seconds per step, compile + first step seconds)."""
  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), first


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=512)
  parser.add_argument("--attack-steps", type=int, default=10)
  parser.add_argument("--depth", type=int, default=28)
  parser.add_argument("--width", type=int, default=10)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16",
                      choices=("bfloat16", "float32"))
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="override the card's peak dense TFLOP/s")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  device = jax.devices()[0]
  kind = device.device_kind
  if device.platform == "cpu":
    print("warning: running on CPU; this benchmark is meant for a GPU/TPU",
          file=sys.stderr)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  model = models.get_model("wide_resnet", 10, depth=args.depth,
                           width=args.width, activation="swish", dtype=dtype)
  b = args.batch_size
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(b, 32, 32, 3)),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, size=b), jnp.int32)}
  opt_cfg = {"name": "sgd", "learning_rate": 0.4, "momentum": 0.9,
             "nesterov": True, "weight_decay": 5e-4}
  attack = {"eps": 8 / 255, "step_size": 2 / 255,
            "num_steps": args.attack_steps}
  results = {}
  flops_fwd = None
  for method, hp in (("standard", {"tau": 1.0}),
                     ("adv_comp_sum", {"tau": 1.0, "nu": 1.0, "rho": 1.0})):
    opt = training.make_optimizer(opt_cfg, 10_000)
    state = training.init_train_state(model, opt, rng=0,
                                      input_shape=(32, 32, 3), hparams=hp,
                                      ema=True)
    if flops_fwd is None:
      flops_fwd = forward_flops(model, state.params, state.batch_stats,
                                batch["image"])
    step = training.make_train_step(
        adversarial.make_objective(model, method, attack), opt,
        ema_decay=0.995)
    per_step, first = time_steps(step, state, batch, args.steps, args.repeats)
    passes = 3.0 if method == "standard" else 3.0 * args.attack_steps + 8.0
    results[method] = (per_step, first, passes * flops_fwd)
    print(f"{method}: {per_step * 1e3:.1f} ms/step, {b / per_step:.0f} "
          f"images/s (first step {first:.1f} s)", flush=True)

  peak = args.peak_tflops or peak_tflops(kind)
  peak_text = (f"{peak:.1f} TFLOP/s" if peak
               else "unknown (pass --peak-tflops)")
  lines = [
      GPU_MARKER, "",
      f"## GPU: WRN-{args.depth}-{args.width} ADV-COMP-SUM step "
      f"({args.attack_steps}-step inner attack)", "",
      f"- device: {kind} ({device.platform}), {jax.device_count()} device(s)"
      f" visible, one used; jax {jax.__version__}",
      f"- WRN-{args.depth}-{args.width} swish, {args.dtype} compute, batch "
      f"{b}, random 32×32×3 inputs, SGD-Nesterov + EMA; median of "
      f"{args.repeats}×{args.steps} steps after the compile step",
      f"- forward FLOPs of one batch (XLA cost analysis): "
      f"{flops_fwd / 1e12:.4g} TFLOP; model FLOPs per step = passes × that "
      f"(standard 3, ADV-COMP-SUM 3k + 8 = {3 * args.attack_steps + 8})",
      f"- peak dense bf16: {peak_text}",
      "", "| method | ms / step | images / s | model TFLOP/s | MFU | "
      "× standard step time |", "|---|---|---|---|---|---|"]
  base = results["standard"][0]
  for method, (per_step, _, flops) in results.items():
    achieved = flops / per_step / 1e12
    mfu = f"{100 * achieved / peak:.1f} %" if peak else "–"
    lines.append(f"| {method} | {per_step * 1e3:.1f} | {b / per_step:.0f} | "
                 f"{achieved:.4g} | {mfu} | {per_step / base:.2f} |")
  report = "\n".join(lines) + "\n"
  print(report)
  if args.out:
    head = ""
    if os.path.exists(args.out):
      old = open(args.out, encoding="utf-8").read()
      head = old[:old.index(GPU_MARKER)] if GPU_MARKER in old else old + "\n"
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(head + report)


if __name__ == "__main__":
  main()
