"""Benchmark: PGD-10, PGD-40 and APGD-100 in JAX against torchattacks on CPU.

Run by hand from the repository root (needs torch and torchattacks, which the
library and the default tests never import):

    .venv/bin/python benchmarks/attacks.py [--repeats 3] [--out benchmarks/results/attacks.md]

It trains the small CNN of ``compsum_jax.models`` (get_model('cnn', 10)) on
scikit-learn's digits (8×8×1 images in [0, 1]), copies its weights into the
same architecture written in PyTorch, checks that both give the same logits,
then attacks the held-out digits with each attack in both libraries on the
same network, alternating JAX and PyTorch runs in one process so both see the
same machine load. It reports images/s (median over repeats; JAX's compile
time is reported separately and excluded), the robust accuracy each reaches,
and the ratio JAX/torch. Goal: JAX at least as fast, and robust accuracy no
higher than the reference's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
import torchattacks
from sklearn.datasets import load_digits

from compsum_jax import attacks
from compsum_jax.models import get_model

EPS = 0.1  # ℓ∞ radius in [0, 1] pixel space on digits


# --------------------------------------------------------------------------- #
# The network: train in JAX, export to PyTorch.
# --------------------------------------------------------------------------- #


def train_cnn(steps: int, seed: int = 0):
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(y))
  tr, te = perm[:1400], perm[1400:]
  model = get_model("cnn", 10)
  variables = model.init(jax.random.key(seed), x[:2])
  opt = optax.adam(2e-3)
  state = opt.init(variables)

  @jax.jit
  def step(v, s, xb, yb):
    def loss(v):
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply(v, xb, train=False), yb).mean()
    g = jax.grad(loss)(v)
    u, s = opt.update(g, s)
    return optax.apply_updates(v, u), s

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(tr), 128)
    variables, state = step(variables, state, x[tr][idx], y[tr][idx])
  return model, variables, x[te], y[te]


class TorchCNN(torch.nn.Module):
  """compsum_jax.models.CNN (features 32/64/128, strides 1/2/2, hidden 128,
  ReLU, (x − 0.5)/0.5 inside) in PyTorch, NCHW.

  Flax's 'SAME' padding of a 3×3 convolution pads (1, 1) at stride 1 and
  (0, 1) at stride 2 on even sizes, so the stride-2 layers pad explicitly.
  """

  def __init__(self, params):
    super().__init__()
    self.convs = torch.nn.ModuleList()
    self.strides = []
    i = 0
    while f"Conv_{i}" in params:
      kernel = np.asarray(params[f"Conv_{i}"]["kernel"])  # [kh, kw, in, out]
      conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3,
                             stride=(1, 2, 2)[i], padding=0)
      conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1).copy())
      conv.bias.data = torch.tensor(np.asarray(params[f"Conv_{i}"]["bias"]))
      self.convs.append(conv)
      self.strides.append((1, 2, 2)[i])
      i += 1
    self.dense = torch.nn.ModuleList()
    j = 0
    while f"Dense_{j}" in params:
      kernel = np.asarray(params[f"Dense_{j}"]["kernel"])  # [in, out]
      lin = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
      lin.weight.data = torch.tensor(kernel.T.copy())
      lin.bias.data = torch.tensor(np.asarray(params[f"Dense_{j}"]["bias"]))
      self.dense.append(lin)
      j += 1

  def forward(self, x):
    x = (x - 0.5) / 0.5
    for conv, stride in zip(self.convs, self.strides, strict=True):
      if stride == 1:
        x = F.pad(x, (1, 1, 1, 1))
      else:
        pad_h = max((-(-x.shape[2] // stride) - 1) * stride + 3 - x.shape[2],
                    0)
        pad_w = max((-(-x.shape[3] // stride) - 1) * stride + 3 - x.shape[3],
                    0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2,
                      pad_h - pad_h // 2))
      x = F.relu(conv(x))
    x = x.mean(dim=(2, 3))
    x = F.relu(self.dense[0](x))
    return self.dense[1](x)


# --------------------------------------------------------------------------- #
# Timing.
# --------------------------------------------------------------------------- #


def _jax_attacks(model, variables):
  logits_fn = lambda x: model.apply(variables, x, train=False)
  return logits_fn, {
      "PGD-10": jax.jit(lambda x, y, k: attacks.pgd(
          logits_fn, x, y, k, eps=EPS, step_size=EPS / 4, num_steps=10,
          loss="ce")),
      "PGD-40": jax.jit(lambda x, y, k: attacks.pgd(
          logits_fn, x, y, k, eps=EPS, step_size=EPS / 10, num_steps=40,
          loss="ce")),
      "APGD-100": jax.jit(lambda x, y, k: attacks.apgd(
          logits_fn, x, y, k, eps=EPS, num_steps=100, loss="ce")),
  }


def _torch_attacks(net):
  return {
      "PGD-10": torchattacks.PGD(net, eps=EPS, alpha=EPS / 4, steps=10,
                                 random_start=True),
      "PGD-40": torchattacks.PGD(net, eps=EPS, alpha=EPS / 10, steps=40,
                                 random_start=True),
      "APGD-100": torchattacks.APGD(net, norm="Linf", eps=EPS, steps=100,
                                    n_restarts=1, loss="ce", rho=0.75,
                                    seed=0),
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--train-steps", type=int, default=400)
  parser.add_argument("--out", default="benchmarks/results/attacks.md")
  args = parser.parse_args()

  t0 = time.perf_counter()
  model, variables, x_te, y_te = train_cnn(args.train_steps)
  train_s = time.perf_counter() - t0
  net = TorchCNN(variables["params"]).eval()
  x_t = torch.tensor(x_te.transpose(0, 3, 1, 2).copy())
  y_t = torch.tensor(y_te.astype(np.int64))
  logits_fn, jax_attacks = _jax_attacks(model, variables)
  z_jax = np.asarray(logits_fn(jnp.asarray(x_te)))
  with torch.no_grad():
    z_torch = net(x_t).numpy()
  logit_diff = float(np.max(np.abs(z_jax - z_torch)))
  assert logit_diff < 1e-3, f"logits disagree: max |Δ| = {logit_diff}"
  clean = float(np.mean(z_jax.argmax(-1) == y_te))
  torch_attacks = _torch_attacks(net)
  n_img = x_te.shape[0]
  xj, yj = jnp.asarray(x_te), jnp.asarray(y_te)

  rows = []
  for name, jax_fn in jax_attacks.items():
    start = time.perf_counter()
    jax.block_until_ready(jax_fn(xj, yj, jax.random.key(0)))
    compile_s = time.perf_counter() - start
    t_jax, t_torch, acc_jax, acc_torch = [], [], [], []
    for r in range(args.repeats):
      order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
      for side in order:
        start = time.perf_counter()
        if side == "jax":
          x_adv = jax.block_until_ready(jax_fn(xj, yj, jax.random.key(r + 1)))
          t_jax.append(time.perf_counter() - start)
          acc_jax.append(float(np.mean(
              np.asarray(logits_fn(x_adv)).argmax(-1) == y_te)))
        else:
          torch.manual_seed(r + 1)
          x_adv_t = torch_attacks[name](x_t, y_t)
          t_torch.append(time.perf_counter() - start)
          with torch.no_grad():
            acc_torch.append(float(
                (net(x_adv_t).argmax(-1) == y_t).float().mean()))
          linf = float((x_adv_t.detach() - x_t).abs().max())
          assert linf <= EPS + 1e-5, (name, linf)
    tj, tt = statistics.median(t_jax), statistics.median(t_torch)
    rows.append(dict(name=name, jax_ips=n_img / tj, torch_ips=n_img / tt,
                     ratio=tt / tj, compile_s=compile_s,
                     acc_jax=statistics.mean(acc_jax),
                     acc_torch=statistics.mean(acc_torch),
                     acc_jax_all=acc_jax, acc_torch_all=acc_torch))
    print(rows[-1])

  load = os.getloadavg()
  lines = [
      "# Attack benchmark: compsum_jax.attacks vs torchattacks (CPU)",
      "",
      f"- machine: {platform.platform()}, {platform.processor() or 'cpu'}, "
      f"{os.cpu_count()} logical CPUs; load average at the end "
      f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (shared machine)",
      f"- jax {jax.__version__} ({jax.default_backend()}), torch "
      f"{torch.__version__} ({torch.get_num_threads()} threads), "
      f"torchattacks {torchattacks.__version__}",
      f"- network: compsum_jax.models CNN (3×3 convs 32/64/128, strides "
      f"1/2/2, GAP, dense 128, ReLU), trained {args.train_steps} Adam steps "
      f"on digits in {train_s:.0f} s; weights copied into the same network "
      f"in PyTorch; max |logit difference| {logit_diff:.2e}",
      f"- data: {n_img} held-out digits (8×8×1, [0, 1]); clean accuracy "
      f"{clean:.2%}; ℓ∞ ε = {EPS}; one batch of {n_img} images per call",
      "- PGD-10: step ε/4, PGD-40: step ε/10, uniform random start, CE; "
      "APGD-100: CE, 1 restart, ρ = 0.75 (both libraries)",
      f"- {args.repeats} repeats, JAX and PyTorch alternated; images/s from "
      f"the median time; robust accuracy averaged over the repeats (seeds "
      f"differ between libraries). JAX compile time excluded, shown apart.",
      "",
      "| attack | JAX img/s | torchattacks img/s | speed ratio (JAX/torch) | "
      "robust acc JAX | robust acc torchattacks | JAX compile s |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['name']} | {r['jax_ips']:.0f} | {r['torch_ips']:.0f} | "
        f"{r['ratio']:.2f}× | {r['acc_jax']:.2%} | {r['acc_torch']:.2%} | "
        f"{r['compile_s']:.1f} |")
  lines += ["", "Per-repeat robust accuracy (JAX; torchattacks):", ""]
  for r in rows:
    lines.append(f"- {r['name']}: "
                 f"{', '.join(f'{a:.2%}' for a in r['acc_jax_all'])}; "
                 f"{', '.join(f'{a:.2%}' for a in r['acc_torch_all'])}")
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as fh:
    fh.write(text)
  print(text)


if __name__ == "__main__":
  main()
