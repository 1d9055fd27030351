"""Several cooperating processes on JAX's distributed runtime.

One process per host (or, on one machine, per group of CPU devices) runs the
same program; :func:`initialize` ties them into one set of devices with
``jax.distributed.initialize`` and must run before any other JAX use. Then
``jax.devices()`` spans every process, a mesh over them is global, and the
train step's collectives cross processes (gloo on CPU, switched on here).

Start-up:

* explicit: ``initialize(coordinator_address='HOST:PORT', num_processes=N,
  process_id=I)`` in each of the N processes (process 0 hosts the
  coordination service at HOST:PORT);
* ``initialize(auto=True)``: JAX detects SLURM, Open MPI or a Cloud TPU pod
  slice from the environment and fills in all three.

The values are checked before JAX starts (``ValueError`` naming the bad
value); after connecting, every process publishes its ``num_processes`` and
a mismatch with the coordinator's fails at once. A coordinator that expects
more processes than ever connect fails after ``initialization_timeout_s``
(XLA aborts the process; the line printed before connecting names the values
to check).

Failure detection: a watchdog thread per process publishes a heartbeat in the
runtime's key-value store every ``heartbeat_period_s`` and watches the
others'. When another process stops beating for ``failure_timeout_s`` (killed,
hung, lost host) or reports an uncaught exception, the watchdog prints
``compsum_jax.distributed: lost process(es) [i] ...`` to stderr and ends this
process with exit status :data:`LOST_PROCESS_EXIT_CODE`, so no process hangs in
a collective waiting for a dead peer. A process that exits normally marks
itself done and is never reported. If the coordinator (process 0) dies, the
runtime itself terminates the others within a fraction of a second (XLA:
"Terminating process because the JAX distributed service detected fatal
errors", SIGABRT, exit status 134), before the watchdog's next check; the
watchdog reports process 0 lost only when it wins that race, and
``tools/launch_local.py`` names the process that ended first. (jaxlib's
runtime client accepts a ``missed_heartbeat_callback`` that would replace the
abort, but ``jax.distributed.initialize`` does not pass one, and a Python
callback cannot receive the runtime's status: jaxlib 0.10 terminates with
``std::bad_cast``.) JAX's own heartbeat timeout is set above the watchdog's as
a backstop.
"""

from __future__ import annotations

import atexit
import dataclasses
import io
import os
import re
import sys
import threading
import time
from typing import Any

import jax
import numpy as np

LOST_PROCESS_EXIT_CODE = 75
_KEY_PREFIX = "compsum_jax/distributed"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
  """How this process joined (or did not join) a multi-process run.

  Attributes:
    num_processes: N (1 when not distributed).
    process_id: this process's index in [0, N).
    coordinator_address: HOST:PORT of process 0's service, or None.
    auto: the values came from JAX's cluster detection.
  """

  num_processes: int
  process_id: int
  coordinator_address: str | None
  auto: bool


_SETUP: DistributedSetup | None = None
_WATCHDOG: _Watchdog | None = None


def _check_int(value: Any, name: str, minimum: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
      value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got "
                     f"{name}={value!r}")
  return int(value)


def check_coordinator_address(address: Any) -> str:
  """Checks ``HOST:PORT`` (port in [1, 65535]); returns it.

  HOST is a host name, an IPv4 address or a bracketed IPv6 address.

  Raises:
    ValueError: naming the bad address.
  """
  if not isinstance(address, str) or not address:
    raise ValueError(f"coordinator_address must be 'HOST:PORT' (e.g. "
                     f"'10.0.0.1:1234'), got coordinator_address={address!r}")
  match = _HOST_PORT.match(address)
  if match is None or not 1 <= int(match.group(2)) <= 65535:
    raise ValueError(f"coordinator_address must be 'HOST:PORT' with a port in "
                     f"[1, 65535] (e.g. '10.0.0.1:1234'), got "
                     f"coordinator_address={address!r}")
  return address


