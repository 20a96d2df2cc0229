"""`liquidjax.models.RocketFeatures` against aeon's MiniRocket transform, with aeon's own fitted
parameters (dilations, channel subsets, biases) copied in: the features must agree to float32
rounding, univariate and multivariate.

    python benchmarks/rocket_vs_aeon.py        # needs aeon (pip install 'liquidjax[bench]')
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from aeon.transformations.collection.convolution_based import MiniRocket

from liquidjax.models import RocketFeatures
from liquidjax.models._rocket import NUM_KERNELS


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


def main() -> int:
    worst = 0.0
    for channels, length in ((1, 60), (3, 40), (2, 300)):
        diff = compare(channels, length)
        worst = max(worst, diff)
        print(f"{channels} channel(s) x {length} steps: largest difference {diff:.2e}")
    ok = worst <= 1e-6
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
