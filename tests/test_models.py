"""Task models: every cell/wiring/solver combination builds and runs; masks, readouts, conv stem,
config validation."""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax.cells._cfc import CfC
from liquidjax.cells._lstm import MixedMemory
from liquidjax.cells._ltc import LTC
from liquidjax.cells._wired_cfc import WiredCfC
from liquidjax.models import (
    ConvLiquidClassifier,
    ModelConfig,
    SequenceClassifier,
    _conv_stem,
    build_model,
    feature_map_shape,
)
from liquidjax.solvers import FusedSemiImplicit

L, C, K = 7, 3, 4
KEY = jax.random.key(0)


@eqx.filter_jit
def _call(model, *args, **kw):
    return model(*args, **kw)


def _cfg(**kw) -> ModelConfig:
    base = dict(input_size=C, num_classes=K, units=8, backbone_units=8)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def xs():
    return jax.random.normal(jax.random.key(1), (3, L, C))


CASES = {
    "cfc-fc": (dict(), CfC),
    "cfc-ncp": (dict(wiring="ncp", units=12), WiredCfC),
    "cfc-random-mixed": (dict(wiring="random", mixed_memory=True), MixedMemory),
    "ltc-fc-fused": (dict(cell="ltc"), LTC),
    "ltc-ncp-euler": (dict(cell="ltc", wiring="autoncp", units=12, solver="euler",
                           ode_unfolds=2), LTC),
    "ltc-2layers-mean": (dict(cell="ltc", layers=2, readout="mean", ode_unfolds=2), LTC),
}


@pytest.mark.parametrize("name", list(CASES))
def test_build_and_run(name, xs):
    kw, cell_type = CASES[name]
    cfg = _cfg(**kw)
    model = build_model(cfg, key=KEY)
    assert isinstance(model, SequenceClassifier)
    assert len(model.layers) == cfg.layers
    assert isinstance(model.layers[0].cell, cell_type)
    if cfg.cell == "ltc":
        solver = model.layers[0].cell.solver
        assert isinstance(solver, FusedSemiImplicit) == (cfg.solver in (None, "fused"))
    logits = eqx.filter_jit(jax.vmap(model))(xs)
    assert logits.shape == (3, K)
    assert bool(jnp.all(jnp.isfinite(logits)))
    # different examples give different logits (the model reads its input)
    assert not np.allclose(logits[0], logits[1])


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_mask_equals_unpadded(readout):
    """A padded sequence with its mask gives the logits of the unpadded sequence."""
    model = build_model(_cfg(readout=readout, cell="ltc", ode_unfolds=2), key=KEY)
    x = jax.random.normal(jax.random.key(2), (5, C))
    ts = jnp.linspace(0.5, 1.5, 5)
    padded = jnp.concatenate([x, jnp.full((3, C), 9.0)])
    pts = jnp.concatenate([ts, jnp.ones(3)])
    mask = jnp.arange(8) < 5
    a = _call(model, x, ts)
    b = _call(model, padded, pts, mask)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the timespans matter
    assert not np.allclose(_call(model, x, 3 * ts), a)


def test_dropout_only_with_key():
    model = build_model(_cfg(dropout=0.5), key=KEY)
    x = jnp.ones((L, C))
    np.testing.assert_array_equal(_call(model, x), _call(model, x))
    assert not np.allclose(_call(model, x, key=jax.random.key(3)), _call(model, x))


def test_conv_model():
    cfg = _cfg(kind="conv", image_shape=(12, 10, 2), conv_channels=(4, 6))
    model = build_model(cfg, key=KEY)
    assert isinstance(model, ConvLiquidClassifier)
    c, h, w = feature_map_shape((12, 10, 2), (4, 6))
    assert (c, h, w) == (6, 6, 5)
    assert model.body.input_size == w * c
    img = jax.random.normal(jax.random.key(4), (12, 10, 2))
    seq = jax.eval_shape(model.features, img)
    assert seq.shape == (6, 30)
    out = _call(model, img)
    assert out.shape == (K,)
    # a row sequence (H, W*C) of the image is accepted too (same values, reshaped)
    assert jax.eval_shape(model, img.reshape(12, 20)).shape == (K,)
    cols = build_model(_cfg(kind="conv", image_shape=(12, 10, 2), conv_channels=(4, 6),
                            conv_sequence="columns"), key=KEY)
    assert jax.eval_shape(cols.features, img).shape == (5, 36)
    with pytest.raises(ValueError, match="timespans and mask must be None"):
        model(img, jnp.ones(12))
    with pytest.raises(ValueError, match="12x10x2=240"):
        model(jnp.ones((5, 5)))