def check_explicit_setup(coordinator_address: Any, num_processes: Any,
                         process_id: Any) -> tuple[str, int, int]:
  """Validates explicit start-up values before JAX is touched.

  Returns:
    (coordinator_address, num_processes, process_id).

  Raises:
    ValueError: a missing coordinator, ``num_processes`` < 1, or a process id
      outside [0, num_processes); the message names the value.
  """
  num_processes = _check_int(num_processes, "num_processes", 1)
  if process_id is None:
    raise ValueError(f"process_id must be given with num_processes="
                     f"{num_processes} (an integer in [0, {num_processes}))")
  process_id = _check_int(process_id, "process_id", 0)
  if process_id >= num_processes:
    raise ValueError(f"process_id={process_id} is out of range for "
                     f"num_processes={num_processes}: it must lie in [0, "
                     f"{num_processes})")
  if coordinator_address is None or coordinator_address == "":
    raise ValueError(f"coordinator_address is missing: num_processes="
                     f"{num_processes} needs the HOST:PORT of process 0 "
                     "(e.g. --coordinator_address=10.0.0.1:1234)")
  return check_coordinator_address(coordinator_address), num_processes, \
      process_id


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def _wants_cpu() -> bool:
  """True when JAX will run on CPU (no accelerator plugin or forced CPU)."""
  platforms = (os.environ.get("JAX_PLATFORMS") or
               str(jax.config.jax_platforms or ""))
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  import importlib.util  # pylint: disable=g-import-not-at-top
  accelerators = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                  "jax_rocm7_plugin", "libtpu")
  return not any(importlib.util.find_spec(m) for m in accelerators)


def initialize(*, coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               failure_timeout_s: float = 30.0,
               heartbeat_period_s: float = 1.0,
               initialization_timeout_s: int = 120) -> DistributedSetup:
  """Joins this process to a multi-process run; call before any JAX use.

  With ``num_processes`` None and ``auto`` False nothing happens (a
  single-process run) and the returned setup says 1 process.

  Args:
    coordinator_address: HOST:PORT of process 0 (explicit start-up).
    num_processes: N, the number of processes (explicit start-up).
    process_id: this process's index in [0, N) (explicit start-up).
    auto: let JAX detect SLURM / Open MPI / Cloud TPU (explicit values, if
      given, override what is detected).
    failure_timeout_s: a process whose heartbeat is older than this is
      reported lost and this process exits (module doc).
    heartbeat_period_s: how often the watchdog beats and checks.
    initialization_timeout_s: how long to wait for all processes to connect.

  Returns:
    The :class:`DistributedSetup`.

  Raises:
    ValueError: bad or inconsistent values (before JAX starts where
      possible), or a ``num_processes`` that differs from the coordinator's.
    RuntimeError: JAX's backend is already running, or called twice.
  """
  global _SETUP
  if _SETUP is not None:
    raise RuntimeError(f"compsum_jax distributed start-up already ran "
                       f"({_SETUP}); call initialize once per process")
  failure_timeout_s = float(failure_timeout_s)
  heartbeat_period_s = float(heartbeat_period_s)
  if not 0 < heartbeat_period_s < failure_timeout_s:
    raise ValueError(f"need 0 < heartbeat_period_s < failure_timeout_s, got "
                     f"heartbeat_period_s={heartbeat_period_s!r}, "
                     f"failure_timeout_s={failure_timeout_s!r}")
  initialization_timeout_s = _check_int(initialization_timeout_s,
                                        "initialization_timeout_s", 1)
  if not auto and num_processes is None:
    if process_id is not None or coordinator_address:
      raise ValueError(f"num_processes is missing: process_id={process_id!r}"
                       f" and coordinator_address={coordinator_address!r} "
                       "need num_processes=N (or auto detection)")
    _SETUP = DistributedSetup(1, 0, None, False)
    return _SETUP
  if auto:
    if num_processes is not None:
      num_processes = _check_int(num_processes, "num_processes", 1)
    if process_id is not None:
      process_id = _check_int(process_id, "process_id", 0)
      if num_processes is not None and process_id >= num_processes:
        raise ValueError(f"process_id={process_id} is out of range for "
                         f"num_processes={num_processes}")
    if coordinator_address:
      check_coordinator_address(coordinator_address)
  else:
    coordinator_address, num_processes, process_id = check_explicit_setup(
        coordinator_address, num_processes, process_id)
  if _backend_started():
    raise RuntimeError("distributed start-up must run before any JAX "
                       "computation or jax.devices() call; the backend is "
                       "already initialised")
  if _wants_cpu():
    # Cross-process collectives on CPU need gloo (the default has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = (f"process {process_id} of {num_processes}" if not auto else
           "auto-detected cluster")
  print(f"compsum_jax.distributed: connecting {where} to the coordinator at "
        f"{coordinator_address or '(auto)'} (timeout "
        f"{initialization_timeout_s} s; if it times out, check that every "
        "process got the same num_processes, distinct process ids and a "
        "reachable coordinator)", file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes, process_id=process_id,
        initialization_timeout=initialization_timeout_s,
        # JAX's own heartbeat is the backstop; the watchdog reports first.
        heartbeat_timeout_seconds=int(2 * failure_timeout_s + 10),
        cluster_detection_method=None if auto else "deactivate")
  except ValueError as error:
    if not auto:
      raise
    raise ValueError(f"auto detection found no cluster to join (SLURM, Open "
                     f"MPI, Cloud TPU): {error}; outside such a cluster give "
                     "coordinator_address, num_processes and process_id "
                     "explicitly") from error
  _SETUP = DistributedSetup(jax.process_count(), jax.process_index(),
                            coordinator_address, bool(auto))
  _check_same_num_processes(num_processes)
  if _SETUP.num_processes > 1:
    start_watchdog(failure_timeout_s=failure_timeout_s,
                   heartbeat_period_s=heartbeat_period_s)
  return _SETUP


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError("the JAX distributed runtime is not initialised")
  return client


