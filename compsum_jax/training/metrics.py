"""Run records in the workdir: metrics (JSON lines + TensorBoard), config, env.

Files written (by process 0 only):

  config.json       the run's config (primitives only), written once;
  environment.json  versions of python/jax/jaxlib/flax/optax/orbax/numpy, the
                    devices and the package's git commit, one entry per start
                    (a resumed run appends one);
  metrics.jsonl     one JSON object per line: {"step", "split", name: value}
                    (values are numbers, or lists of K numbers for members);
  tensorboard/      tensorboardX event files, tags "<split>/<name>" and
                    "<split>/<name>/member_<k>" for members.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

CONFIG_FILE = "config.json"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def to_jsonable(value: Any) -> Any:
  """Config/metric values → JSON types (ConfigDict, NumPy, JAX arrays)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    arr = np.asarray(value)
    return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # 'nan', 'inf': JSON has no literal for them
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise ValueError(f"config/metric value {value!r} of type "
                   f"{type(value).__name__} is not a primitive; configs hold "
                   "primitives only")


def write_config(workdir: str, config: Any) -> dict[str, Any]:
  """Writes ``config.json``, or checks it against the one already there.

  Raises:
    ValueError: the workdir holds a different config (resuming a run with a
      changed config would silently mix two experiments).
  """
  config = to_jsonable(config)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved != config:
      changed = sorted(k for k in set(saved) | set(config)
                       if saved.get(k) != config.get(k))
      raise ValueError(f"workdir {workdir!r} holds a run with a different "
                       f"config (differing top-level keys: {changed}); use a "
                       "new --workdir or restore the original config")
    return config
  if jax.process_index() == 0:
    _atomic_write_json(path, config)
  return config


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                         capture_output=True, text=True, timeout=5)
  except (OSError, subprocess.SubprocessError):
    return None
  if out.returncode != 0:
    return None
  return out.stdout.strip() or None


def environment_record(**extra: Any) -> dict[str, Any]:
  """Versions, devices and host facts of this process, as a JSON dict."""
  import flax
  import jaxlib
  import optax
  import orbax.checkpoint as ocp

  devices = jax.devices()
  return {
      "time_utc": datetime.datetime.now(datetime.UTC).isoformat(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "versions": {
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax_checkpoint": getattr(ocp, "__version__", None),
          "numpy": np.__version__,
      },
      "git_commit": _git_commit(),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "backend": jax.default_backend(),
      "device_count": len(devices),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind if devices else None,
      **to_jsonable(extra),
  }


def append_environment(workdir: str, **extra: Any) -> None:
  """Appends this process's :func:`environment_record` to environment.json."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, ENVIRONMENT_FILE)
  records = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
  records.append(environment_record(**extra))
  _atomic_write_json(path, records)


def _atomic_write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _summary_writer_class():
  """tensorboardX.SummaryWriter, imported without importing PyTorch.

  tensorboardX 2.6 runs ``import torch`` at import time when torch is
  installed (1.5 s, and the library must not depend on torch); we only log
  Python floats, so torch is hidden during that import unless the process
  already imported it.
  """
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


@dataclasses.dataclass
class MetricsLog:
  """The records of ``metrics.jsonl`` and what :func:`read_metrics` dropped.

  Attributes:
    records: the readable records, in file order.
    path: the file.
    exists: whether the file exists (False: ``records`` is empty).
    torn_last_line: a partial last line (no newline, not valid JSON) was
      dropped, i.e. the writer was killed mid-write: the history may lack
      its last record.
  """

  records: list[dict[str, Any]]
  path: str
  exists: bool
  torn_last_line: bool


def read_metrics_log(workdir: str) -> MetricsLog:
  """Reads ``metrics.jsonl`` like :func:`read_metrics`, telling what it dropped.

  Raises:
    ValueError: an unreadable line other than a torn last one.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return MetricsLog(records=[], path=path, exists=False,
                      torn_last_line=False)
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  records, torn = [], False
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines) and not line.endswith("\n"):
        torn = True  # torn final write
        break
      raise ValueError(f"{path}: line {number} is not valid JSON "
                       f"({error.msg})") from error
  return MetricsLog(records=records, path=path, exists=True,
                    torn_last_line=torn)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of ``metrics.jsonl`` (empty list if none).

  A process killed while appending (SIGKILL, power loss) can leave a partial
  last line without its newline: that line is dropped, so a resumed run can
  read the file. An unreadable line anywhere else raises ``ValueError``.
  To tell whether a line was dropped or the file is missing, use
  :func:`read_metrics_log`; to check the history against the final
  checkpoint, :func:`compsum_jax.training.history.check_history`.
  """
  return read_metrics_log(workdir).records


class MetricsWriter:
  """Appends metric records to metrics.jsonl and TensorBoard event files.

  Args:
    workdir: the run directory.
    resume_step: on resume, records with step > resume_step (written after
      the checkpoint the run restarts from) are dropped from metrics.jsonl so
      the file describes one consistent run.
    tensorboard: also write tensorboardX event files.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None,
               tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self._path):
      kept = [r for r in read_metrics(workdir) if r.get("step", 0) <=
              resume_step]
      with open(self._path + ".tmp", "w", encoding="utf-8") as f:
        for record in kept:
          f.write(json.dumps(record, sort_keys=True) + "\n")
      os.replace(self._path + ".tmp", self._path)
    elif resume_step is None and os.path.exists(self._path):
      os.remove(self._path)  # a fresh run starts a fresh record
    self._file = open(self._path, "a", encoding="utf-8")
    if tensorboard:
      self._tb = _summary_writer_class()(
          os.path.join(workdir, TENSORBOARD_DIR), purge_step=resume_step)

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    """Writes one record {"step": step, "split": split, **metrics}."""
    if not self._active:
      return
    values = to_jsonable(dict(metrics))
    record = {"step": int(step), "split": split, **values}
    self._file.write(json.dumps(record, sort_keys=True) + "\n")
    self._file.flush()
    if self._tb is None:
      return
    for name, value in values.items():
      if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        continue
      if isinstance(value, list):
        for k, v in enumerate(value):
          if isinstance(v, (int, float)):
            self._tb.add_scalar(f"{split}/{name}/member_{k}", v, int(step))
      else:
        self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def flush(self) -> None:
    if self._active:
      self._file.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
