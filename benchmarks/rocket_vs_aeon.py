"""`liquidjax.models.RocketFeatures` against aeon's MiniRocket transform, with aeon's own fitted
parameters (dilations, channel subsets, biases) copied in: the features must agree to float32
rounding, univariate and multivariate.

    python benchmarks/rocket_vs_aeon.py        # needs aeon (pip install 'liquidjax[bench]')

It then times the features of a batch of 32 series of 500 steps (1 and 12 channels, 2 000
features, as one ensemble member of the ``ts_*`` recipes reads PigCVP) against the same
computation with the nine taps stacked into a ``(T, 84, 9)`` array (the first version), and
aeon's transform of the same batch. Run it on a quiet machine.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from aeon.transformations.collection.convolution_based import MiniRocket

from liquidjax.models import RocketFeatures
from liquidjax.models._rocket import NUM_KERNELS, kernel_weights


def compare(channels: int, length: int, features: int = 840, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10, channels, length)).astype(np.float32).cumsum(-1)
    mr = MiniRocket(random_state=seed, n_kernels=features).fit(x)
    per_combination, channel_indices, dilations, per_dilation, biases = mr.parameters
    ours = RocketFeatures(channels, features, length, key=jax.random.key(seed))
    assert ours.dilations == tuple(dilations), (ours.dilations, dilations)
    assert ours.features_per_dilation == tuple(per_dilation)
    weights = np.zeros((len(dilations), NUM_KERNELS, channels), np.float32)
    start = 0
    for comb, count in enumerate(per_combination):
        j, i = divmod(comb, NUM_KERNELS)
        weights[j, i, channel_indices[start:start + count]] = 1.0
        start += count
    ours = eqx.tree_at(lambda r: (r.channel_weights, r.biases), ours,
                       (jnp.asarray(weights), jnp.asarray(biases)))
    got = np.asarray(jax.vmap(ours.ppv)(jnp.asarray(x.transpose(0, 2, 1))))
    return float(np.abs(got - np.asarray(mr.transform(x))).max())


def _stacked_taps(r: RocketFeatures, x, j: int):
    """The first version of ``RocketFeatures.convolutions``: the nine taps stacked."""
    d, length = r.dilations[j], x.shape[0]
    xp = jnp.pad(x, ((4 * d, 4 * d), (0, 0)))
    s = jnp.stack([xp[k * d:k * d + length] for k in range(9)], axis=-1)   # (T, C, 9)
    per_channel = jnp.einsum("tck,ki->tic", s, kernel_weights(x.dtype))
    return jnp.einsum("tic,ic->ti", per_channel, r.channel_weights[j])


def _ms(fn, *args, repeat: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeat * 1e3


def speed(channels: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 500, channels)).astype(np.float32)
    r = RocketFeatures(channels, 2000, 500, key=jax.random.key(0))
    dil = range(len(r.dilations))
    new = jax.jit(jax.vmap(lambda a: [r.convolutions(a, j) for j in dil]))
    old = jax.jit(jax.vmap(lambda a: [_stacked_taps(r, a, j) for j in dil]))
    ppv = jax.jit(jax.vmap(r.ppv))
    xj = jnp.asarray(x)
    mr = MiniRocket(random_state=0, n_kernels=2000).fit(x.transpose(0, 2, 1))
    mr.transform(x.transpose(0, 2, 1))  # numba compiled
    t0 = time.perf_counter()
    mr.transform(x.transpose(0, 2, 1))
    aeon_ms = (time.perf_counter() - t0) * 1e3
    print(f"32 x 500 x {channels}, {r.num_features} features: convolutions {_ms(new, xj):.1f} ms "
          f"(taps stacked: {_ms(old, xj):.1f} ms); whole features {_ms(ppv, xj):.1f} ms; "
          f"aeon's transform {aeon_ms:.1f} ms")


def main() -> int:
    worst = 0.0
    for channels, length in ((1, 60), (3, 40), (2, 300)):
        diff = compare(channels, length)
        worst = max(worst, diff)
        print(f"{channels} channel(s) x {length} steps: largest difference {diff:.2e}")
    ok = worst <= 1e-6
    print("OK" if ok else "MISMATCH")
    for channels in (1, 12):
        speed(channels)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
