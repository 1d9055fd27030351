"""Benchmark: the 'aa_standard' cascade against torchattacks' AutoAttack (CPU).

Run by hand from the repository root (needs torch and torchattacks:
``make install-bench``; the library and the default tests never import them):

    .venv/bin/python benchmarks/autoattack.py [--num-digits 100] \\
        [--num-cifar 32] [--out benchmarks/results/autoattack.md]

Two networks, each attacked by both libraries on the same weights and the
same test points in one process:

* digits: the small CNN of ``compsum_jax.models`` trained on scikit-learn's
  digits (8×8×1), ℓ∞ ε = 0.1 (as ``benchmarks/attacks.py``);
* cifar-sized: the same CNN on 32×32×3 inputs with random weights, inputs
  uniform in [0, 1], labels = the network's own predictions (clean accuracy
  100 %), ε = 8/255.

Two protocols, each run by both libraries:

* **AutoAttack 'standard' (the reference settings)**: APGD-CE (100 steps) →
  APGD-T (9 targets × 100 steps) → FAB-T (9 targets × 100 steps) → Square
  (5000 queries, p schedule not rescaled), 1 restart each, each attack on the
  points still robust. JAX: ``robust_accuracy(..., 'aa_standard')``.
  torchattacks: its ``APGD``, ``APGDT``, ``FAB(multi_targeted=True)`` and
  ``Square`` built with these settings, run in the same order on the points
  still robust (what its ``MultiAttack`` does), each stage timed.
* **torchattacks' ``AutoAttack(version='standard')`` as shipped**: it builds
  the same four attacks with its own defaults, ``steps=10`` for APGD, APGD-T
  and FAB-T and Square with ``resc_schedule=True`` (torchattacks 3.5.1,
  ``attacks/autoattack.py``): ten times fewer gradient steps than AutoAttack
  'standard'. JAX: ``'aa_standard'`` with ``num_steps=10`` and
  ``rescale_schedule=True``.

JAX: cold (with compilation) and warm (a second call) wall time. The JAX
cascade runs with ``batch_size`` = ``--jax-batch-size`` (512): every stage
sees all its points in one batch, as torchattacks does, and when few points
are left several target runs share a batch (``robust_accuracy``'s early exit).
Then early exit on vs off (``early_exit=False``: every attack makes all its
runs on every clean-correct point) on digits at two ε, warm times, with
``batch_size`` = N.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchattacks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from _machine import cpu_model, load_average, write_report  # noqa: E402
from attacks import TorchCNN, train_cnn  # noqa: E402

from compsum_jax import attacks  # noqa: E402
from compsum_jax.models import get_model  # noqa: E402

# AutoAttack 'standard' as torchattacks ships it (steps=10 and a rescaled
# Square schedule), as overrides of the JAX 'aa_standard' preset.
TORCHATTACKS_DEFAULTS = {"num_steps": 10, "rescale_schedule": True}


def _jax_run(logits_fn, x, y, eps, batch_size, cache, early_exit=True,
             overrides=None):
  start = time.perf_counter()
  report = attacks.robust_accuracy(
      logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
      "aa_standard", eps=eps, batch_size=batch_size, early_exit=early_exit,
      jit_cache=cache, overrides=overrides)
  return report, time.perf_counter() - start


def _torch_tensors(x, y):
  return (torch.tensor(x.transpose(0, 3, 1, 2).copy()),
          torch.tensor(y.astype(np.int64)))


def _torch_reference_cascade(net, x, y, eps, num_classes):
  """AutoAttack 'standard' with the reference settings, from torchattacks'
  attacks: each stage on the points still robust, as MultiAttack runs them."""
  x_t, y_t = _torch_tensors(x, y)
  stages = [
      ("apgd_ce", torchattacks.APGD(net, norm="Linf", eps=eps, steps=100,
                                    n_restarts=1, loss="ce", seed=0)),
      ("apgd_t", torchattacks.APGDT(net, norm="Linf", eps=eps, steps=100,
                                    n_restarts=1, n_classes=num_classes,
                                    seed=0)),
      ("fab_t", torchattacks.FAB(net, norm="Linf", eps=eps, steps=100,
                                 n_restarts=1, multi_targeted=True,
                                 n_classes=num_classes, seed=0)),
      ("square", torchattacks.Square(net, norm="Linf", eps=eps,
                                     n_queries=5000, n_restarts=1,
                                     resc_schedule=False, seed=0)),
  ]
  start = time.perf_counter()
  with torch.no_grad():
    left = torch.nonzero(net(x_t).argmax(-1) == y_t).squeeze(1)
  x_adv = x_t.clone()
  per_stage = []
  for name, attack in stages:
    t0 = time.perf_counter()
    attacked = int(left.numel())
    if attacked:
      adv = attack(x_t[left], y_t[left])
      with torch.no_grad():
        still = net(adv).argmax(-1) == y_t[left]
      x_adv[left[~still]] = adv[~still]
      left = left[still]
    per_stage.append((name, attacked, attacked - int(left.numel()),
                      time.perf_counter() - t0))
  seconds = time.perf_counter() - start
  linf = float((x_adv - x_t).abs().max())
  return int(left.numel()) / len(y), seconds, linf, per_stage


def _torch_shipped(net, x, y, eps, num_classes):
  """``torchattacks.AutoAttack(version='standard')`` with its defaults."""
  x_t, y_t = _torch_tensors(x, y)
  attack = torchattacks.AutoAttack(net, norm="Linf", eps=eps,
                                   version="standard", n_classes=num_classes,
                                   seed=0)
  start = time.perf_counter()
  x_adv = attack(x_t, y_t)
  seconds = time.perf_counter() - start
  with torch.no_grad():
    robust = float((net(x_adv).argmax(-1) == y_t).float().mean())
  return robust, seconds, float((x_adv - x_t).abs().max())


def _side_by_side(title, logits_fn, net, x, y, eps, batch_size, repeats):
  """Both protocols on one network: a cold JAX call (with compilation), then
  ``repeats`` rounds of a warm JAX call and a torchattacks call, alternating
  so that both see the same machine state (it is shared and its speed drifts
  by tens of percent within minutes)."""
  rows = []
  for protocol, overrides in (("reference", None),
                              ("torchattacks defaults", TORCHATTACKS_DEFAULTS)):
    cache = {}  # the warm calls reuse the cold call's compilations
    report, cold = _jax_run(logits_fn, x, y, eps, batch_size, cache,
                            overrides=overrides)
    warm_s, torch_s = [], []
    for _ in range(repeats):
      report, warm = _jax_run(logits_fn, x, y, eps, batch_size, cache,
                              overrides=overrides)
      warm_s.append(warm)
      if overrides is None:
        robust_t, seconds, linf, torch_stages = _torch_reference_cascade(
            net, x, y, eps, 10)
      else:
        robust_t, seconds, linf = _torch_shipped(net, x, y, eps, 10)
        torch_stages = []
      torch_s.append(seconds)
      assert linf <= eps + 1e-5, linf
    ratios = [t / w for t, w in zip(torch_s, warm_s, strict=True)]
    row = dict(title=title, protocol=protocol, n=len(y), eps=eps,
               clean=report.clean_accuracy,
               jax_robust=report.robust_accuracy, jax_cold=cold,
               jax_warm=float(np.median(warm_s)), torch_robust=robust_t,
               torch_s=float(np.median(torch_s)), ratios=ratios,
               torch_linf=linf, torch_stages=torch_stages,
               stages=[(s.name, s.num_attacked, s.num_broken,
                        s.num_point_runs, s.seconds) for s in report.stages],
               config=report.attack_configuration)
    print(row, flush=True)
    rows.append(row)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--num-digits", type=int, default=100)
  parser.add_argument("--num-cifar", type=int, default=32)
  parser.add_argument("--train-steps", type=int, default=400)
  parser.add_argument("--early-exit-eps", type=float, nargs=2,
                      default=(0.05, 0.2))
  parser.add_argument("--torch-threads", type=int, default=2)
  parser.add_argument("--jax-batch-size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating rounds of warm JAX and torchattacks")
  parser.add_argument("--out", default="benchmarks/results/autoattack.md")
  args = parser.parse_args()
  torch.set_num_threads(args.torch_threads)
  load_start = load_average()
  t0 = time.perf_counter()

  # Digits CNN, trained as in benchmarks/attacks.py.
  model, variables, x_te, y_te = train_cnn(args.train_steps)
  net = TorchCNN(variables["params"]).eval()
  digits_fn = lambda x: model.apply(variables, x, train=False)
  x_d, y_d = x_te[:args.num_digits], y_te[:args.num_digits]
  with torch.no_grad():
    z_t = net(torch.tensor(x_d.transpose(0, 3, 1, 2).copy())).numpy()
  diff_d = float(np.max(np.abs(np.asarray(digits_fn(x_d)) - z_t)))
  assert diff_d < 1e-3, diff_d

  # 32×32×3 CNN with random weights; labels = its own predictions.
  cnn32 = get_model("cnn", 10)
  rng = np.random.default_rng(0)
  x_c = rng.random((args.num_cifar, 32, 32, 3), dtype=np.float32)
  vars32 = cnn32.init(jax.random.key(1), x_c[:2])
  cifar_fn = lambda x: cnn32.apply(vars32, x, train=False)
  y_c = np.asarray(cifar_fn(x_c)).argmax(-1).astype(np.int32)
  net32 = TorchCNN(vars32["params"]).eval()
  with torch.no_grad():
    z_t = net32(torch.tensor(x_c.transpose(0, 3, 1, 2).copy())).numpy()
  diff_c = float(np.max(np.abs(np.asarray(cifar_fn(x_c)) - z_t)))
  assert diff_c < 1e-3, diff_c

  rows = (
      _side_by_side("digits CNN (trained)", digits_fn, net, x_d, y_d, 0.1,
                    args.jax_batch_size, args.repeats)
      + _side_by_side("32×32×3 CNN (random weights)", cifar_fn, net32, x_c,
                      y_c, 8 / 255, args.jax_batch_size, args.repeats))

  exits = []
  cache = {}
  for eps in args.early_exit_eps:
    # Each (ε, mode) compiles once (ε is part of the attacks'
    # configuration); then the two modes alternate ``repeats`` times, warm.
    for early in (True, False):
      _jax_run(digits_fn, x_d, y_d, eps, args.num_digits, cache, early)
    seconds = {True: [], False: []}
    for _ in range(args.repeats):
      for early in (True, False):
        report, warm = _jax_run(digits_fn, x_d, y_d, eps, args.num_digits,
                                cache, early)
        seconds[early].append(warm)
        outcome = dict(eps=eps, early=early, robust=report.robust_accuracy,
                       point_runs=sum(s.num_point_runs
                                      for s in report.stages),
                       robust_set=report.robust.copy())
        if len(seconds[early]) == 1:
          exits.append(outcome)
        else:  # every round reaches the same outcome
          assert np.array_equal(outcome["robust_set"],
                                exits[-2 + (not early)]["robust_set"])
    for e in exits[-2:]:
      e["seconds"] = float(np.median(seconds[e["early"]]))
      print(e, flush=True)

  load_end = load_average()
  lines = [
      "# AutoAttack 'standard': compsum_jax 'aa_standard' vs torchattacks "
      "(CPU)",
      "",
      f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, shared; "
      f"load average at start {load_start[0]:.1f}/{load_start[1]:.1f}/"
      f"{load_start[2]:.1f}, at end {load_end[0]:.1f}/{load_end[1]:.1f}/"
      f"{load_end[2]:.1f}",
      f"- jax {jax.__version__} ({jax.default_backend()}), torch "
      f"{torch.__version__} ({torch.get_num_threads()} threads), "
      f"torchattacks {torchattacks.__version__}; total "
      f"{time.perf_counter() - t0:.0f} s",
      f"- same weights in both libraries (max |logit difference| "
      f"{diff_d:.1e} digits, {diff_c:.1e} 32×32); same test points; JAX "
      f"batch_size {args.jax_batch_size} (every stage in one batch; several "
      f"target runs share a batch when few points are left), torchattacks "
      f"one batch per stage; JAX 'cold' includes XLA compilation, 'warm' is "
      f"a second call; warm JAX and torchattacks alternate "
      f"{args.repeats} times: medians, and the speed-up as the median "
      f"(min–max) of the {args.repeats} paired ratios torchattacks s / JAX "
      f"warm s; stage times from the last round",
      "- protocol 'reference': AutoAttack 'standard' as Croce & Hein define "
      "it: APGD-CE → APGD-T (9 targets) → FAB-T (9 targets) → Square (5000 "
      "queries, unscaled p schedule), 100 iterations, 1 restart each, each "
      "attack on the points still robust; torchattacks: its four attacks "
      "built with these settings, run in that order on the points still "
      "robust",
      "- protocol 'torchattacks defaults': "
      "`torchattacks.AutoAttack(version='standard')` as shipped, which "
      "builds APGD, APGD-T and FAB-T with steps=10 and Square with "
      "resc_schedule=True; JAX: 'aa_standard' with num_steps=10, "
      "rescale_schedule=True",
      "",
      "| network | protocol | N | ε | clean | robust JAX | robust "
      "torchattacks | JAX cold s | JAX warm s | torchattacks s | speed-up "
      "warm: median (min–max) | speed-up cold |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['title']} | {r['protocol']} | {r['n']} | {r['eps']:.4g} | "
        f"{r['clean']:.2%} | {r['jax_robust']:.2%} | "
        f"{r['torch_robust']:.2%} | {r['jax_cold']:.1f} | "
        f"{r['jax_warm']:.1f} | {r['torch_s']:.1f} | "
        f"{np.median(r['ratios']):.1f}× ({min(r['ratios']):.1f}–"
        f"{max(r['ratios']):.1f}×) | {r['torch_s'] / r['jax_cold']:.1f}× |")
  lines += ["", "Stages (attacked / broken / point-runs / s; last round; "
            "torchattacks point-runs not counted):", ""]
  for r in rows:
    lines.append(f"- {r['title']}, {r['protocol']}, JAX: " + "; ".join(
        f"{n} {a}/{b}/{p}/{s:.1f}" for n, a, b, p, s in r["stages"]))
    if r["torch_stages"]:
      lines.append(f"- {r['title']}, {r['protocol']}, torchattacks: "
                   + "; ".join(f"{n} {a}/{b}/–/{s:.1f}"
                               for n, a, b, s in r["torch_stages"]))
  lines += ["", "## Early exit on vs off (digits CNN, warm)", "",
            f"JAX batch_size {args.num_digits}; median wall time of "
            f"{args.repeats} alternating rounds.", "",
            "| ε | early exit | robust acc | point-runs | wall s |",
            "|---|---|---|---|---|"]
  for e in exits:
    lines.append(f"| {e['eps']:g} | {'on' if e['early'] else 'off'} | "
                 f"{e['robust']:.2%} | {e['point_runs']} | "
                 f"{e['seconds']:.1f} |")
  same = all(np.array_equal(exits[i]["robust_set"],
                            exits[i + 1]["robust_set"])
             for i in range(0, len(exits), 2))
  lines += ["", f"Same robust set with and without early exit: {same}.", "",
            "Attack configuration (JAX, protocol 'reference'):", ""]
  lines += [f"- {c}" for c in rows[0]["config"]]
  lines += ["", "Attack configuration (JAX, protocol 'torchattacks "
            "defaults'):", ""]
  lines += [f"- {c}" for c in rows[1]["config"]]
  write_report(args.out, lines)


if __name__ == "__main__":
  main()
