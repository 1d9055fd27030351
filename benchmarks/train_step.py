"""CPU benchmark of THE train step: JAX vs PyTorch, and K vmapped members.

Run by hand (not part of the tests; needs torch, which the library never
imports):

    .venv/bin/python benchmarks/train_step.py [--quick]

Measures, side by side in one process and on the same inputs:

1. steps/s of the compsum_jax ``CNN`` and ``PreActResNet18`` train steps
   (``make_train_step`` + ``classification_objective`` with τ = 1, i.e.
   cross-entropy; SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 0.1)
   against the same network, batch and optimizer written in PyTorch
   (``F.cross_entropy``, ``torch.optim.SGD(nesterov=True, weight_decay=...)``);
2. K = 15 vmapped members (one compiled call) against 15 sequential
   single-member steps, as member-steps per second.

Timing: a warm-up call (compilation) is excluded; then ``--repeats`` rounds,
each timing ``--steps`` steps of every contender in turn (interleaved, so a
load change on the machine hits all of them), synchronising at the end of
each round (``block_until_ready`` / torch is synchronous on CPU). The median
round is reported. Results go to ``benchmarks/results/train_step.md`` with
the machine description.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time


def _cpu_devices_from_argv(argv: list[str]) -> int:
  """--cpu_devices=N (N ≥ 1): must be known before jax is imported."""
  for i, arg in enumerate(argv):
    if arg.startswith("--cpu_devices="):
      return int(arg.split("=", 1)[1])
    if arg == "--cpu_devices" and i + 1 < len(argv):
      return int(argv[i + 1])
  return 4


CPU_DEVICES = _cpu_devices_from_argv(sys.argv)
if CPU_DEVICES > 1:
  # Host-platform CPU devices for the data-parallel contender; single-device
  # steps (jit without a mesh) run on device 0 exactly as before.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") +
      f" --xla_force_host_platform_device_count={CPU_DEVICES}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import _machine  # noqa: E402  (benchmarks/_machine.py; scripts run from benchmarks/)

from compsum_jax import models, training  # noqa: E402

OPTIMIZER = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
             "nesterov": True, "weight_decay": 5e-4, "schedule": "constant"}


# ------------------------------------------------------------------ PyTorch


def torch_cnn(torch, num_classes, in_channels, features, strides, hidden,
              use_batch_norm):
  """The compsum_jax CNN in PyTorch: conv3×3(+BN)+ReLU per stage, GAP, MLP."""
  nn = torch.nn
  layers, c = [], in_channels
  for width, stride in zip(features, strides, strict=True):
    layers.append(nn.Conv2d(c, width, 3, stride=stride, padding=1,
                            bias=not use_batch_norm))
    if use_batch_norm:
      layers.append(nn.BatchNorm2d(width, momentum=0.1, eps=1e-5))
    layers.append(nn.ReLU())
    c = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, hidden),
             nn.ReLU(), nn.Linear(hidden, num_classes)]
  return nn.Sequential(*layers)


def torch_preact_resnet18(torch, num_classes):
  """PreActResNet-18 (CIFAR form) as in compsum_jax.models.resnet."""
  nn = torch.nn

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(cin)
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                       if stride != 1 or cin != cout else None)

    def forward(self, x):
      a = torch.relu(self.bn1(x))  # a = act(BN(x))
      shortcut = self.shortcut(a) if self.shortcut is not None else x
      out = self.conv1(a)
      out = self.conv2(torch.relu(self.bn2(out)))
      return out + shortcut

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.stem = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
      blocks, c = [], 64
      for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2),
                               strict=True):
        blocks += [Block(c, width, stride), Block(width, width, 1)]
        c = width
      self.blocks = nn.Sequential(*blocks)
      self.bn = nn.BatchNorm2d(512)
      self.head = nn.Linear(512, num_classes)

    def forward(self, x):
      x = self.blocks(self.stem(x))
      x = torch.relu(self.bn(x)).mean(dim=(2, 3))
      return self.head(x)

  return Net()


def make_torch_step(torch, net, x, y):
  """Returns step() doing one SGD update of ``net`` on (x, y), and the optim."""
  x = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
  y = torch.from_numpy(y.astype(np.int64))
  # (x − 0.5)/0.5 normalisation inside the model, as in compsum_jax.
  opt = torch.optim.SGD(net.parameters(), lr=OPTIMIZER["learning_rate"],
                        momentum=OPTIMIZER["momentum"], nesterov=True,
                        weight_decay=OPTIMIZER["weight_decay"])
  net.train()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net((x - 0.5) / 0.5), y)
    loss.backward()
    opt.step()
    return loss

  return step


# ---------------------------------------------------------------------- JAX


def make_jax_step(model, x, y, *, num_members=None, mesh=None):
  """Returns step() running compsum_jax's train step on (x, y) in place.

  With ``mesh`` (a ('data',) mesh) the step is the data-parallel one: the
  batch is split over the mesh's devices, the state replicated; with a
  ('members', 'data') mesh the members are split over 'members'.
  """
  optimizer = training.make_optimizer(OPTIMIZER, 1_000_000)
  if num_members is None:
    state = training.init_train_state(model, optimizer, rng=0,
                                      input_shape=x.shape[1:],
                                      hparams={"tau": 1.0})
  else:
    state = training.init_member_states(
        model, optimizer, rngs=list(range(num_members)),
        input_shape=x.shape[1:], hparams={"tau": [1.0] * num_members})
  train_step = training.make_train_step(
      training.classification_objective(model), optimizer,
      num_members=num_members, mesh=mesh)
  if mesh is None:
    batch = jax.device_put({"image": jnp.asarray(x),
                            "label": jnp.asarray(y)})
  else:
    state = training.place_state(state, mesh)
    batch = training.shard_batch({"image": x, "label": y}, mesh)
  analysis = train_step.lower(state, batch).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = float((analysis or {}).get("flops", float("nan")))
  holder = [state]

  def step():
    holder[0], metrics = train_step(holder[0], batch)
    return metrics["loss"]

  return step, flops


def matmul_gflops(size=2048, repeats=5):
  """Machine ceiling: float32 GFLOP/s of a size×size matmul (median).

  The larger of a jitted JAX matmul and NumPy's BLAS (both use all cores).
  """
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  a_np = np.ones((size, size), np.float32)
  best = 0.0
  for run in (lambda: f(a).block_until_ready(), lambda: a_np @ a_np):
    run()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    best = max(best, 2 * size**3 / statistics.median(times) / 1e9)
  return best


def time_round(step, steps, sync):
  start = time.perf_counter()
  for _ in range(steps):
    out = step()
  sync(out)
  return (time.perf_counter() - start) / steps


def measure(contenders, steps, repeats):
  """{name: median seconds per step}, timing contenders interleaved."""
  for step, sync in contenders.values():
    sync(step())  # warm-up / compilation
    sync(step())
  rounds = {name: [] for name in contenders}
  for _ in range(repeats):
    for name, (step, sync) in contenders.items():
      rounds[name].append(time_round(step, steps, sync))
  return {name: statistics.median(v) for name, v in rounds.items()}


def jax_sync(x):
  jax.block_until_ready(x)


def no_sync(x):
  del x


# ------------------------------------------------------------------- report


def machine_description(torch):
  cpu = _machine.cpu_model()
  return {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
      "python": sys.version.split()[0],
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "jax_devices": [str(d) for d in jax.devices()],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cpu_devices", type=int, default=CPU_DEVICES,
                      help="host-platform CPU devices for the data-parallel "
                      "JAX contender (1: none); read before jax is imported")
  parser.add_argument("--quick", action="store_true",
                      help="fewer steps and repeats (smoke run)")
  parser.add_argument("--output", default=os.path.join(
      REPO, "benchmarks", "results", "train_step.md"))
  args = parser.parse_args()
  if args.quick:
    args.steps, args.repeats = 2, 2
  import torch  # benchmark only; the library never imports torch

  torch.manual_seed(0)
  rs = np.random.RandomState(0)
  machine = machine_description(torch)
  started = datetime.datetime.now(datetime.UTC)
  print(machine, flush=True)

  cnn_kwargs = dict(features=(32, 64, 128), strides=(1, 2, 2), hidden=128)
  networks = [
      # name, jax model, torch net, input shape, batch
      ("CNN (32-64-128, no BN), 32×32×3", 128,
       models.get_model("cnn", 10, features=cnn_kwargs["features"],
                        strides=cnn_kwargs["strides"],
                        hidden_size=cnn_kwargs["hidden"]),
       lambda: torch_cnn(torch, 10, 3, use_batch_norm=False, **cnn_kwargs),
       (32, 32, 3)),
      ("CNN (32-64-128, BN), 32×32×3", 128,
       models.get_model("cnn", 10, features=cnn_kwargs["features"],
                        strides=cnn_kwargs["strides"],
                        hidden_size=cnn_kwargs["hidden"],
                        use_batch_norm=True),
       lambda: torch_cnn(torch, 10, 3, use_batch_norm=True, **cnn_kwargs),
       (32, 32, 3)),
      ("PreActResNet18, 32×32×3", 32,
       models.get_model("preact_resnet18", 10),
       lambda: torch_preact_resnet18(torch, 10), (32, 32, 3)),
  ]
  mesh = (training.make_data_mesh() if len(jax.devices()) > 1 else None)
  rows = []
  for name, batch_size, jax_model, make_torch_net, shape in networks:
    x = rs.rand(batch_size, *shape).astype(np.float32)
    y = rs.randint(0, 10, batch_size).astype(np.int32)
    jax_step, _ = make_jax_step(jax_model, x, y)
    torch_step = make_torch_step(torch, make_torch_net(), x, y)
    contenders = {"jax": (jax_step, jax_sync),
                  "torch": (torch_step, no_sync)}
    if mesh is not None:
      dp_step, _ = make_jax_step(jax_model, x, y, mesh=mesh)
      contenders["jax_dp"] = (dp_step, jax_sync)
    steps = max(1, args.steps // (4 if "ResNet" in name else 1))
    t = measure(contenders, steps, args.repeats)
    t_dp = t.get("jax_dp", float("nan"))
    rows.append((name, batch_size, 1 / t["jax"], 1 / t_dp, 1 / t["torch"],
                 t["torch"] / t["jax"], t["torch"] / t_dp))
    print(rows[-1], flush=True)

  member_rows = []
  k = 15
  # Member groups on host CPU devices: the largest divisor of K that fits.
  shards = max(d for d in range(1, len(jax.devices()) + 1) if k % d == 0)
  member_mesh = (training.make_member_mesh(shards, 1) if shards > 1
                 else None)
  member_nets = [
      ("small CNN (16-32, BN), digits 8×8×1", 64, (8, 8, 1), "cnn",
       dict(features=(16, 32), strides=(1, 2), hidden_size=64,
            use_batch_norm=True)),
      ("same CNN, lax convolution (`member_conv=False`)", 64, (8, 8, 1),
       "cnn", dict(features=(16, 32), strides=(1, 2), hidden_size=64,
                   use_batch_norm=True, member_conv=False)),
      ("MLP (256-256), digits 8×8×1", 64, (8, 8, 1), "mlp",
       dict(hidden_sizes=(256, 256))),
  ]
  for name, batch_size, shape, kind, kwargs in member_nets:
    model = models.get_model(kind, 10, **kwargs)
    x = rs.rand(batch_size, *shape).astype(np.float32)
    y = rs.randint(0, 10, batch_size).astype(np.int32)
    vmapped, _ = make_jax_step(model, x, y, num_members=k)
    single, flops = make_jax_step(model, x, y)

    def repeat(step):
      def run():
        out = None
        for _ in range(k):
          out = step()
        return out
      return run

    contenders = {"vmap": (vmapped, jax_sync),
                  "sequential": (repeat(single), jax_sync)}
    if member_mesh is not None:
      split, _ = make_jax_step(model, x, y, num_members=k, mesh=member_mesh)
      contenders["vmap_split"] = (split, jax_sync)
    if mesh is not None:
      single_dp, _ = make_jax_step(model, x, y, mesh=mesh)
      contenders["sequential_dp"] = (repeat(single_dp), jax_sync)
    steps = max(1, args.steps // 2)
    t = measure(contenders, steps, args.repeats)
    t_split = t.get("vmap_split", float("nan"))
    t_seq = min(t["sequential"], t.get("sequential_dp", float("inf")))
    ceiling = matmul_gflops()
    achieved = flops * k / t["sequential"] / 1e9
    member_rows.append((name, batch_size, k / t["vmap"], k / t_split,
                        k / t["sequential"],
                        k / t.get("sequential_dp", float("nan")),
                        t_seq / t["vmap"], t_seq / t_split, flops / 1e6,
                        achieved, ceiling))
    print(member_rows[-1], flush=True)

  machine["load_average_end"] = os.getloadavg()
  write_report(args.output, machine, started, rows, member_rows, args,
               shards)


def write_report(path, machine, started, rows, member_rows, args, shards):
  lines = [
      "# Train-step benchmark (CPU): JAX vs PyTorch, vmapped members",
      "",
      f"Produced by `benchmarks/train_step.py` on {started:%Y-%m-%d %H:%M} "
      "UTC (by hand; not part of the tests).",
      "",
      "## Machine",
      "",
      f"- CPU: {machine['cpu']}, {machine['cores']} logical cores",
      f"- load average at start / end: {machine['load_average']} / "
      f"{machine['load_average_end']}",
      f"- Python {machine['python']}, jax {machine['jax']} (devices "
      f"{machine['jax_devices']}), torch {machine['torch']} "
      f"({machine['torch_threads']} intra-op threads)",
      f"- timing: median of {args.repeats} interleaved rounds of "
      f"{args.steps} steps (ResNet: {max(1, args.steps // 4)}), compilation "
      "and warm-up excluded",
      "",
      "Same network, batch, inputs and optimizer (SGD, Nesterov momentum 0.9, "
      "weight decay 5e-4 coupled, lr 0.1), cross-entropy loss (comp-sum "
      "τ = 1 on the JAX side), training mode (batch statistics).",
      "",
      "## 1. JAX train step vs PyTorch (goal: JAX ≥ PyTorch)",
      "",
      f"'JAX, 1 device': the jitted step on one CPU device. 'JAX, "
      f"{len(jax.devices())} CPU devices': the same `make_train_step` with "
      f"`mesh=make_data_mesh()` over {len(jax.devices())} host-platform CPU "
      "devices (`XLA_FLAGS=--xla_force_host_platform_device_count="
      f"{len(jax.devices())}`), the batch split over them, same global "
      "batch and batch-norm statistics over it. PyTorch: 2 intra-op threads.",
      "",
      "| network | batch | JAX 1 device steps/s | JAX "
      f"{len(jax.devices())} CPU devices steps/s | PyTorch steps/s | "
      "JAX 1 device / PyTorch | JAX data-parallel / PyTorch |",
      "|---|---|---|---|---|---|---|",
  ]
  for name, b, j, j_dp, t, ratio, ratio_dp in rows:
    lines.append(f"| {name} | {b} | {j:.2f} | {j_dp:.2f} | {t:.2f} | "
                 f"{ratio:.2f}× | {ratio_dp:.2f}× |")
  lines += [
      "",
      "## 2. K = 15 members in one call vs 15 sequential steps (goal: ≥ 3×)",
      "",
      "Member-steps/s (one member-step = one update of one member). "
      "'vmapped': `make_train_step(num_members=15)`, one compiled call on "
      f"one device; 'vmapped, {shards} member groups': the same step with "
      f"`mesh=make_member_mesh({shards}, 1)`, each of {shards} host CPU "
      f"devices training {15 // shards} of the members (no collectives); "
      "'sequential': 15 calls of the single-member step on one device; "
      f"'sequential, data-parallel': the same over the {len(jax.devices())} "
      "devices (`make_data_mesh()`). Speed-ups are against the faster of "
      "the two sequential variants.",
      "",
      "A loose bound on any speed-up from running members together: a "
      "member-step costs the XLA-counted FLOPs below; 'sequential' achieves "
      "the GFLOP/s shown, and the machine's ceiling is the float32 GFLOP/s "
      "of a 2048×2048 matmul (the better of jitted JAX and NumPy's BLAS) "
      "measured right after. No schedule of the same FLOPs beats the "
      "ceiling, so the speed-up is at most ceiling / sequential GFLOP/s. "
      "The bound ignores memory-bound work (batch norm, activations, patch "
      "extraction), which does not shrink when members run together.",
      "",
      f"| network | batch | vmapped | vmapped, {shards} member groups | "
      "sequential | sequential, data-parallel | vmapped / sequential | "
      f"{shards} member groups / sequential "
      "| MFLOP / member-step | sequential GFLOP/s | matmul ceiling GFLOP/s "
      "| max possible speed-up |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (name, b, v, v_split, s, s_dp, ratio, ratio_split, mflop, achieved,
       ceiling) in member_rows:
    lines.append(f"| {name} | {b} | {v:.1f} | {v_split:.1f} | {s:.1f} | "
                 f"{s_dp:.1f} | {ratio:.2f}× | {ratio_split:.2f}× | "
                 f"{mflop:.1f} | {achieved:.1f} | {ceiling:.1f} | "
                 f"{ceiling / achieved:.1f}× |")
  lines += [
      "",
      "## 3. GPU (WRN-28-10, batch 512, bfloat16)",
      "",
      "Not measured: this machine has no GPU. Run "
      "`benchmarks/gpu_train_step.py` on a GPU machine; it prints images/s "
      "and model-FLOPs utilisation with the card's name (goal: MFU ≥ 40%). "
      "`bash benchmarks/gpu_checks.sh OUTDIR` runs it and the adversarial "
      "GPU benchmark as one command.",
      "",
  ]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print("wrote", path)


if __name__ == "__main__":
  main()
