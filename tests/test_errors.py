"""Tests of compsum_jax.training.errors: device OOM versus a full disk."""

import errno
import os

import jax
import jax.numpy as jnp
import pytest

from compsum_jax.training import errors as errors_lib


def _jax_runtime_error(message):
  cls = getattr(jax.errors, "JaxRuntimeError", None)
  if cls is None:  # older jax
    from jax._src.lib import xla_client
    cls = xla_client.XlaRuntimeError
  return cls(message)


def test_real_device_allocation_failure_is_device_oom():
  # 2**60 bytes cannot be allocated by any device allocator: XLA raises its
  # own RESOURCE_EXHAUSTED runtime error (not a Python MemoryError).
  with pytest.raises(Exception) as info:
    jax.block_until_ready(jnp.zeros((2 ** 58,), jnp.float32))
  if "RESOURCE_EXHAUSTED" not in str(info.value):
    pytest.skip(f"this backend reports {type(info.value).__name__}: "
                f"{str(info.value)[:200]}")
  assert errors_lib.is_device_out_of_memory(info.value)
  assert not errors_lib.is_disk_full(info.value)


@pytest.mark.parametrize("message", [
    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8589934592 "
    "bytes.",
    "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory "
    "in memory space hbm. Used 20.5G of 15.48G hbm.",
    "RESOURCE_EXHAUSTED: Failed to allocate request for 2.00GiB on device "
    "ordinal 0",
])
def test_xla_device_oom_messages(message):
  assert errors_lib.is_device_out_of_memory(_jax_runtime_error(message))


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    # tensorstore's report of a full disk under orbax
    ValueError("RESOURCE_EXHAUSTED: Error writing local file "
               "\"/x/checkpoints/3/state/d/abc\": [OS error 28: No space left "
               "on device]"),
    # the same text inside a JAX runtime error (e.g. from a host callback)
    _jax_runtime_error("RESOURCE_EXHAUSTED: Error writing \"/x/f\": No space "
                       "left on device"),
    MemoryError(),
    RuntimeError("RESOURCE_EXHAUSTED: too many open files"),
    ValueError("out of memory"),  # not an XLA runtime error
])
def test_disk_and_other_errors_are_not_device_oom(error):
  assert not errors_lib.is_device_out_of_memory(error)


def test_oom_wrapped_around_enospc_is_not_oom():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as inner:
      raise _jax_runtime_error(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate") \
          from inner
  except Exception as error:  # noqa: BLE001
    outer = error
  assert errors_lib.is_disk_full(outer)
  assert not errors_lib.is_device_out_of_memory(outer)


def test_storage_error_names_path_and_free_space(tmp_path):
  error = ValueError("RESOURCE_EXHAUSTED: [OS error 28: No space left on "
                     "device]")
  converted = errors_lib.storage_error(error, tmp_path / "a" / "b")
  assert isinstance(converted, OSError)
  assert converted.errno == errno.ENOSPC
  assert converted.path == os.path.abspath(tmp_path / "a" / "b")
  free = os.statvfs(tmp_path)
  expected_free = free.f_bavail * free.f_frsize
  # measured on tmp_path (the nearest existing parent), within 64 MiB of an
  # independent statvfs taken a moment later
  assert abs(converted.free_bytes - expected_free) < 64 * 2 ** 20
  assert str(tmp_path / "a" / "b") in str(converted)
  assert "free space" in str(converted)
  assert errors_lib.storage_error(KeyError("x"), tmp_path) is None
  assert errors_lib.storage_error(
      OSError(errno.EROFS, "Read-only file system"), tmp_path).errno == (
          errno.EROFS)


def test_reraise_storage_errors_decorator(tmp_path):
  @errors_lib.reraise_storage_errors("where")
  def write(where, fail):
    raise fail

  with pytest.raises(errors_lib.StorageError, match="no space left"):
    write(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
  with pytest.raises(KeyError):  # other errors pass through unchanged
    write(where=tmp_path, fail=KeyError("k"))
