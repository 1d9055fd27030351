"""Overhead of cooperating processes: 2 processes x 1 CPU device against
1 process x 2 CPU devices, same train steps (run by hand).

    .venv/bin/python benchmarks/distributed.py [--steps=30] [--rounds=2]

For each experiment's digits preset (the loss comparison's 15 vmapped members
with ``member_shards=1``, i.e. every batch split over the 2 devices; the
adversarial experiment's PGD-AT step), a worker process builds the train step
as the experiment does (``loss_comparison_lib.build_sweep`` /
``adversarial_training_lib.Experiment``), feeds it the experiment's own batch
pipeline (each process its rows of every global batch), compiles it (excluded)
and times ``--steps`` steps, then times an all-reduce of a pytree shaped like
the parameters (a sum over the 'data' axis of a [devices, ...] array per leaf,
as the step's gradient all-reduce) alone. Both layouts run in the same
invocation, alternating, ``--rounds`` times; every worker is a fresh set of
processes (launched here with a free port on 127.0.0.1, gloo collectives).
The machine's load average at the start and the end is recorded: on a shared
machine absolute times move with the other jobs, ratios are the result.
Results go to ``benchmarks/results/distributed.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import _machine  # noqa: E402

EXPERIMENTS = ("loss_comparison", "adversarial_training")
LAYOUTS = ((1, 2), (2, 1))  # (processes, CPU devices per process)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


# --------------------------------------------------------------- the worker


def _build(experiment: str):
  """(train_step, placed state, mesh, batch iterator, global batch size)."""
  import itertools  # pylint: disable=g-import-not-at-top

  from compsum_jax import training  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top

  if experiment == "loss_comparison":
    from configs import loss_comparison as presets  # pylint: disable=g-import-not-at-top
    from experiments import loss_comparison_lib as lib  # pylint: disable=g-import-not-at-top
    config = presets.get_config("digits")
    config.member_shards = 1  # every batch split over the devices
    sweep = lib.build_sweep(config)
    k = len(sweep.members)
    mesh = sweep.mesh_for(k)
    state = common.init_states(sweep.model, sweep.optimizer, sweep.members,
                               sweep.dataset.input_shape, stacked=True)
    step = training.make_train_step(sweep.objective, sweep.optimizer,
                                    augment_fn=sweep.augment_fn,
                                    num_members=k, mesh=mesh)
    dataset = sweep.dataset
  else:
    from configs import adversarial_training as presets  # pylint: disable=g-import-not-at-top
    from experiments import adversarial_training_lib as lib  # pylint: disable=g-import-not-at-top
    config = presets.get_config("digits")
    config.methods = ("pgd_at",)
    experiment_ = lib.Experiment.create(config)
    (run, *_) = lib.runs_of(config)
    mesh = experiment_.mesh
    step = experiment_.train_step(
        run.method, lib.train_attack_overrides(config, run.method))
    state = training.init_train_state(
        experiment_.model, experiment_.optimizer, rng=run.seed,
        input_shape=experiment_.dataset.input_shape,
        hparams=lib.run_hparams(config, run), ema=experiment_.use_ema)
    dataset = experiment_.dataset
  batches = common.epoch_batches(config, dataset, mesh)
  stream = itertools.chain.from_iterable(batches(e) for e in range(10_000))
  return step, training.place_state(state, mesh), mesh, stream, int(
      config.batch_size)


def _all_reduce_fn(params, mesh):
  """(fn, inputs): Σ over 'data' of a [n_data, ...] array per parameter leaf."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  n_data = mesh.shape["data"]
  split = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  local = n_data // jax.process_count()

  def global_array(leaf):
    shape = (local,) + tuple(leaf.shape)
    return jax.make_array_from_process_local_data(
        split, np.ones(shape, np.float32), (n_data,) + tuple(leaf.shape))

  inputs = jax.tree.map(global_array, params)
  fn = jax.jit(lambda tree: jax.tree.map(lambda a: a.sum(0), tree),
               out_shardings=replicated)
  return fn, inputs