def _check_same_num_processes(requested: int | None) -> None:
  """Every process publishes its N; a mismatch with process 0's fails."""
  n, me = jax.process_count(), jax.process_index()
  if requested is None or n == 1 and requested == 1:
    return
  client = _client()
  client.key_value_set(f"{_KEY_PREFIX}/num_processes/{me}", str(requested))
  coordinator = int(client.blocking_key_value_get(
      f"{_KEY_PREFIX}/num_processes/0", 60_000))
  if requested != coordinator or requested != n:
    raise ValueError(f"num_processes={requested} in process {me}, but the "
                     f"coordinator (process 0) was started with num_processes"
                     f"={coordinator}; give every process the same value")


class _Watchdog:
  """Heartbeats in the runtime's key-value store; exits when a peer is lost."""

  def __init__(self, failure_timeout_s: float, heartbeat_period_s: float):
    self.failure_timeout_s = failure_timeout_s
    self.heartbeat_period_s = heartbeat_period_s
    self.me = jax.process_index()
    self.n = jax.process_count()
    self.client = _client()
    self._stop = threading.Event()
    self._beats = 0
    now = time.monotonic()
    # last (value, local time it changed) seen for every other process
    self._seen: dict[int, tuple[str | None, float]] = {
        p: (None, now) for p in range(self.n) if p != self.me}
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name="compsum_jax-distributed-watchdog")

  def start(self) -> None:
    self._beat()
    self._thread.start()

  def stop(self, join_timeout_s: float | None = None) -> None:
    """Stops watching; with ``join_timeout_s`` also waits for the thread."""
    self._stop.set()
    if join_timeout_s is not None and self._thread.is_alive():
      self._thread.join(join_timeout_s)

  def finish(self, max_wait_s: float = 600.0) -> None:
    """At exit: marks this process done, waits (still watching) until every
    other process is done or failed, then stops and joins the thread.

    While it waits, a lost peer is reported and ends this process as during
    the run (e.g. after a collective failed because a peer was killed). The
    thread is joined before JAX's own shutdown (atexit hooks run last-in,
    first-out): a daemon thread still inside a runtime call when the
    interpreter finalises is unwound through C++ frames and aborts the
    process ("FATAL: exception not rethrown", status 134).
    """
    self.mark("done", "exited")
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline and self._thread.is_alive():
      try:
        ended = set(self._values("done")) | set(self._values("failed"))
      except Exception:  # pylint: disable=broad-except
        break  # the coordinator has shut down: every process got this far
      if all(p in ended for p in self._seen):
        break
      time.sleep(self.heartbeat_period_s / 2)
    self.stop(join_timeout_s=self.heartbeat_period_s + 10.0)

  def _key(self, kind: str, process: int) -> str:
    return f"{_KEY_PREFIX}/{kind}/{process}"

  def _beat(self) -> None:
    self._beats += 1
    self.client.key_value_set(self._key("heartbeat", self.me),
                              str(self._beats), allow_overwrite=True)

  def mark(self, kind: str, message: str) -> None:
    """Publishes 'done' or 'failed' (with a message) for this process."""
    try:
      self.client.key_value_set(self._key(kind, self.me), message[:2000],
                                allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the runtime may be gone; the heartbeat timeout then reports us

  def _lost(self, processes: list[int], why: str) -> None:
    if self._stop.is_set():
      return
    print(f"compsum_jax.distributed: lost process(es) {processes} ({why}); "
          f"process {self.me} exits with status {LOST_PROCESS_EXIT_CODE}",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(LOST_PROCESS_EXIT_CODE)  # pylint: disable=protected-access

  def _values(self, kind: str) -> dict[int, str]:
    """{process: value} of every key under ``<prefix>/<kind>/`` (one RPC)."""
    out = {}
    for key, value in self.client.key_value_dir_get(
        f"{_KEY_PREFIX}/{kind}/"):
      tail = key.rsplit("/", 1)[-1]
      if tail.isdigit():
        out[int(tail)] = value
    return out

  def _check(self) -> None:
    # Three directory reads per period, whatever the number of processes.
    failed, done = self._values("failed"), self._values("done")
    beats = self._values("heartbeat")
    now = time.monotonic()
    stale = []
    for p, (last, since) in self._seen.items():
      if p in failed:
        self._lost([p], f"it failed: {failed[p]}")
      if p in done:
        continue
      value = beats.get(p)
      if value != last:
        self._seen[p] = (value, now)
      elif now - since > self.failure_timeout_s:
        stale.append(p)
    if stale:
      self._lost(stale, f"no heartbeat for {self.failure_timeout_s:g} s: "
                 "killed, crashed or hung")

  def _run(self) -> None:
    errors_since = None
    while not self._stop.wait(self.heartbeat_period_s):
      try:
        self._beat()
        self._check()
        errors_since = None
      except Exception as error:  # pylint: disable=broad-except
        # The key-value store lives in process 0: unreachable means it died.
        if self._stop.is_set():
          return
        errors_since = errors_since or time.monotonic()
        if time.monotonic() - errors_since > min(self.failure_timeout_s, 5.0):
          self._lost([0], f"the coordinator is unreachable: "
                     f"{str(error).splitlines()[0][:200]}")


def start_watchdog(*, failure_timeout_s: float = 30.0,
                   heartbeat_period_s: float = 1.0) -> None:
  """Starts the failure watchdog (done by :func:`initialize`)."""
  global _WATCHDOG
  if _WATCHDOG is not None:
    return
  _WATCHDOG = _Watchdog(failure_timeout_s, heartbeat_period_s)
  _WATCHDOG.start()
  previous_hook = sys.excepthook

  def report_failure(kind, value, traceback):
    if _WATCHDOG is not None:
      _WATCHDOG.mark("failed", f"{kind.__name__}: {value}")
    previous_hook(kind, value, traceback)

  sys.excepthook = report_failure
  # Runs before JAX's own shutdown (atexit is last-in, first-out): a process
  # that ends is "done" and never reported lost; it keeps watching the others
  # until they have ended too (Watchdog.finish).
  atexit.register(lambda: _WATCHDOG.finish() if _WATCHDOG else None)


def setup() -> DistributedSetup:
  """This process's :class:`DistributedSetup` (1 process if not started)."""
  if _SETUP is not None:
    return _SETUP
  return DistributedSetup(jax.process_count(), jax.process_index(), None,
                          False)


def is_primary() -> bool:
  """True in process 0, the one that writes files and prints results."""
  return jax.process_index() == 0


def process_count() -> int:
  """Number of processes of the run (1 when not distributed)."""
  return jax.process_count()


def run_record(mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """What a results file records about the processes and the device mesh.

  Returns:
    ``{'num_processes', 'process_devices': devices per process,
    'device_count', 'platform', 'mesh': {axis: size} or None}``.
  """
  devices = jax.devices()
  per_process = [0] * jax.process_count()
  for d in devices:
    per_process[d.process_index] += 1
  return {"num_processes": jax.process_count(),
          "process_devices": per_process,
          "device_count": len(devices),
          "platform": devices[0].platform if devices else None,
          "mesh": (None if mesh is None else
                   {str(k): int(v) for k, v in mesh.shape.items()})}


def sync(name: str) -> None:
  """Barrier: every process waits here until all arrived (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def fetch(tree: Any) -> Any:
  """Device arrays → NumPy, also for arrays spanning several processes.

  Fully addressable arrays are copied as by ``jax.device_get``; replicated
  arrays are read from a local shard; arrays split over processes (e.g.
  per-member values split over a 'members' axis) are gathered from all
  processes (a collective: every process must call it).
  """
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_shards[0].data)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def process_slice(num_examples: int) -> slice:
  """This process's contiguous share of N examples (for host-side loops).

  Process p of P gets [⌊p·N/P⌋, ⌊(p+1)·N/P⌋); the shares cover 0..N−1 once.
  Use it for evaluations that run outside the compiled eval step (e.g. an
  attack cascade on host arrays) and combine their counts with
  :func:`sum_over_processes`.
  """
  if isinstance(num_examples, bool) or int(num_examples) != num_examples or (
      num_examples < 0):
    raise ValueError(f"num_examples must be a non-negative integer, got "
                     f"num_examples={num_examples!r}")
  p, count = jax.process_index(), jax.process_count()
  return slice(p * int(num_examples) // count,
               (p + 1) * int(num_examples) // count)


_EXCHANGES = [0]


def sum_over_processes(values: Any) -> Any:
  """Σ over processes of host NumPy values (exact for integer counts).

  Each process passes its own partial sums (e.g. robust-correct counts of
  its share of the test set, a pytree of arrays of equal shapes everywhere);
  every process gets the totals, integers summed in int64 and floats in
  float64 in process order. Values travel through the runtime's key-value
  store, not the devices, so no precision is lost. Every process must call
  it, in the same order.
  """
  leaves, treedef = jax.tree.flatten(values)
  wide = [np.asarray(x).astype(
      np.int64 if np.issubdtype(np.asarray(x).dtype, np.integer) or
      np.asarray(x).dtype == np.bool_ else np.float64) for x in leaves]
  if jax.process_count() == 1:
    return jax.tree.unflatten(treedef, wide)
  client = _client()
  _EXCHANGES[0] += 1
  key = f"{_KEY_PREFIX}/sum/{_EXCHANGES[0]}"
  me = jax.process_index()
  buffer = io.BytesIO()
  np.savez(buffer, *wide)
  client.key_value_set_bytes(f"{key}/{me}", buffer.getvalue())
  totals = [np.zeros_like(x) for x in wide]
  for p in range(jax.process_count()):
    raw = client.blocking_key_value_get_bytes(f"{key}/{p}", 600_000)
    with np.load(io.BytesIO(raw)) as got:
      parts = [got[f"arr_{i}"] for i in range(len(wide))]
    for i, part in enumerate(parts):
      if part.shape != wide[i].shape:
        raise ValueError(f"sum_over_processes: process {p} sent shape "
                         f"{part.shape}, process {me} has {wide[i].shape}")
      totals[i] = totals[i] + part
  return jax.tree.unflatten(treedef, totals)
