"""The CfC sequence fast path (``cells/_cfc_sequence.py``: the ``advance_sequence`` overrides
of CfC, MixedMemory and WiredCfC) held to ``scan_advance``, the generic scan of
``cell.advance``: values and gradients, float32 and float64, and the cases that fall back."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax.cells import scan_advance
from liquidjax.cells._cfc import CfC
from liquidjax.cells._lstm import MixedMemory
from liquidjax.cells._wired_cfc import WiredCfC
from liquidjax.layers import LiquidRNN
from liquidjax.wirings import AutoNCP

B, T, I, H, U = 3, 6, 5, 4, 7
WIRED_UNITS = 9  # AutoNCP(9, 3): layers of 4, 2 and 3 neurons


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


def _reference(rnn: LiquidRNN, x, ts, h0, mask):
    """The generic path: ``scan_advance`` (the scan of ``cell.advance``, the contract's
    definition of ``advance_sequence``) and the readout written out; a masked step keeps the
    state and outputs zero."""
    cell = rnn.cell
    hs = scan_advance(cell, h0, x, ts, mask)
    h = jax.tree_util.tree_map(lambda a: a[-1], hs)
    read = cell.output if rnn.proj is None else (lambda s: rnn.proj(cell.output(s)))
    if not rnn.return_sequences:
        return read(h), h
    mask = jnp.ones(x.shape[0], bool) if mask is None else mask
    return jnp.where(mask[:, None], jax.vmap(read)(hs), 0), h


def _loss(run, args):
    rnn, x, ts, h0, mask = args
    ys, h = jax.vmap(run, in_axes=(None, 0, 0, 0, 0))(rnn, x, ts, h0, mask)
    # Weights on every output so that each step's cotangent differs.
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * jnp.sin(ys)) + sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(h))


def _with_remat(rnn: LiquidRNN) -> LiquidRNN:
    return LiquidRNN(rnn.cell, rnn.proj, return_sequences=rnn.return_sequences, remat=True)


def _layer(rnn: LiquidRNN, x, ts, h0, mask):
    return rnn(x, ts, mask, h0)


def _value_and_grads(run, args):
    return eqx.filter_jit(eqx.filter_value_and_grad(lambda a: _loss(run, a)))(args)


def _assert_close(got, want, rtol):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        scale = np.max(np.abs(w))
        assert scale > 0  # not vacuous: every compared gradient is non-zero
        assert np.max(np.abs(g - w)) <= rtol * scale, (np.max(np.abs(g - w)) / scale, w.shape)


def _problem(dtype, *, mode="default", activation="lecun_tanh", sparse=False, proj=False,
             return_sequences=True, steps_mask=False, unit_steps=False, wired=False,
             memory=False, seed=0):
    k = jax.random.split(jax.random.key(seed), 8)
    sparsity = None
    if sparse:
        sparsity = np.asarray(jax.random.bernoulli(k[5], 0.5, (H, U)))
    if wired:
        cell = WiredCfC(I, AutoNCP(WIRED_UNITS, 3), mode=mode, key=k[0])
    else:
        cell = CfC(I, H, mode=mode, activation=activation, backbone_units=U,
                   sparsity_mask=sparsity, key=k[0])
    if memory:
        cell = MixedMemory(cell, key=k[6])
    p = eqx.nn.Linear(cell.output_size, 3, key=k[4]) if proj else None
    rnn = _cast(LiquidRNN(cell, p, return_sequences=return_sequences), dtype)
    x = jax.random.normal(k[1], (B, T, I), dtype)
    ts = jax.random.uniform(k[2], (B, T), dtype, 0.1, 3.0)
    h0 = 0.5 * jax.random.normal(k[3], (B, cell.state_size), dtype)
    if memory:
        h0 = (h0, 0.5 * jax.random.normal(k[7], (B, cell.state_size), dtype))
    mask = None
    if steps_mask:  # gaps inside and padding at the end; one example with no valid step
        mask = jnp.asarray([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
        assert mask.shape == (B, T)
    return rnn, x, (None if unit_steps else ts), h0, mask


_CASES = [
    dict(mode="default"),
    dict(mode="no_gate", activation="gelu", proj=True),
    dict(mode="default", activation="relu", sparse=True, return_sequences=False),
    dict(mode="no_gate", activation="silu", return_sequences=False, proj=True),
    dict(mode="default", activation="tanh", steps_mask=True, proj=True),
    dict(mode="no_gate", steps_mask=True, sparse=True, return_sequences=False),
    dict(mode="default", unit_steps=True, proj=True),
    dict(mode="no_gate", activation="relu", unit_steps=True, steps_mask=True, sparse=True),
    dict(mode="default", memory=True),
    dict(mode="no_gate", activation="gelu", return_sequences=False, proj=True, memory=True),
    dict(mode="default", steps_mask=True, proj=True, memory=True),
    dict(mode="default", unit_steps=True, return_sequences=False, memory=True),
    dict(mode="no_gate", unit_steps=True, steps_mask=True, sparse=True, memory=True),
]


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("case", _CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fast_path_matches_generic(dtype, rtol, case):
    if case.get("memory") and dtype == jnp.float32:
        rtol = 5e-6  # the LSTM's extra operations round differently in float32 (1.1e-6 seen)
    elif dtype == jnp.float32:
        rtol = 2e-6  # on CPU the compiled kernel sums its products in another order (1.3e-6 seen)
    with jax.enable_x64(dtype == jnp.float64):
        args = _problem(dtype, **case)
        # Not vacuous: the heads are stacked, three of them with unit steps (time_a + time_b);
        # with mixed memory, the LSTM's input map is stacked with the backbone's input part.
        heads = 3 if case.get("unit_steps") else 4
        jaxpr = str(jax.make_jaxpr(_loss, static_argnums=0)(_layer, args))
        assert f"[{heads * H},{U}]" in jaxpr and f"[{(7 - heads) * H},{U}]" not in jaxpr
        assert (f"[{4 * H + U},{I}]" in jaxpr) == case.get("memory", False)
        fast = _value_and_grads(_layer, args)
        ref = _value_and_grads(_reference, args)
        _assert_close(fast, ref, rtol)  # loss, and d/d (weights, x, timespans, h0)


_WIRED_CASES = [
    dict(mode="default"),
    dict(mode="no_gate", proj=True, return_sequences=False),
    dict(mode="default", steps_mask=True, proj=True),
    dict(mode="default", unit_steps=True),
    dict(mode="no_gate", unit_steps=True, steps_mask=True, return_sequences=False),
]


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-6), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("case", _WIRED_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_wired_fast_path_matches_generic(dtype, rtol, case):
    """A wired CfC's sequence (stacked heads per wiring layer; three with unit steps) against
    the generic scan of ``WiredCfC.advance``: loss and every gradient."""
    with jax.enable_x64(dtype == jnp.float64):
        args = _problem(dtype, wired=True, **case)
        # Not vacuous: the first layer's (4 neurons, 5 inputs + 4) heads are one product.
        heads = 3 if case.get("unit_steps") else 4
        jaxpr = str(jax.make_jaxpr(_loss, static_argnums=0)(_layer, args))
        assert f"[{heads * 4},{I + 4}]" in jaxpr and f"[{(7 - heads) * 4},{I + 4}]" not in jaxpr
        _assert_close(_value_and_grads(_layer, args), _value_and_grads(_reference, args), rtol)


def test_fast_path_is_taken_only_where_it_applies():
    """Not vacuous: the recurrence primitive is in the graph of the plain call (masked or not) and
    with mixed memory, and not with remat, another mode (a wired one too), another backbone
    depth (mixed memory too), mixed memory around a wired CfC or mixed dtypes."""
    rnn, x, ts, h0, _ = _problem(jnp.float32)
    args = (x[0], ts[0])

    def uses_fast_path(r, *a, **kw):
        jaxpr = str(jax.make_jaxpr(lambda *b: r(*b, **kw))(*a))
        return "liquidjax_cfc_recurrence" in jaxpr or "liquidjax_cfc_memory_recurrence" in jaxpr

    assert uses_fast_path(rnn, *args)
    assert uses_fast_path(rnn, *args, mask=jnp.ones(T, bool))
    assert not uses_fast_path(_with_remat(rnn), *args)
    key = jax.random.key(0)
    memory = LiquidRNN(MixedMemory(CfC(I, H, backbone_units=U, key=key), key=key))
    assert uses_fast_path(memory, *args)
    # Training passes a dropout key down the layer: the CfC has no dropout of its own, so its
    # fast path (plain or inside mixed memory) is still the one taken.
    assert uses_fast_path(rnn, *args, key=key)
    assert uses_fast_path(memory, *args, key=key)
    assert not uses_fast_path(_with_remat(memory), *args)
    pure_wired = WiredCfC(I, AutoNCP(WIRED_UNITS, 3), mode="pure", key=key)
    # (the stacked heads need ff2/time_a/time_b: the fast path on a pure cell would fail)
    assert LiquidRNN(pure_wired)(*args)[0].shape == (T, pure_wired.output_size)
    for cell in (CfC(I, H, mode="pure", backbone_units=U, key=key),
                 CfC(I, H, backbone_units=U, backbone_layers=0, key=key),
                 CfC(I, H, backbone_units=U, backbone_layers=2, key=key),
                 MixedMemory(CfC(I, H, backbone_units=U, backbone_layers=2, key=key), key=key),
                 MixedMemory(WiredCfC(I, AutoNCP(WIRED_UNITS, 3), key=key), key=key)):
        assert not uses_fast_path(LiquidRNN(cell), *args)
    assert not uses_fast_path(rnn, x[0], ts[0].astype(jnp.float16))


def test_remat_fallback_matches_fast_path():
    """remat (the generic path) agrees with the fast path, with a mask."""
    with jax.enable_x64(True):
        args = _problem(jnp.float64, proj=True, steps_mask=True)
        rnn, x, ts, h0, mask = args
        fast = _value_and_grads(_layer, args)
        remat = _value_and_grads(_layer, (_with_remat(rnn), x, ts, h0, mask))
        _assert_close(remat, fast, 1e-12)


@pytest.mark.parametrize("memory", [False, True], ids=["cfc", "mixed-memory"])
def test_vmap_over_models_and_second_order(memory):
    """Batched weights (an ensemble under vmap) keep per-model gradients, and reverse-over-reverse
    differentiation runs through the hand-written VJP (float64 against the generic path)."""
    with jax.enable_x64(True):
        rnn, x, ts, h0, mask = _problem(jnp.float64, proj=True, memory=memory)
        rnns = eqx.filter_vmap(
            lambda s: _problem(jnp.float64, proj=True, memory=memory, seed=s)[0])(jnp.arange(2))

        def per_model(run):
            grad = eqx.filter_grad(lambda r: _loss(run, (r, x, ts, h0, mask)))
            return eqx.filter_jit(eqx.filter_vmap(grad))(rnns)

        _assert_close(per_model(_layer), per_model(_reference), 1e-12)

        def second(run):
            def inner(x):
                g = eqx.filter_grad(lambda r: _loss(run, (r, x, ts, h0, mask)))(rnn)
                cfc = g.cell.cell if memory else g.cell
                out = jnp.sum(cfc.ff1.weight ** 2) + jnp.sum(cfc.backbone[0].weight ** 2)
                return out + (jnp.sum(g.cell.lstm.recurrent_map.weight ** 2) if memory else 0)
            return jax.jit(jax.grad(inner))(x)

        _assert_close(second(_layer), second(_reference), 1e-12)


@pytest.mark.parametrize("memory", [False, True], ids=["cfc", "mixed-memory"])
def test_per_example_gradients_under_vmap_of_grad(memory):
    """``vmap(grad(...))`` with shared weights gives each example's own gradient (the batched
    VJP that sums over the batch must not be used there): against a loop of single examples."""
    rnn, x, ts, h0, mask = _problem(jnp.float32, steps_mask=True, memory=memory)

    def one(r, xi, ti, hi, mi):
        ys, h = _layer(r, xi, ti, hi, mi)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(h))

    def weights(g):  # the backbone's, and the LSTM's input and recurrent maps
        if not memory:
            return [g.cell.backbone[0].weight]
        lstm = g.cell.lstm
        return [g.cell.cell.backbone[0].weight, lstm.input_map.weight, lstm.recurrent_map.weight]

    grad = eqx.filter_grad(one)
    per_example = eqx.filter_jit(eqx.filter_vmap(grad, in_axes=(None, 0, 0, 0, 0)))(
        rnn, x, ts, h0, mask)
    for k, got in enumerate(weights(per_example)):
        assert got.shape[0] == x.shape[0]
        for i in range(x.shape[0]):
            hi = jax.tree_util.tree_map(lambda a: a[i], h0)
            ref = weights(grad(rnn, x[i], ts[i], hi, mask[i]))[k]
            np.testing.assert_allclose(got[i], ref, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got[0], got[1])  # really per example
