"""Task models built from liquid layers: a sequence classifier and a conv-stem image classifier.

* :class:`SequenceClassifier` — one or more :class:`~liquidjax.layers.LiquidRNN` layers and a
  linear readout of the last output or of the (masked) mean of the output sequence. Acts on one
  ``(L, C)`` sequence with optional timespans and mask; ``jax.vmap`` adds the batch.
* :class:`ConvLiquidClassifier` — a small convolutional stem whose feature-map rows (or columns)
  form the sequence read by a liquid layer (the "conv + NCP" design).
* :class:`StemSequenceClassifier` — a temporal convolution stem at full resolution read by
  liquid layers in windows of a few steps, its global average beside (long time series), and
  optionally :class:`RocketFeatures` (MiniRocket's random convolutional features) beside too.
* :class:`Ensemble` — independently trained copies of one model, their predictions averaged.
* :class:`ModelConfig` and :func:`build_model` — the one place where names (cell, wiring, solver,
  readout) become objects.
"""

from ._build import build_model as build_model
from ._classifier import (
    READOUTS as READOUTS,
    AbstractClassifier as AbstractClassifier,
    SequenceClassifier as SequenceClassifier,
)
from ._config import (
    CELL_KINDS as CELL_KINDS,
    CFC_MODES as CFC_MODES,
    INTERPOLATIONS as INTERPOLATIONS,
    MODEL_KINDS as MODEL_KINDS,
    TASKS as TASKS,
    WIRINGS as WIRINGS,
    ModelConfig as ModelConfig,
)
from ._constraints import constraint_transforms as constraint_transforms
from ._conv_stem import (
    CONV_SEQUENCES as CONV_SEQUENCES,
    CONV_STEMS as CONV_STEMS,
    ConvLiquidClassifier as ConvLiquidClassifier,
    conv_stem_blocks as conv_stem_blocks,
    feature_map_shape as feature_map_shape,
)
from ._ensemble import AbstractEnsemble as AbstractEnsemble, Ensemble as Ensemble
from ._liquid_s4 import liquid_s4_classifier as liquid_s4_classifier
from ._param_groups import (
    fixed_mask as fixed_mask,
    freeze_fixed as freeze_fixed,
    has_fixed_params as has_fixed_params,
    has_ssm_params as has_ssm_params,
    ssm_labels as ssm_labels,
    ssm_param_groups as ssm_param_groups,
)
from ._rocket import RocketFeatures as RocketFeatures
from ._temporal_stem import (
    StemSequenceClassifier as StemSequenceClassifier,
    TemporalStem as TemporalStem,
    pool_steps as pool_steps,
)