def test_pooled_conv_stem_and_stem_dropout():
    cfg = _cfg(kind="conv", image_shape=(12, 10, 2), conv_channels=(4, 6), conv_stem="pooled",
               conv_dropout=0.5)
    model = build_model(cfg, key=KEY)
    # two stride-1 blocks per stage, a 2x2 max pool after each stage: 12x10 -> 6x5 -> 3x2
    assert [conv.out_channels for conv, _ in model.stem] == [4, 4, 6, 6]
    assert all(conv.stride == (1, 1) for conv, _ in model.stem)
    assert model.pool_after == (False, True, False, True)
    assert feature_map_shape((12, 10, 2), (4, 6), "pooled") == (6, 3, 2)
    img = jax.random.normal(jax.random.key(4), (12, 10, 2))
    assert jax.eval_shape(model.features, img).shape == (3, 12)
    # the pool is a max over 2x2 windows (odd trailing column dropped): numpy reference
    z = np.asarray(jax.random.normal(jax.random.key(5), (7, 5, 3)))
    want = z[:6, :4].reshape(3, 2, 2, 2, 3).max(axis=(1, 3))
    np.testing.assert_array_equal(_conv_stem._max_pool2(jnp.asarray(z)), want)
    # stem dropout only with a key; without one the call is deterministic
    a, b = _call(model, img), _call(model, img)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.features(img, key=jax.random.key(6)), model.features(img))
    # one stage: the dropout after its pool is the last operation, so kept values scale by 2
    one = build_model(dataclasses.replace(cfg, conv_channels=(4,)), key=KEY)
    f0 = one.features(img)
    f1 = one.features(img, key=jax.random.key(6))
    f0, f1 = np.asarray(f0), np.asarray(f1)
    live = f0 != 0  # ReLU zeros stay zero either way
    assert live.sum() > 20
    dropped = live & (f1 == 0)
    assert 0.25 < dropped.sum() / live.sum() < 0.75  # rate 0.5
    kept = live & ~dropped
    np.testing.assert_allclose(f1[kept], 2 * f0[kept], rtol=1e-5, atol=1e-6)  # 1 / (1 - rate)


def _reference_features(model, img):
    """The stem written with equinox's own channels-first modules and ``reduce_window``."""
    z = jnp.transpose(img, (2, 0, 1))
    for (conv, norm), pool in zip(model.stem, model.pool_after):
        z = jax.nn.relu(norm(conv(z)))
        if pool:
            z = jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 2, 2), (1, 2, 2), "VALID")
    c, h, w = z.shape
    return jnp.reshape(jnp.transpose(z, (1, 2, 0)), (h, w * c))


@pytest.mark.parametrize("stem", ["strided", "pooled"])
def test_conv_stem_matches_equinox_reference(stem):
    """The fused channels-last stem (custom VJP for GroupNorm + ReLU) against eqx modules:
    values and gradients with respect to every stem parameter and the image."""
    model = build_model(_cfg(kind="conv", image_shape=(9, 7, 3), conv_channels=(8, 16),
                             conv_stem=stem), key=KEY)
    # non-trivial affine parameters, so the ReLU mask and both parameter gradients matter
    leaves = [(n.weight, n.bias) for _, n in model.stem]
    keys = iter(jax.random.split(jax.random.key(7), 2 * len(leaves)))
    new = [(1 + 0.5 * jax.random.normal(next(keys), w.shape), 0.3 * jax.random.normal(
        next(keys), b.shape)) for w, b in leaves]
    model = eqx.tree_at(lambda m: [x for _, n in m.stem for x in (n.weight, n.bias)], model,
                        [x for pair in new for x in pair])
    img = 2.0 + 3.0 * jax.random.normal(jax.random.key(8), (9, 7, 3))
    probe = jax.random.normal(jax.random.key(9), jax.eval_shape(model.features, img).shape)

    def loss(fn, m, x):
        return jnp.sum(jnp.tanh(fn(m, x)) * probe)

    ours = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda mx: loss(lambda m, x: m.features(x), *mx)))((model, img))
    ref = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda mx: loss(_reference_features, *mx)))((model, img))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.features(img), _reference_features(model, img),
                               rtol=1e-5, atol=1e-5)
    g_ours = jax.tree_util.tree_leaves(eqx.filter((ours[1][0].stem, ours[1][1]), eqx.is_array))
    g_ref = jax.tree_util.tree_leaves(eqx.filter((ref[1][0].stem, ref[1][1]), eqx.is_array))
    assert len(g_ours) == len(g_ref) == 4 * len(model.stem) + 1
    for a, b in zip(g_ours, g_ref):
        assert float(jnp.max(jnp.abs(b))) > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_config_roundtrip_json():
    cfg = _cfg(kind="conv", image_shape=(8, 8, 1), conv_channels=(4,), cell="ltc",
               solver="tsit5", adaptive_tol=1e-3)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig fields: colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})


