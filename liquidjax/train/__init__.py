"""Training: optax optimisers, the jitted train step, ``fit``/``evaluate``, checkpoints, logs and
data-parallel sharding."""

from ._checkpoint import (
    CheckpointError as CheckpointError,
)
from ._checkpoint import (
    latest_checkpoint as latest_checkpoint,
)
from ._checkpoint import (
    list_checkpoints as list_checkpoints,
)
from ._checkpoint import (
    load_checkpoint as load_checkpoint,
)
from ._checkpoint import (
    read_header as read_header,
)
from ._checkpoint import (
    save_checkpoint as save_checkpoint,
)
from ._config import (
    TrainConfig as TrainConfig,
)
from ._config import (
    make_optimizer as make_optimizer,
)
from ._config import (
    make_schedule as make_schedule,
)
from ._fit import (
    ArrayData as ArrayData,
)
from ._fit import (
    FitResult as FitResult,
)
from ._fit import (
    NonFiniteLossError as NonFiniteLossError,
)
from ._fit import (
    PeerFailureError as PeerFailureError,
)
from ._fit import (
    batch_dict as batch_dict,
)
from ._fit import (
    check_labels as check_labels,
)
from ._fit import (
    evaluate as evaluate,
)
from ._fit import (
    fit as fit,
)
from ._fit import (
    restore_model as restore_model,
)
from ._logging import (
    RunDirError as RunDirError,
)
from ._logging import (
    RunLogger as RunLogger,
)
from ._logging import (
    check_run_dir as check_run_dir,
)
from ._logging import (
    plot_curves as plot_curves,
)
from ._logging import (
    read_metrics as read_metrics,
)
from ._metrics import (
    accuracy as accuracy,
)
from ._metrics import (
    binary_auc as binary_auc,
)
from ._metrics import (
    confusion_matrix as confusion_matrix,
)
from ._metrics import (
    cross_entropy as cross_entropy,
)
from ._metrics import (
    f1_from_confusion as f1_from_confusion,
)
from ._metrics import (
    gaussian_nll as gaussian_nll,
)
from ._metrics import (
    macro_f1 as macro_f1,
)
from ._metrics import (
    mae as mae,
)
from ._metrics import (
    mse as mse,
)
from ._sharding import DataParallel as DataParallel
from ._step import (
    TrainState as TrainState,
)
from ._step import (
    eval_step as eval_step,
)
from ._step import (
    model_uses_dropout as model_uses_dropout,
)
from ._step import (
    train_step as train_step,
)
