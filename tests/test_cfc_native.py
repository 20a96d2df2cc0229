"""The compiled CPU kernel of the CfC's sequence recurrence (``_native/cfc_cpu.cc``) held to its
pure-JAX definition (``cells/_cfc_sequence.py``): the forward (states, pre-activations) and the
backward (the VJP but the input's cotangent), float32 and float64, every activation, both modes,
with and without mixed memory, unit and timed steps, masks, batch sizes that leave partial
register tiles and span both workers. The model-level tests in ``test_cfc_sequence.py`` hold the
whole fast path (this kernel on CPU) to the generic scan of ``cell.advance``; this file also
checks that they really run it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax import _native
from liquidjax.cells import CfC, MixedMemory
from liquidjax.cells._cfc import ACTIVATIONS
from liquidjax.cells._cfc_sequence import _grads, _Operands, _scan
from liquidjax.layers import LiquidRNN

T, I, H, U = 5, 3, 6, 10  # H, U not multiples of a SIMD vector: the padded columns are exercised

CONFIGS = [  # activation, no_gate, timed, masked, mixed memory
    ("lecun_tanh", False, False, False, False),
    ("silu", True, True, True, False),
    ("relu", False, True, False, False),
    ("tanh", True, False, True, False),
    ("lecun_tanh", False, True, True, True),
    ("gelu", True, False, False, True),
    ("gelu", False, True, True, False),
]


def _close(got, want, tol):
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = max(float(np.max(np.abs(w))), 1.0)
        np.testing.assert_allclose(g, w, rtol=0, atol=tol * scale)


def _operands(batch, dtype, timed, masked, memory, seed):
    # NumPy draws (each eager jax.random call compiles a program per shape and dtype: ~10 s here)
    rng = np.random.default_rng(seed)
    z = 4 * H if memory else 0  # the LSTM's input map's rows come first in w_in
    heads = 4 if timed else 3

    def normal(scale, *shape):
        return jnp.asarray(scale * rng.standard_normal(shape), dtype)

    mask = None
    if masked:  # gaps, and one example with no valid step
        mask = rng.random((T, batch)) < 0.7
        mask[:, 0] = False
        mask = jnp.asarray(mask)
    return _Operands(
        w_in=normal(0.5, z + U, I),
        b_in=normal(0.1, z + U),
        w_h=normal(0.5, U, H),
        w_heads=normal(0.5, heads * H, U),
        b_heads=normal(0.1, heads * H),
        w_lstm=normal(0.5, z, H) if memory else None,
        x=normal(1.0, T, batch, I),
        h0=normal(0.5, batch, H),
        c0=normal(0.5, batch, H) if memory else None,
        dts=jnp.asarray(rng.uniform(0.2, 2.0, (T, batch)), dtype) if timed else None,
        mask=mask,
    )


# The references, each one compiled program (run op by op, their many small programs cost more)
_reference_scan = jax.jit(lambda act, no_gate, o: _scan(act, no_gate, o, save=True),
                          static_argnums=(0, 1))
_reference_grads = jax.jit(_grads, static_argnums=(0, 1))


def test_the_compiled_kernels_are_built_here():
    assert _native.available(), "the compiled CPU kernels are not available: run make"
    assert _native.CFC_ACTIVATIONS == tuple(ACTIVATIONS)  # the kernel's ids cover them all


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-12)],
                         ids=["f32", "f64"])
def test_compiled_cfc_kernel_matches_its_jax_reference(dtype, tol):
    with jax.enable_x64(dtype == jnp.float64):
        # float64: the first config, one with mixed memory and the last; float32: every config
        configs = CONFIGS if dtype == jnp.float32 else [CONFIGS[0], CONFIGS[4], CONFIGS[-1]]
        for n, (activation, no_gate, timed, masked, memory) in enumerate(configs):
            act = ACTIVATIONS[activation]
            for batch in ((1, 37) if n == 0 else (37,)):  # 37: two workers, tiles of 8, 4, 1
                o = _operands(batch, dtype, timed, masked, memory, seed=n)
                args = (o.x, o.h0, o.c0, o.w_in, o.b_in, o.w_h, o.w_lstm, o.w_heads, o.b_heads,
                        o.dts, o.mask)
                kw = dict(activation=activation, no_gate=no_gate)
                ss, us, ps, zs = _reference_scan(act, no_gate, o)
                assert (zs is None) == (not memory)
                got = jax.jit(lambda *a: _native.cfc_forward(*a, **kw, last=False, keep=True))(
                    *args)
                _close([a for a in got if a is not None],
                       [a for a in (ss, us, ps, zs) if a is not None], tol)
                last = jax.jit(lambda *a: _native.cfc_forward(*a, **kw, last=True, keep=False))(
                    *args)
                _close(last[:1], (ss[-1:],), tol)  # inference: no residuals
                assert last[1].size == last[2].size == 0
                # The VJP but the input's cotangent, from the reference's residuals: with the last
                # state's cotangent only, and with every state's.
                ct = jnp.asarray(np.random.default_rng(100 + n).standard_normal(ss.shape), dtype)
                for only_last, c in ((True, ct[-1]), (False, ct)):
                    want = _reference_grads(act, no_gate, o, ss, us, ps, zs, ct if not only_last
                                            else jnp.zeros_like(ct).at[-1].set(c))
                    got = jax.jit(lambda *a, last=only_last: _native.cfc_backward(
                        *a, **kw, last=last))(c, o.x, o.h0, o.c0, ss, us, ps, zs, o.dts, o.mask,
                                              o.w_heads, o.w_h, o.w_lstm)
                    assert (got[1] is None) == (not timed) and (got[-1] is None) == (not memory)
                    # the same outputs present (timespans', LSTM's), and those equal
                    assert [g is None for g in got] == [w is None for w in want]
                    pairs = [(g, w) for g, w in zip(got, want, strict=True) if w is not None]
                    _close(*zip(*pairs), tol)
                    assert all(float(jnp.max(jnp.abs(w))) > 0 for _, w in pairs)  # not vacuous


def test_the_cfc_fast_path_runs_the_kernel_on_cpu():
    """Not vacuous: ``test_cfc_sequence``'s fast path lowers to the compiled kernel here, forward
    and backward, with and without mixed memory; the kernel's JAX definition is what the other
    backends get."""
    x = jnp.ones((4, T, I))

    def loss(r):
        return jnp.sum(jax.vmap(lambda xi: r(xi)[0])(x) ** 2)

    cfc = CfC(I, H, backbone_units=U, key=jax.random.key(0))
    for cell in (cfc, MixedMemory(cfc, key=jax.random.key(1))):
        rnn = LiquidRNN(cell, return_sequences=False)
        hlo = jax.jit(jax.grad(loss)).lower(rnn).as_text()
        assert "liquidjax_cfc_forward" in hlo and "liquidjax_cfc_backward" in hlo


def test_gradients_are_the_same_from_call_to_call():
    """The kernels' weight gradients are summed per chunk in chunk order, not per worker: the
    same bits whichever thread took which rows (calls after a pause, when the second worker
    starts late and the caller takes every chunk, against calls back to back)."""
    import time

    from liquidjax.cells import LTC

    x = jax.random.normal(jax.random.key(1), (128, T, I))
    for cell in (CfC(I, H, backbone_units=U, key=jax.random.key(0)),
                 LTC(I, H, ode_unfolds=2, key=jax.random.key(0))):
        rnn = LiquidRNN(cell, return_sequences=False)
        grad = jax.jit(jax.grad(lambda r: jnp.sum(jnp.sin(jax.vmap(lambda xi: r(xi)[0])(x)))))
        first = jax.tree_util.tree_leaves(grad(rnn))
        for i in range(12):
            if i % 2:
                time.sleep(0.01)
            again = jax.tree_util.tree_leaves(grad(rnn))
            for a, b in zip(first, again, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_kernels_run_per_shard_under_data_parallelism():
    """Over 2 devices each device's CfC kernel (forward and backward) sees its own half of the
    batch; loss and weight gradients equal the one-device step's (test_ltc_native.SHARDED): the
    last state with timespans and a mask, and mixed memory's every state."""
    from test_ltc_native import check_sharded, sharded_runs

    out = sharded_runs()  # one process with test_ltc_native's LTC case
    for name in ("cfc", "memory"):
        check_sharded(out[name], calls=2)
