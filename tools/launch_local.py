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
is killed) the others are terminated (SIGTERM, then SIGKILL after a grace
period) and the launcher exits with that process's status; Ctrl-C stops all.
Exits 0 when every process exited 0.
"""

from __future__ import annotations

import argparse
import os
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


def launch(command: list[str], *, num_processes: int,
           cpu_devices: int | None = None, log_dir: str | None = None,
           port: int | None = None, grace_s: float = 10.0) -> int:
  """Starts the N processes, relays their output, returns the exit status.

  Returns:
    0 if all exited 0; otherwise the status of the first process that
    failed (128 + signal number if it was killed by a signal).
  """
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if cpu_devices is not None and cpu_devices < 1:
    raise ValueError(f"cpu_devices must be >= 1, got {cpu_devices}")
  if not command:
    raise ValueError("no command given after '--'")
  port = port or free_port()
  lock = threading.Lock()
  procs, pumps, logs = [], [], []
  env = dict(os.environ, PYTHONUNBUFFERED="1")
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
      pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{i}] ",
                                                  log_file, lock), daemon=True)
      pump.start()
      pumps.append(pump)
    status = 0
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        status = 128 - code if code < 0 else code
        with lock:
          print(f"[launch_local] process {i} exited with status {code}; "
                "stopping the others", file=sys.stderr, flush=True)
        break
      if all(c == 0 for c in codes):
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    status = 130
  finally:
    _stop_all(procs, grace_s)
    for pump in pumps:
      pump.join(timeout=5)
    for log_file in logs:
      if log_file is not None:
        log_file.close()
  return status


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    print("usage: launch_local.py --num_processes=N [--cpu_devices=C] "
          "[--log_dir=DIR] -- COMMAND ...", file=sys.stderr)
    return 2
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="adds --config.cpu_devices=C to every process")
  parser.add_argument("--log_dir", default=None)
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port (default: a free one)")
  args = parser.parse_args(argv[:split])
  try:
    return launch(argv[split + 1:], num_processes=args.num_processes,
                  cpu_devices=args.cpu_devices, log_dir=args.log_dir,
                  port=args.port)
  except ValueError as error:
    print(f"launch_local.py: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
