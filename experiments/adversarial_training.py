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

One run owns a workdir (a second one exits at once naming the owner). Every
run in the workdir is bound to the config fields that change its numbers: a
different config is refused naming the fields (exit status 2) unless
``--new_run_dir``. Exit status 1 when any run diverged (the report is still
written; ``--retry_diverged`` trains them again), the workdir is busy or the
disk is full; 2 for a config error (one line). ``--help`` lists presets and
config fields.

Several cooperating processes (one per host; README "Several hosts"): add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` to each
(or ``--distributed=auto`` under SLURM / Open MPI / Cloud TPU);
``tools/launch_local.py`` starts N of them on this machine. Process 0 writes
every file and prints the results.
"""

from __future__ import annotations

from absl import app, flags, logging

from compsum_jax import training
from configs import adversarial_training as presets
from experiments import adversarial_training_lib as lib
from experiments import adversarial_training_report as report
from experiments import cli, common, distributed_flags, run_outcome

_CONFIG = cli.define_config_file(
    "config", None, "Config file and preset, e.g. "
    "configs/adversarial_training.py:digits.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
flags.mark_flags_as_required(["config", "workdir"])
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Only plan the run (compile the steps on abstract "
    "shapes, no data): writes plan.json / plan.md to --workdir.")
_NEW_RUN_DIR = flags.DEFINE_bool(
    "new_run_dir", False, "If --workdir holds runs of a different config, "
    "write this config's runs to <workdir>/config-<hash> (one directory per "
    "config) instead of refusing.")
_RETRY_DIVERGED = flags.DEFINE_bool(
    "retry_diverged", False, "Train again runs that diverged (NaN/Inf) on an "
    "earlier start, from their last good checkpoint; without it they are "
    "reported as failed again.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every checkpoint operation at INFO; keep the console readable.
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  with cli.config_errors():
    lib.validate_config(config)  # before any data is loaded
  common.configure_cpu_devices(config)  # before JAX starts its backends
  try:  # several processes: join them before any other JAX use
    distributed_flags.initialize_from_flags()
  except ValueError as error:
    cli.exit_with_usage_error(str(error))
  primary = training.is_primary()  # process 0 prints; the others stay quiet
  if _DRY_RUN.value:
    from experiments import planning  # pylint: disable=g-import-not-at-top

    if primary:
      result = planning.plan(config, _WORKDIR.value, "adversarial_training")
      print(planning.plan_markdown(result))
    return
  with run_outcome.fatal_errors():
    results = lib.run(config, _WORKDIR.value,
                      log=(lambda line: print(line, flush=True)) if primary
                      else None,
                      new_run_dir=_NEW_RUN_DIR.value,
                      retry_diverged=_RETRY_DIVERGED.value)
  run_dir = (lib.config_run_dir(config, _WORKDIR.value) if _NEW_RUN_DIR.value
             else _WORKDIR.value)
  if primary:
    print(f"wrote {run_dir}/{report.RESULTS_MD}")
    print(report.results_markdown(results), flush=True)
  failed = lib.failed_runs(results)
  if failed:
    run_outcome.exit_with_failure(
        f"{len(failed)} of {len(results['runs'])} runs failed (diverged): "
        f"{', '.join(failed)}; the report lists them; pass "
        f"{run_outcome.RETRY_FLAG} to train them again")


if __name__ == "__main__":
  cli.run(main, config_module=presets, doc=__doc__)
