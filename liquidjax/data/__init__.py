"""Data for liquidjax: image datasets (tfds without TensorFlow, or the original files), images as
sequences, seeded resumable batching, synthetic irregularly-sampled sequence tasks, and time series
with missing values (in memory, ``.npz`` or the UEA/UCR ``.ts`` archive format)."""

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
from ._events import event_sequential_mnist as event_sequential_mnist
from ._events import event_xor as event_xor
from ._events import irregular_oscillators as irregular_oscillators
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
from ._timeseries import MISSING_MODES as MISSING_MODES
from ._timeseries import ChannelNormalizer as ChannelNormalizer
from ._timeseries import TimeSeriesData as TimeSeriesData
from ._timeseries import TimeSeriesTask as TimeSeriesTask
from ._timeseries import input_channels as input_channels
from ._timeseries import make_time_series_task as make_time_series_task
from ._timeseries import missing_value_features as missing_value_features
from ._timeseries import model_inputs as model_inputs
from ._timeseries import split_time_series as split_time_series
from ._ts_format import find_ts_files as find_ts_files
from ._ts_format import load_ts_task as load_ts_task
from ._ts_format import read_ts as read_ts
