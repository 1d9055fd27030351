"""Final results from state, and the metrics history checked against them.

:func:`fit` commits the final evaluation in the same orbax step as the final
state (the checkpoint's ``meta`` item: ``"final": True`` and ``"metrics"``),
so what a run reports as final comes from its final checkpoint, never from the
last line of ``metrics.jsonl``. The history in ``metrics.jsonl`` is a log: a
killed writer can lose its last line, and a file can be truncated or deleted.
:func:`check_history` compares it with the checkpoints and lists what is
missing; :func:`rebuild_eval_history` recovers evaluations from the kept
checkpoints (their stored metrics, or re-evaluated).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from compsum_jax.training import metrics as metrics_lib
from compsum_jax.training.checkpoint import CheckpointStore
from compsum_jax.training.loop import CHECKPOINT_DIR
from compsum_jax.training.state import TrainState


class RunNotFinishedError(RuntimeError):
  """The workdir holds no final checkpoint (the run did not finish)."""


@dataclasses.dataclass
class HistoryCheck:
  """The metrics history of a run checked against its checkpoints.

  Attributes:
    finished: the latest checkpoint is the final one.
    final_step: its step (None if not finished).
    final: the evaluation committed with the final checkpoint (None if not
      finished or the run had no evaluation).
    records: the 'eval' records of metrics.jsonl, one per step, by step.
    expected_epochs: the epochs that were evaluated (from the checkpoint's
      ``num_epochs``/``eval_every_epochs``; empty if unknown).
    missing_epochs: expected epochs without a record in metrics.jsonl.
    problems: one sentence per problem found (empty: the history is whole
      and ends with the final evaluation).
  """

  finished: bool
  final_step: int | None
  final: dict[str, Any] | None
  records: list[dict[str, Any]]
  expected_epochs: list[int]
  missing_epochs: list[int]
  problems: list[str]

  @property
  def complete(self) -> bool:
    """True if the history is whole and agrees with the final checkpoint."""
    return not self.problems


def _store(workdir: str) -> CheckpointStore:
  return CheckpointStore(os.path.join(workdir, CHECKPOINT_DIR),
                         async_save=False)


def _latest_metadata(workdir: str) -> tuple[int | None, dict[str, Any]]:
  """(latest checkpoint step or None, its metadata or {})."""
  store = _store(workdir)
  try:
    latest = store.latest_step()
    return latest, (store.metadata(latest) if latest is not None else {})
  finally:
    store.close()


def final_evaluation(workdir: str | os.PathLike) -> tuple[int, dict[str, Any]]:
  """(step, metrics) committed with the final checkpoint of ``workdir``.

  Raises:
    RunNotFinishedError: no checkpoint, or the latest one is not final.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  latest, meta = _latest_metadata(workdir)
  if latest is None or not meta.get("final"):
    where = (f"its latest checkpoint is step {latest}, epoch "
             f"{meta.get('epoch')}" if latest is not None
             else "it has no checkpoint")
    raise RunNotFinishedError(f"run in {workdir} is not finished ({where}); "
                              "resume it before summarising")
  return latest, dict(meta.get("metrics") or {})


def _eval_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  by_step = {}
  for record in records:
    if record.get("split") == "eval":
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]


def _record_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in record.items() if k not in ("step", "split")}


def check_history(workdir: str | os.PathLike) -> HistoryCheck:
  """Checks ``metrics.jsonl`` against the final checkpoint of ``workdir``.

  Reports: a missing file, a torn last line, evaluated epochs without a
  record, a history whose last evaluation is not the final one, and a last
  record that differs from the evaluation stored with the final checkpoint.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  log = metrics_lib.read_metrics_log(workdir)
  records = _eval_records(log.records)
  problems = []
  if not log.exists:
    problems.append(f"{log.path} is missing")
  if log.torn_last_line:
    problems.append(f"{log.path} ends in a partial line (writer killed "
                    "mid-write); its last record is lost")
  latest, meta = _latest_metadata(workdir)
  finished = bool(meta.get("final"))
  final = dict(meta["metrics"]) if finished and meta.get("metrics") else None
  if not finished:
    problems.append(f"run in {workdir} is not finished (latest checkpoint: "
                    f"{latest})")
  expected: list[int] = []
  num_epochs, every = meta.get("num_epochs"), meta.get("eval_every_epochs")
  if final is not None and num_epochs and every:
    expected = [e for e in range(1, int(num_epochs) + 1)
                if e % int(every) == 0 or e == int(num_epochs)]
  seen = {int(r["epoch"]) for r in records if "epoch" in r}
  missing = [e for e in expected if e not in seen]
  if missing:
    problems.append(f"{log.path} lacks the evaluations of epochs {missing}")
  if final is not None:
    last = records[-1] if records else None
    if last is None or int(last["step"]) != latest:
      ends = (f"step {last['step']} (epoch {last.get('epoch')})" if last
              else "no evaluation")
      problems.append(f"{log.path}'s history ends at {ends}, not at the "
                      f"final checkpoint's step {latest}")
    elif _record_metrics(last) != final:
      problems.append(f"{log.path}'s last evaluation (step {latest}) differs "
                      "from the one stored with the final checkpoint")
  return HistoryCheck(finished=finished, final_step=latest if finished
                      else None, final=final, records=records,
                      expected_epochs=expected, missing_epochs=missing,
                      problems=problems)


def rebuild_eval_history(
    workdir: str | os.PathLike, *, template: TrainState | None = None,
    evaluate_fn: Callable[[TrainState, int], Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
  """Evaluation records recovered from the kept epoch-end checkpoints.

  Only the checkpoints still on disk (the last ``keep`` and the best) can be
  recovered; compare the result's epochs with
  :attr:`HistoryCheck.expected_epochs` to see what is lost for good.

  Args:
    workdir: the run directory.
    template: a state of the run's layout (as for
      :meth:`CheckpointStore.restore`); needed with ``evaluate_fn``.
    evaluate_fn: ``(state, epochs_done) -> metrics``; if given every kept
      epoch-end checkpoint is restored and re-evaluated, else the metrics
      stored with each checkpoint are returned (checkpoints saved without
      metrics are then skipped).

  Returns:
    Records ``{"step", "split": "eval", "epoch", **metrics, "rebuilt": True}``
    by step, shaped like metrics.jsonl's 'eval' records.

  Raises:
    ValueError: ``evaluate_fn`` without ``template``.
  """
  if evaluate_fn is not None and template is None:
    raise ValueError("rebuild_eval_history: evaluate_fn needs a template "
                     "state to restore the checkpoints into")
  workdir = os.path.abspath(os.fspath(workdir))
  store = _store(workdir)
  rebuilt = []
  try:
    for step in store.all_steps():
      meta = store.metadata(step)
      epoch, per_epoch = meta.get("epoch"), meta.get("steps_per_epoch")
      if per_epoch is not None and step != int(epoch) * int(per_epoch):
        continue  # a mid-epoch checkpoint: never evaluated
      if evaluate_fn is None:
        if not meta.get("metrics"):
          continue
        values = dict(meta["metrics"])
      else:
        state, _ = store.restore(template, step)
        values = metrics_lib.to_jsonable(dict(evaluate_fn(state, int(epoch))))
      values["epoch"] = int(epoch)
      rebuilt.append({"step": int(step), "split": "eval", **values,
                      "rebuilt": True})
  finally:
    store.close()
  return rebuilt


__all__ = ["HistoryCheck", "RunNotFinishedError", "check_history",
           "final_evaluation", "rebuild_eval_history"]
