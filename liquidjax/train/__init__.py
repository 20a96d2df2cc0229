"""Training: optax optimisers, the jitted train step, ``fit``/``evaluate``, checkpoints, logs and
data-parallel sharding."""

from ._checkpoint import (
    CheckpointError as CheckpointError,
    latest_checkpoint as latest_checkpoint,
    list_checkpoints as list_checkpoints,
    load_checkpoint as load_checkpoint,
    read_header as read_header,
    save_checkpoint as save_checkpoint,
    wiring_signature as wiring_signature,
)
from ._config import (
    TrainConfig as TrainConfig,
    make_optimizer as make_optimizer,
    make_schedule as make_schedule,
)
from ._fit import (
    ArrayData as ArrayData,
    FitResult as FitResult,
    NonFiniteLossError as NonFiniteLossError,
    PeerFailureError as PeerFailureError,
    batch_dict as batch_dict,
    check_labels as check_labels,
    evaluate as evaluate,
    fit as fit,
    restore_model as restore_model,
)
from ._logging import (
    RunDirError as RunDirError,
    RunLogger as RunLogger,
    check_run_dir as check_run_dir,
    plot_curves as plot_curves,
    read_metrics as read_metrics,
)
from ._sharding import DataParallel as DataParallel
from ._step import (
    TrainState as TrainState,
    eval_step as eval_step,
    model_uses_dropout as model_uses_dropout,
    train_step as train_step,
)
