"""A temporal convolution stem for long time series: convolutions at full resolution, read by
liquid layers in windows of a few observations, with their global average beside (LSTM-FCN)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ..layers import LiquidRNN
from ._classifier import AbstractClassifier, _dropout, _pool, target_stats, unstandardize
from ._rocket import RocketFeatures

STEM_KERNELS: tuple[int, ...] = (8, 5, 3)
"""Kernel sizes of the stem's blocks (the FCN of Wang et al. 2017; further blocks use 3)."""


def stem_kernel(i: int) -> int:
    """The kernel size of block `i`."""
    return STEM_KERNELS[i] if i < len(STEM_KERNELS) else STEM_KERNELS[-1]


def _masked_group_norm(h: Array, valid: Array, groups: int, scale: Array, bias: Array,
                       eps: float = 1e-5) -> Array:
    """GroupNorm of ``h`` ``(L, C)`` over the valid steps and the channels of each group."""
    length, channels = h.shape
    g = h.reshape(length, groups, channels // groups)
    w = valid.astype(h.dtype)[:, None, None]
    count = jnp.maximum(jnp.sum(w) * (channels // groups), 1.0)
    mean = jnp.sum(g * w, axis=(0, 2), keepdims=True) / count
    var = jnp.sum(jnp.square(g - mean) * w, axis=(0, 2), keepdims=True) / count
    g = (g - mean) * jax.lax.rsqrt(var + eps)
    return g.reshape(length, channels) * scale + bias


def pool_steps(f: Array, timespans: Array | None, mask: Array | None, pool: int
               ) -> tuple[Array, Array, Array]:
    """Windows of `pool` consecutive steps as one step: the mean of the valid steps' features,
    the sum of their timespans, valid when any step is. ``(L, C)`` → ``(⌈L/pool⌉, C)``."""
    length = f.shape[0]
    valid = jnp.ones((length,), bool) if mask is None else mask
    dt = jnp.ones((length,), f.dtype) if timespans is None else timespans.astype(f.dtype)
    windows = -(-length // pool)
    pad = windows * pool - length
    w = jnp.pad(valid, (0, pad)).reshape(windows, pool).astype(f.dtype)
    fs = jnp.pad(f, ((0, pad), (0, 0))).reshape(windows, pool, -1)
    dts = jnp.pad(dt, (0, pad)).reshape(windows, pool)
    count = jnp.sum(w, axis=1)
    xs = jnp.sum(fs * w[:, :, None], axis=1) / jnp.maximum(count, 1.0)[:, None]
    return xs, jnp.sum(dts * w, axis=1), count > 0


class TemporalStem(eqx.Module):
    r"""``Conv1d → GroupNorm → ReLU`` blocks over a whole ``(L, C)`` series, at full resolution.

    Block ``i`` has ``channels[i]`` filters of size 8, 5, 3, 3, … ("same" padding; the FCN of
    Wang et al. 2017, with GroupNorm over the valid steps instead of BatchNorm, so it needs no
    batch statistics). Steps outside the mask are zero after every block.

    **Arguments:**
    - `input_size`: channels of the series.
    - `channels`: filters per block (at least one block).
    - `key`: PRNG key.
    """

    convs: tuple[eqx.nn.Conv1d, ...]
    scales: tuple[Array, ...]
    biases: tuple[Array, ...]
    groups: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, input_size: int, channels: tuple[int, ...], *, key: PRNGKeyArray):
        if not channels:
            raise ValueError("TemporalStem needs at least one block (channels=(32, 64, 32), …)")
        keys = jax.random.split(key, len(channels))
        convs, size = [], input_size
        for i, (ch, k) in enumerate(zip(channels, keys)):
            convs.append(eqx.nn.Conv1d(size, ch, stem_kernel(i), padding="SAME", key=k))
            size = ch
        self.convs = tuple(convs)
        self.scales = tuple(jnp.ones((ch,)) for ch in channels)
        self.biases = tuple(jnp.zeros((ch,)) for ch in channels)
        self.groups = tuple(math.gcd(ch, 8) for ch in channels)

    @property
    def output_size(self) -> int:
        return int(self.convs[-1].out_channels)

    def __call__(self, x: Float[Array, "time channels"], mask: Bool[Array, " time"] | None
                 ) -> Float[Array, "time features"]:
        valid = jnp.ones(x.shape[:1], bool) if mask is None else mask
        h = jnp.where(valid[:, None], x, 0)
        for conv, scale, bias, groups in zip(self.convs, self.scales, self.biases, self.groups):
            h = conv(h.T).T
            h = jax.nn.relu(_masked_group_norm(h, valid, groups, scale, bias))
            h = jnp.where(valid[:, None], h, 0)
        return h


class StemSequenceClassifier(AbstractClassifier):
    r"""A :class:`TemporalStem` at full resolution, read by liquid layers in windows of `pool`
    steps, and its global average pooling beside the liquid features (LSTM-FCN, Karim et al.
    2018, with liquid layers in place of the LSTM):

    $$f_{1:L} = \mathrm{stem}(x_{1:L}),\quad u_j = \mathrm{mean}(f_{(j-1)P+1:jP}),\quad
      \mathrm{logits} = W\,[\mathrm{pool}(\mathrm{RNN}(u)) \,\|\, \mathrm{mean}_t f_t] + b$$

    Each window's timespan is the sum of its steps' (irregular sampling carries through); its
    features are the mean over its valid steps. A series of 1 000–2 000 observations costs the
    liquid layers ``L / P`` sequential steps; the convolutions are parallel over time.

    **Arguments:**
    - `stem`: the :class:`TemporalStem`.
    - `layers`: liquid layers reading the pooled stem features.
    - `head`: ``eqx.nn.Linear`` from the liquid output (plus the stem's channels with `gap`).
    - `pool`: steps per window.
    - `gap`: concatenate the stem's global average (over valid steps) to the liquid features.
    - `rocket`: optional :class:`RocketFeatures` of the input, concatenated too (fit them with
      :meth:`init_from_data`).
    - `readout`, `dropout`, `target_mean`, `target_std`: as :class:`SequenceClassifier`.

    **Returns** (of ``__call__``): outputs ``(num_classes,)``.
    """

    stem: TemporalStem
    layers: tuple[LiquidRNN, ...]
    head: eqx.nn.Linear
    rocket: RocketFeatures | None
    pool: int = eqx.field(static=True)
    gap: bool = eqx.field(static=True)
    readout: str = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    target_mean: tuple[float, ...] | None = eqx.field(static=True)
    target_std: tuple[float, ...] | None = eqx.field(static=True)

    def __init__(self, stem: TemporalStem, layers, head: eqx.nn.Linear, *, pool: int = 1,
                 gap: bool = True, readout: str = "last", dropout: float = 0.0,
                 target_mean=None, target_std=None, rocket: RocketFeatures | None = None):
        self.stem = stem
        self.rocket = rocket
        self.layers = tuple(layers)
        self.head = head
        self.pool = int(pool)
        self.gap = bool(gap)
        self.readout = readout
        self.dropout = float(dropout)
        self.input_size = int(stem.convs[0].in_channels)
        self.num_classes = int(head.out_features)  # type: ignore[arg-type]
        self.target_mean = target_stats(target_mean)
        self.target_std = target_stats(target_std)

    def __check_init__(self):
        if self.pool < 1:
            raise ValueError(f"pool must be a positive number of steps, got {self.pool}")
        if not self.layers or self.layers[0].cell.input_size != self.stem.output_size:
            raise ValueError("the first liquid layer must read the stem's "
                             f"{self.stem.output_size} channels")
        expected = (self.layers[-1].output_size + (self.stem.output_size if self.gap else 0)
                    + (0 if self.rocket is None else self.rocket.num_features))
        if self.rocket is not None and self.rocket.input_size != self.input_size:
            raise ValueError(f"the rocket features read {self.rocket.input_size} channels; the "
                             f"model reads {self.input_size}")
        if self.head.in_features != expected:
            raise ValueError(f"head expects {self.head.in_features} features; the model "
                             f"gives it {expected}")

    def stream_spec(self):
        raise ValueError("a model with a temporal convolution stem reads the whole series at "
                         "once (its convolutions look ahead): it cannot run one observation at "
                         "a time; train without --stem-channels to stream")

    def __call__(
        self,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        keys = [None] * (len(self.layers) + 1) if key is None else list(
            jax.random.split(key, len(self.layers) + 1))
        f = self.stem(x, mask)
        h, ts, ms = pool_steps(f, timespans, mask, self.pool)
        for layer, k in zip(self.layers[:-1], keys):
            h, _ = layer(h, ts, ms, key=k)
        feats = _pool(self.layers[-1], h, ts, ms, self.readout, keys[-2])
        if self.gap:
            valid = jnp.ones(f.shape[:1], f.dtype) if mask is None else mask.astype(f.dtype)
            mean = jnp.sum(f * valid[:, None], axis=0) / jnp.maximum(jnp.sum(valid), 1.0)
            feats = jnp.concatenate([feats, mean])
        if self.rocket is not None:
            feats = jnp.concatenate([feats, self.rocket(x, mask).astype(feats.dtype)])
        out = self.head(_dropout(feats, self.dropout, keys[-1]))
        return unstandardize(out, self.target_mean, self.target_std)

    @property
    def fits_from_data(self) -> bool:
        return self.rocket is not None

    @property
    def fitted_to_data(self) -> bool:
        return self.rocket is None or bool(jnp.all(self.rocket.fitted))

    def init_from_data(self, x, mask, *, key):
        """Fit the rocket features (if any) to the training inputs: see
        :meth:`RocketFeatures.fit`."""
        if self.rocket is None:
            return self
        return eqx.tree_at(lambda m: m.rocket, self, self.rocket.fit(x, mask, key=key))
