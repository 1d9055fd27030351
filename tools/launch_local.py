r"""Runs one command as N cooperating JAX processes on this machine.

Usage::

  python tools/launch_local.py --num_processes=2 [--cpu_devices=1] -- \
      python -m experiments.loss_comparison \
      --config=configs/loss_comparison.py:smoke --workdir=runs/two

Picks a free TCP port on 127.0.0.1, starts the command N times with
``--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I``
appended (and ``--config.cpu_devices=C`` with ``--cpu_devices=C``), prefixes
every output line with ``[p<I>]`` and copies it to this terminal (and to
``--log_dir/process_<I>.log`` if given). When one process exits non-zero (or
is killed), the launcher names the process that ended first and how
(``[launch_local] process I ended first: killed by SIGKILL (status -9)``);
process 0 is the coordinator (it hosts JAX's coordination service), and when
it dies JAX aborts the others at once (SIGABRT, status -6, before their own
watchdog can name the lost process), so this line is the one that says what
happened. The others get ``--settle`` seconds to end on their own (their own
report of the lost process), then are terminated (SIGTERM, then SIGKILL after
a grace period); one line per process then gives its status and whether it
ended on its own or was stopped. The launcher exits with the status of the
process that failed first (128 + signal number if killed by a signal);
Ctrl-C stops all. Exits 0 when every process exited 0.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


def process_command(command: list[str], *, port: int, num_processes: int,
                    process_id: int, cpu_devices: int | None) -> list[str]:
  """``command`` plus the distributed flags of process ``process_id``."""
  extra = [f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={num_processes}", f"--process_id={process_id}"]
  if cpu_devices is not None:
    extra.append(f"--config.cpu_devices={cpu_devices}")
  return list(command) + extra


def _pump(stream, prefix: str, log_file, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    with lock:
      sys.stdout.write(prefix + line)
      sys.stdout.flush()
      if log_file is not None:
        log_file.write(line)
        log_file.flush()
  stream.close()


# The exit status of a process whose watchdog reported a lost peer
# (compsum_jax.training.distributed.LOST_PROCESS_EXIT_CODE; kept here so that
# the launcher starts without importing JAX).
LOST_PROCESS_EXIT_CODE = 75


def describe_status(code: int) -> str:
  """A process's exit status in words (Popen's code: −N = killed by signal N).

  Examples: 'killed by SIGKILL (status -9)', 'exited with status 75 (its
  watchdog reported a lost process)'.
  """
  if code < 0:
    try:
      name = signal.Signals(-code).name
    except ValueError:
      name = f"signal {-code}"
    text = f"killed by {name} (status {code})"
    if -code == signal.SIGABRT:
      text += " (aborted, e.g. by JAX's runtime after the coordinator was lost)"
    return text
  text = f"exited with status {code}"
  if code == LOST_PROCESS_EXIT_CODE:
    text += " (its watchdog reported a lost process)"
  return text


def first_failure_message(process_id: int, code: int) -> str:
  """The launcher's line naming the process that failed first."""
  line = (f"[launch_local] process {process_id} ended first: "
          f"{describe_status(code)}")
  if process_id == 0:
    line += ("; process 0 is the coordinator (it hosts JAX's coordination "
             "service): the other processes lose it and JAX aborts them at "
             "once")
  return line


def _stop_all(procs: list[subprocess.Popen], grace_s: float) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  for p in procs:
    while p.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    if p.poll() is None:
      p.kill()
      p.wait()


def _wait_for(proc: subprocess.Popen, index: int,
              events: queue.Queue) -> None:
  """Puts (time it ended, index, exit status) on ``events`` when it ends."""
  code = proc.wait()
  events.put((time.monotonic(), index, code))


