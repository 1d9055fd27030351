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
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
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
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    if int(keep) != keep or keep < 1:
      raise ValueError(f"keep must be an integer >= 1, got keep={keep!r}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got "
                       f"best_mode={best_mode!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.best_mode = best_mode
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
      metrics = self.metadata(step).get("metrics") or {}
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

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

