r"""Loss-comparison experiment binary: ℓ_τ side by side.

Usage (from the repository root)::

  python -m experiments.loss_comparison \
      --config=configs/loss_comparison.py:digits --workdir=runs/demo

Trains every τ in ``config.taus`` for ``config.num_seeds`` seeds, everything
else equal, and writes results.json, results.md and PNG plots to the workdir
(see ``experiments/loss_comparison_lib.py``; re-render the report of a
finished workdir with ``python -m experiments.loss_comparison_report
--workdir=...``). Re-running with the same ``--workdir`` resumes from the
checkpoints. Any config field can be overridden, e.g.
``--config.taus=0,1,2 --config.label_noise.rate=0.4``. If the config names a
``companion`` preset (the digits demo runs ``synthetic``), that preset runs
afterwards in ``<workdir>/companion_<name>`` for the H-consistency bound
check.

One run owns a workdir: a second run on it exits at once (status 1) naming
the owner. Exit status: 0 when every member finished; 1 when the workdir is
busy, the disk is full or a member diverged (the other groups still train
and the report is written with the diverged group's members marked as
failed; such a group is not trained again on restart unless
``--retry_diverged`` is given); 2 for a config error (one line).
``--help`` lists the presets and config fields.

Several cooperating processes (one per host; README "Several hosts"): add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` to each
(or ``--distributed=auto`` under SLURM / Open MPI / Cloud TPU);
``tools/launch_local.py`` starts N of them on this machine. Process 0 writes
every file.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from compsum_jax import training
from configs import loss_comparison as presets
from experiments import cli, common, distributed_flags, run_outcome
from experiments import loss_comparison_lib as lib

_CONFIG = cli.define_config_file(
    "config", "configs/loss_comparison.py:digits",
    "Experiment config: configs/loss_comparison.py:<preset>.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (resumes if it holds a run).",
    required=True)
_RETRY_DIVERGED = flags.DEFINE_bool(
    "retry_diverged", False, "Train again members that diverged (NaN/Inf) "
    "on an earlier start, from their last good checkpoint; without it they "
    "stay failed in the report and the exit status is 1.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Only plan the run (compile the steps on abstract "
    "shapes, no data): writes plan.json / plan.md to --workdir.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  config = _CONFIG.value
  with cli.config_errors():
    lib.validate_config(config)  # fail fast, before any data is loaded
  common.configure_cpu_devices(config)  # before JAX starts its backends
  try:  # several processes: join them before any other JAX use
    distributed_flags.initialize_from_flags()
  except ValueError as error:
    cli.exit_with_usage_error(str(error))
  if _DRY_RUN.value:
    from experiments import planning  # pylint: disable=g-import-not-at-top

    if training.is_primary():
      print(planning.plan_markdown(planning.plan(config, _WORKDIR.value,
                                                 "loss_comparison")))
    return
  # Process 0 prints the reports; the others stay quiet.
  with run_outcome.fatal_errors():
    lib.run(config, _WORKDIR.value,
            log=print if training.is_primary() else lambda line: None,
            retry_diverged=_RETRY_DIVERGED.value)
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main, config_module=presets, doc=__doc__)
