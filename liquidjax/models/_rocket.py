"""Random convolutional features (MiniRocket) beside the liquid layers.

MiniRocket (Dempster, Schmidt and Webb, KDD 2021) convolves a series with 84 fixed kernels of
length 9 (weights −1, and 2 at three of the nine positions) at a range of dilations, and
summarises each output by the *proportion of positive values* (PPV) above a bias drawn from the
quantiles of that kernel's output on a training series. With a linear model on top it is the
strong baseline of time-series classification and regression: seconds of CPU, no training of
the convolutions. :class:`RocketFeatures` computes the same features in JAX (held to aeon's
implementation by the tests), from the model's own input (after normalisation and patching),
over each series' valid steps only (unequal lengths are not zero-padded into the statistics).

The features are fixed once fitted (:meth:`RocketFeatures.fit`, from the training split): the
module lists them in ``fixed_fields`` and the trainer leaves them alone
(:func:`liquidjax.models.fixed_mask`). A model hands them, standardised, to its linear head
beside the liquid layers' features (``ModelConfig.rocket_features``), so the head learns from
both together, as LSTM-FCN puts a convolutional branch beside the recurrent one.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

KERNEL_INDICES: tuple[tuple[int, int, int], ...] = tuple(itertools.combinations(range(9), 3))
"""The 84 kernels: the three of nine positions whose weight is 2 (the others are −1)."""
NUM_KERNELS = len(KERNEL_INDICES)
MAX_DILATIONS = 32
"""Distinct dilations at most (MiniRocket's ``max_dilations_per_kernel``)."""
STD_FLOOR = 1e-2
"""A feature whose training spread is below this is scaled as if it were this (a feature that
is constant on the training split must not turn a small change at test time into a huge one)."""


def kernel_weights(dtype=jnp.float32) -> Array:
    """``(9, 84)``: column ``i`` is kernel ``i``'s weights (−1, and 2 at its three positions)."""
    w = -np.ones((9, NUM_KERNELS))
    for i, idx in enumerate(KERNEL_INDICES):
        w[list(idx), i] = 2.0
    return jnp.asarray(w, dtype)


def fit_dilations(length: int, num_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """MiniRocket's dilations for series of `length` steps and how many features (biases) each
    dilation gives every kernel: up to 32 exponentially spaced dilations with which the kernel
    (9 taps) spans at most the series. Returns ``(dilations, features_per_dilation)``."""
    per_kernel = num_features // NUM_KERNELS
    count = min(per_kernel, MAX_DILATIONS)
    multiplier = per_kernel / count
    exponent = np.log2(max(length - 1, 1) / 8) if length > 9 else 0.0
    dilations, counts = np.unique(
        np.logspace(0, max(exponent, 0.0), count, base=2).astype(np.int32), return_counts=True)
    counts = (counts * multiplier).astype(np.int32)
    remainder = per_kernel - int(counts.sum())
    i = 0
    while remainder > 0:
        counts[i] += 1
        remainder -= 1
        i = (i + 1) % len(counts)
    return tuple(int(d) for d in dilations), tuple(int(c) for c in counts)


def quantile_levels(n: int) -> np.ndarray:
    """MiniRocket's quantile levels: the fractional parts of ``k·φ`` (φ the golden ratio),
    ``k = 1 … n`` (low-discrepancy, so every kernel's biases spread over its output's range)."""
    k = np.arange(1, n + 1, dtype=np.float64)
    return (k * ((np.sqrt(5) + 1) / 2)) % 1


class RocketFeatures(eqx.Module):
    r"""MiniRocket's features of a series ``(T, C)``, over its valid steps, standardised.

    For dilation ``d`` and kernel ``i`` (weights ``w_i``), the convolution (“same” zero padding)
    summed over the kernel's channels ``S`` is
    $c_t = \sum_{c \in S} \sum_{k=0}^{8} w_{ik}\, x_{t + (k-4)d,\,c}$, and each of its biases
    ``b`` gives the feature ``mean_t [c_t > b]`` over the valid steps — or, for every other
    (dilation, kernel) pair, over the valid steps at least ``4d`` from either end (MiniRocket's
    alternating padding). Features are returned as ``(f − mean) / (F^¼ · max(std, 0.01))`` with the
    training split's mean and standard deviation. (The ``F^¼`` lets the head learn from the
    features about as fast as from the liquid ones: with ``√F`` — logits of unit scale at any
    ``F`` — the liquid branch fitted the training series first and the features were left
    unused; see ``docs/time_series.md``.)

    **Arguments:**
    - `input_size`: channels of the series.
    - `num_features`: how many features (rounded down to a multiple of 84; at least 84).
    - `length`: the longest training series (steps): fixes the dilations.
    - `key`: PRNG key: which channels each (dilation, kernel) pair sums (MiniRocket's random
      subsets of up to 9 channels).

    Until :meth:`fit` is called, every bias is 0, the features are unscaled PPVs and `fitted` is
    ``False`` (a boolean array, saved with the model: :func:`liquidjax.train.fit` refuses to
    train an unfitted model).
    """

    channel_weights: Array
    biases: Array
    mean: Array
    scale: Array
    fitted: Array
    dilations: tuple[int, ...] = eqx.field(static=True)
    features_per_dilation: tuple[int, ...] = eqx.field(static=True)

    fixed_fields: ClassVar[tuple[str, ...]] = ("channel_weights", "biases", "mean", "scale")
    """Arrays fitted from data, never trained (:func:`liquidjax.models.fixed_mask`)."""

    def __init__(self, input_size: int, num_features: int, length: int, *,
                 key: PRNGKeyArray):
        if num_features < NUM_KERNELS:
            raise ValueError(f"rocket_features must be at least {NUM_KERNELS} (one per kernel), "
                             f"got {num_features}")
        if length < 1 or input_size < 1:
            raise ValueError(f"RocketFeatures needs length >= 1 and input_size >= 1, got "
                             f"{length} and {input_size}")
        self.dilations, self.features_per_dilation = fit_dilations(length, num_features)
        n = len(self.dilations) * NUM_KERNELS
        # How many channels each pair sums: 2^U(0, log2(min(C, 9) + 1)), rounded down; which:
        # the first of a random permutation.
        ku, kp = jax.random.split(key)
        top = np.log2(min(input_size, 9) + 1)
        count = jnp.floor(2.0 ** jax.random.uniform(ku, (n,), minval=0.0, maxval=top))
        count = jnp.clip(count, 1, min(input_size, 9))
        ranks = jnp.argsort(jax.random.uniform(kp, (n, input_size)), axis=1).argsort(axis=1)
        chosen = (ranks < count[:, None]).astype(jnp.float32)
        self.channel_weights = chosen.reshape(len(self.dilations), NUM_KERNELS, input_size)
        total = NUM_KERNELS * sum(self.features_per_dilation)
        self.biases = jnp.zeros((total,))
        self.mean = jnp.zeros((total,))
        self.scale = jnp.ones((total,))
        self.fitted = jnp.asarray(False)

    @property
    def num_features(self) -> int:
        return int(self.biases.shape[0])

    @property
    def input_size(self) -> int:
        return int(self.channel_weights.shape[-1])

    def convolutions(self, x: Float[Array, "time channels"], j: int) -> Array:
        """``(T, 84)``: the 84 kernels at dilation ``j`` (an index), each summed over its
        channels. The kernels are the same on every channel, so each kernel's channels are summed
        first (one ``(T, C) @ (C, 84)`` product) and the nine taps are then nine shifted adds —
        no ``(T, 84, 9)`` stack is formed (see ``docs/time_series.md`` for the measured gain)."""
        return self._taps(x @ self.channel_weights[j].T.astype(x.dtype), j)

    def _taps(self, u: Array, j: int) -> Array:
        """Kernel ``i``'s nine taps at dilation ``j`` over column ``i`` of ``u`` ``(T, 84)``
        (zero beyond the ends)."""
        d = self.dilations[j]
        length = u.shape[0]
        up = jnp.pad(u, ((4 * d, 4 * d), (0, 0)))
        w = kernel_weights(u.dtype)
        c = w[0] * up[:length]
        for k in range(1, 9):
            c = c + w[k] * up[k * d:k * d + length]
        return c

    def _valid(self, mask: Array, j: int) -> Array:
        """``(T, 84)``: the steps each kernel's features count at dilation ``j``."""
        length = mask.shape[0]
        pad = 4 * self.dilations[j]
        n = jnp.sum(mask)
        t = jnp.arange(length)
        inner = mask & (t >= pad) & (t < n - pad)
        odd = (np.arange(NUM_KERNELS) + j) % 2 == 1
        return jnp.where(jnp.asarray(odd)[None, :], inner[:, None], mask[:, None])

    def ppv(self, x: Float[Array, "time channels"], mask: Bool[Array, " time"] | None = None
            ) -> Float[Array, " features"]:
        """The raw features (proportions in ``[0, 1]``), in MiniRocket's order: dilation, then
        kernel, then bias. A series must be given with its valid steps first (padding at the
        end)."""
        valid_steps = jnp.ones(x.shape[:1], bool) if mask is None else mask
        x = jnp.where(valid_steps[:, None], x, 0)
        out, start = [], 0
        for j, nf in enumerate(self.features_per_dilation):
            c = self.convolutions(x, j)                          # (T, 84)
            valid = self._valid(valid_steps, j)                  # (T, 84)
            b = self.biases[start:start + NUM_KERNELS * nf].reshape(NUM_KERNELS, nf)
            hits = jnp.sum((c[:, :, None] > b[None].astype(c.dtype)) & valid[:, :, None], axis=0)
            count = jnp.maximum(jnp.sum(valid, axis=0), 1)
            out.append((hits / count[:, None]).astype(x.dtype).reshape(-1))
            start += NUM_KERNELS * nf
        return jnp.concatenate(out)

    def __call__(self, x: Float[Array, "time channels"], mask: Bool[Array, " time"] | None = None
                 ) -> Float[Array, " features"]:
        f = self.ppv(x, mask)
        return jax.lax.stop_gradient((f - self.mean.astype(f.dtype)) * self.scale.astype(f.dtype))

    def fit(self, x: Float[Array, "batch time channels"], mask: Bool[Array, "batch time"] | None,
            *, key: PRNGKeyArray, chunk: int = 64) -> RocketFeatures:
        """The features fitted to the training series `x` ``(N, T, C)`` (valid steps first, as
        `mask` says): each (dilation, kernel) pair's biases are the quantiles (levels
        :func:`quantile_levels`) of its output on one training series drawn at random (over
        that series' valid steps), then the mean and spread of every feature over all of `x`.
        Pure JAX (it can be ``vmap``-ed over an ensemble's members and keys)."""
        n, length = x.shape[0], x.shape[1]
        valid = jnp.ones((n, length), bool) if mask is None else mask.astype(bool)
        x = jnp.where(valid[..., None], x, 0)
        levels = jnp.asarray(quantile_levels(self.num_features), x.dtype)
        picks = jax.random.randint(key, (len(self.dilations), NUM_KERNELS), 0, n)
        biases, start = [], 0
        for j, nf in enumerate(self.features_per_dilation):
            # Kernel i at dilation j reads training series picks[j, i]: column i of u is that
            # series' channel sum for kernel i (each kernel convolved once, on its own series).
            u = jnp.einsum("itc,ic->ti", x[picks[j]],
                           self.channel_weights[j].astype(x.dtype))      # (T, 84)
            c = self._taps(u, j).T                                       # (84, T)
            v = valid[picks[j]]                                          # (84, T)
            q = levels[start:start + NUM_KERNELS * nf].reshape(NUM_KERNELS, nf)
            biases.append(_masked_quantiles(c, v, q).reshape(-1))
            start += NUM_KERNELS * nf
        fitted = eqx.tree_at(lambda r: r.biases, self, jnp.concatenate(biases))
        pad = -n % chunk
        xs = jnp.pad(x, ((0, pad), (0, 0), (0, 0))).reshape(-1, chunk, length, x.shape[2])
        vs = jnp.pad(valid, ((0, pad), (0, 0))).reshape(-1, chunk, length)
        feats = jax.lax.map(lambda a: jax.vmap(fitted.ppv)(a[0], a[1]), (xs, vs))
        feats = feats.reshape(-1, self.num_features)[:n]
        mean = jnp.mean(feats, axis=0)
        std = jnp.std(feats, axis=0)
        scale = 1.0 / (float(self.num_features) ** 0.25 * jnp.maximum(std, STD_FLOOR))
        return eqx.tree_at(lambda r: (r.mean, r.scale, r.fitted), fitted,
                           (mean.astype(self.mean.dtype), scale.astype(self.scale.dtype),
                            jnp.ones_like(self.fitted)))


def _masked_quantiles(c: Array, valid: Array, levels: Array) -> Array:
    """Per row of `c` ``(K, T)``, the quantiles at `levels` ``(K, Q)`` of its valid values
    (NumPy's default, linear interpolation between order statistics)."""
    big = jnp.finfo(c.dtype).max
    s = jnp.sort(jnp.where(valid, c, big), axis=1)
    n = jnp.maximum(jnp.sum(valid, axis=1), 1)
    pos = levels * (n[:, None] - 1).astype(levels.dtype)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n[:, None] - 1)
    frac = (pos - lo).astype(c.dtype)
    a = jnp.take_along_axis(s, lo, axis=1)
    b = jnp.take_along_axis(s, hi, axis=1)
    return a + frac * (b - a)
