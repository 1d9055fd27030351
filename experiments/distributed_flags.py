"""absl flags that join a binary to a multi-process run.

A binary imports this module (which defines the flags) and calls
:func:`initialize_from_flags` first thing in ``main``, before any other JAX
use (``config.cpu_devices`` may be applied before or after it; both only
set configuration)::

  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  --distributed=auto        # SLURM / Open MPI / Cloud TPU detection

Without these flags (``--distributed=off``, the default, and no
``--num_processes``) nothing changes: one process.
"""

from __future__ import annotations

from absl import flags

from compsum_jax.training import distributed

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "HOST:PORT of process 0's coordination service (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of cooperating processes (N).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, N).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "off", ["auto", "off"],
    "'auto': let JAX detect SLURM / Open MPI / Cloud TPU and join the run; "
    "'off': only the explicit --num_processes/--process_id/"
    "--coordinator_address flags (none: a single process).")
_FAILURE_TIMEOUT = flags.DEFINE_float(
    "distributed_failure_timeout", 30.0,
    "Seconds without a heartbeat after which another process counts as lost "
    "and this one exits non-zero.")


def initialize_from_flags() -> distributed.DistributedSetup:
  """Starts the distributed runtime from the flags (no-op without them).

  Raises:
    ValueError: bad values (out-of-range process id, missing coordinator,
      bad HOST:PORT, ``num_processes`` differing from the coordinator's),
      naming the flag value.
  """
  try:
    return distributed.initialize(
        coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        auto=_DISTRIBUTED.value == "auto",
        failure_timeout_s=_FAILURE_TIMEOUT.value)
  except ValueError as error:
    raise ValueError(f"bad distributed flags (--coordinator_address="
                     f"{_COORDINATOR_ADDRESS.value} --num_processes="
                     f"{_NUM_PROCESSES.value} --process_id="
                     f"{_PROCESS_ID.value} --distributed="
                     f"{_DISTRIBUTED.value}): {error}") from error
