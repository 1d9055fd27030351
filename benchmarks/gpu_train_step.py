"""GPU benchmark: WRN-28-10 train step, batch 512, bfloat16 compute: images/s, MFU.

Run by hand on a machine with a GPU (jax with CUDA):

    python benchmarks/gpu_train_step.py [--batch 512] [--steps 50]
        [--peak_tflops 989] [--output benchmarks/results/train_step.md]

It builds the compsum_jax ``WideResNet(depth=28, width=10)`` with
``dtype=bfloat16`` (parameters and logits float32), the train step of the
loss comparison (``make_train_step`` + ``classification_objective``, τ = 1,
SGD Nesterov 0.9, weight decay 5e-4, EMA 0.995 as in Gowal et al.), data
parallel over all local GPUs with the ('data',) mesh, and times ``--steps``
steps after two warm-up steps.

Model-FLOPs utilisation (MFU) = achieved model FLOP/s ÷ peak dense bf16 FLOP/s
of the devices, where the model FLOPs of one training step are 3 × the
forward FLOPs (forward + backward ≈ 2 × forward), and the forward FLOPs are
counted from the convolution and dense shapes (2 FLOPs per multiply-add);
XLA's cost analysis of the forward pass and of the whole compiled train step
is printed beside it as a cross-check. Peak FLOP/s comes from a
table of known cards (dense, no sparsity) or ``--peak_tflops``; an unknown
card without ``--peak_tflops`` gets no MFU rather than a guessed one.

With ``--output`` the result is appended to the markdown file as a section
with the card's name.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from compsum_jax import models, training  # noqa: E402

# Dense (non-sparse) bfloat16 tensor-core peak, TFLOP/s per device, from the
# vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def peak_tflops_for(device_kind: str) -> float | None:
  """Looks a device kind such as 'NVIDIA H100 80GB HBM3' up in the table."""
  for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
    if key.lower() in device_kind.lower():
      return PEAK_BF16_TFLOPS[key]
  return None


def wide_resnet_forward_flops(depth: int, width: int, batch: int,
                              num_classes: int = 10, size: int = 32) -> float:
  """Convolution + dense FLOPs of one WRN forward pass (2 per multiply-add).

  conv: 2·H_out·W_out·k²·C_in·C_out; blocks as in compsum_jax.models.resnet
  (3×3 stem with 16 channels; three groups of (depth − 4)/6 pre-activation
  blocks of 16k, 32k, 64k channels with strides 1, 2, 2; 1×1 shortcut where
  the shape changes). Batch norm and activations are not counted.
  """
  blocks = (depth - 4) // 6
  flops = 2.0 * size * size * 9 * 3 * 16  # stem
  cin, res = 16, size
  for cout, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
    for b in range(blocks):
      s = stride if b == 0 else 1
      res_out = res // s
      flops += 2.0 * res_out**2 * 9 * cin * cout  # conv1 (stride s)
      flops += 2.0 * res_out**2 * 9 * cout * cout  # conv2
      if s != 1 or cin != cout:
        flops += 2.0 * res_out**2 * cin * cout  # 1×1 shortcut
      cin, res = cout, res_out
  flops += 2.0 * cin * num_classes  # head
  return batch * flops


def xla_flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--depth", type=int, default=28)
  parser.add_argument("--width", type=int, default=10)
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="peak dense bf16 TFLOP/s per device (overrides "
                      "the table)")
  parser.add_argument("--allow_cpu", action="store_true",
                      help="run even without a GPU (smoke test only)")
  parser.add_argument("--output", default=None,
                      help="markdown file to append the result to")
  args = parser.parse_args()

  devices = jax.devices()
  if devices[0].platform != "gpu" and not args.allow_cpu:
    sys.exit(f"no GPU found (jax.devices() = {devices}); this benchmark is "
             "meant for a GPU machine (pass --allow_cpu for a smoke run)")
  kind = devices[0].device_kind
  n = len(devices)
  if args.batch % n:
    sys.exit(f"--batch {args.batch} is not divisible by {n} devices")

  model = models.get_model("wide_resnet", 10, depth=args.depth,
                           width=args.width, dtype=jnp.bfloat16)
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
       "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine"},
      10_000)
  mesh = training.make_data_mesh()
  state = training.init_train_state(model, optimizer, rng=0,
                                    input_shape=(32, 32, 3),
                                    hparams={"tau": 1.0}, ema=True)
  params = training.num_params(state.params)
  state = training.replicate(state, mesh)
  train_step = training.make_train_step(
      training.classification_objective(model), optimizer, ema_decay=0.995,
      mesh=mesh)
  rs = np.random.RandomState(0)
  batch = training.shard_batch(
      {"image": rs.rand(args.batch, 32, 32, 3).astype(np.float32),
       "label": rs.randint(0, 10, args.batch).astype(np.int32)}, mesh)

  def forward(p, bs, x):
    return model.apply({"params": p, "batch_stats": bs}, x, train=True,
                       mutable=["batch_stats"])[0]

  forward_flops = xla_flops(jax.jit(forward).lower(
      state.params, state.batch_stats, batch["image"]).compile())
  step_flops = xla_flops(train_step.lower(state, batch).compile())

  t0 = time.perf_counter()
  for _ in range(2):  # compile + warm-up
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  warmup = time.perf_counter() - t0
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  images_per_sec = args.batch / seconds

  peak = args.peak_tflops or peak_tflops_for(kind)
  analytic = wide_resnet_forward_flops(args.depth, args.width, args.batch)
  # Model FLOPs of a training step: forward + backward ≈ 3 × forward.
  model_flops = 3.0 * analytic
  mfu = model_flops / seconds / (peak * 1e12 * n) if peak else None
  xla_forward = (f"{forward_flops / 1e9:.1f} GFLOP" if forward_flops
                 else "not available")
  xla_step = f"{step_flops / 1e9:.1f} GFLOP" if step_flops else "not available"
  lines = [
      f"## GPU: {kind} × {n}, WRN-{args.depth}-{args.width}, batch "
      f"{args.batch}, bfloat16",
      "",
      f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
      f"jax {jax.__version__}; parameters {params / 1e6:.1f}M",
      f"- step time {seconds * 1e3:.1f} ms, **{images_per_sec:.0f} "
      f"images/s** (mean of {args.steps} steps; compile + 2 warm-up steps "
      f"{warmup:.1f} s)",
      f"- forward FLOPs per step: {analytic / 1e9:.1f} GFLOP counted from "
      f"the conv/dense shapes (XLA cost analysis: {xla_forward}); model "
      f"FLOPs per train step 3 × forward = {model_flops / 1e9:.1f} GFLOP "
      f"(XLA's count for the compiled train step: {xla_step})",
      f"- peak bf16 {peak:.0f} TFLOP/s per device → **MFU "
      f"{100 * mfu:.1f}%** (goal ≥ 40%)" if mfu is not None else
      f"- MFU: unknown peak for {kind!r}; pass --peak_tflops",
      f"- final loss {float(np.mean(jax.device_get(metrics['loss']))):.4f}",
      "",
  ]
  print("\n".join(lines))
  if args.output:
    with open(args.output, "a", encoding="utf-8") as f:
      f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
  main()
