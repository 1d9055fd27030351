r"""Benchmark: the loss-comparison sweep, vmapped against sequential (by hand).

Measures, in one invocation on the same machine:

1. the wall time of ``make demo``'s experiment (the ``digits`` preset, 5 τ ×
   3 seeds, without the synthetic companion) as a fresh process, once with
   ``sweep_mode=vmap`` (all 15 members in one compiled call of the train
   step's K-member mode) and once with ``sweep_mode=sequential`` (15
   single-member runs), and once vmapped over ``--cpu_devices`` host CPU
   devices (the members split into device groups), each in a new workdir;
   the ratio is the speed-up of the vmapped sweep (goal: ≥ 3× on CPU);
2. the train-step throughput alone, in this process: one vmapped K-member
   step against K single-member steps on the same batches (compiled and
   warmed up first), i.e. the compute part of the ratio without evaluation,
   checkpoints and start-up.

Writes ``benchmarks/results/loss_comparison.md`` with the machine
description. Usage (from the repository root)::

  .venv/bin/python benchmarks/loss_comparison.py [--preset=digits]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import _machine  # noqa: E402  (benchmarks/_machine.py; scripts run from benchmarks/)

from configs import loss_comparison as presets  # noqa: E402
from experiments import common  # noqa: E402
from experiments import loss_comparison_lib as lib  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results", "loss_comparison.md")


def machine_description() -> str:
  """CPU model, core count, load, versions."""
  model = _machine.cpu_model()
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  return (f"{model}; {os.cpu_count()} logical CPUs; {platform.platform()}; "
          f"Python {platform.python_version()}, jax {jax.__version__} "
          f"({jax.default_backend()}); load average at start "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def run_experiment(preset: str, mode: str, workdir: str,
                   extra: tuple[str, ...] = ()) -> dict:
  """Runs the binary as a fresh process; returns wall time and results."""
  cmd = [sys.executable, "-m", "experiments.loss_comparison",
         f"--config=configs/loss_comparison.py:{preset}",
         "--config.companion=", f"--config.sweep_mode={mode}",
         "--config.progress=False", f"--workdir={workdir}", *extra]
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       check=False)
  wall = time.perf_counter() - start
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  with open(os.path.join(workdir, lib.RESULTS_FILE), encoding="utf-8") as f:
    results = json.load(f)
  with open(os.path.join(workdir, lib.TIMING_FILE), encoding="utf-8") as f:
    timing = json.load(f)
  return {"wall": wall, "results": results, "timing": timing}


def step_throughput(preset: str, num_batches: int,
                    model: dict | None = None) -> dict:
  """Seconds per batch: vmapped K-member step vs K single-member steps.

  ``model``: optional {'name': ..., 'kwargs': {...}} replacing the preset's.
  """
  from compsum_jax import training  # pylint: disable=g-import-not-at-top

  config = presets.get_config(preset)
  if model is not None:
    config.model.name = model["name"]
    config.model.kwargs = ml_collections.ConfigDict(model["kwargs"])
  sweep = lib.build_sweep(config)
  members = sweep.members
  batches = []
  epoch = 0
  while len(batches) < num_batches + 2:
    batches += list(common.epoch_batches(sweep.config, sweep.dataset)(epoch))
    epoch += 1
  batches = [jax.device_put(b) for b in batches[:num_batches + 2]]
  vmapped = training.make_train_step(sweep.objective, sweep.optimizer,
                                     num_members=len(members))
  single = training.make_train_step(sweep.objective, sweep.optimizer)
  state = common.init_states(sweep.model, sweep.optimizer, members,
                             sweep.dataset.input_shape, stacked=True)
  singles = [common.init_states(sweep.model, sweep.optimizer, [m],
                                sweep.dataset.input_shape, stacked=False)
             for m in members]
  # Compile and warm up on the first two batches.
  for batch in batches[:2]:
    state, _ = vmapped(state, batch)
    singles = [single(s, batch)[0] for s in singles]
  jax.block_until_ready((state, singles))

  def time_vmapped(state):
    start = time.perf_counter()
    for batch in batches[2:]:
      state, metrics = vmapped(state, batch)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start

  def time_sequential(singles):
    start = time.perf_counter()
    for batch in batches[2:]:
      singles = [single(s, batch)[0] for s in singles]
    jax.block_until_ready(singles)
    return time.perf_counter() - start

  # Interleave repeats so that load changes hit both sides alike.
  vmap_times, seq_times = [], []
  for _ in range(3):
    vmap_times.append(time_vmapped(jax.tree.map(jnp.copy, state)))
    seq_times.append(time_sequential([jax.tree.map(jnp.copy, s)
                                      for s in singles]))
  return {"num_members": len(members), "num_batches": num_batches,
          "vmap_seconds": min(vmap_times), "sequential_seconds":
          min(seq_times)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="digits")
  parser.add_argument("--num_batches", type=int, default=44)
  parser.add_argument("--cpu_devices", type=int, default=5,
                      help="host CPU devices of the 'member groups' run "
                      "(config.cpu_devices; the members split into "
                      "gcd(K, devices) groups)")
  args = parser.parse_args()
  machine = machine_description()
  print(machine)
  groups_flag = f"--config.cpu_devices={args.cpu_devices}"
  with tempfile.TemporaryDirectory() as tmp:
    runs = {}
    for name, mode, extra in (("vmap", "vmap", ()),
                              ("sequential", "sequential", ()),
                              ("groups", "vmap", (groups_flag,))):
      print(f"running the {args.preset} experiment, sweep_mode={mode} "
            f"{' '.join(extra)} ...")
      runs[name] = run_experiment(args.preset, mode,
                                  os.path.join(tmp, name), extra)
      print(f"  {runs[name]['wall']:.1f} s")
  steps = step_throughput(args.preset, args.num_batches)
  cnn = {"name": "cnn", "kwargs": {"features": (16, 32), "strides": (1, 2),
                                   "hidden_size": 64}}
  cnn_steps = step_throughput(args.preset, args.num_batches, model=cnn)
  load_end = os.getloadavg() if hasattr(os, "getloadavg") else (0.0,) * 3
  v, s, g = runs["vmap"], runs["sequential"], runs["groups"]
  acc = {mode: [row["test_accuracy"]["mean"] for row in
                runs[mode]["results"]["per_tau"]] for mode in runs}
  max_acc_diff = max(
      float(np.max(np.abs(np.subtract(acc[name], acc["sequential"]))))
      for name in ("vmap", "groups"))
  k = steps["num_members"]
  groups = math.gcd(k, args.cpu_devices)
  lines = [
      "# Loss-comparison sweep: vmapped vs sequential", "",
      f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. "
      f"Command: `.venv/bin/python benchmarks/loss_comparison.py "
      f"--preset={args.preset}`.", "",
      f"Machine: {machine}; load average at end {load_end[0]:.1f}.", "",
      f"## 1. Whole experiment (`{args.preset}` preset = `make demo` without "
      "its synthetic companion), fresh process each", "",
      common.markdown_table(
          ["sweep_mode", "members", "wall time (s)", "train+eval (s)",
           "speed-up"],
          [["sequential", k, f"{s['wall']:.1f}",
            f"{s['timing']['train_seconds_this_process']:.1f}", "1.00×"],
           ["vmap", k, f"{v['wall']:.1f}",
            f"{v['timing']['train_seconds_this_process']:.1f}",
            f"{s['wall'] / v['wall']:.2f}×"],
           [f"vmap, `{groups_flag}` ({groups} member groups)", k,
            f"{g['wall']:.1f}",
            f"{g['timing']['train_seconds_this_process']:.1f}",
            f"{s['wall'] / g['wall']:.2f}×"]]),
      "Wall time includes Python start-up, data loading, compilation, "
      "evaluation every 5 epochs, a checkpoint with each evaluation "
      "(`checkpoint_every_epochs=5`) and the plots. "
      f"The member-groups run creates {args.cpu_devices} host CPU devices "
      f"and splits the 15 vmapped members over {groups} of them "
      "(`compsum_jax.training.make_member_mesh`; each device trains its own "
      "members, no collectives). "
      f"Largest difference of per-τ mean test accuracy between the modes: "
      f"{100 * max_acc_diff:.2f} points (float summation order differs "
      "between the vmapped and single-member programs).", "",
      f"## 2. Train step alone ({steps['num_batches']} batches, best of 3, "
      "after compilation)", "",
      common.markdown_table(
          ["variant", "seconds", "ms per batch (all members)", "speed-up"],
          [[f"{k} single-member steps per batch",
            f"{steps['sequential_seconds']:.3f}",
            f"{1e3 * steps['sequential_seconds'] / steps['num_batches']:.2f}",
            "1.00×"],
           [f"one vmapped {k}-member step per batch",
            f"{steps['vmap_seconds']:.3f}",
            f"{1e3 * steps['vmap_seconds'] / steps['num_batches']:.2f}",
            f"{steps['sequential_seconds'] / steps['vmap_seconds']:.2f}×"]]),
      f"## 3. Train step alone with a CNN instead ({cnn['kwargs']})", "",
      common.markdown_table(
          ["variant", "seconds", "speed-up"],
          [[f"{k} single-member steps per batch",
            f"{cnn_steps['sequential_seconds']:.3f}", "1.00×"],
           [f"one vmapped {k}-member step per batch",
            f"{cnn_steps['vmap_seconds']:.3f}",
            f"{cnn_steps['sequential_seconds'] / cnn_steps['vmap_seconds']:.2f}×"]]),
      "The CNN's convolutions are `compsum_jax.models.member_conv`: under "
      "the member vmap they run as batched matmuls over image patches, not "
      "as the grouped convolution (feature_group_count = K) of JAX's default "
      "rule, which XLA:CPU runs several times slower than K ordinary ones "
      "(benchmarks/results/train_step.md).", "",
      "## Reading the numbers", "",
      "* The whole-experiment speed-up of the vmapped sweep comes from "
      "running the per-run work once instead of K times: Python dispatch "
      "of K small steps, K evaluations over train and test splits every "
      "`eval_every_epochs`, K checkpoints, K metric writers and "
      "compilations of the init. The MLP step itself gains little: XLA:CPU "
      "runs its matmuls at about the same rate whether 15 are batched or run "
      "one by one (benchmarks/results/member_step_breakdown.md), so one "
      "vmapped K-member step costs about as much as K single-member steps "
      "(section 2); on an accelerator, where a single small member leaves "
      "the device idle, the step itself also gains.",
      "* Member groups (`--config.cpu_devices=N`, section 1's last row): "
      "the 15 members split over gcd(15, N) host CPU devices, each running "
      "its own members in parallel. In the train step alone that was "
      "1.4–1.5× faster than the one-device vmapped MLP step "
      "(benchmarks/results/train_step.md, section 2), but over the whole "
      "digits run it gains little or nothing: each step then launches N "
      "device programs, and the rest of the run (start-up, compilation, "
      "evaluation, plots) does not shrink.",
      "* Check the load average above: on a shared host absolute times and "
      "the ratio move with the load.",
      "* History: with a checkpoint after every epoch (before "
      "`checkpoint_every_epochs`), the same command measured 37.0 s "
      "sequential against 12.7 s vmapped (2.90×) on this VM at load ~2: "
      "most of the sequential time was K×30 checkpoint writes. Checkpointing "
      "with each evaluation made the sequential sweep 1.9× faster, and the "
      "vmapped one 1.1× faster, so the ratio fell. The goal of ≥ 3× for the "
      "vmapped sweep is not met on 2 CPU cores: what remains is the train "
      "step (section 2).", "",
  ]
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  print(f"written to {RESULTS}")


if __name__ == "__main__":
  main()
