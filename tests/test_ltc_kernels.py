"""The sparse-synapse LTC kernel held to the dense fused kernel: values and gradients, float32 and
float64, unbatched, under ``jax.vmap`` (the batch-minor rule) and with per-example parameters;
the LTC's ``advance_sequence`` held to ``scan_advance``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax.cells import LTC, scan_advance
from liquidjax.cells._ltc_kernel import fused_ltc_step
from liquidjax.cells._ltc_sparse import SynapseLayout, sparse_ltc_step, sparse_params
from liquidjax.wirings import AutoNCP, FullyConnected, Random

UNFOLDS, EPS = 4, 1e-8


def _cell(wiring, inputs=3, dtype=jnp.float32, key=0, **kw):
    return LTC(inputs, wiring, key=jax.random.key(key), dtype=dtype, **kw)


def _data(cell, batch, dtype):
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(k1, (batch, cell.input_size), dtype)
    v0 = 0.3 * jax.random.normal(k2, (batch, cell.state_size), dtype)
    dt = jax.random.uniform(k3, (batch,), dtype, 0.5, 2.0)
    return x, v0, dt


def _dense(p, x, v0, dt, layout):
    del layout
    return fused_ltc_step(p, x, v0, dt, UNFOLDS, EPS)


def _sparse(p, x, v0, dt, layout):
    return sparse_ltc_step(sparse_params(p, layout), x, v0, dt, layout, UNFOLDS, EPS)


def _masked(p, layout):
    # The dense kernel's gradient is not zero on absent synapses (the cell's mask zeroes it when
    # mapping back to its parameters); mask here so that both kernels are compared on the same
    # function of the parameters.
    m, sm = layout.masks
    return p._replace(w=jnp.where(m.T, p.w, 0), sensory_w=jnp.where(sm.T, p.sensory_w, 0))


def _loss(step, layout, batched):
    def f(p, x, v0, dt):
        p = _masked(p, layout)
        run = jax.vmap(step, in_axes=(None, 0, 0, 0, None)) if batched else step
        v = run(p, x, v0, dt, layout)
        return jnp.sum(jnp.sin(3 * v) * jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype))

    return jax.value_and_grad(f, argnums=(0, 1, 2, 3))


def _close(a, b, tol):
    # Sums run over the existing synapses only (the dense kernel adds exact zeros in between),
    # so the two agree to rounding, relative to each array's scale.
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(float(np.max(np.abs(y), initial=0.0)), 1.0)
        np.testing.assert_allclose(x, y, rtol=0, atol=tol * scale)


def _check_same(cell, batched, tol):
    layout = SynapseLayout(cell.mask.array, cell.sensory_mask.array)
    p = cell.effective_params()
    x, v0, dt = _data(cell, 5, cell.w.dtype)
    if not batched:
        x, v0, dt = x[0], v0[0], dt[0]
    ref = jax.jit(_loss(_dense, layout, batched))(p, x, v0, dt)
    got = jax.jit(_loss(_sparse, layout, batched))(p, x, v0, dt)
    _close(got, ref, tol)
    # not vacuous: gradients reach every parameter kind and the input
    grads = got[1]
    assert float(jnp.max(jnp.abs(grads[0].w))) > 0 and float(jnp.max(jnp.abs(grads[1]))) > 0
    return got


WIRINGS = {
    "autoncp": lambda: AutoNCP(12, 3),
    "random": lambda: Random(7, 2, sparsity_level=0.6),
    "full": lambda: FullyConnected(5),
}


@pytest.mark.parametrize("batched", [False, True], ids=["one", "vmap"])
@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_sparse_matches_dense_float32(wiring, batched):
    _check_same(_cell(WIRINGS[wiring]()), batched, 1e-6)


@pytest.mark.parametrize("wiring", ["autoncp", "full"])
def test_sparse_matches_dense_float64(wiring):
    with jax.enable_x64(True):
        for batched in (False, True):
            _check_same(_cell(WIRINGS[wiring](), dtype=jnp.float64), batched, 1e-12)


def test_per_example_gradients_and_parameters():
    """vmap(grad) gives each example's own gradient (not the batch sum), and a vmap over
    per-example parameters (an ensemble) takes the fallback path; both match the dense kernel."""
    cell = _cell(AutoNCP(10, 2))
    layout = SynapseLayout(cell.mask.array, cell.sensory_mask.array)
    p = cell.effective_params()
    x, v0, dt = _data(cell, 4, jnp.float32)

    def per_example(step):
        g = jax.vmap(_loss(step, layout, False), in_axes=(None, 0, 0, 0))
        return jax.jit(g)(p, x, v0, dt)

    got, ref = per_example(_sparse), per_example(_dense)
    _close(got, ref, 1e-6)
    assert got[1][0].w.shape == (4,) + p.w.shape
    assert not np.allclose(got[1][0].w[0], got[1][0].w[1])  # really per example

    ps = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.1 * a, 0.9 * a, a]), p)

    def ensemble(step):
        f = jax.vmap(lambda p, x, v0, dt: step(_masked(p, layout), x, v0, dt, layout))
        return jax.jit(jax.grad(lambda ps: jnp.sum(jnp.sin(f(ps, x, v0, dt)))))(ps)

    _close(ensemble(_sparse), ensemble(_dense), 1e-6)


def test_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        cell = _cell(AutoNCP(10, 2), dtype=jnp.float64)
        layout = SynapseLayout(cell.mask.array, cell.sensory_mask.array)
        x, v0, dt = (a[0] for a in _data(cell, 1, jnp.float64))

        def f(w_raw, dt):
            p = cell.effective_params()._replace(w=w_raw)
            return jnp.sum(jnp.cos(2 * _sparse(p, x, v0, dt, layout)))

        w = cell.effective_params().w
        gw, gdt = jax.grad(f, argnums=(0, 1))(w, dt)
        post, pre = np.argwhere(np.asarray(cell.mask.array).T)[3]
        e = jnp.zeros_like(w).at[post, pre].set(1e-6)
        np.testing.assert_allclose(gw[post, pre], (f(w + e, dt) - f(w - e, dt)) / 2e-6,
                                   rtol=1e-6)
        np.testing.assert_allclose(gdt, (f(w, dt + 1e-6) - f(w, dt - 1e-6)) / 2e-6, rtol=1e-6)
        # absent synapses get no gradient through the layout
        assert float(jnp.max(jnp.abs(jnp.where(np.asarray(cell.mask.array).T, 0, gw)))) == 0


def test_layout_covers_exactly_the_wiring():
    cell = _cell(AutoNCP(16, 4), inputs=5)
    mask, smask = cell.mask.array, cell.sensory_mask.array
    layout = SynapseLayout(mask, smask)
    for fan, m in ((layout.recurrent, mask.T), (layout.sensory, smask.T)):
        n_post, n_pre = m.shape
        valid = fan.flat < n_post * n_pre
        assert valid.sum() == m.sum()
        rebuilt = np.zeros(m.size, bool)
        rebuilt[fan.flat[valid]] = True
        np.testing.assert_array_equal(rebuilt.reshape(m.shape), m)
        # every slot's pre index agrees with its flat index, and fan-out lists cover each slot
        np.testing.assert_array_equal(fan.flat[valid] % n_pre, fan.pre[valid])
        assert (fan.fanout < fan.pre.size).sum() == m.sum()
        assert not fan.full
    assert 0 < layout.density < 0.6
    assert layout == SynapseLayout(mask.copy(), smask.copy())
    assert hash(layout) == hash(SynapseLayout(mask.copy(), smask.copy()))
    assert layout != SynapseLayout(mask, np.ones_like(smask))


def test_layout_without_recurrent_synapses():
    mask = np.zeros((4, 4), bool)
    smask = np.zeros((3, 4), bool)
    smask[0, 1] = smask[2, 3] = True
    layout = SynapseLayout(mask, smask)
    cell = _cell(4)
    p = cell.effective_params()
    p = p._replace(w=p.w * mask.T, sensory_w=p.sensory_w * smask.T)
    x, v0, dt = (a[0] for a in _data(cell, 1, jnp.float32))
    _close(_sparse(p, x, v0, dt, layout), _dense(p, x, v0, dt, None), 1e-6)


def test_layout_rejects_bad_masks():
    with pytest.raises(ValueError, match=r"square \(N, N\).*\(3, 4\)"):
        SynapseLayout(np.ones((3, 4), bool), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"sensory_mask must have shape \(I, 4\).*\(2, 3\)"):
        SynapseLayout(np.ones((4, 4), bool), np.ones((2, 3), bool))


# ------------------------------------------------------------------------------- in the LTC cell
def test_ltc_chooses_the_kernel():
    assert _cell(AutoNCP(12, 3)).synapse_kernel == "sparse"
    assert _cell(FullyConnected(5)).synapse_kernel == "dense"
    assert _cell(5).synapse_kernel == "dense"
    assert _cell(5, synapses="sparse").synapse_kernel == "sparse"
    assert _cell(AutoNCP(12, 3)).with_synapses("dense").synapse_kernel == "dense"
    with pytest.raises(ValueError, match=r"synapses must be one of \('auto', 'dense', 'sparse'\)"):
        _cell(5, synapses="blocked")
    with pytest.raises(ValueError, match="synapses must be one of"):
        _cell(5).with_synapses("csr")


def test_ltc_sparse_and_dense_train_the_same():
    """A sequence model (vmap over the batch, scan over time, remat) gives the same loss and
    gradients for every parameter whichever synapse kernel the wired LTC uses."""
    import equinox as eqx

    from liquidjax.layers import LiquidRNN

    sparse = _cell(AutoNCP(12, 3))
    dense = sparse.with_synapses("dense")
    xs = jax.random.normal(jax.random.key(1), (3, 6, 3))

    def loss(cell):
        ys, _ = jax.vmap(LiquidRNN(cell, remat=True))(xs)
        return jnp.sum(ys**2)

    a = eqx.filter_jit(eqx.filter_value_and_grad(loss))(sparse)
    b = eqx.filter_jit(eqx.filter_value_and_grad(loss))(dense)
    # Each kernel call agrees to 1e-6 (above); through 6 steps, the readout and the
    # softplus/mask chain of every parameter, float32 rounding compounds to ~1e-6 of the scale.
    _close(eqx.filter(a, eqx.is_inexact_array), eqx.filter(b, eqx.is_inexact_array), 3e-6)
    assert float(jnp.max(jnp.abs(a[1].sensory_mu))) > 0


@pytest.mark.parametrize("dtype, tol, wiring, kernel", [
    (jnp.float32, 2e-5, "autoncp", "auto"),
    (jnp.float32, 2e-5, "full", "portable"),
    (jnp.float64, 1e-11, "autoncp", "portable"),
    (jnp.float64, 1e-11, "full", "auto"),
], ids=["f32-sparse-auto", "f32-dense-portable", "f64-sparse-portable", "f64-dense-auto"])
def test_advance_sequence_matches_scan_advance(dtype, tol, wiring, kernel):
    """``LTC.advance_sequence`` (a scan of the fused kernel, the parameters and input map
    prepared once per sequence) held to ``scan_advance`` (the scan of ``LTC.advance``) under
    ``vmap``: every state, with a mask and with unit steps; gradients with respect to every
    parameter, the inputs, the timespans and the initial state."""
    with jax.enable_x64(dtype == jnp.float64):
        cell = _cell(WIRINGS[wiring](), dtype=dtype, kernel=kernel, ode_unfolds=UNFOLDS)
        k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
        xs = jax.random.normal(k1, (2, 5, cell.input_size), dtype)
        ts = jax.random.uniform(k2, (2, 5), dtype, 0.5, 2.0)
        v0 = 0.3 * jax.random.normal(k3, (2, cell.state_size), dtype)
        mask = jnp.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)

        def loss(run, cell, xs, ts, v0, unit):
            def one(x, t, v, m):
                return run(cell, v, x, None if unit else t, None if unit else m)

            vs = jax.vmap(one)(xs, ts, v0, mask)
            return jnp.sum(jnp.sin(3 * vs) * jnp.arange(1, vs.shape[-1] + 1, dtype=dtype))

        def fast(cell, *a):
            return cell.advance_sequence(*a)

        for unit in (False, True):
            got, want = (jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3, 4)),
                                 static_argnums=(0, 5))(run, cell, xs, ts, v0, unit)
                         for run in (fast, scan_advance))
            _close(got, want, tol)
            assert float(jnp.max(jnp.abs(got[1][0].w))) > 0  # not vacuous
        # The override is what the layer runs: one scan whose body holds no softplus of the
        # (N, N) weights (the parameters are prepared before the loop).
        jaxpr = jax.make_jaxpr(lambda c: cell.advance_sequence(v0[0], xs[0], ts[0]))(cell)
        scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
        assert len(scans) == 1 and "logaddexp" not in str(scans[0].params["jaxpr"])
        assert "softplus" not in str(scans[0].params["jaxpr"])
