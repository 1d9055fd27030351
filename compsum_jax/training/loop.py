"""The reusable training loop: epochs, evaluation, checkpoints, resume, logs.

:func:`fit` drives a train step built by :func:`make_train_step` (the one
step; augmentation, if any, is the step's ``augment_fn`` hook so it runs on
device inside the compiled call) over epochs of host batches and takes care
of everything around it:

* **resume**: if ``<workdir>/checkpoints`` holds a checkpoint, the latest one
  is restored and training continues from its step. Epoch e's batches come
  from ``train_batches(e)``, a pure function of (seed, e) by contract, and the
  first ``step mod steps_per_epoch`` batches of the interrupted epoch are
  skipped, so the resumed run applies exactly the updates of an uninterrupted
  one (bit-identical parameters on the same machine and software);
* **checkpoints**: at the end of every ``checkpoint_every_epochs``-th epoch,
  of every epoch with an evaluation (with its metrics) and of the last one,
  and optionally every ``checkpoint_every_steps``; the last
  ``keep_checkpoints`` and the best by ``best_metric`` are kept
  (:class:`CheckpointStore`);
* **non-finite stop**: the per-step 'finite' flag of the step is checked
  before every log record and every checkpoint; the first update whose loss
  or gradient is NaN/Inf raises :class:`NonFiniteError` naming that step
  (and the members), and no checkpoint after it is ever written, so the
  latest checkpoint is the last good state;
* **records**: config.json, environment.json (versions, devices),
  metrics.jsonl + TensorBoard (see :mod:`compsum_jax.training.metrics`), and a
  tqdm progress bar with ETA.
* **several processes** (``compsum_jax.training.distributed``): every
  process calls ``fit`` with the same arguments and its own rows of each
  global batch (``global_batch_size``); all take part in every checkpoint
  save and restore (orbax; process 0 writes the metadata), metrics are
  fetched from all processes, and records and the progress bar come from
  process 0 only.

Step numbering: "step s" is the update that consumes the s-th batch of the
run (0-based) and takes ``state.step`` from s to s + 1; a checkpoint "at step
s" holds the state after s updates.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
import tqdm

from compsum_jax.training import errors as errors_lib
from compsum_jax.training import metrics as metrics_lib
from compsum_jax.training.checkpoint import CheckpointStore
from compsum_jax.training.distributed import fetch, is_primary, sync
from compsum_jax.training.state import TrainState
from compsum_jax.training.step import Batch, place_state, shard_batch

CHECKPOINT_DIR = "checkpoints"


class NonFiniteError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient.

  Attributes:
    step: the 0-based update index (the batch index of the run) at which the
      loss or gradient first became non-finite.
    members: indices of the affected members (K-member runs), else None.
    last_checkpoint_step: the step of the latest (good) checkpoint, or None.
  """

  def __init__(self, step: int, members: list[int] | None,
               last_checkpoint_step: int | None, workdir: str):
    self.step = step
    self.members = members
    self.last_checkpoint_step = last_checkpoint_step
    who = f" for members {members}" if members is not None else ""
    kept = (f"the last good checkpoint is step {last_checkpoint_step} in "
            f"{os.path.join(workdir, CHECKPOINT_DIR)}"
            if last_checkpoint_step is not None else "no checkpoint was saved")
    super().__init__(f"non-finite loss or gradient at step {step}{who} (the "
                     f"update taking state.step from {step} to {step + 1}); "
                     f"training stopped; {kept}")


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    state: the final TrainState (on device, with the mesh's sharding).
    step: number of updates applied (= state.step).
    resumed_from_step: the checkpoint step the run resumed from, or None.
    best_step: step of the best checkpoint by ``best_metric``, or None.
    eval_history: list of (step, metrics) of every evaluation of this process.
    final_metrics: the evaluation committed with the final checkpoint (read
      back from it; also for a run that was already finished), or None
      without an ``evaluate_fn``. Report this as final, not a log record.
  """

  state: TrainState
  step: int
  resumed_from_step: int | None
  best_step: int | None
  eval_history: list[tuple[int, dict[str, Any]]]
  final_metrics: dict[str, Any] | None = None


def _check_positive_int(value: Any, name: str, *, allow_none: bool = False
                        ) -> int | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
  return int(value)


@errors_lib.reraise_storage_errors("workdir")
def fit(*, workdir: str | os.PathLike, config: Any, state: TrainState,
        train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]],
        train_batches: Callable[[int], Iterable[Batch]],
        steps_per_epoch: int, num_epochs: int,
        mesh: jax.sharding.Mesh | None = None,
        evaluate_fn: Callable[[TrainState, int], Mapping[str, Any]]
        | None = None,
        eval_every_epochs: int = 1,
        checkpoint_every_steps: int | None = None,
        checkpoint_every_epochs: int = 1,
        keep_checkpoints: int = 3,
        best_metric: str | None = None, best_mode: str = "max",
        log_every_steps: int = 50,
        learning_rate_fn: Callable[[int], Any] | None = None,
        progress: bool = True, tensorboard: bool = True,
        global_batch_size: int | None = None) -> FitResult:
  """Trains ``state`` for ``num_epochs`` epochs, resuming from ``workdir``.

  Args:
    workdir: run directory (created); holds config, checkpoints, metrics.
    config: the run's config (ConfigDict or dict of primitives); saved as
      config.json, and must equal the saved one when resuming.
    state: the freshly initialised state (also the template for restoring);
      placed on ``mesh`` with :func:`place_state`. It is consumed: the
      donating train step reuses its buffers, so use ``FitResult.state``
      afterwards.
    train_step: from :func:`make_train_step` (with the same ``mesh``).
    train_batches: ``epoch -> iterable of host batches`` (dicts of NumPy
      arrays [B, ...]); must be a pure function of (seed, epoch), e.g.
      ``lambda e: data.train_batches(ds.train, B, seed=seed, epoch=e)``, and
      yield at least ``steps_per_epoch`` batches.
    steps_per_epoch: updates per epoch (``data.num_train_batches``).
    num_epochs: total epochs of the run (a resumed run stops at the same
      total).
    mesh: the mesh ``train_step`` was built with; batches are sharded on it.
    evaluate_fn: ``(state, epochs_done) -> {name: value}`` called every
      ``eval_every_epochs`` epochs and after the last one; values are numbers
      or [K] arrays; logged as split 'eval' and stored with the checkpoint.
    eval_every_epochs: evaluation period in epochs.
    checkpoint_every_steps: extra checkpoints every this many steps (besides
      every epoch end); None for epoch ends only.
    checkpoint_every_epochs: epoch-end checkpoint period; epochs with an
      evaluation and the last epoch are always checkpointed. A restart loses at
      most this many epochs of work.
    keep_checkpoints: most recent checkpoints kept.
    best_metric: an ``evaluate_fn`` key ranking checkpoints (e.g.
      'val_accuracy'), mean over members; the best one is kept as well.
    best_mode: 'max' or 'min' for ``best_metric``.
    log_every_steps: period of the 'train' records (means over the period)
      and of the non-finite check.
    learning_rate_fn: schedule, to log 'learning_rate' (e.g. make_schedule).
    progress: show a tqdm progress bar with ETA.
    tensorboard: also write TensorBoard event files.
    global_batch_size: several processes: ``train_batches`` yields only this
      process's rows ``process_batch_rows(mesh, B)`` of each global batch of
      B rows (see :func:`shard_batch`); None: whole batches. Every process
      calls ``fit`` with the same arguments; checkpoints are written by all,
      records and the progress bar by process 0 only.

  Returns:
    A :class:`FitResult`.

  Raises:
    NonFiniteError: a NaN/Inf loss or gradient (the latest checkpoint is the
      last good state).
    StorageError: a write failed on a full disk / quota / read-only
      filesystem (path and free space named).
    CheckpointRestoreError: checkpoints exist but none loads.
    ValueError: bad arguments, a changed config or ``steps_per_epoch`` on
      resume, or ``train_batches`` yielding too few batches.
  """
  steps_per_epoch = _check_positive_int(steps_per_epoch, "steps_per_epoch")
  num_epochs = _check_positive_int(num_epochs, "num_epochs")
  eval_every_epochs = _check_positive_int(eval_every_epochs,
                                          "eval_every_epochs")
  checkpoint_every_steps = _check_positive_int(
      checkpoint_every_steps, "checkpoint_every_steps", allow_none=True)
  checkpoint_every_epochs = _check_positive_int(checkpoint_every_epochs,
                                                "checkpoint_every_epochs")
  log_every_steps = _check_positive_int(log_every_steps, "log_every_steps")
  if best_metric is not None and evaluate_fn is None:
    raise ValueError(f"best_metric={best_metric!r} needs an evaluate_fn")
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  metrics_lib.write_config(workdir, config)
  store = CheckpointStore(os.path.join(workdir, CHECKPOINT_DIR),
                          keep=keep_checkpoints, best_metric=best_metric,
                          best_mode=best_mode)
  # Process 0 cleans up interrupted deletions when the store opens.
  sync("checkpoint_store_open")
  state = place_state(state, mesh)
  # The newest checkpoint that loads; damaged newer ones are reported.
  restored = store.restore_latest_intact(state)
  sync("checkpoint_restored")
  resumed_from = None
  if restored is not None:
    state, meta, resumed_from = restored
    saved_spe = meta.get("steps_per_epoch")
    if saved_spe is not None and saved_spe != steps_per_epoch:
      store.close()
      raise ValueError(f"resuming {workdir!r}: it was trained with "
                       f"steps_per_epoch={saved_spe}, now steps_per_epoch="
                       f"{steps_per_epoch}")
  step = int(np.max(fetch(state.step)))
  total_steps = num_epochs * steps_per_epoch
  metrics_lib.append_environment(workdir, start_step=step,
                                 resumed_from_step=resumed_from,
                                 total_steps=total_steps)
  writer = metrics_lib.MetricsWriter(workdir, resume_step=resumed_from,
                                     tensorboard=tensorboard)
  bar = tqdm.tqdm(total=total_steps, initial=step, unit="step",
                  disable=not progress or not is_primary(),
                  dynamic_ncols=True, desc="train")
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  eval_history: list[tuple[int, dict[str, Any]]] = []
  timer = [time.perf_counter(), step]
  extra_meta = {"steps_per_epoch": steps_per_epoch, "num_epochs": num_epochs,
                "eval_every_epochs": eval_every_epochs}

  def flush() -> None:
    """Fetches pending step metrics, stops on non-finite, writes a record."""
    if not pending:
      return
    steps = [s for s, _ in pending]
    values = fetch([m for _, m in pending])
    pending.clear()
    for s, m in zip(steps, values, strict=True):
      finite = np.asarray(m["finite"])
      if not np.all(finite > 0):
        members = (np.flatnonzero(finite <= 0).tolist() if finite.ndim
                   else None)
        store.wait_until_finished()
        writer.write(s, "error", {"nonfinite_step": s,
                                  "members": members or []})
        raise NonFiniteError(s, members, store.latest_step(), workdir)
    now = time.perf_counter()
    record = {name: np.mean([np.asarray(m[name]) for m in values], axis=0)
              for name in values[-1] if name != "finite"}
    done = steps[-1] + 1
    record["epoch"] = done / steps_per_epoch
    record["steps_per_sec"] = (done - timer[1]) / max(now - timer[0], 1e-9)
    if learning_rate_fn is not None:
      record["learning_rate"] = float(learning_rate_fn(steps[-1]))
    timer[:] = [now, done]
    writer.write(done, "train", record)
    loss = np.asarray(record["loss"])
    bar.set_postfix(loss=f"{float(np.mean(loss)):.4g}")

  try:
    for epoch in range(step // steps_per_epoch, num_epochs):
      skip = step - epoch * steps_per_epoch
      batches = itertools.islice(iter(train_batches(epoch)), skip,
                                 steps_per_epoch)
      for batch in batches:
        state, step_metrics = train_step(
            state, shard_batch(batch, mesh,
                               global_batch_size=global_batch_size))
        pending.append((step, step_metrics))
        step += 1
        bar.update(1)
        if step % log_every_steps == 0:
          flush()
        if (checkpoint_every_steps and step % checkpoint_every_steps == 0
            and step % steps_per_epoch):
          flush()
          store.save(state, epoch=epoch, extra=extra_meta)
      if step != (epoch + 1) * steps_per_epoch:
        raise ValueError(f"train_batches({epoch}) yielded "
                         f"{step - epoch * steps_per_epoch} batches, fewer "
                         f"than steps_per_epoch={steps_per_epoch}")
      flush()
      epochs_done = epoch + 1
      eval_metrics = None
      if evaluate_fn is not None and (epochs_done % eval_every_epochs == 0 or
                                      epochs_done == num_epochs):
        eval_metrics = metrics_lib.to_jsonable(
            dict(evaluate_fn(state, epochs_done)))
        eval_metrics["epoch"] = epochs_done
        writer.write(step, "eval", eval_metrics)
        eval_history.append((step, eval_metrics))
        if best_metric is not None and best_metric not in eval_metrics:
          raise ValueError(f"best_metric={best_metric!r} is not among the "
                           f"evaluate_fn metrics {sorted(eval_metrics)}")
      # Epoch-end checkpoint: every `checkpoint_every_epochs` epochs, after
      # every evaluation (so the best checkpoint is tracked) and at the end.
      if (epochs_done % checkpoint_every_epochs == 0 or eval_metrics is not None
          or epochs_done == num_epochs):
        # The final evaluation is committed in the same orbax step as the
        # final state ("final": True), so results can come from state.
        store.save(state, epoch=epochs_done, metrics=eval_metrics,
                   extra={**extra_meta,
                          "final": epochs_done == num_epochs})
    flush()
    store.wait_until_finished()
    best_step = store.best_step()
    final_metrics = _final_metrics(store)
  finally:
    bar.close()
    store.close()
    writer.close()
  return FitResult(state=state, step=step, resumed_from_step=resumed_from,
                   best_step=best_step, eval_history=eval_history,
                   final_metrics=final_metrics)


def restore_best_checkpoint(workdir: str | os.PathLike, template: TrainState,
                            best_metric: str
                            ) -> tuple[TrainState, int, dict[str, Any]]:
  """The best checkpoint of a :func:`fit` workdir (every process takes part).

  Args:
    workdir: the run's workdir (its checkpoints are in ``CHECKPOINT_DIR``).
    template: a state of the run's structure (e.g. a fresh
      ``init_train_state``), restored into.
    best_metric: the metric ``fit`` ranked the checkpoints by.

  Returns:
    (state, step, metadata) of the best checkpoint.
  """
  store = CheckpointStore(os.path.join(workdir, CHECKPOINT_DIR),
                          best_metric=best_metric)
  try:
    step = store.best_step()
    state, meta = store.restore(template, step)
  finally:
    store.close()
  return state, step, meta


def _final_metrics(store: CheckpointStore) -> dict[str, Any] | None:
  """The evaluation stored with the final checkpoint, read back from disk."""
  latest = store.latest_step()
  if latest is None:
    return None
  meta = store.metadata(latest)
  if not meta.get("final") or not meta.get("metrics"):
    return None
  return dict(meta["metrics"])
