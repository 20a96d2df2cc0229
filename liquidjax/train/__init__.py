"""Training: optax optimisers, the jitted train step, ``fit``/``evaluate``, checkpoints, metrics
logs and data-parallel sharding.

One module per piece: ``_data`` (what the trainer reads: arrays or loaders, label checks),
``_step`` (the state and the jitted steps), ``_evaluate``, ``_resume`` (continuing from a
checkpoint, :func:`restore_model`), ``_fit`` (the loop), ``_errors`` (why a run stopped),
``_checkpoint``, ``_logging``, ``_config``, ``_sharding``.

This package knows no cell and draws nothing: parameter constraints come in as optax
transformations (``fit(..., extra_transforms=...)``), figures are made from the metrics file by
:mod:`liquidjax.plot`."""

from .._metrics import (
    accuracy as accuracy,
    binary_auc as binary_auc,
    confusion_matrix as confusion_matrix,
    cross_entropy as cross_entropy,
    f1_from_confusion as f1_from_confusion,
    gaussian_nll as gaussian_nll,
    macro_f1 as macro_f1,
    mae as mae,
    mse as mse,
    split_gaussian as split_gaussian,
)
from .._records import FitResult as FitResult
from ._checkpoint import (
    CheckpointError as CheckpointError,
    latest_checkpoint as latest_checkpoint,
    list_checkpoints as list_checkpoints,
    load_checkpoint as load_checkpoint,
    model_signature as model_signature,
    read_header as read_header,
    save_checkpoint as save_checkpoint,
    wiring_signature as wiring_signature,
)
from ._config import (
    TrainConfig as TrainConfig,
    clip_by_member_norm as clip_by_member_norm,
    make_optimizer as make_optimizer,
    make_schedule as make_schedule,
)
from ._data import (
    ArrayData as ArrayData,
    batch_dict as batch_dict,
    check_labels as check_labels,
    init_from_data as init_from_data,
)
from ._errors import (
    NonFiniteLossError as NonFiniteLossError,
    PeerFailureError as PeerFailureError,
    RunWriteError as RunWriteError,
    TrainingInterrupted as TrainingInterrupted,
)
from ._evaluate import evaluate as evaluate
from ._fit import fit as fit
from ._logging import (
    RunDirError as RunDirError,
    RunLogger as RunLogger,
    check_run_dir as check_run_dir,
    read_metrics as read_metrics,
)
from ._resume import restore_model as restore_model
from ._sharding import DataParallel as DataParallel
from ._step import (
    TrainState as TrainState,
    eval_step as eval_step,
    eval_sums as eval_sums,
    target_terms as target_terms,
    train_step as train_step,
)
