"""Orbax checkpoints of a TrainState: keep the last k and the best, resume.

Layout: ``<workdir>/checkpoints/<step>/{state, meta}``; ``state`` is the
TrainState as an Orbax PyTree (tensorstore arrays, no pickle), ``meta`` a small
JSON dict (epoch, steps per epoch, the metrics of that checkpoint). Saves are
asynchronous (the device-to-host copy is synchronous, so the state may be
donated right after :meth:`CheckpointStore.save` returns) and atomic: a save
interrupted by SIGKILL leaves a temporary directory that is ignored and
cleaned up on the next start, never a half-written checkpoint.

Retention: the ``keep`` most recent checkpoints, plus the one with the best
``best_metric`` (``best_mode`` 'max' or 'min') among those saved with metrics.

Damage: a step directory missing parts of a checkpoint is, if a newer one
exists, the leftover of an interrupted deletion (orbax deletes a step file by
file, then the directories; SIGKILL in between leaves a partial directory): it
is removed when the store opens, with a message. A checkpoint that fails to
load (truncated or zeroed data file, empty ``_METADATA``, truncated meta JSON)
is reported with its path by :meth:`CheckpointStore.restore_latest_intact`,
which falls back to the newest checkpoint that loads and moves the damaged
newer ones aside into ``<directory>.damaged/`` (kept for inspection, out of
the way of the resumed run's saves).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from compsum_jax.training.distributed import fetch
from compsum_jax.training.metrics import to_jsonable
from compsum_jax.training.state import TrainState


def _rank_value(metrics: Mapping[str, Any], name: str, mode: str) -> float:
  """Larger is better: ±(metric, mean over members); NaN/inf rank last."""
  value = float(np.mean(np.asarray(metrics[name], np.float64)))
  if not math.isfinite(value):
    return -math.inf
  return value if mode == "max" else -value


# Parts every finished checkpoint of a CheckpointStore has (relative paths).
_REQUIRED_PARTS = ("_CHECKPOINT_METADATA", os.path.join("state", "_METADATA"),
                   os.path.join("meta", "metadata"))


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a store could be restored (each path and error named)."""


def _print_message(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  line = text.splitlines()[0] if text else ""
  return f"{type(error).__name__}: {line[:300]}"


def missing_checkpoint_parts(step_dir: str | os.PathLike) -> list[str]:
  """Parts of a finished checkpoint absent from ``step_dir`` (empty if whole).

  A cheap structural check (no data is read): the orbax commit metadata,
  the state's ``_METADATA`` and the ``meta`` item must exist.
  """
  step_dir = os.fspath(step_dir)
  return [part for part in _REQUIRED_PARTS
          if not os.path.exists(os.path.join(step_dir, part))]


def _step_dirs(directory: str) -> dict[int, str]:
  """{step: path} of the step-named subdirectories of ``directory``."""
  if not os.path.isdir(directory):
    return {}
  return {int(name): os.path.join(directory, name)
          for name in os.listdir(directory)
          if name.isdigit() and os.path.isdir(os.path.join(directory, name))}


def clean_interrupted_deletions(directory: str | os.PathLike, *,
                                log: Callable[[str], None] = _print_message
                                ) -> list[int]:
  """Removes partial step directories left by an interrupted deletion.

  Orbax only deletes checkpoints older than the newest one, so a partial
  step directory older than a whole one is such a leftover and is removed.
  A partial newest directory is not a deletion leftover: it is moved aside
  (see :func:`quarantine_step`) so that resuming from the previous one works.

  Returns:
    The steps removed or moved aside.
  """
  directory = os.path.abspath(os.fspath(directory))
  steps = _step_dirs(directory)
  whole = [s for s, path in steps.items()
           if not missing_checkpoint_parts(path)]
  newest_whole = max(whole, default=None)
  handled = []
  for step in sorted(steps):
    missing = missing_checkpoint_parts(steps[step])
    if not missing:
      continue
    if newest_whole is not None and step < newest_whole:
      shutil.rmtree(steps[step], ignore_errors=True)
      log(f"checkpoint {steps[step]} was partly deleted (missing "
          f"{', '.join(missing)}; an interrupted deletion of an old "
          "checkpoint): removed it")
    else:
      moved = quarantine_step(directory, step)
      log(f"checkpoint {steps[step]} is incomplete (missing "
          f"{', '.join(missing)}): moved it to {moved}")
    handled.append(step)
  return handled


def quarantine_step(directory: str | os.PathLike, step: int) -> str:
  """Moves ``<directory>/<step>`` to ``<directory>.damaged/<step>-<time>``."""
  directory = os.path.abspath(os.fspath(directory))
  target_dir = directory.rstrip(os.sep) + ".damaged"
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
                        f"-{os.getpid()}")
  os.replace(os.path.join(directory, str(step)), target)
  return target


