"""Training core: TrainState, optimizer, THE train step, evaluation, loop.

Every experiment trains through :func:`make_train_step` with its own
objective (adversarial methods: the registry of ``adversarial.py``); see
``step.py`` for the data-parallel and vmapped-member design.
"""

from compsum_jax.training import adversarial, distributed
from compsum_jax.training.checkpoint import (
    CheckpointRestoreError,
    CheckpointStore,
)
from compsum_jax.training.distributed import (
    fetch,
    is_primary,
    sum_over_processes,
)
from compsum_jax.training.errors import (
    StorageError,
    is_device_out_of_memory,
    storage_error,
)
from compsum_jax.training.history import (
    HistoryCheck,
    RunNotFinishedError,
    check_history,
    final_evaluation,
    rebuild_eval_history,
)
from compsum_jax.training.loop import (
    FitResult,
    NonFiniteError,
    fit,
    restore_best_checkpoint,
)
from compsum_jax.training.metrics import (
    MetricsLog,
    MetricsWriter,
    environment_record,
    read_metrics,
    read_metrics_log,
)
from compsum_jax.training.objectives import (
    apply_model,
    classification_eval_fn,
    classification_objective,
    comp_sum_from_hparams,
)
from compsum_jax.training.optimizer import make_optimizer, make_schedule
from compsum_jax.training.state import (
    TrainState,
    create_train_state,
    init_member_states,
    init_train_state,
    key_data,
    num_params,
    stack_states,
    unstack_states,
)
from compsum_jax.training.step import (
    DATA_AXIS,
    MEMBER_AXIS,
    evaluate,
    make_data_mesh,
    make_eval_step,
    make_member_mesh,
    make_train_step,
    mesh_axis_size,
    place_state,
    process_batch_rows,
    replicate,
    shard_batch,
)
from compsum_jax.training.workdir import WorkdirBusyError, workdir_lock

__all__ = [
    "CheckpointRestoreError",
    "CheckpointStore",
    "DATA_AXIS",
    "FitResult",
    "HistoryCheck",
    "MEMBER_AXIS",
    "MetricsLog",
    "MetricsWriter",
    "NonFiniteError",
    "RunNotFinishedError",
    "StorageError",
    "TrainState",
    "WorkdirBusyError",
    "adversarial",
    "apply_model",
    "check_history",
    "classification_eval_fn",
    "classification_objective",
    "comp_sum_from_hparams",
    "create_train_state",
    "distributed",
    "environment_record",
    "evaluate",
    "fetch",
    "final_evaluation",
    "fit",
    "init_member_states",
    "init_train_state",
    "is_device_out_of_memory",
    "is_primary",
    "key_data",
    "make_data_mesh",
    "make_eval_step",
    "make_member_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "mesh_axis_size",
    "num_params",
    "place_state",
    "process_batch_rows",
    "read_metrics",
    "read_metrics_log",
    "restore_best_checkpoint",
    "rebuild_eval_history",
    "replicate",
    "shard_batch",
    "stack_states",
    "storage_error",
    "sum_over_processes",
    "unstack_states",
    "workdir_lock",
]
