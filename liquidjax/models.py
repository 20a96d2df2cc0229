"""Task models built from liquid layers: a sequence classifier and a conv-stem image classifier.

* :class:`SequenceClassifier` — one or more :class:`~liquidjax.layers.LiquidRNN` layers and a
  linear readout of the last output or of the (masked) mean of the output sequence. Acts on one
  ``(L, C)`` sequence with optional timespans and mask; ``jax.vmap`` adds the batch.
* :class:`ConvLiquidClassifier` — a small convolutional stem whose feature-map rows (or columns)
  form the sequence read by a liquid layer (the "conv + NCP" design).
* :class:`ModelConfig` and :func:`build_model` — the one place where names (cell, wiring, solver,
  readout) become objects.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .cells._base import AbstractCell
from .cells._cfc import ACTIVATIONS, CfC
from .cells._lstm import MixedMemory
from .cells._ltc import LTC
from .cells._wired_cfc import WiredCfC
from .layers import LiquidRNN
from .solvers import SOLVER_NAMES, is_adaptive, solver_from_name
from .wirings import AutoNCP, FullyConnected, Random

MODEL_KINDS: tuple[str, ...] = ("sequence", "conv")
CELL_KINDS: tuple[str, ...] = ("cfc", "ltc")
WIRINGS: tuple[str, ...] = ("fc", "ncp", "autoncp", "random")
READOUTS: tuple[str, ...] = ("last", "mean")
CFC_MODES: tuple[str, ...] = ("default", "no_gate", "pure")
INTERPOLATIONS: tuple[str, ...] = ("hold", "linear", "cubic")
CONV_SEQUENCES: tuple[str, ...] = ("rows", "columns")


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(valid)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------- models
class AbstractClassifier(eqx.Module):
    """A classifier of one example: ``model(x, timespans, mask, *, key) -> logits``.

    ``key`` enables dropout (training); ``None`` means inference.
    """

    num_classes: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        x: Array,
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        """The class logits of one example."""


def _dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _pool(rnn: LiquidRNN, x, timespans, mask, readout: str, key) -> Array:
    """Run the last liquid layer and reduce its outputs to one feature vector."""
    if readout == "last":
        # With a mask the state stops changing after the last valid step, so the final state's
        # output is the output at the last valid observation.
        ys, h = rnn(x, timespans, mask, key=key)
        if not rnn.return_sequences:
            return ys
        y = rnn.cell.output(h)
        return y if rnn.proj is None else rnn.proj(y)
    ys, _ = rnn(x, timespans, mask, key=key)
    if mask is None:
        return jnp.mean(ys, axis=0)
    count = jnp.maximum(jnp.sum(mask), 1).astype(ys.dtype)
    return jnp.sum(ys, axis=0) / count  # masked outputs are zero


class SequenceClassifier(AbstractClassifier):
    r"""Liquid layers over a ``(L, C)`` sequence, then a linear readout to class logits.

    $$h^{(1)}_{1:L} = \mathrm{RNN}_1(x_{1:L}),\ \dots,\ h^{(n)}_{1:L} = \mathrm{RNN}_n(h^{(n-1)}_{1:L}),
      \qquad \mathrm{logits} = W\,\mathrm{pool}(h^{(n)}) + b$$

    with ``pool`` the output at the last (valid) step (``readout="last"``) or the mean over the
    valid steps (``readout="mean"``). Every layer sees the same timespans and mask.

    **Arguments:**
    - `layers`: the liquid layers, in order (each ``input_size`` equals the previous
      ``output_size``).
    - `head`: ``eqx.nn.Linear`` from the last layer's output size to the classes.
    - `readout`: ``"last"`` or ``"mean"``.
    - `dropout`: dropout rate on the pooled features (training only).

    **Returns** (of ``__call__``): logits of shape ``(num_classes,)``.

    **Example:**
    ```python
    model = build_model(ModelConfig(input_size=3, num_classes=4, units=8), key=jax.random.key(0))
    logits = jax.vmap(model)(xs)                       # xs: (batch, L, 3) -> (batch, 4)
    ```
    """

    layers: tuple[LiquidRNN, ...]
    head: eqx.nn.Linear
    readout: str = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(
        self,
        layers: tuple[LiquidRNN, ...] | list[LiquidRNN],
        head: eqx.nn.Linear,
        *,
        readout: str = "last",
        dropout: float = 0.0,
    ):
        self.layers = tuple(layers)
        self.head = head
        self.readout = readout
        self.dropout = float(dropout)
        self.input_size = self.layers[0].cell.input_size if self.layers else 0
        self.num_classes = int(head.out_features)  # type: ignore[arg-type]

    def __check_init__(self):
        _choice("readout", self.readout, READOUTS)
        if not self.layers:
            raise ValueError("SequenceClassifier needs at least one liquid layer")
        for i, (a, b) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            if a.output_size != b.cell.input_size:
                raise ValueError(
                    f"layer {i} outputs {a.output_size} features but layer {i + 1} expects "
                    f"{b.cell.input_size}"
                )
            if not a.return_sequences:
                raise ValueError(f"layer {i} must return sequences to feed layer {i + 1}")
        if self.readout == "mean" and not self.layers[-1].return_sequences:
            raise ValueError("readout='mean' needs a last layer with return_sequences=True")
        if self.head.in_features != self.layers[-1].output_size:
            raise ValueError(
                f"head expects {self.head.in_features} features but the last layer outputs "
                f"{self.layers[-1].output_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def __call__(
        self,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        """Class logits of one sequence ``x`` of shape ``(L, input_size)``.

        **Arguments:** `timespans` ``(L,)`` elapsed times (default 1.0), `mask` boolean ``(L,)``
        (``True`` on valid steps), `key` for dropout (``None``: inference).
        """
        keys = [None] * (len(self.layers) + 1) if key is None else list(
            jax.random.split(key, len(self.layers) + 1)
        )
        h = x
        for layer, k in zip(self.layers[:-1], keys):
            h, _ = layer(h, timespans, mask, key=k)
        feats = _pool(self.layers[-1], h, timespans, mask, self.readout, keys[-2])
        return self.head(_dropout(feats, self.dropout, keys[-1]))


class ConvLiquidClassifier(AbstractClassifier):
    r"""A small conv stem whose feature map is read as a sequence by a liquid layer.

    The image ``(H, W, C)`` goes through ``Conv2d(3×3) → GroupNorm → ReLU`` blocks. Two stem
    layouts (see :func:`conv_stem_blocks`):

    - ``"strided"``: one block per entry of `channels`, the first with stride 1, the others
      stride 2;
    - ``"pooled"``: per entry of `channels` a stage of two stride-1 blocks and a 2×2 max pool
      (the VGG pattern; more accurate, about twice the convolution work).

    The ``(C', H', W')`` feature map (after optional dropout) is read row by row (``H'`` steps of
    ``W'·C'`` features) or column by column, fed to a :class:`SequenceClassifier`'s liquid
    layers, and read out linearly.

    **Arguments:**
    - `stem`: the conv blocks, a tuple of ``(eqx.nn.Conv2d, eqx.nn.GroupNorm)`` pairs.
    - `body`: a :class:`SequenceClassifier` whose input size matches the feature-map sequence.
    - `image_shape`: ``(H, W, C)``; inputs of any shape with ``H·W·C`` elements in row-major
      ``(H, W, C)`` order (an image, a row sequence ``(H, W·C)``, a pixel sequence) are accepted.
    - `sequence`: ``"rows"`` or ``"columns"`` of the feature map.
    - `pool_after`: for each block, whether a 2×2 max pool (stride 2) follows it; default none.
    - `stem_dropout`: dropout rate after each pool, or on the final feature map of a stem
      without pools (training only).

    **Returns** (of ``__call__``): logits ``(num_classes,)``.

    **Example:**
    ```python
    cfg = ModelConfig(kind="conv", image_shape=(28, 28, 1), input_size=28, num_classes=10)
    model = build_model(cfg, key=jax.random.key(0))
    logits = jax.vmap(model)(images)                   # (batch, 28, 28) rows -> (batch, 10)
    ```
    """

    stem: tuple[tuple[eqx.nn.Conv2d, eqx.nn.GroupNorm], ...]
    body: SequenceClassifier
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    sequence: str = eqx.field(static=True)
    pool_after: tuple[bool, ...] = eqx.field(static=True)
    stem_dropout: float = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(self, stem, body: SequenceClassifier, image_shape, *, sequence: str = "rows",
                 pool_after=None, stem_dropout: float = 0.0):
        self.stem = tuple((conv, norm) for conv, norm in stem)
        self.body = body
        self.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.sequence = sequence
        self.pool_after = (tuple(bool(p) for p in pool_after) if pool_after is not None
                           else (False,) * len(self.stem))
        self.stem_dropout = float(stem_dropout)
        self.num_classes = body.num_classes

    def __check_init__(self):
        _choice("conv sequence", self.sequence, CONV_SEQUENCES)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        if len(self.pool_after) != len(self.stem):
            raise ValueError(
                f"pool_after needs one flag per stem block ({len(self.stem)}), got "
                f"{len(self.pool_after)}"
            )
        if not 0.0 <= self.stem_dropout < 1.0:
            raise ValueError(f"stem_dropout must lie in [0, 1), got {self.stem_dropout}")
        h, w, c = jax.eval_shape(self._feature_map, jnp.zeros(self.image_shape), None).shape
        feats = w * c if self.sequence == "rows" else h * c
        if self.body.input_size != feats:
            raise ValueError(
                f"the conv stem gives {self.sequence} of {feats} features but the liquid layer "
                f"expects {self.body.input_size}"
            )

    def _feature_map(self, x: Array, key: PRNGKeyArray | None) -> Float[Array, "h w c"]:
        h, w, c = self.image_shape
        if x.size != h * w * c:
            raise ValueError(
                f"expected an image with {h}x{w}x{c}={h * w * c} values (shape {self.image_shape} "
                f"or a sequence of it), got shape {x.shape}"
            )
        # Channels-last throughout: under vmap the convolutions become batched NHWC ones, the
        # layout XLA:CPU runs fastest, and GroupNorm + ReLU is one fused op with its own VJP
        # (1.1-1.2x per training step against eqx's channels-first modules on a quiet 2-core
        # machine, more under load; benchmarks/conv_stem.py).
        z = jnp.reshape(x, (h, w, c))
        pools = sum(self.pool_after)
        keys = [None] * (pools + 1) if key is None else list(jax.random.split(key, pools + 1))
        for (conv, norm), pool in zip(self.stem, self.pool_after):
            z = _group_norm_relu(_conv_hwc(conv, z), norm)
            if pool:
                z = _max_pool2(z)
                z = _dropout(z, self.stem_dropout, keys.pop())
        if not any(self.pool_after):
            z = _dropout(z, self.stem_dropout, keys.pop())
        return z

    def features(
        self, x: Array, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "time features"]:
        """The feature-map sequence of one image (`key` enables stem dropout)."""
        z = self._feature_map(x, key)
        hh, ww, cc = z.shape
        if self.sequence == "rows":
            return jnp.reshape(z, (hh, ww * cc))
        return jnp.reshape(jnp.transpose(z, (1, 0, 2)), (ww, hh * cc))

    def __call__(
        self,
        x: Array,
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        """Class logits of one image (see `image_shape`); timespans and masks do not apply."""
        if timespans is not None or mask is not None:
            raise ValueError(
                "ConvLiquidClassifier reads images: timespans and mask must be None"
            )
        kstem, kbody = (None, None) if key is None else jax.random.split(key)
        return self.body(self.features(x, key=kstem), key=kbody)


def _max_pool2(z: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c"]:
    """2×2 max pool with stride 2 (odd trailing rows/columns dropped, as in ``floor`` mode).

    A reshape and a max rather than ``reduce_window``, whose gradient (select-and-scatter) is
    slow on CPU; ties share the gradient equally.
    """
    h, w, c = z.shape
    z = z[: h // 2 * 2, : w // 2 * 2]
    return jnp.max(jnp.reshape(z, (h // 2, 2, w // 2, 2, c)), axis=(1, 3))


def _conv_hwc(conv: eqx.nn.Conv2d, z: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
    """``conv`` applied to a channels-last image (same result as ``conv`` on ``(C, H, W)``)."""
    if conv.padding_mode != "ZEROS":
        return jnp.transpose(conv(jnp.transpose(z, (2, 0, 1))), (1, 2, 0))
    out = jax.lax.conv_general_dilated(
        z[None], conv.weight, conv.stride, conv.padding, rhs_dilation=conv.dilation,
        feature_group_count=conv.groups, dimension_numbers=("NHWC", "OIHW", "NHWC"),
    )[0]
    if conv.use_bias:
        out = out + jnp.reshape(conv.bias, (-1,))
    return out


def _group_norm_relu(z: Float[Array, "h w c"], norm: eqx.nn.GroupNorm) -> Float[Array, "h w c"]:
    """``relu(norm(z))`` for a channels-last ``z`` (``norm`` is defined on channels-first)."""
    c = z.shape[-1]
    if norm.channelwise_affine:
        weight, bias = norm.weight, norm.bias
    else:
        weight, bias = jnp.ones(c, z.dtype), jnp.zeros(c, z.dtype)
    return _gn_relu(z, weight, bias, norm.groups, norm.eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _gn_relu(z, weight, bias, groups: int, eps: float):
    return _gn_relu_fwd(z, weight, bias, groups, eps)[0]


def _gn_relu_fwd(z, weight, bias, groups, eps):
    h, w, c = z.shape
    zg = jnp.reshape(z, (h * w, groups, c // groups))
    mean = jnp.mean(zg, axis=(0, 2), keepdims=True)
    d = zg - mean
    inv = jax.lax.rsqrt(jnp.mean(d * d, axis=(0, 2), keepdims=True) + eps)
    zhat = jnp.reshape(d * inv, z.shape)
    return jax.nn.relu(zhat * weight + bias), (zhat, inv, weight, bias)


def _gn_relu_bwd(groups, eps, res, dy):
    # Only the normalised input and the inverse deviations are kept; the ReLU mask is
    # recomputed. d zhat = g·γ; dz = inv · (d zhat − mean(d zhat) − zhat · mean(d zhat · zhat)).
    zhat, inv, weight, bias = res
    h, w, c = zhat.shape
    g = jnp.where(zhat * weight + bias > 0, dy, 0.0)
    dweight = jnp.sum(g * zhat, axis=(0, 1))
    dbias = jnp.sum(g, axis=(0, 1))
    gz = jnp.reshape(g * weight, (h * w, groups, c // groups))
    zg = jnp.reshape(zhat, gz.shape)
    dz = inv * (gz - jnp.mean(gz, axis=(0, 2), keepdims=True)
                - zg * jnp.mean(gz * zg, axis=(0, 2), keepdims=True))
    return jnp.reshape(dz, zhat.shape), dweight, dbias


_gn_relu.defvjp(_gn_relu_fwd, _gn_relu_bwd)


CONV_STEMS: tuple[str, ...] = ("strided", "pooled")


def conv_stem_blocks(channels, stem: str = "strided") -> list[tuple[int, int, bool]]:
    """The stem's blocks as ``(out_channels, stride, pool_after)`` triples.

    ``"strided"``: one block per channel count, stride 1 then 2, 2, ...; ``"pooled"``: two
    stride-1 blocks per channel count, the second followed by a 2×2 max pool.
    """
    _choice("conv stem", stem, CONV_STEMS)
    if stem == "strided":
        return [(int(ch), 1 if i == 0 else 2, False) for i, ch in enumerate(channels)]
    return [blk for ch in channels for blk in ((int(ch), 1, False), (int(ch), 1, True))]


def feature_map_shape(image_shape, channels, stem: str = "strided") -> tuple[int, int, int]:
    """``(C', H', W')`` after the stem (3×3 convs with padding 1; see :func:`conv_stem_blocks`)."""
    h, w, c = image_shape
    for ch, stride, pool in conv_stem_blocks(channels, stem):
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
        if pool:
            h, w = h // 2, w // 2
        c = ch
    return int(c), int(h), int(w)


# --------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What to build; every field is plain data (JSON-serialisable, stored in checkpoints).

    **Arguments:**
    - `input_size`: features per step of the input sequence (for ``kind="conv"``: unused by the
      stem but kept for the record).
    - `num_classes`: number of classes.
    - `kind`: ``"sequence"`` (liquid layers on the input sequence) or ``"conv"`` (conv stem).
    - `cell`: ``"cfc"`` or ``"ltc"``.
    - `units`: neurons per liquid layer.
    - `wiring`: ``"fc"`` (fully connected), ``"ncp"``/``"autoncp"`` (an AutoNCP wiring with
      `motor_neurons` outputs and `sparsity`), ``"random"`` (random sparse, `sparsity`).
    - `motor_neurons`: outputs of a wired layer (default: `num_classes` if it fits, else
      ``units // 3``).
    - `sparsity`: sparsity level of ``ncp``/``random`` wirings.
    - `wiring_seed`: seed of the wiring's draws.
    - `layers`: number of stacked liquid layers.
    - `readout`: ``"last"`` or ``"mean"``.
    - `dropout`: dropout on the pooled features.
    - `mixed_memory`: put an LSTM memory in front of each liquid cell.
    - `solver`: LTC solver name (one of :data:`liquidjax.solvers.SOLVER_NAMES`; default
      ``"fused"``); not allowed for CfC.
    - `ode_unfolds`: LTC steps per observation (or first step for an adaptive solve).
    - `adaptive_tol`: if set, an adaptive solver (``tsit5``, ``dopri5``, ``kvaerno*``...) runs
      with ``PIDController(rtol=atol=adaptive_tol)``.
    - `implicit_param_constraints`: LTC positivity by softplus (``True``) or by projection after
      each optimiser step (``False``).
    - `interpolation`: ``"hold"``, ``"linear"`` or ``"cubic"`` (LTC only for the latter two).
    - `cfc_mode`, `activation`, `backbone_units`, `backbone_layers`, `backbone_dropout`: CfC
      options (the backbone only for unwired CfC).
    - `image_shape`: ``(H, W, C)``, required for ``kind="conv"``.
    - `conv_channels`: output channels of the stem's conv blocks (``"strided"``) or stages
      (``"pooled"``).
    - `conv_stem`: ``"strided"`` or ``"pooled"`` (see :class:`ConvLiquidClassifier`).
    - `conv_dropout`: dropout in the stem (after each pool, or on the feature map).
    - `conv_sequence`: ``"rows"`` or ``"columns"`` of the feature map.

    **Example:**
    ```python
    ModelConfig(input_size=28, num_classes=10, cell="ltc", wiring="ncp", units=32)
    ```
    """

    input_size: int
    num_classes: int
    kind: str = "sequence"
    cell: str = "cfc"
    units: int = 64
    wiring: str = "fc"
    motor_neurons: int | None = None
    sparsity: float = 0.5
    wiring_seed: int = 22222
    layers: int = 1
    readout: str = "last"
    dropout: float = 0.0
    mixed_memory: bool = False
    solver: str | None = None
    ode_unfolds: int = 6
    adaptive_tol: float | None = None
    implicit_param_constraints: bool = True
    interpolation: str = "hold"
    cfc_mode: str = "default"
    activation: str = "lecun_tanh"
    backbone_units: int = 128
    backbone_layers: int = 1
    backbone_dropout: float = 0.0
    image_shape: tuple[int, int, int] | None = None
    conv_channels: tuple[int, ...] = (32, 64, 64)
    conv_sequence: str = "rows"
    conv_stem: str = "strided"
    conv_dropout: float = 0.0

    def __post_init__(self):
        _choice("model kind", self.kind, MODEL_KINDS)
        _choice("cell", self.cell, CELL_KINDS)
        _choice("wiring", self.wiring, WIRINGS)
        _choice("readout", self.readout, READOUTS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("CfC mode", self.cfc_mode, CFC_MODES)
        _choice("activation", self.activation, tuple(ACTIVATIONS))
        _choice("conv sequence", self.conv_sequence, CONV_SEQUENCES)
        _choice("conv stem", self.conv_stem, CONV_STEMS)
        for name in ("input_size", "num_classes", "units", "layers", "ode_unfolds"):
            _positive_int(name, getattr(self, name))
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.solver is not None:
            _choice("solver", self.solver, SOLVER_NAMES)
            if self.cell != "ltc":
                raise ValueError(
                    f"solver={self.solver!r} applies only to ODE cells (cell='ltc'); "
                    f"a {self.cell} cell advances in closed form"
                )
        if self.interpolation != "hold" and self.cell != "ltc":
            raise ValueError(
                f"interpolation={self.interpolation!r} needs an ODE cell (cell='ltc')"
            )
        if self.adaptive_tol is not None:
            if self.cell != "ltc" or not is_adaptive(solver_from_name(self.solver or "fused")):
                raise ValueError(
                    "adaptive_tol needs cell='ltc' and an adaptive solver (e.g. tsit5, dopri5, "
                    f"kvaerno5), got cell={self.cell!r}, solver={self.solver!r}"
                )
            if not self.adaptive_tol > 0:
                raise ValueError(f"adaptive_tol must be positive, got {self.adaptive_tol}")
        for name in ("dropout", "backbone_dropout", "conv_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.backbone_layers < 0 or self.backbone_units < 1:
            raise ValueError(
                f"backbone_layers must be >= 0 and backbone_units >= 1, got "
                f"{self.backbone_layers}, {self.backbone_units}"
            )
        if self.wiring != "fc":
            motor = self.wired_motor_neurons
            if self.wiring in ("ncp", "autoncp") and not 1 <= motor <= self.units - 3:
                raise ValueError(
                    f"an NCP wiring of {self.units} units needs motor_neurons in "
                    f"[1, {self.units - 3}], got {motor}"
                )
            if self.wiring == "random" and not 1 <= motor <= self.units:
                raise ValueError(f"motor_neurons must be in [1, {self.units}], got {motor}")
        if self.kind == "conv":
            if self.image_shape is None or len(self.image_shape) != 3 or any(
                not isinstance(s, int) or s < 1 for s in self.image_shape
            ):
                raise ValueError(
                    f"kind='conv' needs image_shape=(H, W, C) of positive ints, got "
                    f"{self.image_shape!r}"
                )
            if not self.conv_channels or any(
                not isinstance(c, int) or c < 1 for c in self.conv_channels
            ):
                raise ValueError(
                    f"conv_channels must be positive ints, got {self.conv_channels!r}"
                )
            _, h, w = feature_map_shape(self.image_shape, self.conv_channels, self.conv_stem)
            if h < 1 or w < 1:
                raise ValueError(
                    f"a {self.conv_stem} stem with channels {self.conv_channels} shrinks an image "
                    f"of shape {self.image_shape} to nothing; use fewer stages"
                )

    @property
    def wired_motor_neurons(self) -> int:
        """Outputs of a wired layer."""
        if self.motor_neurons is not None:
            return self.motor_neurons
        return self.num_classes if self.num_classes <= self.units - 3 else max(self.units // 3, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        d = dict(d)
        for name in ("image_shape", "conv_channels"):
            if d.get(name) is not None:
                d[name] = tuple(d[name])
        return cls(**d)


def _make_wiring(config: ModelConfig):
    if config.wiring == "fc":
        return FullyConnected(config.units)
    motor = config.wired_motor_neurons
    if config.wiring == "random":
        return Random(config.units, motor, sparsity_level=config.sparsity,
                      random_seed=config.wiring_seed)
    return AutoNCP(config.units, motor, sparsity_level=max(config.sparsity, 0.1),
                   seed=config.wiring_seed)


def _make_cell(config: ModelConfig, input_size: int, *, key: PRNGKeyArray) -> AbstractCell:
    kcell, kmem = jax.random.split(key)
    cell: AbstractCell
    if config.cell == "cfc":
        if config.wiring == "fc":
            cell = CfC(input_size, config.units, mode=config.cfc_mode,  # type: ignore[arg-type]
                       activation=config.activation, backbone_units=config.backbone_units,
                       backbone_layers=config.backbone_layers,
                       backbone_dropout=config.backbone_dropout, key=kcell)
        else:
            cell = WiredCfC(input_size, _make_wiring(config), mode=config.cfc_mode,  # type: ignore[arg-type]
                            key=kcell)
    else:
        solver = solver_from_name(config.solver or "fused")
        controller = (
            diffrax.PIDController(rtol=config.adaptive_tol, atol=config.adaptive_tol)
            if config.adaptive_tol is not None else None
        )
        units: Any = config.units if config.wiring == "fc" else _make_wiring(config)
        cell = LTC(input_size, units, ode_unfolds=config.ode_unfolds, solver=solver,
                   stepsize_controller=controller,
                   implicit_param_constraints=config.implicit_param_constraints, key=kcell)
    if config.mixed_memory:
        cell = MixedMemory(cell, key=kmem)
    return cell


def _make_body(config: ModelConfig, input_size: int, *, key: PRNGKeyArray) -> SequenceClassifier:
    keys = jax.random.split(key, config.layers + 1)
    layers = []
    size = input_size
    for i in range(config.layers):
        cell = _make_cell(config, size, key=keys[i])
        # The last layer of a "last" readout need not emit (and store) every step's output.
        sequences = i < config.layers - 1 or config.readout == "mean"
        layers.append(LiquidRNN(cell, return_sequences=sequences,
                                interpolation=config.interpolation))
        size = cell.output_size
    head = eqx.nn.Linear(size, config.num_classes, key=keys[-1])
    return SequenceClassifier(layers, head, readout=config.readout, dropout=config.dropout)


def build_model(config: ModelConfig, *, key: PRNGKeyArray) -> AbstractClassifier:
    """Build the model described by `config`.

    **Arguments:**
    - `config`: a :class:`ModelConfig`.
    - `key`: PRNG key for the initial parameters (keyword-only).

    **Returns:** a :class:`SequenceClassifier` or a :class:`ConvLiquidClassifier`.

    **Example:**
    ```python
    model = build_model(ModelConfig(input_size=28, num_classes=10), key=jax.random.key(0))
    ```
    """
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
