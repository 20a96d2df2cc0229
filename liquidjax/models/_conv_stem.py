"""The conv-stem image classifier: a small convolutional stem read as a sequence by liquid
layers, with its channels-last convolution and fused GroupNorm + ReLU kernel."""

from __future__ import annotations

import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._checks import check_choice, literal_choices
from ._classifier import AbstractClassifier, SequenceClassifier, _dropout

ConvSequence = Literal["rows", "columns"]
ConvStem = Literal["strided", "pooled"]
CONV_SEQUENCES: tuple[str, ...] = literal_choices(ConvSequence)
CONV_STEMS: tuple[str, ...] = literal_choices(ConvStem)


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
        check_choice("conv sequence", self.sequence, CONV_SEQUENCES)
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


def conv_stem_blocks(channels, stem: str = "strided") -> list[tuple[int, int, bool]]:
    """The stem's blocks as ``(out_channels, stride, pool_after)`` triples.

    ``"strided"``: one block per channel count, stride 1 then 2, 2, ...; ``"pooled"``: two
    stride-1 blocks per channel count, the second followed by a 2×2 max pool.
    """
    check_choice("conv stem", stem, CONV_STEMS)
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
