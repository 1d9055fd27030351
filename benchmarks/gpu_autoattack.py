"""GPU benchmark: the 'aa_standard' cascade on CIFAR-sized images, per stage.

    python benchmarks/gpu_autoattack.py [--num-images 10000] [--out FILE.md]
    python benchmarks/gpu_autoattack.py --smoke      # tiny sizes, any CPU

A WideResNet-28-10 (swish, random weights; no checkpoint is available on the
lent machine) evaluates ``num_images`` uniform random 32×32×3 images whose
labels are its own predictions (clean accuracy 100 %), under
``compsum_jax.attacks.robust_accuracy(..., 'aa_standard', eps=8/255)`` with
early exit. Reports per stage: points attacked, broken, point-runs (Σ over
restarts/targets of the points attacked), seconds (compilation included) and
images/s (points attacked / s), plus a warm repeat of the whole cascade on a
subset. Random weights break most points in the first stage, so later
stages run on few points: read the per-stage images/s, not the total.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from _machine import load_average  # noqa: E402

from compsum_jax import attacks, models  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-images", type=int, default=10_000)
  parser.add_argument("--batch-size", type=int, default=1000)
  parser.add_argument("--depth", type=int, default=28)
  parser.add_argument("--width", type=int, default=10)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny network, 16 images, 2 steps, 10 queries")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  overrides = None
  if args.smoke:
    args.num_images, args.batch_size = 16, 8
    args.depth, args.width = 10, 1
    overrides = {"num_steps": 2, "num_target_classes": 2, "num_queries": 10}
  device = jax.devices()[0]
  model = models.get_model("wide_resnet", 10, depth=args.depth,
                           width=args.width, activation="swish")
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(args.num_images, 32, 32, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), jnp.asarray(x[:2]), train=False)
  logits_fn = lambda xb: model.apply(variables, xb, train=False)
  fwd = jax.jit(logits_fn)
  y = np.concatenate([np.asarray(fwd(jnp.asarray(x[i:i + args.batch_size])))
                      .argmax(-1) for i in range(0, len(x), args.batch_size)])
  y = y.astype(np.int32)

  def evaluate(num):
    start = time.perf_counter()
    report = attacks.robust_accuracy(
        logits_fn, jnp.asarray(x[:num]), jnp.asarray(y[:num]),
        jax.random.key(0), "aa_standard", eps=8 / 255,
        batch_size=args.batch_size, overrides=overrides)
    return report, time.perf_counter() - start

  report, total = evaluate(args.num_images)
  warm_n = min(args.num_images, 4 * args.batch_size)
  warm_report, warm_total = evaluate(warm_n)
  load = load_average()
  lines = [
      f"## AutoAttack 'standard' ('aa_standard') on {device.device_kind}",
      "",
      f"- jax {jax.__version__} ({jax.default_backend()}); WRN-{args.depth}-"
      f"{args.width} swish, random weights, float32; {args.num_images} "
      f"uniform 32×32×3 images, labels = own predictions; ε = 8/255; batch "
      f"{args.batch_size}; load average {load[0]:.1f}",
      f"- whole cascade: {total:.1f} s cold (compilation included), robust "
      f"accuracy {report.robust_accuracy:.2%}; warm repeat on {warm_n} "
      f"images: {warm_total:.1f} s",
      "",
      "| stage | attacked | broken | point-runs | s (cold) | images/s | "
      "s (warm subset) |",
      "|---|---|---|---|---|---|---|",
  ]
  for s, w in zip(report.stages, warm_report.stages, strict=True):
    rate = s.num_attacked / s.seconds if s.seconds > 0 else float("nan")
    lines.append(f"| {s.name} | {s.num_attacked} | {s.num_broken} | "
                 f"{s.num_point_runs} | {s.seconds:.1f} | {rate:.0f} | "
                 f"{w.seconds:.1f} |")
  lines += ["", "Configuration:", ""]
  lines += [f"- {c}" for c in report.attack_configuration]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as fh:
      fh.write(text)


if __name__ == "__main__":
  main()
