"""MiniRocket features beside the liquid layers (`RocketFeatures`, `ModelConfig.rocket_features`):
held to a direct NumPy convolution, NumPy's quantiles, and the trainer leaving them alone."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax import train as lt
from liquidjax.models import (
    Ensemble,
    ModelConfig,
    RocketFeatures,
    build_model,
    fixed_mask,
    has_fixed_params,
)
from liquidjax.models._rocket import KERNEL_INDICES, fit_dilations, quantile_levels


def _np_ppv(r: RocketFeatures, x: np.ndarray, n: int) -> np.ndarray:
    """MiniRocket's features by direct convolution (a loop over kernels and taps) of the first
    `n` steps of `x` ``(T, C)``, in its order: dilation, kernel, bias."""
    w_ch = np.asarray(r.channel_weights)
    biases = np.asarray(r.biases)
    x = x[:n].astype(np.float64)
    out, start = [], 0
    for j, (d, nf) in enumerate(zip(r.dilations, r.features_per_dilation)):
        for i, idx in enumerate(KERNEL_INDICES):
            w = np.full(9, -1.0)
            w[list(idx)] = 2.0
            c = np.zeros(n)
            for k in range(9):
                src = np.arange(n) + (k - 4) * d
                ok = (src >= 0) & (src < n)
                c[ok] += w[k] * (x[src[ok]] @ w_ch[j, i])
            pad = 4 * d
            region = c if (i + j) % 2 == 0 else c[pad:n - pad]
            for f in range(nf):
                b = biases[start + i * nf + f]
                out.append(np.mean(region > b) if region.size else 0.0)
        start += 84 * nf
    return np.asarray(out)


def test_features_equal_direct_convolution_and_unpadded_series():
    rng = np.random.default_rng(0)
    r = RocketFeatures(3, 300, 40, key=jax.random.key(1))
    assert r.num_features == 252 and len(r.dilations) > 1  # 300 rounded down to 3 × 84
    # MiniRocket's dilations for 40 steps and 252 features: 1, 2, 4 (aeon's _fit_dilations)
    assert (r.dilations, r.features_per_dilation) == fit_dilations(40, 252) == ((1, 2, 4),
                                                                               (1, 1, 1))
    x = rng.normal(size=(40, 3)).cumsum(0).astype(np.float32)
    r = eqx.tree_at(lambda m: m.biases, r, jnp.asarray(rng.normal(size=252) * 3, jnp.float32))
    # every channel subset has 1 to 3 channels
    counts = np.asarray(r.channel_weights).sum(-1)
    assert counts.min() >= 1 and counts.max() <= 3
    got = np.asarray(r.ppv(jnp.asarray(x)))
    np.testing.assert_allclose(got, _np_ppv(r, x, 40), atol=1e-6)
    # a shorter series behind a mask: its features are the cut series' (padding never counts)
    valid = np.arange(40) < 29
    x_pad = np.where(valid[:, None], x, 1e3).astype(np.float32)
    masked = np.asarray(r.ppv(jnp.asarray(x_pad), jnp.asarray(valid)))
    np.testing.assert_allclose(masked, _np_ppv(r, x, 29), atol=1e-6)


def test_fit_biases_are_numpy_quantiles_and_features_are_standardised():
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(6, 30, 1)).cumsum(1).astype(np.float32)
    mask = np.ones((6, 30), bool)
    mask[2, 21:] = False
    r = RocketFeatures(1, 168, 30, key=jax.random.key(0))
    key = jax.random.key(5)
    fitted = r.fit(jnp.asarray(xs), jnp.asarray(mask), key=key)
    # which training series each (dilation, kernel) pair read: the same draw as fit's
    picks = np.asarray(jax.random.randint(key, (len(r.dilations), 84), 0, 6))
    levels = quantile_levels(r.num_features)
    start = 0
    for j, nf in enumerate(r.features_per_dilation):
        for i in (0, 41, 83):
            e = picks[j, i]
            n = int(mask[e].sum())
            # the kernel's output on that series, by the direct convolution with unit biases
            conv = np.asarray(r.convolutions(jnp.asarray(np.where(mask[e][:, None], xs[e], 0)),
                                             j))[:n, i]
            lo = start + i * nf
            want = np.quantile(conv, levels[lo:lo + nf])
            np.testing.assert_allclose(np.asarray(fitted.biases[lo:lo + nf]), want,
                                       rtol=1e-5, atol=1e-5)
        start += 84 * nf
    # standardised on the training series: mean 0, and scaled by 1 / (F^¼ · max(std, 0.01))
    feats = np.asarray(jax.vmap(fitted)(jnp.asarray(xs), jnp.asarray(mask)))
    np.testing.assert_allclose(feats.mean(0), 0, atol=1e-5)  # float32, scales up to ~30
    raw = np.asarray(jax.vmap(fitted.ppv)(jnp.asarray(xs), jnp.asarray(mask)))
    want_scale = 1 / (168 ** 0.25 * np.maximum(raw.std(0), 0.01))
    np.testing.assert_allclose(np.asarray(fitted.scale), want_scale, rtol=1e-5)


def test_model_with_rocket_trains_its_head_and_never_its_features():
    cfg = ModelConfig(input_size=2, num_classes=3, units=6, backbone_units=6,
                      stem_channels=(4,), stem_pool=4, rocket_features=84, rocket_length=24,
                      ensemble=2)
    model = build_model(cfg, key=jax.random.key(0))
    assert isinstance(model, Ensemble) and model.fits_from_data and has_fixed_params(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 24, 2)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int32) + (x[:, :, 1].mean(1) > 0)
    mask = np.ones((16, 24), bool)
    data = lt.ArrayData(x, y, mask=mask)
    with pytest.raises(ValueError, match="has not been: call liquidjax.train.init_from_data"):
        lt.fit(model, data, lt.TrainConfig(epochs=1, batch_size=8), progress="none")
    model = lt.init_from_data(model, data, key=jax.random.key(3))
    assert model.fitted_to_data
    # each member fitted its own biases (its own draw of training series)
    b = np.asarray(model.members.rocket.biases)
    assert b.shape == (2, 84) and not np.allclose(b[0], b[1]) and np.abs(b).sum() > 0
    marks = jax.tree_util.tree_leaves(fixed_mask(eqx.filter(model, eqx.is_inexact_array)))
    assert sum(marks) == 4 and not all(marks)  # channel weights, biases, mean, scale only
    before = eqx.filter(model, eqx.is_inexact_array)
    result = lt.fit(model, data,
                    lt.TrainConfig(epochs=3, batch_size=8, learning_rate=1e-2, weight_decay=0.5),
                    progress="none")
    after = eqx.filter(result.model, eqx.is_inexact_array)
    for name in ("channel_weights", "biases", "mean", "scale"):
        np.testing.assert_array_equal(getattr(after.members.rocket, name),
                                      getattr(before.members.rocket, name))
    # the head did train, on the rocket columns too
    moved = np.abs(np.asarray(after.members.head.weight - before.members.head.weight))
    assert moved[:, :, -84:].max() > 1e-3


@pytest.mark.parametrize("kw, match", [
    (dict(rocket_features=84, rocket_length=10), "needs a temporal stem too"),
    (dict(rocket_features=84, stem_channels=(4,)), "needs rocket_length"),
])
def test_rocket_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(input_size=2, num_classes=3, **kw)
    with pytest.raises(ValueError, match="at least 84"):
        RocketFeatures(2, 50, 10, key=jax.random.key(0))
