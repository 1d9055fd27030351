"""Telling errors apart: device memory exhaustion versus a full disk.

XLA reports device memory exhaustion as ``RESOURCE_EXHAUSTED``, and so does
tensorstore (under Orbax) when a checkpoint write hits a full disk. A caller
that falls back to a smaller computation on out-of-memory must not do so for a
full disk: :func:`is_device_out_of_memory` is true only for the former, and
:func:`storage_error` turns the latter (and ENOSPC/EDQUOT/EROFS from Python's
own writes) into a :class:`StorageError` naming the path and its free space.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

# OSError numbers that mean "this storage cannot take the write".
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# Texts of the same conditions inside other errors (tensorstore ValueErrors,
# orbax wrappers, XlaRuntimeError from a host callback writing a file).
_STORAGE_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|Read-only file system|"
    r"File too large|\[OS error 28\]|errno 28\b|ENOSPC|EDQUOT", re.IGNORECASE)
# Device allocator wording of XLA's runtimes (GPU, TPU, CPU).
_DEVICE_OOM_TEXT = re.compile(
    r"out of memory|ran out of memory|failed to allocate|"
    r"allocator .* ran out|Attempting to (re)?allocate .* bytes|"
    r"memory space hbm|Resource exhausted: .*allocat", re.IGNORECASE)


class StorageError(OSError):
  """A write failed because the storage is full, over quota or read-only.

  Attributes:
    path: the file or directory being written.
    free_bytes: free space of ``path``'s filesystem when the error was seen
      (None if it could not be measured).
  """

  def __init__(self, errno_value: int, message: str, path: str,
               free_bytes: int | None):
    super().__init__(errno_value, message, path)
    self.path = path
    self.free_bytes = free_bytes

  def __str__(self) -> str:
    return self.strerror


def _chain(error: BaseException) -> Iterator[BaseException]:
  """``error``, its causes/contexts and the members of exception groups."""
  seen: set[int] = set()
  todo = [error]
  while todo:
    current = todo.pop()
    if current is None or id(current) in seen:
      continue
    seen.add(id(current))
    yield current
    todo.extend([current.__cause__, current.__context__])
    if isinstance(current, BaseExceptionGroup):
      todo.extend(current.exceptions)


def _is_storage_failure(error: BaseException) -> int | None:
  """The errno of a storage failure in ``error``'s chain, else None."""
  for item in _chain(error):
    if isinstance(item, OSError) and item.errno in _STORAGE_ERRNOS:
      return item.errno
    if _STORAGE_TEXT.search(str(item)):
      return errno.ENOSPC
  return None


def is_disk_full(error: BaseException) -> bool:
  """True if ``error`` (or its chain) is a full disk / quota / read-only FS."""
  return _is_storage_failure(error) is not None


def is_device_out_of_memory(error: BaseException) -> bool:
  """True only for genuine device (accelerator/XLA) memory exhaustion.

  That is a JAX/XLA runtime error whose message says ``RESOURCE_EXHAUSTED``
  with allocator wording ("Out of memory while trying to allocate ...",
  "Ran out of memory in memory space hbm", ...). False for a full disk
  (ENOSPC, also when tensorstore reports it as ``RESOURCE_EXHAUSTED``),
  other OS errors, host ``MemoryError`` and everything else.
  """
  if is_disk_full(error):
    return False
  for item in _chain(error):
    if isinstance(item, (OSError, MemoryError)):
      continue
    names = {cls.__name__ for cls in type(item).__mro__}
    if not names & {"XlaRuntimeError", "JaxRuntimeError"}:
      continue
    text = str(item)
    if "RESOURCE_EXHAUSTED" in text and _DEVICE_OOM_TEXT.search(text):
      return True
  return False


def free_bytes(path: str | os.PathLike) -> int | None:
  """Free bytes of the filesystem holding ``path`` (or its nearest parent)."""
  path = os.path.abspath(os.fspath(path))
  while path and not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def _format_bytes(count: int | None) -> str:
  if count is None:
    return "unknown"
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if count < 1024 or unit == "TiB":
      return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
    count /= 1024
  raise AssertionError("unreachable")


def storage_error(error: BaseException, path: str | os.PathLike
                  ) -> StorageError | None:
  """A :class:`StorageError` describing ``error`` if it is a storage failure.

  Args:
    error: any exception (an OSError, a tensorstore/orbax error, ...).
    path: what was being written (reported, and used to measure free space).

  Returns:
    The StorageError (raise it ``from error``), or None if ``error`` is not a
    full disk / quota / read-only filesystem.
  """
  code = _is_storage_failure(error)
  if code is None:
    return None
  path = os.path.abspath(os.fspath(path))
  free = free_bytes(path)
  what = {errno.ENOSPC: "no space left on device",
          errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system",
          errno.EFBIG: "file too large"}[code]
  message = (f"could not write {path}: {what} (free space there: "
             f"{_format_bytes(free)}); this is a storage error, not an "
             "out-of-memory error: free disk space or use another --workdir "
             f"({type(error).__name__}: {_first_line(error)})")
  return StorageError(code, message, path, free)


def reraise_storage_errors(path_argument: str) -> Callable[[_F], _F]:
  """Decorator: storage failures inside the call become :class:`StorageError`.

  Args:
    path_argument: name of the decorated function's argument holding the
      path being written (e.g. 'workdir'); it is named in the error.
  """

  def decorate(function: _F) -> _F:
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      try:
        return function(*args, **kwargs)
      except StorageError:
        raise
      except Exception as error:
        bound = signature.bind_partial(*args, **kwargs)
        path = bound.arguments.get(path_argument, ".")
        converted = storage_error(error, path)
        if converted is None:
          raise
        raise converted from error

    return wrapper  # type: ignore[return-value]

  return decorate


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else ""


__all__ = ["StorageError", "free_bytes", "is_device_out_of_memory",
           "is_disk_full", "reraise_storage_errors", "storage_error"]
