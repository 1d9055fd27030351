"""One owner per workdir: an exclusive lock file taken at the start of a run.

Two runs writing one workdir (a shared ``runs/`` directory, a re-submitted
job) interleave checkpoints and metric records and can finish with exit code 0
and wrong numbers. :func:`workdir_lock` prevents it::

  with workdir_lock(workdir, process_index=jax.process_index(),
                    process_count=jax.process_count()):
    ...  # the whole run

Lock file ``<workdir>/owner.lock``: a JSON object with the owner's host, pid,
the pid's kernel start time (so a recycled pid is not taken for the owner),
the start time of the run (UTC), the process count and a random token. It is
created atomically: the content is written to a private temporary file that
is then hard-linked to the lock path, which fails if the lock exists, so a
reader never sees a half-written lock. A second owner fails at once with
:class:`WorkdirBusyError` naming the owner. A lock left by a process that
died (SIGKILL, power loss) on this host is detected (its pid is gone, or
belongs to a process started at another time) and taken over with a message;
a lock held from another host is never taken over automatically (its pid
cannot be checked from here): the message says which file to delete.

N cooperating processes of one run (``process_count`` > 1) share the lock:
process 0 owns it (creates and removes it); process k > 0 waits until it
exists and checks that it belongs to a run of ``process_count`` processes
(and, if given, the same ``run_id``). The lock is released when the ``with``
block exits, also on exceptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

LOCK_FILE = "owner.lock"
# Serialises the check-and-take-over of a stale lock between processes of
# this host (flock is released by the kernel when its holder dies).
_GUARD_FILE = "owner.lock.guard"


class WorkdirBusyError(RuntimeError):
  """The workdir is owned by another run (the message names the owner)."""

  def __init__(self, message: str, owner: dict[str, Any] | None,
               lock_path: str):
    super().__init__(message)
    self.owner = owner
    self.lock_path = lock_path


@dataclasses.dataclass
class WorkdirLock:
  """A held (or, for process k > 0, checked) workdir lock.

  Attributes:
    path: the lock file.
    owner: the lock's content (host, pid, start time, token, ...).
    owned: True for the process that created it and removes it on release.
    took_over: the stale owner this lock replaced, or None.
  """

  path: str
  owner: dict[str, Any]
  owned: bool
  took_over: dict[str, Any] | None = None

  def release(self) -> None:
    """Removes the lock file if this process owns it and it is still ours."""
    if not self.owned:
      return
    current = _read_lock(self.path)
    if current is not None and current.get("token") == self.owner["token"]:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    self.owned = False


def _process_start_ticks(pid: int) -> int | None:
  """Kernel start time of ``pid`` (clock ticks since boot), None if unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22 (starttime); the command name (field 2) may hold spaces, so
  # count from the closing parenthesis.
  fields = stat[stat.rfind(")") + 2:].split()
  try:
    return int(fields[19])
  except (IndexError, ValueError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  return True


def owner_alive(owner: dict[str, Any]) -> bool | None:
  """Whether the process recorded in a lock still runs.

  Returns:
    True or False for an owner on this host; None for another host (its
    processes cannot be checked from here).
  """
  if owner.get("host") != socket.gethostname():
    return None
  pid = owner.get("pid")
  if not isinstance(pid, int) or pid <= 0 or not _pid_alive(pid):
    return False
  recorded = owner.get("pid_start_ticks")
  current = _process_start_ticks(pid)
  if recorded is not None and current is not None and recorded != current:
    return False  # the pid was recycled by an unrelated process
  return True


def describe_owner(owner: dict[str, Any]) -> str:
  """'pid 123 on host h (started 2026-01-01T00:00:00+00:00)'."""
  return (f"pid {owner.get('pid')} on host {owner.get('host')!r} (started "
          f"{owner.get('start_time_utc')})")


def _read_lock(path: str) -> dict[str, Any] | None:
  """The lock's JSON content; None if absent; {} if unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    owner = json.loads(text)
  except json.JSONDecodeError:
    return {}
  return owner if isinstance(owner, dict) else {}


def _create_lock(path: str, owner: dict[str, Any]) -> bool:
  """Atomically creates ``path`` holding ``owner``; False if it exists."""
  tmp = f"{path}.{owner['pid']}.{owner['token']}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(owner, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(tmp, path)  # fails with FileExistsError if the lock exists
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)
  return True


@contextlib.contextmanager
def _guard(workdir: str) -> Iterator[None]:
  fd = os.open(os.path.join(workdir, _GUARD_FILE), os.O_RDWR | os.O_CREAT,
               0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the flock


def _print_message(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def acquire(workdir: str | os.PathLike, *, process_index: int = 0,
            process_count: int = 1, run_id: str | None = None,
            wait_timeout_s: float = 60.0,
            log: Callable[[str], None] = _print_message) -> WorkdirLock:
  """Takes (process 0) or checks (process k > 0) the lock of ``workdir``.

  Args:
    workdir: the run directory (created if missing).
    process_index: this process's index among the run's processes.
    process_count: number of cooperating processes of the run.
    run_id: an identifier all processes of the run share (optional); process
      k > 0 then also checks that the lock belongs to this run.
    wait_timeout_s: how long process k > 0 waits for process 0's lock.
    log: receives the take-over message of a stale lock.

  Returns:
    The :class:`WorkdirLock` (release it, or use :func:`workdir_lock`).

  Raises:
    WorkdirBusyError: another live run owns the workdir (or, for process
      k > 0, process 0's lock did not appear or belongs to another run).
    ValueError: bad ``process_index``/``process_count``.
  """
  if (isinstance(process_count, bool) or int(process_count) != process_count
      or process_count < 1):
    raise ValueError(f"process_count must be an integer >= 1, got "
                     f"process_count={process_count!r}")
  if (isinstance(process_index, bool) or int(process_index) != process_index
      or not 0 <= process_index < process_count):
    raise ValueError(f"process_index must be an integer in [0, "
                     f"{process_count}), got process_index={process_index!r}")
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  if process_index > 0:
    return _check_shared(path, process_count, run_id, wait_timeout_s)
  pid = os.getpid()
  owner = {
      "host": socket.gethostname(), "pid": pid,
      "pid_start_ticks": _process_start_ticks(pid),
      "start_time_utc": datetime.datetime.now(datetime.UTC).isoformat(
          timespec="seconds"),
      "process_count": int(process_count), "run_id": run_id,
      "token": secrets.token_hex(8), "argv": list(sys.argv),
  }
  with _guard(workdir):
    if _create_lock(path, owner):
      return WorkdirLock(path=path, owner=owner, owned=True)
    current = _read_lock(path)
    if current is None:  # removed between the link and the read
      if _create_lock(path, owner):
        return WorkdirLock(path=path, owner=owner, owned=True)
      current = _read_lock(path) or {}
    if not current:
      raise WorkdirBusyError(
          f"workdir {workdir} has an unreadable lock file {path}; if no run "
          "is using this workdir, delete that file and start again",
          current, path)
    if current.get("host") == owner["host"] and current.get("pid") == pid:
      raise WorkdirBusyError(
          f"workdir {workdir} is already locked by this process "
          f"({describe_owner(current)}); release that lock first",
          current, path)
    alive = owner_alive(current)
    if alive is None:
      raise WorkdirBusyError(
          f"workdir {workdir} is in use by {describe_owner(current)}, another "
          f"host; wait for that run to finish, use another --workdir, or, if "
          f"that process is gone, delete {path}", current, path)
    if alive:
      raise WorkdirBusyError(
          f"workdir {workdir} is in use by {describe_owner(current)}; wait "
          "for that run to finish or use another --workdir", current, path)
    # Stale: its owner died on this host. Under the guard no other process of
    # this host can take it over at the same time.
    os.remove(path)
    if not _create_lock(path, owner):
      current = _read_lock(path) or {}
      raise WorkdirBusyError(
          f"workdir {workdir} was taken by {describe_owner(current)} while "
          "its stale lock was being replaced", current, path)
  log(f"workdir {workdir}: took over the stale lock of "
      f"{describe_owner(current)}, which is no longer running")
  return WorkdirLock(path=path, owner=owner, owned=True, took_over=current)


def _check_shared(path: str, process_count: int, run_id: str | None,
                  wait_timeout_s: float) -> WorkdirLock:
  """Process k > 0: waits for process 0's lock and checks it is this run's."""
  deadline = time.monotonic() + float(wait_timeout_s)
  while True:
    current = _read_lock(path)
    if current:
      break
    if time.monotonic() >= deadline:
      raise WorkdirBusyError(
          f"process 0 did not lock {os.path.dirname(path)} within "
          f"{wait_timeout_s:g} s (no readable {path})", current, path)
    time.sleep(0.05)
  if current.get("process_count") != process_count or (
      run_id is not None and current.get("run_id") != run_id):
    raise WorkdirBusyError(
        f"workdir {os.path.dirname(path)} is locked by "
        f"{describe_owner(current)}, a run of "
        f"{current.get('process_count')} process(es) with run_id="
        f"{current.get('run_id')!r}, not this run of {process_count} with "
        f"run_id={run_id!r}", current, path)
  return WorkdirLock(path=path, owner=current, owned=False)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, *, process_index: int = 0,
                 process_count: int = 1, run_id: str | None = None,
                 wait_timeout_s: float = 60.0,
                 log: Callable[[str], None] = _print_message
                 ) -> Iterator[WorkdirLock]:
  """Holds the workdir lock for the ``with`` block (see :func:`acquire`)."""
  lock = acquire(workdir, process_index=process_index,
                 process_count=process_count, run_id=run_id,
                 wait_timeout_s=wait_timeout_s, log=log)
  try:
    yield lock
  finally:
    lock.release()


__all__ = ["LOCK_FILE", "WorkdirBusyError", "WorkdirLock", "acquire",
           "describe_owner", "owner_alive", "workdir_lock"]