class CheckpointStore:
  """Saves and restores TrainStates under ``<workdir>/checkpoints``.

  Args:
    directory: the checkpoint directory (created if missing).
    keep: number of most recent checkpoints to keep (≥ 1).
    best_metric: name of the metric that ranks checkpoints (e.g.
      'val_accuracy'), or None to keep only the most recent ones. For K
      members the mean over members ranks them.
    best_mode: 'max' or 'min'.
    async_save: write in a background thread (default True).
    log: receives the messages about damaged checkpoints.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True,
               log: Callable[[str], None] = _print_message):
    if int(keep) != keep or keep < 1:
      raise ValueError(f"keep must be an integer >= 1, got keep={keep!r}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got "
                       f"best_mode={best_mode!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.best_mode = best_mode
    self._log = log
    if jax.process_index() == 0:
      clean_interrupted_deletions(self.directory, log=log)
    policies = [checkpoint_managers.LatestN(n=int(keep))]
    if best_metric is not None:
      policies.append(checkpoint_managers.BestN(
          # BestN keeps the n largest values of get_metric_fn.
          get_metric_fn=lambda m: _rank_value(m, best_metric, best_mode),
          reverse=False, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(
            policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Step of the most recent finished checkpoint, or None."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Step of the best checkpoint by ``best_metric`` (None if none)."""
    if self.best_metric is None:
      return None
    best, best_value = None, None
    for step in self.all_steps():
      try:
        metrics = self.metadata(step).get("metrics") or {}
      except Exception as error:  # noqa: BLE001 - any read failure = damage
        self._log(f"checkpoint {os.path.join(self.directory, str(step))}: "
                  f"metadata unreadable ({_first_line(error)}); not ranked")
        continue
      if self.best_metric not in metrics:
        continue
      value = _rank_value(metrics, self.best_metric, self.best_mode)
      # ties go to the later step, as in orbax BestN (stable sort, last n)
      if best_value is None or value >= best_value:
        best, best_value = step, value
    return best

  def save(self, state: TrainState, *, epoch: int,
           metrics: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None) -> int:
    """Saves ``state`` at step ``int(state.step)`` (max over members).

    Args:
      state: the state (single or stacked members).
      epoch: epochs completed (fractional progress is in the step).
      metrics: JSON-able metrics of this state (used to rank the best).
      extra: more JSON-able metadata.

    Returns:
      The step number of the checkpoint.
    """
    step = int(np.max(fetch(state.step)))
    meta = {"step": step, "epoch": int(epoch),
            "metrics": to_jsonable(dict(metrics or {})),
            **to_jsonable(dict(extra or {}))}
    ranked = None
    if metrics and self.best_metric in metrics:
      ranked = {self.best_metric: meta["metrics"][self.best_metric]}
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics=ranked, force=True)
    return step

  def metadata(self, step: int) -> dict[str, Any]:
    """The JSON metadata saved with checkpoint ``step``."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def restore(self, template: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores checkpoint ``step`` (default latest) into ``template``'s layout.

    Args:
      template: a state with the right structure, shapes, dtypes and
        shardings (e.g. the freshly initialised state); not modified.
      step: which checkpoint; None for the latest.

    Returns:
      (state, metadata).

    Raises:
      FileNotFoundError: no such checkpoint.
    """
    if step is None:
      step = self.latest_step()
    if step is None or step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint at step {step} in "
                              f"{self.directory} (have {self.all_steps()})")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def restore_latest_intact(self, template: TrainState
                            ) -> tuple[TrainState, dict[str, Any], int] | None:
    """Restores the newest checkpoint that loads; reports the damaged ones.

    Tries the checkpoints from the newest down. Each one that fails to load
    is reported (path and error). If an older one loads, the damaged newer
    ones are moved aside (:func:`quarantine_step`) so the resumed run can
    save those steps again.

    Args:
      template: as for :meth:`restore`.

    Returns:
      (state, metadata, step), or None if the store holds no checkpoint.

    Raises:
      CheckpointRestoreError: no checkpoint loads (nothing is moved: when
        every one fails, the cause is more likely the template, e.g. another
        model, than damage); the message lists each path and error.
    """
    failures: list[tuple[int, BaseException]] = []
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(template, step)
      except Exception as error:  # noqa: BLE001 - any load failure = damage
        path = os.path.join(self.directory, str(step))
        self._log(f"checkpoint {path} failed to load ({_first_line(error)})")
        failures.append((step, error))
        continue
      if failures and jax.process_index() == 0:
        for bad, _ in failures:
          moved = quarantine_step(self.directory, bad)
          self._log(f"moved damaged checkpoint "
                    f"{os.path.join(self.directory, str(bad))} to {moved}; "
                    f"resuming from step {step}")
        self._manager.reload()
      return state, meta, step
    if not failures:
      return None
    lines = "; ".join(f"{os.path.join(self.directory, str(s))}: "
                      f"{_first_line(e)}" for s, e in failures)
    raise CheckpointRestoreError(
        f"no checkpoint in {self.directory} could be restored ({lines})"
    ) from failures[0][1]

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

