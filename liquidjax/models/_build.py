"""`build_model`: the one place where a :class:`ModelConfig`'s names become objects."""

from __future__ import annotations

import math

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from ..cells._base import AbstractCell
from ..cells._lstm import MixedMemory
from ..cells._registry import cell_kind
from ..layers import LiquidRNN
from ..wirings import AutoNCP, FullyConnected, Random, Wiring
from ._classifier import AbstractClassifier, SequenceClassifier
from ._config import ModelConfig
from ._conv_stem import ConvLiquidClassifier, conv_stem_blocks, feature_map_shape
from ._ensemble import Ensemble
from ._rocket import RocketFeatures
from ._temporal_stem import StemSequenceClassifier, TemporalStem


def _make_wiring(config: ModelConfig):
    if config.wiring == "fc":
        return FullyConnected(config.units)
    motor = config.wired_motor_neurons
    if config.wiring == "random":
        return Random(config.units, motor, sparsity_level=config.sparsity,
                      random_seed=config.wiring_seed)
    return AutoNCP(config.units, motor, sparsity_level=config.sparsity,
                   seed=config.wiring_seed)


def _make_cell(config: ModelConfig, input_size: int, *, key: PRNGKeyArray) -> AbstractCell:
    kcell, kmem = jax.random.split(key)
    units: int | Wiring = config.units if config.wiring == "fc" else _make_wiring(config)
    cell = cell_kind(config.cell).build(config, input_size, units, key=kcell)
    if config.mixed_memory:
        cell = MixedMemory(cell, key=kmem)
    return cell


def _make_body(config: ModelConfig, input_size: int, *, key: PRNGKeyArray) -> SequenceClassifier:
    # A stack kind (Liquid-S4) is itself `config.layers` blocks deep: one cell in one layer.
    n = 1 if cell_kind(config.cell).stack else config.layers
    keys = jax.random.split(key, n + 1)
    layers = []
    size = input_size
    for i in range(n):
        cell = _make_cell(config, size, key=keys[i])
        # The last layer of a "last" readout need not emit (and store) every step's output.
        sequences = i < n - 1 or config.readout == "mean" or config.per_step
        layers.append(LiquidRNN(cell, return_sequences=sequences,
                                interpolation=config.interpolation))
        size = cell.output_size
    head = eqx.nn.Linear(size, config.output_size, key=keys[-1])
    return SequenceClassifier(layers, head, readout=config.readout, dropout=config.dropout,
                              per_step=config.per_step, target_mean=config.target_mean,
                              target_std=config.target_std)


def build_model(config: ModelConfig, *, key: PRNGKeyArray) -> AbstractClassifier:
    """Build the model described by `config`.

    **Arguments:**
    - `config`: a :class:`ModelConfig`.
    - `key`: PRNG key for the initial parameters (keyword-only).

    **Returns:** a :class:`SequenceClassifier` or a :class:`ConvLiquidClassifier`; with
    ``config.ensemble > 1`` an :class:`Ensemble` of that many of them, each from its own key.

    **Example:**
    ```python
    model = build_model(ModelConfig(input_size=28, num_classes=10), key=jax.random.key(0))
    ```
    """
    if config.ensemble > 1:
        return Ensemble.create(lambda k: _build_one(config, key=k), config.ensemble, key=key,
                               task=config.task, predict_variance=config.predict_variance)
    return _build_one(config, key=key)


def _make_stem_model(config: ModelConfig, *, key: PRNGKeyArray) -> StemSequenceClassifier:
    kstem, kbody, khead = jax.random.split(key, 3)
    stem = TemporalStem(config.input_size, config.stem_channels, key=kstem)
    body = _make_body(config, stem.output_size, key=kbody)
    rocket = None
    if config.rocket_features:
        assert config.rocket_length is not None  # ModelConfig checks it
        rocket = RocketFeatures(config.input_size, config.rocket_features, config.rocket_length,
                                key=jax.random.fold_in(key, 1))
    size = (body.layers[-1].output_size + (stem.output_size if config.stem_gap else 0)
            + (0 if rocket is None else rocket.num_features))
    head = eqx.nn.Linear(size, config.output_size, key=khead)
    return StemSequenceClassifier(stem, body.layers, head, pool=config.stem_pool or 1,
                                  gap=config.stem_gap, readout=config.readout,
                                  dropout=config.dropout, target_mean=config.target_mean,
                                  target_std=config.target_std, rocket=rocket)


def _build_one(config: ModelConfig, *, key: PRNGKeyArray) -> AbstractClassifier:
    if config.kind == "sequence" and config.stem_channels:
        return _make_stem_model(config, key=key)
    if config.kind == "sequence":
        return _make_body(config, config.input_size, key=key)
    assert config.image_shape is not None
    kstem, kbody = jax.random.split(key)
    blocks = conv_stem_blocks(config.conv_channels, config.conv_stem)
    ckeys = jax.random.split(kstem, len(blocks))
    stem = []
    in_ch = config.image_shape[2]
    for (ch, stride, _), k in zip(blocks, ckeys):
        conv = eqx.nn.Conv2d(in_ch, ch, 3, stride=stride, padding=1, key=k)
        stem.append((conv, eqx.nn.GroupNorm(math.gcd(ch, 8), ch)))
        in_ch = ch
    c, h, w = feature_map_shape(config.image_shape, config.conv_channels, config.conv_stem)
    feats = w * c if config.conv_sequence == "rows" else h * c
    body = _make_body(config, feats, key=kbody)
    return ConvLiquidClassifier(stem, body, config.image_shape, sequence=config.conv_sequence,
                                pool_after=[pool for _, _, pool in blocks],
                                stem_dropout=config.conv_dropout)
