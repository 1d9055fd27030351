"""Training core: TrainState, optimizer, THE train step, evaluation, loop.

Every experiment trains through :func:`make_train_step` with its own
objective (adversarial methods: the registry of ``adversarial.py``); see
``step.py`` for the data-parallel and vmapped-member design.
"""

from compsum_jax.training import adversarial
from compsum_jax.training.checkpoint import CheckpointStore
from compsum_jax.training.loop import FitResult, NonFiniteError, fit
from compsum_jax.training.metrics import (
    MetricsWriter,
    environment_record,
    read_metrics,
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
    replicate,
    shard_batch,
)

__all__ = [
    "DATA_AXIS",
    "MEMBER_AXIS",
    "CheckpointStore",
    "FitResult",
    "MetricsWriter",
    "NonFiniteError",
    "TrainState",
    "adversarial",
    "apply_model",
    "classification_eval_fn",
    "classification_objective",
    "comp_sum_from_hparams",
    "create_train_state",
    "environment_record",
    "evaluate",
    "fit",
    "init_member_states",
    "init_train_state",
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
    "read_metrics",
    "replicate",
    "shard_batch",
    "stack_states",
    "unstack_states",
]
