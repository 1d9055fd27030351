r"""CPU benchmark: time per epoch of adversarial training vs standard training.

Every method is its objective from the library registry
(``compsum_jax.training.adversarial.make_objective``) inside the one train step
(``compsum_jax.training.make_train_step``), timed in the same process on the
same data, model and batch size: standard (plain CE), PGD-AT, TRADES and
ADV-COMP-SUM, each with a ``--attack-steps``-step inner attack. Compilation is
excluded (one warm-up step); each timing is the median over ``--repeats`` of
``--steps`` steps, and the epoch time is extrapolated to ``--epoch-size``
examples. Ratios are against standard training measured in the same run.

Run by hand (not part of the tests)::

  .venv/bin/python benchmarks/adversarial.py --out benchmarks/results/adversarial.md

The report (markdown) records the machine (CPU model, cores, load average,
versions) because timings on a shared machine vary.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _machine  # benchmarks/_machine.py (scripts run from benchmarks/)

from compsum_jax import models, training  # noqa: E402
from compsum_jax.training import adversarial  # noqa: E402

METHOD_HPARAMS = {
    "standard": {"tau": 1.0},
    "pgd_at": {},
    "trades": {"beta": 6.0},
    "adv_comp_sum": {"tau": 1.0, "nu": 1.0, "rho": 1.0},
}

GPU_MARKER = "<!-- GPU section: written by benchmarks/gpu_adversarial_step.py -->"


def cpu_description() -> str:
  """CPU model name, logical cores, load average."""
  model = _machine.cpu_model()
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  return (f"{model}; {os.cpu_count()} logical cores visible; load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")


def build_method(method: str, model, images: np.ndarray, labels: np.ndarray,
                 args: argparse.Namespace):
  """Compiled step, initial state, batches and compile seconds of a method."""
  opt = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4}, 1000)
  state = training.init_train_state(model, opt, rng=0,
                                    input_shape=images.shape[1:],
                                    hparams=METHOD_HPARAMS[method])
  attack = {"eps": 8 / 255, "step_size": 2 / 255,
            "num_steps": args.attack_steps}
  step = training.make_train_step(
      adversarial.make_objective(model, method, attack), opt)
  b = args.batch_size
  batches = [{"image": images[i * b:(i + 1) * b],
              "label": labels[i * b:(i + 1) * b]}
             for i in range(len(images) // b)]
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  return step, state, batches, time.perf_counter() - start


def time_steps(step, state, batches, num_steps: int):
  """(new state, seconds per step) over ``num_steps`` steps."""
  start = time.perf_counter()
  for i in range(num_steps):
    state, metrics = step(state, batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / num_steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--attack-steps", type=int, default=10)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--epoch-size", type=int, default=50_000)
  parser.add_argument("--methods", default="standard,pgd_at,trades,"
                      "adv_comp_sum")
  parser.add_argument("--out", default=None,
                      help="markdown file to write (keeps its GPU section)")
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  n = args.batch_size * 4
  images = rng.uniform(size=(n, args.image_size, args.image_size,
                             args.channels)).astype(np.float32)
  labels = rng.integers(0, 10, size=n).astype(np.int32)
  model = models.get_model("cnn", 10, features=(32, 64, 128),
                           strides=(1, 2, 2), hidden_size=128,
                           use_batch_norm=True)
  machine_before = cpu_description()
  methods = args.methods.split(",")
  built = {m: build_method(m, model, images, labels, args) for m in methods}
  states = {m: built[m][1] for m in methods}
  times: dict[str, list[float]] = {m: [] for m in methods}
  # Round-robin over methods, so that a change in the machine's load during
  # the run affects every method alike.
  for _ in range(args.repeats):
    for m in methods:
      states[m], per_step = time_steps(built[m][0], states[m], built[m][2],
                                       args.steps)
      times[m].append(per_step)
  rows = []
  for m in methods:
    per_step = statistics.median(times[m])
    rows.append((m, per_step, built[m][3]))
    print(f"{m}: {per_step * 1e3:.1f} ms/step (compile {built[m][3]:.1f} s)",
          flush=True)
  base = dict((m, s) for m, s, _ in rows).get("standard")
  steps_per_epoch = args.epoch_size // args.batch_size
  lines = [
      "# Adversarial training: time per epoch relative to standard training",
      "",
      "Measured by `benchmarks/adversarial.py` (CPU, the registry's "
      "objectives in the one train step).",
      "",
      f"- machine at start: {machine_before}",
      f"- machine at end: {cpu_description()}",
      f"- software: python {platform.python_version()}, jax {jax.__version__}"
      f", backend {jax.default_backend()}",
      f"- model: strided CNN (32, 64, 128) with batch norm; input "
      f"{args.image_size}×{args.image_size}×{args.channels} random images; "
      f"batch {args.batch_size}; inner attack {args.attack_steps} PGD steps "
      f"(ε 8/255, step 2/255); median of {args.repeats} round-robin "
      f"repeats of {args.steps} steps after one warm-up (compile) step; epoch = {args.epoch_size} examples "
      f"({steps_per_epoch} steps).",
      "",
      "| method | ms / step | s / epoch (extrapolated) | × standard | "
      "compile (s) |",
      "|---|---|---|---|---|",
  ]
  for method, per_step, compile_s in rows:
    ratio = f"{per_step / base:.2f}" if base else "–"
    lines.append(f"| {method} | {per_step * 1e3:.1f} | "
                 f"{per_step * steps_per_epoch:.1f} | {ratio} | "
                 f"{compile_s:.1f} |")
  lines += ["", "Expected ratio from FLOPs: a k-step attack costs k "
            "forward+backward passes to the input and the training passes "
            "cost 1 (standard, PGD-AT) or 2 (TRADES, ADV-COMP-SUM), so about "
            f"{args.attack_steps + 1}× for PGD-AT and "
            f"{args.attack_steps + 2}× for TRADES / ADV-COMP-SUM (an input "
            "gradient is somewhat cheaper than a parameter gradient, so the "
            "measured ratios may be lower)."]
  report = "\n".join(lines) + "\n"
  print(report)
  if args.out:
    gpu = ""
    if os.path.exists(args.out):
      old = open(args.out, encoding="utf-8").read()
      if GPU_MARKER in old:
        gpu = old[old.index(GPU_MARKER):]
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(report + "\n" + (gpu or GPU_MARKER + "\n"))


if __name__ == "__main__":
  main()