def worker(args) -> None:
  """One process: times the train steps and the all-reduce; prints JSON."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  from compsum_jax.training import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(coordinator_address=args.coordinator_address,
                         num_processes=args.num_processes,
                         process_id=args.process_id)
  from compsum_jax import training  # pylint: disable=g-import-not-at-top

  step, state, mesh, stream, batch_size = _build(args.experiment)
  several = jax.process_count() > 1

  def run_steps(count, state):
    for _ in range(count):
      batch = training.shard_batch(
          next(stream), mesh, global_batch_size=batch_size if several
          else None)
      # (on a CPU mesh the library's step waits for its result itself)
      state, _ = step(state, batch)
    jax.block_until_ready(state)
    return state

  def collectives_per_step(state) -> dict[str, int]:
    """all-reduce / all-gather / … ops in the compiled step's HLO."""
    batch = training.shard_batch(next(stream), mesh,
                                 global_batch_size=batch_size if several
                                 else None)
    hlo = step.lower(state, batch).compile().as_text()
    ops = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
           "collective-permute")
    return {op: sum(line.count(f" {op}(") + line.count(f" {op}-start(")
                    for line in hlo.splitlines()) for op in ops}

  state = run_steps(2, state)  # compilation
  collectives = {k: v for k, v in collectives_per_step(state).items() if v}
  training.distributed.sync("timed_steps")
  start = time.perf_counter()
  state = run_steps(args.steps, state)
  step_s = (time.perf_counter() - start) / args.steps
  fn, inputs = _all_reduce_fn(state.params, mesh)
  jax.block_until_ready(fn(inputs))
  training.distributed.sync("timed_all_reduce")
  repeats = 3 * args.steps
  start = time.perf_counter()
  for _ in range(repeats):
    # One call in flight at a time: back-to-back calls deadlocked XLA:CPU's
    # in-process all-reduce on 2 cores ("Termination timeout for all reduce")
    jax.block_until_ready(fn(inputs))
  reduce_s = (time.perf_counter() - start) / repeats
  leaves = jax.tree.leaves(state.params)
  num_params = sum(int(x.size) for x in leaves)
  print("RESULT " + json.dumps({
      "experiment": args.experiment, "process": jax.process_index(),
      "processes": jax.process_count(), "devices": jax.device_count(),
      "step_s": step_s, "all_reduce_s": reduce_s,
      "num_params": num_params, "num_leaves": len(leaves),
      "collectives_per_step": collectives}), flush=True)


# ---------------------------------------------------------- the orchestrator