@pytest.mark.parametrize("kw, match", [
    (dict(cell="gru"), "unknown cell 'gru'; expected one of: cfc, ltc"),
    (dict(wiring="star"), "expected one of: fc, ncp, autoncp, random"),
    (dict(cell="ltc", solver="rk4"), "expected one of: fused, euler"),
    (dict(solver="tsit5"), "applies only to ODE cells"),
    (dict(interpolation="cubic"), "needs an ODE cell"),
    (dict(cell="ltc", solver="euler", adaptive_tol=1e-3), "adaptive solver"),
    (dict(readout="max"), "expected one of: last, mean"),
    (dict(units=0), "units must be an integer >= 1, got 0"),
    (dict(num_classes=1), "num_classes must be at least 2, got 1"),
    (dict(wiring="ncp", units=6, motor_neurons=4), r"motor_neurons in \[1, 3\]"),
    (dict(kind="conv"), "image_shape"),
    (dict(dropout=1.0), "dropout must be a number in \\[0.0, 1.0\\), got 1.0"),
    (dict(kind="conv", image_shape=(8, 8, 1), conv_stem="resnet"),
     "unknown conv stem 'resnet'; expected one of: strided, pooled"),
    (dict(kind="conv", image_shape=(8, 8, 1), conv_channels=(4, 4, 4, 4), conv_stem="pooled"),
     r"shrinks an image of shape \(8, 8, 1\) to nothing"),
    (dict(conv_dropout=-0.1), "conv_dropout must be a number in"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_layer_mismatch_errors():
    a = build_model(_cfg(), key=KEY)
    with pytest.raises(ValueError, match="head expects 5 features"):
        SequenceClassifier(a.layers, eqx.nn.Linear(5, K, key=KEY))
    with pytest.raises(ValueError, match="readout='mean' needs"):
        SequenceClassifier(a.layers, a.head, readout="mean")  # last layer built for "last"


# ------------------------------------------------------------ temporal convolution stem (ts)
def _np_stem(stem, x, valid):
    """The stem in NumPy: 'same' cross-correlation, GroupNorm over the valid steps, ReLU."""
    h = np.where(valid[:, None], np.asarray(x, np.float64), 0.0)
    for conv, scale, bias, groups in zip(stem.convs, stem.scales, stem.biases, stem.groups):
        w, b = np.asarray(conv.weight, np.float64), np.asarray(conv.bias, np.float64)[:, 0]
        k = w.shape[-1]
        left = (k - 1) // 2
        padded = np.pad(h, ((left, k - 1 - left), (0, 0)))
        h = np.stack([np.einsum("ck,ock->o", padded[t:t + k].T, w) for t in range(len(h))]) + b
        out = np.empty_like(h)
        for g in np.split(np.arange(h.shape[1]), groups):
            v = h[valid][:, g]
            out[:, g] = (h[:, g] - v.mean()) / np.sqrt(v.var() + 1e-5)
        h = np.maximum(out * np.asarray(scale) + np.asarray(bias), 0.0)
        h = np.where(valid[:, None], h, 0.0)
    return h


def test_temporal_stem_model_against_numpy_and_unpadded():
    from liquidjax.models import StemSequenceClassifier, pool_steps

    cfg = _cfg(stem_channels=(8, 16, 4), stem_pool=3)
    model = build_model(cfg, key=KEY)
    assert isinstance(model, StemSequenceClassifier)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, C)).astype(np.float32)
    ts = rng.uniform(0.5, 2.0, 11).astype(np.float32)
    valid = np.arange(11) < 8
    f = np.asarray(model.stem(jnp.asarray(x), jnp.asarray(valid)))
    np.testing.assert_allclose(f, _np_stem(model.stem, x, valid), rtol=1e-4, atol=1e-5)
    # windows of 3: the mean of the valid steps, the sum of their timespans
    xs, dts, ms = pool_steps(jnp.asarray(f), jnp.asarray(ts), jnp.asarray(valid), 3)
    np.testing.assert_allclose(xs[2], f[6:8].mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dts, [ts[0:3].sum(), ts[3:6].sum(), ts[6:8].sum(), 0], rtol=1e-6)
    assert ms.tolist() == [True, True, True, False]
    # padding behind the mask changes nothing: the padded series equals the cut one
    cut = _call(model, jnp.asarray(x[:8]), jnp.asarray(ts[:8]))
    x_pad = x.copy()
    x_pad[8:] = 1e3
    padded = _call(model, jnp.asarray(x_pad), jnp.asarray(ts), jnp.asarray(valid))
    np.testing.assert_allclose(padded, cut, rtol=1e-5, atol=1e-6)
    # it cannot stream (its convolutions look ahead): one line that says so
    with pytest.raises(ValueError, match="cannot run one observation at a time; train without"):
        model.stream_spec()


@pytest.mark.parametrize("kw, match", [
    (dict(stem_pool=4), "stem_pool=4 pools the stem's features: set stem_channels"),
    (dict(stem_channels=(4,), per_step=True), "stem_channels .* needs kind='sequence'"),
])
def test_temporal_stem_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)
