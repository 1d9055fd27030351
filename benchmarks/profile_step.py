"""Per-operation profile of a train step on CPU, from JAX's own profiler (by hand).

    .venv/bin/python benchmarks/profile_step.py [--model=cnn|mlp]
        [--members=15] [--member_groups=1] [--steps=50] [--top=25]

Runs ``make_train_step`` on the digits-sized networks of
benchmarks/results/train_step.md (CNN 16-32 with batch norm, or MLP 256-256;
batch 64 of 8×8×1 inputs) with ``--members`` stacked members (0: one single
member), optionally split into ``--member_groups`` host CPU devices
(``make_member_mesh``), records ``--steps`` steps with
``jax.profiler.trace(..., create_perfetto_trace=True)`` and prints, per step:

* the wall time and the total time the devices' executor threads spent
  running the compiled program (``ThunkExecutor::Execute``), i.e. how much of
  the machine's cores one step keeps busy;
* the ``--top`` most expensive XLA operations (thunks: fusions, dots, YNNPACK
  fusions ...) with their share, and the file holding the compiled HLO, so
  an operation's name can be looked up there (``grep 'name = '``).

Nothing is written to benchmarks/results; the trace stays in a temporary
directory (path printed) for Perfetto (ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
  parser.add_argument("--members", type=int, default=15)
  parser.add_argument("--member_groups", type=int, default=1)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  if args.members < 0 or args.member_groups < 1 or args.steps < 1:
    parser.error("--members >= 0, --member_groups >= 1 and --steps >= 1")
  if args.member_groups > 1 and (args.members == 0 or
                                 args.members % args.member_groups):
    parser.error(f"--member_groups={args.member_groups} must divide "
                 f"--members={args.members}")
  return args


ARGS = _parse()
if ARGS.member_groups > 1:  # host CPU devices exist only if set before jax
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_"
      f"count={ARGS.member_groups}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from compsum_jax import models, training  # noqa: E402

OPTIMIZER = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
             "nesterov": True, "weight_decay": 5e-4}


def build_step(args: argparse.Namespace):
  """(compiled step, state, device batch) for the chosen configuration."""
  if args.model == "cnn":
    model = models.get_model("cnn", 10, features=(16, 32), strides=(1, 2),
                             hidden_size=64, use_batch_norm=True)
  else:
    model = models.get_model("mlp", 10, hidden_sizes=(256, 256))
  rs = np.random.RandomState(0)
  batch = {"image": rs.rand(64, 8, 8, 1).astype(np.float32),
           "label": rs.randint(0, 10, 64).astype(np.int32)}
  optimizer = training.make_optimizer(OPTIMIZER, 1_000_000)
  members = args.members or None
  if members is None:
    state = training.init_train_state(model, optimizer, rng=0,
                                      input_shape=(8, 8, 1),
                                      hparams={"tau": 1.0})
  else:
    state = training.init_member_states(
        model, optimizer, rngs=list(range(members)), input_shape=(8, 8, 1),
        hparams={"tau": [1.0] * members})
  mesh = (training.make_member_mesh(args.member_groups, 1)
          if args.member_groups > 1 else None)
  step = training.make_train_step(training.classification_objective(model),
                                  optimizer, num_members=members, mesh=mesh)
  return step, training.place_state(state, mesh), training.shard_batch(
      batch, mesh)


def main() -> None:
  args = ARGS
  step, state, batch = build_step(args)
  hlo_path = os.path.join(tempfile.mkdtemp(prefix="profile_step_"),
                          "compiled_hlo.txt")
  with open(hlo_path, "w", encoding="utf-8") as f:
    f.write(step.lower(state, batch).compile().as_text())
  for _ in range(5):  # compile and warm up
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  wall = (time.perf_counter() - start) / args.steps
  trace_dir = tempfile.mkdtemp(prefix="profile_step_trace_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                      recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total = collections.Counter()
  count = collections.Counter()
  for event in events:
    if event.get("ph") == "X":
      total[event["name"]] += event.get("dur", 0.0)
      count[event["name"]] += 1
  busy = total.pop("ThunkExecutor::Execute", 0.0) / args.steps
  ops = {name: us / args.steps for name, us in total.items()
         if not any(tag in name for tag in ("::", "$", "PjitFunction",
                                            "Wait for", "SlinkyThreadPool"))}
  print(f"{args.model}, members={args.members}, member_groups="
        f"{args.member_groups}: {wall * 1e3:.2f} ms wall per step; executor "
        f"threads busy {busy / 1e3:.2f} ms per step ({busy / 1e3 / (wall * 1e3):.2f} "
        "× wall)")
  op_total = sum(ops.values())
  print(f"{'µs/step':>9} {'share':>6} {'calls':>5}  operation")
  for name, us in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"{us:9.1f} {100 * us / op_total:5.1f}% "
          f"{count[name] // args.steps:5d}  {name}")
  print(f"compiled HLO: {hlo_path}\nPerfetto trace: {path}")


if __name__ == "__main__":
  main()