def _launch(experiment: str, processes: int, devices: int,
            steps: int) -> dict:
  """Runs one layout; returns process 0's RESULT record."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  base = [sys.executable, os.path.abspath(__file__), "--worker",
          f"--experiment={experiment}", f"--steps={steps}",
          f"--cpu_devices={devices}"]
  commands = [base + ([] if processes == 1 else [
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={processes}", f"--process_id={i}"])
              for i in range(processes)]
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=REPO) for c in commands]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outputs, strict=True):
    if p.returncode != 0:
      raise RuntimeError(f"worker exited {p.returncode}:\n{out[-3000:]}")
  line = next(text for text in outputs[0].splitlines()
              if text.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def _write(records: list[dict], load_start, load_end, args,
           wall_s: float) -> str:
  lines = [
      "# Cooperating processes: 2 processes × 1 CPU device vs 1 process × "
      "2 CPU devices",
      "",
      f"Measured {datetime.date.today().isoformat()} with "
      f"`.venv/bin/python benchmarks/distributed.py --steps={args.steps} "
      f"--rounds={args.rounds}` ({wall_s:.0f} s wall) on "
      f"{_machine.cpu_model()}, {os.cpu_count()} logical CPUs.",
      "",
      "**The machine was shared with other jobs during this run** (the lead's "
      "benchmark and test-suite timing): load average (1/5/15 min) "
      f"{'/'.join(f'{x:.2f}' for x in load_start)} at the start and "
      f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end, on "
      f"{os.cpu_count()} cores. Absolute times are inflated by that load and "
      "move with it; the two layouts ran alternately in the same run, so "
      "their ratio is the result.",
      "",
      "What is timed (process 0's clock; steps are synchronous through "
      "the collectives): a train step = host batch (each process its rows) "
      "+ `shard_batch` + the compiled step (on a CPU mesh the library waits "
      "for each step before the next), after 2 compiling steps; the "
      "all-reduce = Σ over the 'data' axis of one [devices, …] float32 array "
      "per parameter leaf (the size of the gradient all-reduce), alone. "
      "Loss comparison: digits preset, 15 vmapped members, MLP (256, 256), "
      "batch 64, `member_shards=1` (every batch split over the two devices; "
      "the preset's default splits the members instead, with no collective "
      "between processes). Adversarial: digits preset, PGD-AT (5-step "
      "training attack), CNN with batch norm, batch 64.",
      "",
      "| experiment | layout | round | ms / step | steps/s | ms / all-reduce "
      "| all-reduce share of a step |",
      "|---|---|---|---|---|---|---|"]
  for r in records:
    layout = ("2 processes × 1 device" if r["processes"] > 1 else
              "1 process × 2 devices")
    lines.append(
        f"| {r['experiment']} | {layout} | {r['round']} | "
        f"{1e3 * r['step_s']:.2f} | {1 / r['step_s']:.1f} | "
        f"{1e3 * r['all_reduce_s']:.3f} | "
        f"{100 * r['all_reduce_s'] / r['step_s']:.1f} % |")
  lines += ["", "Medians over the rounds, and the ratio (2 processes / 1 "
            "process):", "",
            "| experiment | parameters (leaves) | ms / step, 1 × 2 | ms / step, 2 × 1 "
            "| step time ratio | ms / all-reduce, 1 × 2 | ms / all-reduce, "
            "2 × 1 | all-reduce ratio |", "|---|---|---|---|---|---|---|---|"]
  for experiment in EXPERIMENTS:
    def median(field, processes, experiment=experiment):
      return statistics.median(r[field] for r in records
                               if r["experiment"] == experiment
                               and r["processes"] == processes)
    params, leaves = next((r["num_params"], r["num_leaves"]) for r in records
                          if r["experiment"] == experiment)
    s1, s2 = median("step_s", 1), median("step_s", 2)
    a1, a2 = median("all_reduce_s", 1), median("all_reduce_s", 2)
    lines.append(f"| {experiment} | {params:,} ({leaves}) | {1e3 * s1:.2f} | "
                 f"{1e3 * s2:.2f} | {s2 / s1:.2f} | {1e3 * a1:.3f} | "
                 f"{1e3 * a2:.3f} | {a2 / a1:.1f} |")
  lines += ["", "Collective ops in the compiled train step's HLO (per step):",
            ""]
  for experiment in EXPERIMENTS:
    for processes in (1, 2):
      ops = next(r["collectives_per_step"] for r in records
                 if r["experiment"] == experiment
                 and r["processes"] == processes)
      lines.append(f"- {experiment}, {processes} process(es): "
                   + (", ".join(f"{v} {k}" for k, v in sorted(ops.items()))
                      or "none"))
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", action="store_true")
  parser.add_argument("--experiment", choices=EXPERIMENTS)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--cpu_devices", type=int, default=1)
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(
      REPO, "benchmarks", "results", "distributed.md"))
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  load_start = _machine.load_average()
  start = time.perf_counter()
  records = []
  for round_index in range(1, args.rounds + 1):
    for experiment in EXPERIMENTS:
      # alternate which layout goes first from round to round
      layouts = LAYOUTS if round_index % 2 else LAYOUTS[::-1]
      for processes, devices in layouts:
        record = _launch(experiment, processes, devices, args.steps)
        record["round"] = round_index
        records.append(record)
        print(json.dumps(record), flush=True)
  load_end = _machine.load_average()
  text = _write(records, load_start, load_end, args,
                time.perf_counter() - start)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
