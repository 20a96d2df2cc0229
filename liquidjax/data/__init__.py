"""Data for liquidjax: image datasets (tfds without TensorFlow, or the original files), images as
sequences, seeded resumable batching, synthetic irregularly-sampled sequence tasks, and time series
with missing values (in memory, ``.npz`` or the UEA/UCR ``.ts`` archive format)."""

from ._batching import Batch as Batch, Loader as Loader
from ._config import DATASETS as DATASETS, DataConfig as DataConfig
from ._dataset import ImageDataset as ImageDataset, split_validation as split_validation
from ._errors import (
    DatasetFormatError as DatasetFormatError,
    DatasetUnavailableError as DatasetUnavailableError,
)
from ._events import (
    event_sequential_mnist as event_sequential_mnist,
    event_xor as event_xor,
    irregular_oscillators as irregular_oscillators,
)
from ._load import (
    ImageTask as ImageTask,
    ImageTransform as ImageTransform,
    load_dataset as load_dataset,
    load_image_task as load_image_task,
)
from ._local import (
    find_local as find_local,
    load_cifar10_local as load_cifar10_local,
    load_idx as load_idx,
    read_idx as read_idx,
)
from ._sequences import (
    ImageSequencer as ImageSequencer,
    augment_crop_flip as augment_crop_flip,
    channel_stats as channel_stats,
)
from ._synthetic import (
    SequenceData as SequenceData,
    irregular_sine as irregular_sine,
    noisy_oscillator as noisy_oscillator,
    two_spirals as two_spirals,
)
from ._tfds import load_tfds as load_tfds, network_reason as network_reason
from ._timeseries import (
    CLIP as CLIP,
    MISSING_MODES as MISSING_MODES,
    NORMALIZATIONS as NORMALIZATIONS,
    OUTLIER as OUTLIER,
    ChannelNormalizer as ChannelNormalizer,
    TimeSeriesData as TimeSeriesData,
    TimeSeriesTask as TimeSeriesTask,
    input_channels as input_channels,
    make_time_series_task as make_time_series_task,
    missing_value_features as missing_value_features,
    missing_value_path as missing_value_path,
    model_inputs as model_inputs,
    normalize_series as normalize_series,
    patch_time_series as patch_time_series,
    robust_scale as robust_scale,
    series_statistics as series_statistics,
    split_time_series as split_time_series,
    target_statistics as target_statistics,
)
from ._ts_format import (
    find_ts_files as find_ts_files,
    load_ts_task as load_ts_task,
    read_ts as read_ts,
    read_ts_split as read_ts_split,
)
