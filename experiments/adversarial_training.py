r"""Adversarial training: ADV-COMP-SUM against TRADES and PGD-AT.

Trains every (method, τ, seed) run of the config (``lib.run``), early-stops
each on validation robust accuracy, evaluates the best checkpoint on test and
writes ``results.json``, ``results.md`` and ``robust_vs_clean.png`` to the
workdir. Re-running the same command resumes after an interruption (finished
runs are not redone). Presets: ``configs/adversarial_training.py``; the
methods: ``compsum_jax/training/adversarial.py``; a finished workdir's report
is re-rendered by ``python -m experiments.adversarial_training_report``::

  python -m experiments.adversarial_training \
      --config=configs/adversarial_training.py:smoke --workdir=/tmp/x

Several cooperating processes (one per host; README "Several hosts"): add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` to each
(or ``--distributed=auto`` under SLURM / Open MPI / Cloud TPU);
``tools/launch_local.py`` starts N of them on this machine. Process 0 writes
every file and prints the results.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from compsum_jax import training
from experiments import adversarial_training_lib as lib
from experiments import adversarial_training_report as report
from experiments import cli, common, distributed_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. "
    "configs/adversarial_training.py:digits.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
flags.mark_flags_as_required(["config", "workdir"])
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Only plan the run (compile the steps on abstract "
    "shapes, no data): writes plan.json / plan.md to --workdir.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every checkpoint operation at INFO; keep the console readable.
  logging.set_verbosity(logging.WARNING)
  common.configure_cpu_devices(_CONFIG.value)  # before JAX starts
  try:  # several processes: join them before any other JAX use
    distributed_flags.initialize_from_flags()
  except ValueError as error:
    cli.exit_with_usage_error(str(error))
  primary = training.is_primary()  # process 0 prints; the others stay quiet
  if _DRY_RUN.value:
    from experiments import planning  # pylint: disable=g-import-not-at-top

    if primary:
      result = planning.plan(_CONFIG.value, _WORKDIR.value,
                             "adversarial_training")
      print(planning.plan_markdown(result))
    return
  results = lib.run(_CONFIG.value, _WORKDIR.value,
                    log=(lambda line: print(line, flush=True)) if primary
                    else None)
  if primary:
    print(f"wrote {_WORKDIR.value}/{report.RESULTS_MD}")
    print(report.results_markdown(results))


if __name__ == "__main__":
  app.run(main)
