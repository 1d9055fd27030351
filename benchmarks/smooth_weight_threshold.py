"""ν*(h) of trained ADV-COMP-SUM networks, from an adversarial-training workdir.

Reads every ``adv_comp_sum_tau*/seed*`` run of a finished
``experiments.adversarial_training`` workdir, restores its best checkpoint
(EMA parameters when the config uses EMA) and estimates, on the validation
split under the run's training threat model (ε, norm),

    ν*(h) = n^{1−τ}·E[z_y − mean z] / E[sup_{x'} ‖v(x, x')‖₂]

with ``compsum_jax.training.smooth_weight.smooth_term_weight_threshold``
(PGD on the smooth term, 20 steps of ε/4, 2 restarts), at the run's own τ
and at the other τ of the list (ν* depends on τ only through n^{1−τ}).
Prints a Markdown table.

    PYTHONPATH=. python benchmarks/smooth_weight_threshold.py --workdir /tmp/adv_nu \\
        --config configs/adversarial_training.py:smoke \\
        --override methods=adv_comp_sum --override adv_comp_sum.taus=0.5,1,1.5

The ``--override`` fields must be the ones the training command used.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re

import jax
import numpy as np

from compsum_jax import data, training
from compsum_jax.training import smooth_weight
from experiments import common

TAUS = (0.5, 1.0, 1.5)


def _load_config(spec: str, overrides: list[str]):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("exp_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for item in overrides:
    field, _, value = item.partition("=")
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    old = node[leaf]
    if isinstance(old, tuple):
      parts = [v for v in value.split(",") if v]
      cast = type(old[0]) if old else str
      node[leaf] = tuple(cast(v) for v in parts)
    elif isinstance(old, bool):
      node[leaf] = value.lower() in ("1", "true")
    elif isinstance(old, (int, float)):
      node[leaf] = type(old)(value)
    else:
      node[leaf] = value
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config", required=True)
  parser.add_argument("--override", action="append", default=[])
  parser.add_argument("--num-steps", type=int, default=20)
  parser.add_argument("--num-restarts", type=int, default=2)
  args = parser.parse_args()
  config = _load_config(args.config, args.override)
  ds = common.load_data(config)
  model = common.build_model(config, ds)
  optimizer = training.make_optimizer(config.optimizer.to_dict(), 1)
  def apply_fn(variables, x):
    params, batch_stats = variables
    return training.apply_model(model, params, batch_stats, x, train=False)[0]

  images = data.to_float_images(ds.validation.images)
  labels = np.asarray(ds.validation.labels)
  print(f"ε = {config.eps}, norm {config.norm}, ν = {config.adv_comp_sum.nu},"
        f" ρ = {config.adv_comp_sum.rho}; validation split of "
        f"{len(labels)} digits; PGD {args.num_steps} steps of ε/4, "
        f"{args.num_restarts} restarts\n")
  print("| run | best epoch | clean acc (val) | E[z_y − mean z] | "
        "E[sup ‖v‖] | ν* at τ = 0.5 | ν* at τ = 1 | ν* at τ = 1.5 |")
  print("|---|---|---|---|---|---|---|---|")
  runs = sorted(glob.glob(os.path.join(args.workdir, "adv_comp_sum_tau*",
                                       "seed*")),
                key=lambda d: (float(re.search(r"tau([0-9.]+)", d).group(1)),
                               d))
  for run_dir in runs:
    tau = float(re.search(r"tau([0-9.]+)", run_dir).group(1))
    seed = int(re.search(r"seed(\d+)", run_dir).group(1))
    state = training.init_train_state(
        model, optimizer, rng=seed, input_shape=ds.input_shape,
        hparams={"tau": tau, "nu": float(config.adv_comp_sum.nu),
                 "rho": float(config.adv_comp_sum.rho)},
        ema=float(config.ema_decay) > 0)
    state, step, meta = training.restore_best_checkpoint(
        run_dir, state, "val_robust_accuracy")
    params = state.ema_params if float(config.ema_decay) > 0 else state.params

    result = smooth_weight.smooth_term_weight_threshold(
        apply_fn, images, labels, jax.random.key(seed), tau=tau,
        eps=float(config.eps), norm=config.norm, num_steps=args.num_steps,
        num_restarts=args.num_restarts,
        variables=(params, state.batch_stats))
    accuracy = np.mean(np.argmax(result.logits, -1) == labels)
    n = result.num_classes
    thresholds = [n ** (1 - t) * result.mean_label_gap
                  / result.mean_sup_smooth_term for t in TAUS]
    print(f"| τ = {tau:g}, seed {seed} | {meta.get('epoch')} | "
          f"{100 * accuracy:.1f} % | {result.mean_label_gap:.2f} | "
          f"{result.mean_sup_smooth_term:.2f} | "
          + " | ".join(f"{v:.2f}" for v in thresholds) + " |")


if __name__ == "__main__":
  main()
