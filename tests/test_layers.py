"""LiquidRNN: masks, per-example timespans, streaming, continuous inputs, errors, recompiles."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from liquidjax.cells import CTRNN, LTC, CfC, MixedMemory
from liquidjax.layers import LiquidRNN
from liquidjax.wirings import AutoNCP

KEY = jax.random.key(0)


@pytest.fixture(scope="module", params=["ltc", "cfc", "mixed_ltc"])
def rnn(request):
    if request.param == "ltc":
        cell = LTC(3, AutoNCP(8, 2), key=KEY)
    elif request.param == "cfc":
        cell = CfC(3, 6, backbone_units=8, key=KEY)
    else:
        cell = MixedMemory(LTC(3, 5, key=KEY), key=jax.random.key(1))
    return LiquidRNN(cell)


@pytest.fixture(scope="module")
def run(rnn):
    """One compiled batched call shared by the tests of a cell."""
    return eqx.filter_jit(jax.vmap(lambda m, x, ts, mask: m(x, ts, mask), in_axes=(None, 0, 0, 0)))


def _data(batch=3, length=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, 3)).astype(np.float32)
    ts = rng.uniform(0.2, 2.0, size=(batch, length)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(ts)


def test_padded_masked_batch_equals_per_sequence(rnn, run):
    x, ts = _data()
    lengths = [7, 4, 2]
    mask = jnp.arange(7)[None, :] < jnp.array(lengths)[:, None]
    # Padding holds garbage that must not leak into the results.
    x = jnp.where(mask[..., None], x, 1e3)
    ts = jnp.where(mask, ts, 0.0)
    ys, hs = run(rnn, x, ts, mask)
    for b, n in enumerate(lengths):
        y1, h1 = rnn(x[b, :n], ts[b, :n])
        np.testing.assert_allclose(ys[b, :n], y1, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        for a, c in zip(jax.tree_util.tree_leaves(hs), jax.tree_util.tree_leaves(h1)):
            np.testing.assert_allclose(a[b], c, rtol=1e-5, atol=1e-6)


def test_mask_in_the_middle_freezes_state(rnn):
    x, ts = _data(1)
    mask = jnp.array([True, True, False, False, True, True, True])
    ys, h = rnn(x[0], ts[0], mask)
    keep = np.asarray(mask)
    y2, h2 = rnn(x[0][keep], ts[0][keep])
    np.testing.assert_allclose(ys[keep], y2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ys[~keep], 0.0)


def test_vmapped_per_example_timespans_equal_per_example_runs(rnn, run):
    x, ts = _data(seed=1)
    full = jnp.ones(x.shape[:2], bool)
    ys, _ = run(rnn, x, ts, full)
    for b in range(x.shape[0]):
        y1, _ = rnn(x[b], ts[b])
        np.testing.assert_allclose(ys[b], y1, rtol=1e-5, atol=1e-6)
    # Different timespans really change the answer (the check above is not vacuous).
    y_unit, _ = rnn(x[0])
    assert not np.allclose(y_unit, ys[0], atol=1e-4)
    # ... and all-ones timespans equal no timespans.
    y_ones, _ = rnn(x[0], jnp.ones(7))
    np.testing.assert_allclose(y_ones, y_unit, rtol=1e-6, atol=1e-7)


def test_streaming_chunks_equal_whole_sequence(rnn):
    x, ts = _data(1, 9, seed=2)
    y_all, h_all = rnn(x[0], ts[0])
    state, parts = None, []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
        y, state = rnn(x[0, lo:hi], ts[0, lo:hi], state=state)
        parts.append(y)
    np.testing.assert_allclose(jnp.concatenate(parts), y_all, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(h_all)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_return_sequences_false_is_last_output(rnn):
    x, ts = _data(1)
    ys, h = rnn(x[0], ts[0])
    last = LiquidRNN(rnn.cell, return_sequences=False)
    y, h2 = last(x[0], ts[0])
    np.testing.assert_allclose(y, ys[-1], rtol=1e-6, atol=1e-7)


def test_no_recompile_when_parameters_change(rnn):
    x, ts = _data(2)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def loss(m, x, ts):
        return jnp.sum(jax.vmap(m)(x, ts)[0] ** 2)

    g = eqx.filter_grad(loss)(rnn, x, ts)
    rnn2 = jax.tree_util.tree_map(lambda p, d: p - 0.1 * d if eqx.is_inexact_array(p) else p,
                                  rnn, g, is_leaf=lambda z: z is None)
    a, b = loss(rnn, x, ts), loss(rnn2, x, ts)
    assert float(a) != float(b)


# --------------------------------------------------------------------------------- input errors
def test_shape_errors_are_clear():
    rnn = LiquidRNN(LTC(3, 4, key=KEY))
    with pytest.raises(ValueError, match=r"expected x of shape \(time, 3\), got \(5, 2\)"):
        rnn(jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"got \(2, 5, 3\) \(batch with jax.vmap\)"):
        rnn(jnp.ones((2, 5, 3)))
    with pytest.raises(ValueError, match=r"timespans of shape \(5,\).*got \(4,\)"):
        rnn(jnp.ones((5, 3)), jnp.ones(4))
    with pytest.raises(ValueError, match=r"boolean mask of shape \(5,\)"):
        rnn(jnp.ones((5, 3)), mask=jnp.ones(5))
    with pytest.raises(ValueError, match=r"initial state like an array of shape \(4,\)"):
        rnn(jnp.ones((5, 3)), state=jnp.zeros(3))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        LiquidRNN(LTC(3, 4, key=KEY), interpolation="spline")
    with pytest.raises(ValueError, match="needs an ODE cell"):
        LiquidRNN(CfC(3, 4, key=KEY), interpolation="linear")


def test_data_errors_raise_under_jit():
    rnn = LiquidRNN(LTC(3, 4, key=KEY))
    f = eqx.filter_jit(rnn)
    with pytest.raises(Exception, match="timespans must be positive"):
        jax.block_until_ready(f(jnp.ones((5, 3)), jnp.array([1.0, 1.0, 0.0, 1.0, 1.0])))
    with pytest.raises(Exception, match="NaN or inf"):
        jax.block_until_ready(f(jnp.ones((5, 3)).at[2, 1].set(jnp.nan)))
    # A zero timespan on a masked (padding) step is fine.
    y, _ = f(jnp.ones((5, 3)), jnp.array([1.0, 1.0, 0.0, 1.0, 1.0]),
             jnp.array([True, True, False, True, True]))
    assert jnp.all(jnp.isfinite(y))


def test_api_misuse_gives_our_messages():
    """Issue 13: bad dtypes, a NaN initial state, max_steps reached outside jit, a diverging
    explicit solver — each a clear error from liquidjax, the last one switchable off."""
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got 0"):
        LTC(3, 4, max_steps=0, key=KEY)
    rnn = LiquidRNN(LTC(3, 4, key=KEY))
    x = jnp.ones((5, 3))
    with pytest.raises(ValueError, match="x must be a floating-point array .* got dtype bool"):
        rnn(x > 0)
    with pytest.raises(ValueError, match="initial state of dtype float32 .* got int32"):
        rnn(x, state=jnp.zeros(4, jnp.int32))
    with pytest.raises(eqx.EquinoxRuntimeError, match="the initial state contains NaN or inf"):
        rnn(x, state=jnp.zeros(4).at[1].set(jnp.nan))
    # max_steps reached, called eagerly (outside jit): diffrax's own message, not "CpuCallback"
    tiny = LiquidRNN(LTC(3, 4, solver=diffrax.Tsit5(), max_steps=2, key=KEY,
                         stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver steps"):
        tiny(x)
    # Euler on a stiff cell (tiny capacitance) diverges; the fused step does not
    cell = LTC(3, 4, key=KEY)
    stiff = eqx.tree_at(lambda c: c.cm, cell, jnp.full_like(cell.cm, -8.0))  # softplus: 3e-4
    assert jnp.all(jnp.isfinite(LiquidRNN(stiff)(x * 3)[0]))
    euler, x = stiff.with_solver(diffrax.Euler(), ode_unfolds=1), jnp.ones((12, 3))
    with pytest.raises(eqx.EquinoxRuntimeError,
                       match="the integration diverged.*FusedSemiImplicit"):
        LiquidRNN(euler)(x * 3)
    with pytest.raises(eqx.EquinoxRuntimeError, match="the integration diverged"):
        eqx.filter_jit(LiquidRNN(euler))(x * 3)
    ys, _ = LiquidRNN(euler, check_solution=False)(x * 3)
    assert not jnp.all(jnp.isfinite(ys))


# ----------------------------------------------------------------------- continuous input paths
def test_divergence_advice_is_the_cells():
    """The divergence error advises only what applies to the cell: the fused solver only to a
    conductance cell not already on it; no solver advice for a closed-form cell."""
    ltc = LTC(3, 4, key=KEY)
    on_euler = ltc.with_solver(diffrax.Euler()).divergence_advice()
    assert "FusedSemiImplicit" in on_euler and "ode_unfolds" in on_euler
    on_fused = ltc.divergence_advice()
    assert "FusedSemiImplicit" not in on_fused and "non-negative" in on_fused
    general = CTRNN(3, 4, key=KEY).with_solver(diffrax.Euler()).divergence_advice()
    assert "ode_unfolds" in general and "FusedSemiImplicit" not in general
    for cell in (CfC(3, 4, key=KEY), MixedMemory(CfC(3, 4, key=KEY), key=KEY)):
        advice = cell.divergence_advice()
        assert "solver" not in advice and "scale of the inputs" in advice
    assert MixedMemory(ltc.with_solver(diffrax.Euler()), key=KEY).divergence_advice() == on_euler


def test_linear_path_with_constant_input_equals_held_input():
    cell = LTC(3, AutoNCP(8, 2), key=KEY)
    x = jnp.tile(jnp.array([[0.4, -0.2, 1.0]]), (6, 1))
    ts = jnp.array([0.5, 1.0, 0.7, 1.3, 0.2, 1.0])
    y_hold, h_hold = LiquidRNN(cell)(x, ts)
    y_lin, h_lin = LiquidRNN(cell, interpolation="linear")(x, ts)
    np.testing.assert_allclose(y_lin, y_hold, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_lin, h_hold, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_continuous_path_matches_scipy(interpolation):
    with jax.enable_x64(True):
        cell = LTC(2, 5, key=KEY, dtype=jnp.float64).with_solver(
            diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))
        ts = jnp.array([0.4, 0.9, 0.6, 1.1, 0.5])
        x = jnp.stack([jnp.sin(3 * jnp.cumsum(ts)), jnp.cos(2 * jnp.cumsum(ts))], axis=1)
        _, h = LiquidRNN(cell, interpolation=interpolation)(x, ts)
        knots = np.concatenate([[0.0], np.cumsum(ts)])
        vals = np.concatenate([x[:1], x])
        if interpolation == "linear":
            path = lambda t: np.array([np.interp(t, knots, vals[:, i]) for i in range(2)])  # noqa: E731
        else:
            ref = diffrax.CubicInterpolation(
                jnp.asarray(knots),
                diffrax.backward_hermite_coefficients(jnp.asarray(knots), jnp.asarray(vals)))
            path = lambda t: np.asarray(ref.evaluate(t))  # noqa: E731
        f = jax.jit(lambda y, xx: cell.vector_field(0.0, y, xx))
        sol = solve_ivp(lambda t, y: np.asarray(f(jnp.asarray(y), jnp.asarray(path(t)))),
                        (0.0, knots[-1]), np.zeros(5), method="Radau", rtol=1e-11, atol=1e-13,
                        t_eval=knots[1:], max_step=0.05)
        np.testing.assert_allclose(h, sol.y[:, -1], atol=1e-6)


def test_continuous_mode_with_padding_equals_unpadded():
    cell = LTC(3, 6, key=KEY).with_solver(
        diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8))
    rnn = LiquidRNN(cell, interpolation="linear")
    x, ts = _data(1, 6, seed=3)
    mask = jnp.arange(6) < 4
    y_pad, h_pad = rnn(jnp.where(mask[:, None], x[0], 50.0), jnp.where(mask, ts[0], 0.0), mask)
    y, h = rnn(x[0, :4], ts[0, :4])
    np.testing.assert_allclose(y_pad[:4], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_pad, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_pad[4:], 0.0)


def test_continuous_backsolve_adjoint_with_constant_steps():
    """BacksolveAdjoint in continuous mode with constant steps runs (its backward solves need
    their own steps) and approximates the checkpointed gradient. Not to float precision: the
    backsolve reconstructs the state by integrating the dissipative LTC backwards in time."""
    # Fine steps: both adjoints then approximate the same exact gradient closely.
    cell = LTC(3, 4, key=KEY, solver=diffrax.Heun(), ode_unfolds=40)
    back = cell.with_solver(adjoint=diffrax.BacksolveAdjoint(solver=diffrax.Heun()))
    x, ts = _data(1, 5, seed=7)

    def loss(c):
        return jnp.sum(LiquidRNN(c, interpolation="linear")(x[0], ts[0])[1] ** 2)

    g1, g2 = eqx.filter_grad(loss)(cell), eqx.filter_grad(loss)(back)
    l1, l2 = jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)
    for a, b in zip(l1, l2):
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3)
    flat1 = jnp.concatenate([a.ravel() for a in l1])
    flat2 = jnp.concatenate([b.ravel() for b in l2])
    cos = jnp.dot(flat1, flat2) / (jnp.linalg.norm(flat1) * jnp.linalg.norm(flat2))
    assert cos > 0.99


def test_remat_gives_same_gradients_with_less_memory():
    cell = LTC(3, 6, key=KEY)
    x, ts = _data(2, 40, seed=9)

    def grads(remat):
        rnn = LiquidRNN(cell, return_sequences=False, remat=remat)
        f = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x, ts)[0] ** 2)))
        mem = f.lower(rnn).compile().compiled.memory_analysis().temp_size_in_bytes
        return f(rnn), mem

    (g0, m0), (g1, m1) = grads(False), grads(True)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert m1 < m0


def test_remat_memory_grows_as_the_square_root_of_the_length():
    """Two-level checkpointing: same outputs and gradients as no remat (per-step outputs, masks,
    a prime length that cannot be blocked), and the backward's memory grows ≈ √L, not L."""
    cell = LTC(3, 6, key=KEY)

    def run(length, remat, masked=False, sequences=True):
        x, ts = _data(2, length, seed=length)
        mask = (jnp.arange(length) < length - 3)[None].repeat(2, 0) if masked else None
        rnn = LiquidRNN(cell, remat=remat, return_sequences=sequences)

        def loss(m):
            ys, _ = jax.vmap(m)(x, ts, mask) if masked else jax.vmap(m)(x, ts)
            return jnp.sum(jnp.sin(ys))

        f = eqx.filter_jit(eqx.filter_value_and_grad(loss))
        mem = f.lower(rnn).compile().compiled.memory_analysis().temp_size_in_bytes
        return f(rnn), mem

    for length, masked in ((36, True), (37, False)):  # 6 × 6 blocks; prime: one level
        (v0, g0), _ = run(length, False, masked)
        (v1, g1), _ = run(length, True, masked)
        np.testing.assert_allclose(v1, v0, rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # (per-step outputs and their cotangents are as long as the sequence: the last output only)
    _, short = run(100, True, sequences=False)
    _, long = run(1600, True, sequences=False)
    assert long < 6 * short, (short, long)  # 16× the length; linear growth would be ≈ 16×


def test_zero_timespans_behind_the_mask_keep_gradients_finite(rnn):
    """Padding (or an empty pooled window) often carries timespan 0; the step there is masked
    out, but a cell's step computed at dt = 0 divides by zero, and without care that NaN reaches
    the gradient through the masking `where` (it did: the LTC time-series default on PLAID)."""
    x, ts = _data(1)
    mask = jnp.arange(7) < 4
    ts = jnp.where(mask, ts[0], 0.0)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x[0], ts, mask)[0]))(rnn)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
