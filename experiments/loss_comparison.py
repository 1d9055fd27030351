r"""Loss-comparison experiment binary (issue 5): ℓ_τ side by side.

Usage (from the repository root)::

  python -m experiments.loss_comparison \
      --config=configs/loss_comparison.py:digits --workdir=runs/demo

Trains every τ in ``config.taus`` for ``config.num_seeds`` seeds, everything
else equal, and writes results.json, results.md and PNG plots to the workdir
(see ``experiments/loss_comparison_lib.py``). Re-running with the same
``--workdir`` resumes from the checkpoints. Any config field can be
overridden, e.g. ``--config.taus=0,1,2 --config.label_noise.rate=0.4``. If the
config names a ``companion`` preset (the digits demo runs ``synthetic``), that
preset runs afterwards in ``<workdir>/companion_<name>`` for the
H-consistency bound check.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import loss_comparison as presets
from experiments import common
from experiments import loss_comparison_lib as lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/loss_comparison.py:digits",
    "Experiment config: configs/loss_comparison.py:<preset>.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (resumes if it holds a run).",
    required=True)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Only plan the run (compile the steps on abstract "
    "shapes, no data): writes plan.json / plan.md to --workdir.")


def _report(title: str, results: dict, paths: dict) -> None:
  print(f"\n===== {title} =====")
  with open(paths["table"], encoding="utf-8") as f:
    print(f.read())
  print("Outputs:")
  for name in sorted(paths):
    print(f"  {name}: {paths[name]}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  config = _CONFIG.value
  lib.validate_config(config)  # fail fast, before any data is loaded
  common.configure_cpu_devices(config)  # before JAX starts its backends
  workdir = _WORKDIR.value
  if _DRY_RUN.value:
    from experiments import planning  # pylint: disable=g-import-not-at-top

    print(planning.plan_markdown(planning.plan(config, workdir,
                                               "loss_comparison")))
    return
  if config.companion:
    presets.get_config(config.companion)  # validated by validate_config too
  results, paths = lib.run(config, workdir)
  _report(f"loss comparison on {results['dataset']['name']}", results, paths)
  if config.companion:
    companion = presets.get_config(config.companion)
    companion.companion = ""
    # Bookkeeping switches follow the main run's (e.g. --config.progress).
    companion.progress = config.progress
    companion.tensorboard = config.tensorboard
    sub = os.path.join(workdir, f"companion_{config.companion}")
    print(f"\nCompanion run '{config.companion}' for the bound check in {sub}")
    results_c, paths_c = lib.run(companion, sub)
    _report(f"companion: {results_c['dataset']['name']}", results_c, paths_c)
    print("\nBound-check summary (companion run):")
    print(lib.bound_summary_text(results_c))
  else:
    print("\nBound-check summary:")
    print(lib.bound_summary_text(results))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
