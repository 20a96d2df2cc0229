"""Data for liquidjax: image datasets (tfds without TensorFlow, or the original files), images as
sequences, seeded resumable batching, and synthetic irregularly-sampled sequence tasks."""

from ._batching import Batch as Batch
from ._batching import Loader as Loader
from ._dataset import ImageDataset as ImageDataset
from ._dataset import split_validation as split_validation
from ._errors import (
    DatasetFormatError as DatasetFormatError,
)
from ._errors import (
    DatasetUnavailableError as DatasetUnavailableError,
)
from ._load import (
    ImageTask as ImageTask,
)
from ._load import (
    ImageTransform as ImageTransform,
)
from ._load import (
    load_dataset as load_dataset,
)
from ._load import (
    load_image_task as load_image_task,
)
from ._local import (
    find_local as find_local,
)
from ._local import (
    load_cifar10_local as load_cifar10_local,
)
from ._local import (
    load_idx as load_idx,
)
from ._local import (
    read_idx as read_idx,
)
from ._sequences import (
    ImageSequencer as ImageSequencer,
)
from ._sequences import (
    augment_crop_flip as augment_crop_flip,
)
from ._sequences import (
    channel_stats as channel_stats,
)
from ._synthetic import (
    SequenceData as SequenceData,
)
from ._synthetic import (
    irregular_sine as irregular_sine,
)
from ._synthetic import (
    noisy_oscillator as noisy_oscillator,
)
from ._synthetic import (
    two_spirals as two_spirals,
)
from ._tfds import load_tfds as load_tfds
from ._tfds import network_reason as network_reason