def launch(command: list[str], *, num_processes: int,
           cpu_devices: int | None = None, log_dir: str | None = None,
           port: int | None = None, grace_s: float = 10.0,
           settle_s: float = 5.0) -> int:
  """Starts the N processes, relays their output, returns the exit status.

  Args:
    command: the command every process runs (the distributed flags are
      appended).
    num_processes: N.
    cpu_devices: adds ``--config.cpu_devices=C`` to every process.
    log_dir: also writes ``process_<I>.log`` there.
    port: the coordinator's port on 127.0.0.1 (None: a free one).
    grace_s: seconds between SIGTERM and SIGKILL when stopping processes.
    settle_s: after the first failure, seconds the others get to end on
      their own (and report the lost process) before they are stopped.

  Returns:
    0 if all exited 0; otherwise the status of the first process that
    failed (128 + signal number if it was killed by a signal).
  """
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if cpu_devices is not None and cpu_devices < 1:
    raise ValueError(f"cpu_devices must be >= 1, got {cpu_devices}")
  if settle_s < 0 or grace_s < 0:
    raise ValueError(f"settle_s and grace_s must be >= 0, got settle_s="
                     f"{settle_s}, grace_s={grace_s}")
  if not command:
    raise ValueError("no command given after '--'")
  port = port or free_port()
  lock = threading.Lock()
  procs, pumps, logs = [], [], []
  events: queue.Queue = queue.Queue()
  ended: dict[int, tuple[float, int]] = {}  # index -> (time, status)
  first = None  # (index, time) of the first process that failed

  def say(line: str) -> None:
    with lock:
      print(line, file=sys.stderr, flush=True)

  def take(timeout: float) -> None:
    end_time, index, code = events.get(timeout=timeout)
    ended[index] = (end_time, code)

  env = dict(os.environ, PYTHONUNBUFFERED="1")
  status = 0
  try:
    for i in range(num_processes):
      log_file = None
      if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        log_file = open(os.path.join(log_dir, f"process_{i}.log"), "w",
                        encoding="utf-8")
      logs.append(log_file)
      proc = subprocess.Popen(
          process_command(command, port=port, num_processes=num_processes,
                          process_id=i, cpu_devices=cpu_devices),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          env=env, start_new_session=True)
      procs.append(proc)
      threading.Thread(target=_wait_for, args=(proc, i, events),
                       daemon=True).start()
      pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{i}] ",
                                                  log_file, lock), daemon=True)
      pump.start()
      pumps.append(pump)
    # Exit statuses in the order the processes end (a waiter per process).
    while len(ended) < num_processes:
      try:
        take(timeout=0.5)
      except queue.Empty:
        continue
      failed = [(t, i, c) for i, (t, c) in ended.items() if c != 0]
      if failed:
        at, index, code = min(failed)
        first = (index, at)
        status = 128 - code if code < 0 else code
        say(first_failure_message(index, code))
        break
    if first is not None:
      deadline = time.monotonic() + settle_s
      while len(ended) < num_processes and time.monotonic() < deadline:
        try:
          take(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
          pass
  except KeyboardInterrupt:
    status = 130
  finally:
    running = [i for i in range(len(procs)) if i not in ended]
    if first is not None and running:
      say(f"[launch_local] stopping process(es) {running} (SIGTERM, SIGKILL "
          f"after {grace_s:g} s)")
    _stop_all(procs, grace_s)
    for pump in pumps:
      pump.join(timeout=5)
    for log_file in logs:
      if log_file is not None:
        log_file.close()
  if first is not None:
    while len(ended) < len(procs):
      try:
        take(timeout=5.0)
      except queue.Empty:
        break
    index, at = first
    for i in range(len(procs)):
      if i == index or i not in ended:
        continue
      end_time, code = ended[i]
      how = ("stopped by the launcher" if i in running else
             f"on its own, {end_time - at:.1f} s after process {index}"
             if end_time >= at else "before the failure")
      say(f"[launch_local] process {i}: {describe_status(code)}, {how}")
  return status


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    print("usage: launch_local.py --num_processes=N [--cpu_devices=C] "
          "[--log_dir=DIR] [--settle=S] -- COMMAND ...", file=sys.stderr)
    return 2
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="adds --config.cpu_devices=C to every process")
  parser.add_argument("--log_dir", default=None)
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port (default: a free one)")
  parser.add_argument("--settle", type=float, default=5.0,
                      help="seconds the others get to end on their own after "
                      "the first failure, before they are stopped")
  args = parser.parse_args(argv[:split])
  try:
    return launch(argv[split + 1:], num_processes=args.num_processes,
                  cpu_devices=args.cpu_devices, log_dir=args.log_dir,
                  port=args.port, settle_s=args.settle)
  except ValueError as error:
    print(f"launch_local.py: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
