"""How an experiment binary's run starts and ends: one owner, honest exit.

* :func:`owned_workdir`: holds ``training.workdir_lock`` for the whole run
  (one owner per workdir; N cooperating processes share it) and, when the
  run fails before leaving anything behind, removes the directories it
  created, so a failed start leaves no empty ``workdir``.
* :func:`fatal_errors`: in a binary's ``main``, prints a busy workdir, a
  storage failure (full disk, ...) or a diverged run as one line on stderr
  and exits with :data:`FAILURE_EXIT_CODE`.
* :class:`DivergedRunsError`: raised by an experiment after it has written
  its report with the diverged runs marked as failed, so that the binary
  still exits non-zero.
* Divergence markers: a run that diverged writes ``diverged.json`` into its
  run directory; a restart refuses to train it again (a NaN run is usually
  deterministic) unless the user asks with ``--retry_diverged``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from compsum_jax import training
from compsum_jax.training import workdir as workdir_lib

FAILURE_EXIT_CODE = 1
CONFIG_MISMATCH_EXIT_CODE = 2  # a usage error: the flags must change
DIVERGED_FILE = "diverged.json"
RETRY_FLAG = "--retry_diverged"
NEW_RUN_DIR_FLAG = "--new_run_dir"


class DivergedBeforeError(RuntimeError):
  """A run diverged on an earlier start and no retry was asked for."""


class DivergedRunsError(RuntimeError):
  """Some runs diverged; the report was written with them marked as failed.

  Attributes:
    results: the results dict the experiment wrote (the main run's).
    paths: {name: path} of the files it wrote.
  """

  def __init__(self, message: str, results: Any = None,
               paths: dict[str, str] | None = None):
    super().__init__(message)
    self.results = results
    self.paths = paths or {}


class ConfigMismatchError(ValueError):
  """The workdir holds runs made with a different config (the message names
  the differing fields)."""


def exit_with_failure(message: str, code: int = FAILURE_EXIT_CODE
                      ) -> NoReturn:
  """Prints ``<program>: <message>`` to stderr and exits with ``code``."""
  program = sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "experiment"
  print(f"{program}: {message}", file=sys.stderr, flush=True)
  raise SystemExit(code)


@contextlib.contextmanager
def fatal_errors() -> Iterator[None]:
  """One line and exit status 1 for the failures a user must act on.

  A busy workdir (:class:`training.WorkdirBusyError`), a storage failure
  (:class:`training.StorageError`), a diverged run
  (:class:`training.NonFiniteError`, :class:`DivergedBeforeError`,
  :class:`DivergedRunsError`) and a run
  that is not finished (:class:`training.RunNotFinishedError`) are reported
  without traceback; other errors keep theirs. A workdir holding another
  config's runs (:class:`ConfigMismatchError`) exits with status 2.
  """
  try:
    yield
  except training.WorkdirBusyError as error:
    exit_with_failure(f"error: {error}")
  except training.StorageError as error:
    exit_with_failure(f"storage error: {error}")
  except (training.NonFiniteError, DivergedBeforeError,
          DivergedRunsError) as error:
    exit_with_failure(f"diverged: {error}")
  except training.RunNotFinishedError as error:
    exit_with_failure(f"error: {error}")
  except ConfigMismatchError as error:
    exit_with_failure(f"error: {error}", CONFIG_MISMATCH_EXIT_CODE)


def _remove_empty_tree(top: str, keep: tuple[str, ...]) -> None:
  """Removes ``top`` if it holds only empty directories and ``keep`` files."""
  for root, _, files in os.walk(top, topdown=False):
    for name in files:
      if root == top and name in keep:
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(root, name))
    with contextlib.suppress(OSError):  # not empty: something was written
      os.rmdir(root)


@contextlib.contextmanager
def owned_workdir(workdir: str, *, process_index: int = 0,
                  process_count: int = 1) -> Iterator[workdir_lib.WorkdirLock]:
  """Holds the workdir lock for the block; cleans up after a failed start.

  If ``workdir`` did not exist and the block raises before writing any file
  into it, the directories made for it (and the lock's guard file) are
  removed again.

  Raises:
    training.WorkdirBusyError: another live run owns ``workdir``.
  """
  workdir = os.path.abspath(workdir)
  existed = os.path.exists(workdir)
  try:
    with training.workdir_lock(workdir, process_index=process_index,
                               process_count=process_count) as lock:
      yield lock
  except BaseException:
    if not existed and process_index == 0:
      _remove_empty_tree(workdir, keep=(workdir_lib.LOCK_FILE + ".guard",))
    raise


def diverged_marker(run_dir: str) -> dict[str, Any] | None:
  """The divergence record of ``run_dir`` (None if it never diverged)."""
  path = os.path.join(run_dir, DIVERGED_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {"message": f"unreadable {path}"}


def mark_diverged(run_dir: str, error: training.NonFiniteError,
                  **details: Any) -> None:
  """Writes ``<run_dir>/diverged.json`` (step, members, message, details)."""
  os.makedirs(run_dir, exist_ok=True)
  record = {"step": error.step, "members": error.members,
            "last_checkpoint_step": error.last_checkpoint_step,
            "message": str(error), **details}
  tmp = os.path.join(run_dir, DIVERGED_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(run_dir, DIVERGED_FILE))


def check_not_diverged(run_dir: str, retry_diverged: bool) -> None:
  """Refuses a run that diverged before, unless ``retry_diverged``.

  With ``retry_diverged`` the marker is removed and the run resumes from its
  last good checkpoint.

  Raises:
    DivergedBeforeError: the run diverged on an earlier start.
  """
  marker = diverged_marker(run_dir)
  if marker is None:
    return
  if retry_diverged:
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(run_dir, DIVERGED_FILE))
    return
  raise DivergedBeforeError(
      f"the run in {run_dir} diverged on an earlier start "
      f"({marker.get('message', 'see ' + DIVERGED_FILE)}); not retried; "
      f"pass {RETRY_FLAG} to train it again from its last good checkpoint")


__all__ = ["CONFIG_MISMATCH_EXIT_CODE", "ConfigMismatchError", "DIVERGED_FILE",
           "DivergedBeforeError", "DivergedRunsError", "FAILURE_EXIT_CODE",
           "NEW_RUN_DIR_FLAG", "RETRY_FLAG", "check_not_diverged", "diverged_marker",
           "exit_with_failure", "fatal_errors", "mark_diverged",
           "owned_workdir"]
