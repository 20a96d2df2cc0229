"""Baseline continuous-time cells (CT-RNN, GRU-ODE, ODE-RNN, GRU-D, Neural CDE), each held to an
independent reference: a closed form, scipy's solve_ivp on a NumPy right-hand side written here,
the paper's update equations in NumPy, or diffrax's own ControlTerm."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from liquidjax.cells import CTRNN, GRUD, GRUODE, ODERNN, GRUODEBayes, NeuralCDE
from liquidjax.layers import LiquidRNN
from liquidjax.solvers import FusedSemiImplicit, Integrator

TIGHT = Integrator(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-7, atol=1e-8), max_steps=20000)


def _np(a):
    return np.asarray(a, np.float64)


def _sig(z):
    return 1 / (1 + np.exp(-z))


def _gates_np(gates, x, h):
    """GRU gates as defined in the papers (update z, reset r, candidate g), in NumPy."""
    n = h.shape[0]
    wx, wh, b = _np(gates.w_x), _np(gates.w_h), _np(gates.bias)
    z = _sig(wx[:n] @ x + wh[:n] @ h + b[:n])
    r = _sig(wx[n : 2 * n] @ x + wh[n : 2 * n] @ h + b[n : 2 * n])
    g = np.tanh(wx[2 * n :] @ x + wh[2 * n :] @ (r * h) + b[2 * n :])
    return z, r, g


def test_ctrnn_matches_the_closed_form_without_recurrence():
    cell = CTRNN(3, 4, integrator=TIGHT, key=jax.random.key(0))
    cell = eqx.tree_at(lambda c: (c.weight_rec, c.tau_raw), cell,
                       (jnp.zeros((4, 4)), jnp.array([-1.0, 0.0, 0.5, 2.0])))
    x = jnp.array([0.3, -1.2, 0.7])
    h0 = jnp.array([0.5, -0.2, 0.0, 1.0])
    # dh/dt = -h/τ + a with a constant: h(t) = aτ + (h0 − aτ) e^{−t/τ}
    tau = np.log1p(np.exp(_np(cell.tau_raw)))
    a = np.tanh(_np(cell.weight_in) @ _np(x) + _np(cell.bias))
    for dt in (0.1, 1.0, 3.0):
        want = a * tau + (_np(h0) - a * tau) * np.exp(-dt / tau)
        np.testing.assert_allclose(cell.advance(h0, x, 0.0, dt), want, rtol=2e-5, atol=2e-6)


def test_gru_ode_against_scipy_and_the_fused_solver():
    cell = GRUODE(3, 5, integrator=TIGHT, key=jax.random.key(1))
    x = np.array([0.4, -0.3, 1.1])
    h0 = np.linspace(-0.5, 0.5, 5)

    def rhs(t, h):
        z, _, g = _gates_np(cell.gates, x, h)
        return (1 - z) * (g - h)

    np.testing.assert_allclose(cell.vector_field(0.0, jnp.asarray(h0, jnp.float32),
                                                 jnp.asarray(x, jnp.float32)),
                               rhs(0.0, h0), rtol=1e-5, atol=1e-6)
    ref = solve_ivp(rhs, (0.0, 2.0), h0, method="DOP853", rtol=1e-11, atol=1e-12).y[:, -1]
    got = cell.advance(jnp.asarray(h0, jnp.float32), jnp.asarray(x, jnp.float32), 0.0, 2.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # Conductance form: the fused semi-implicit solver converges to the same solution (order 1).
    errs = []
    for unfolds in (20, 40):
        fused = cell.with_solver(FusedSemiImplicit(), ode_unfolds=unfolds,
                                 stepsize_controller=diffrax.ConstantStepSize())
        errs.append(np.abs(_np(fused.advance(jnp.asarray(h0, jnp.float32),
                                             jnp.asarray(x, jnp.float32), 0.0, 2.0)) - ref).max())
    assert errs[1] < 0.7 * errs[0] and errs[1] < 5e-3


def _gru_np(gru, x, h):
    """``eqx.nn.GRUCell``'s documented update, in NumPy."""
    n = h.shape[0]
    gi = _np(gru.weight_ih) @ x + _np(gru.bias)
    gh = _np(gru.weight_hh) @ h
    r = _sig(gi[:n] + gh[:n])
    z = _sig(gi[n : 2 * n] + gh[n : 2 * n])
    g = np.tanh(gi[2 * n :] + r * (gh[2 * n :] + _np(gru.bias_n)))
    return g + z * (h - g)


def test_gru_ode_bayes_flow_then_jump_against_the_papers_equations():
    cell = GRUODEBayes(2 * 3, 5, p_hidden=6, prep_hidden=3, integrator=TIGHT,
                       key=jax.random.key(8))
    (w0, b0), (w1, b1) = ((_np(lay.weight), _np(lay.bias)) for lay in cell.flow.predict.layers)

    def predict(h):  # p_model: Linear, ReLU, Linear -> (mean, log-variance)
        p = w1 @ np.maximum(w0 @ h + b0, 0) + b1
        return p[:3], p[3:]

    def rhs(t, h):  # GRU-ODE read by its own prediction (the paper's "impute")
        z, _, g = _gates_np(cell.flow.gates, np.concatenate(predict(h)), h)
        return (1 - z) * (g - h)

    def jump(h, x, m):  # GRUObservationCellLogvar, then the GRU cell
        mean, logvar = predict(h)
        err = (x - mean) / np.exp(0.5 * logvar)
        feats = np.stack([x, mean, logvar, err], axis=1)  # (channels, 4)
        u = np.maximum(np.einsum("cf,cfp->cp", feats, _np(cell.w_prep)) + _np(cell.b_prep), 0)
        return _gru_np(cell.gru, (u * m[:, None]).reshape(-1), h) if m.any() else h

    h0 = np.linspace(-0.4, 0.6, 5)
    x, m = np.array([0.7, 9.0, -1.2]), np.array([1.0, 0.0, 1.0])  # channel 1 not observed
    flow = solve_ivp(rhs, (0.0, 1.5), h0, method="DOP853", rtol=1e-11, atol=1e-12).y[:, -1]
    got = cell.advance(jnp.asarray(h0, jnp.float32), jnp.asarray(np.concatenate([x, m]),
                                                                 jnp.float32), 0.0, 1.5)
    np.testing.assert_allclose(got, jump(flow, x, m), rtol=1e-5, atol=1e-5)
    assert np.abs(jump(flow, x, m) - flow).max() > 0.05  # the jump does something
    # The value of an unobserved channel is never read; a step with nothing observed: no jump.
    f32 = jnp.asarray(flow, jnp.float32)
    other = jnp.asarray(np.concatenate([[0.7, -3.0, -1.2], m]), jnp.float32)
    np.testing.assert_allclose(cell.jump(f32, other), jump(flow, x, m), rtol=1e-5, atol=1e-5)
    nothing = jnp.asarray(np.concatenate([x, np.zeros(3)]), jnp.float32)
    np.testing.assert_array_equal(cell.jump(f32, nothing), f32)
    with pytest.raises(ValueError, match="2 × channels"):
        GRUODEBayes(5, 3, key=jax.random.key(0))


def test_ode_rnn_is_an_ode_solve_then_a_gru_jump():
    cell = ODERNN(2, 4, width=6, integrator=TIGHT, key=jax.random.key(2))
    mlp = cell.flow.mlp

    def rhs(t, h):
        w0, b0 = _np(mlp.layers[0].weight), _np(mlp.layers[0].bias)
        w1, b1 = _np(mlp.layers[1].weight), _np(mlp.layers[1].bias)
        return w1 @ np.tanh(w0 @ h + b0) + b1

    xs = np.array([[0.5, -1.0], [0.2, 0.3], [-0.7, 0.9]])
    dts = np.array([0.4, 1.3, 0.2])
    h = np.zeros(4)
    for x, dt in zip(xs, dts):
        h = solve_ivp(rhs, (0.0, dt), h, method="DOP853", rtol=1e-11, atol=1e-12).y[:, -1]
        h = _gru_np(cell.gru, x, h)
    ys, h_final = LiquidRNN(cell)(jnp.asarray(xs, jnp.float32), jnp.asarray(dts, jnp.float32))
    np.testing.assert_allclose(h_final, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys[-1], h, rtol=1e-5, atol=1e-5)


def test_grud_follows_its_update_equations():
    import liquidjax.data as D

    x = np.array([[[0.5, np.nan], [np.nan, np.nan], [1.5, -0.2], [np.nan, 0.3]]])
    dts = np.array([[1.0, 0.5, 2.0, 0.7]])
    feats = D.missing_value_features(x, dts)[0]
    cell = GRUD(6, 3, key=jax.random.key(3))
    cell = eqx.tree_at(lambda c: (c.decay_x_b, c.decay_h_b), cell,
                       (jnp.array([0.1, -0.2]), jnp.array([0.3, -0.1, 0.05])))
    h = np.zeros(3)
    for f in feats:
        xt, m, d = f[:2], f[2:4], f[4:]
        gx = np.exp(-np.maximum(0, _np(cell.decay_x_w) * d + _np(cell.decay_x_b)))
        gh = np.exp(-np.maximum(0, _np(cell.decay_h_w) @ d + _np(cell.decay_h_b)))
        xh = m * xt + (1 - m) * (gx * xt + (1 - gx) * 0.0)
        hh = gh * h
        z, _, g = _gates_np(cell.gates, np.concatenate([xh, m]), hh)
        h = (1 - z) * hh + z * g
    _, got = LiquidRNN(cell)(jnp.asarray(feats), jnp.asarray(dts[0], jnp.float32))
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 × channels"):
        GRUD(4, 3, key=jax.random.key(0))


NCDE_XS = jnp.array([[0.2, -0.4], [0.9, 0.1], [0.3, 0.8], [-0.5, 0.2]])
NCDE_DTS = jnp.array([0.5, 0.7, 0.3, 1.1])


def _ncde_path_values(xs, dts):
    """Knots ``[0, T_1, …, T_L]`` and the observations augmented with time, ``(T_k, x_k)``,
    the first observation held back to ``t = 0`` (the cell's convention)."""
    knots = jnp.concatenate([jnp.zeros(1), jnp.cumsum(dts)])
    values = jnp.concatenate([knots[:, None], jnp.concatenate([xs[:1], xs])], axis=1)
    return knots, values


def test_neural_cde_held_and_linear_path_match_diffrax_control_term():
    cell = NeuralCDE(2, 3, width=5, integrator=TIGHT, key=jax.random.key(4))
    zs_held, (z, _, _) = LiquidRNN(cell)(NCDE_XS, NCDE_DTS)
    # Reference: z(0) = ζ(x_1), then ∫ f(z) dX over the linear interpolation of (t, x), solved
    # here by diffrax itself (ControlTerm → ODE, an 8th-order solver told about the kinks).
    knots, values = _ncde_path_values(NCDE_XS, NCDE_DTS)
    path = diffrax.LinearInterpolation(knots, values)
    term = diffrax.ControlTerm(lambda t, z, args: cell.field.matrix(z), path).to_ode()
    sol = diffrax.diffeqsolve(term, diffrax.Dopri8(), 0.0, knots[-1], 0.01,
                              cell.initial(NCDE_XS[0]), saveat=diffrax.SaveAt(ts=knots[1:]),
                              stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-9,
                                                                        jump_ts=knots))
    np.testing.assert_allclose(zs_held, sol.ys, rtol=2e-5, atol=2e-5)
    assert np.abs(np.diff(np.asarray(sol.ys), axis=0)).max() > 0.05  # not vacuous
    # The continuous linear path: one ControlTerm solve over the whole range, same answer...
    zs_lin, _ = LiquidRNN(cell, interpolation="linear")(NCDE_XS, NCDE_DTS)
    np.testing.assert_allclose(zs_lin, sol.ys, rtol=2e-5, atol=2e-5)
    # ...and, with the same constant steps, the same numbers as the held mode step by step.
    heun = cell.field.integrator.replace(solver=diffrax.Heun(),
                                         stepsize_controller=diffrax.ConstantStepSize())
    coarse = eqx.tree_at(lambda c: c.field.integrator, cell, heun)
    a, _ = LiquidRNN(coarse)(NCDE_XS, NCDE_DTS)
    b, _ = LiquidRNN(coarse, interpolation="linear")(NCDE_XS, NCDE_DTS)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # A padded (masked) tail changes nothing (constant steps run through the padding).
    _, (zp, _, _) = LiquidRNN(coarse, interpolation="linear")(*_padded())
    np.testing.assert_allclose(zp, b[-1], rtol=1e-6, atol=1e-7)


def _padded():
    mask = jnp.array([True, True, True, True, False, False])
    return (jnp.concatenate([NCDE_XS, jnp.full((2, 2), 9.0)]),
            jnp.concatenate([NCDE_DTS, jnp.ones(2)]), mask)


def test_neural_cde_constant_field_closed_form_on_both_paths():
    cell = NeuralCDE(2, 3, width=5, integrator=TIGHT, key=jax.random.key(6))
    _, values = _ncde_path_values(NCDE_XS, NCDE_DTS)
    # Closed form: with a constant f = M (no dependence on z), z(T_k) = ζ(x_1) + M (X(T_k) − X(0))
    # whatever the path between the knots, for any interpolation.
    last = cell.field.mlp.layers[-1]
    m = jax.random.normal(jax.random.key(7), last.bias.shape) * 0.5
    const = eqx.tree_at(lambda c: (c.field.mlp.layers[-1].weight, c.field.mlp.layers[-1].bias),
                        cell, (jnp.zeros_like(last.weight), m))
    mat = np.tanh(_np(m)).reshape(3, 3)
    want = _np(cell.initial(NCDE_XS[0])) + (_np(values[1:]) - _np(values[0])) @ mat.T
    for interpolation in ("linear", "cubic"):
        got, _ = LiquidRNN(const, interpolation=interpolation)(NCDE_XS, NCDE_DTS)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_neural_cde_cubic_path_against_scipy():
    cell = NeuralCDE(2, 3, width=5, integrator=TIGHT, key=jax.random.key(6))
    knots, values = _ncde_path_values(NCDE_XS, NCDE_DTS)
    # A z-dependent f along the cubic path: scipy integrates dz/dt = f(z) dX/dt, with f written
    # in NumPy and dX/dt the derivative of diffrax's backward-Hermite spline through the knots,
    # evaluated here in float64 from its coefficients (a float32 right-hand side is noisy at
    # 1e-7, and DOP853 at rtol 1e-10 then shrinks its steps: ~800 000 calls instead of ~2 000).
    d, c, b, _ = (_np(k) for k in diffrax.backward_hermite_coefficients(knots, values))
    t_knots = _np(knots)
    (w0, b0), (w1, b1) = ((_np(lay.weight), _np(lay.bias)) for lay in cell.field.mlp.layers)

    def rhs(t, z):
        i = int(np.clip(np.searchsorted(t_knots, t) - 1, 0, len(t_knots) - 2))
        s = t - t_knots[i]
        f = np.tanh(w1 @ np.logaddexp(0.0, w0 @ z + b0) + b1).reshape(3, 3)
        return f @ (b[i] + s * (2 * c[i] + 3 * s * d[i]))

    ref = solve_ivp(rhs, (0.0, float(knots[-1])), _np(cell.initial(NCDE_XS[0])), method="DOP853",
                    t_eval=_np(knots[1:]), rtol=1e-10, atol=1e-12)
    got, _ = LiquidRNN(cell, interpolation="cubic")(NCDE_XS, NCDE_DTS)
    np.testing.assert_allclose(got, ref.y.T, rtol=2e-5, atol=2e-5)
    held, _ = LiquidRNN(cell)(NCDE_XS, NCDE_DTS)
    assert np.abs(_np(held) - ref.y.T).max() > 1e-3  # the cubic path is not the linear one
    # A padded (masked) tail changes nothing (the adaptive solve stops at the last observation).
    _, (zp, _, _) = LiquidRNN(cell, interpolation="cubic")(*_padded())
    np.testing.assert_allclose(zp, got[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda k: CTRNN(3, 4, key=k), lambda k: GRUODE(3, 4, key=k), lambda k: ODERNN(3, 4, key=k),
    lambda k: GRUD(3, 4, key=k), lambda k: NeuralCDE(3, 4, key=k),
    lambda k: GRUODEBayes(6, 4, key=k),
])
def test_cells_run_batched_with_gradients(make):
    cell = make(jax.random.key(5))
    rnn = LiquidRNN(cell)
    xs = jax.random.normal(jax.random.key(6), (2, 5, cell.input_size))
    dts = jax.random.uniform(jax.random.key(7), (2, 5), minval=0.1, maxval=1.0)

    def loss(r):
        ys, _ = jax.vmap(r)(xs, dts)
        return jnp.sum(ys**2)

    g = eqx.filter_grad(loss)(rnn)
    leaves = [a for a in jax.tree_util.tree_leaves(g) if eqx.is_inexact_array(a)]
    assert all(np.isfinite(a).all() for a in leaves)
    assert any(np.abs(a).max() > 0 for a in leaves)



@pytest.mark.parametrize("cell", ["ctrnn", "gruode", "gruode_bayes", "odernn", "grud", "ncde",
                                  "ncde:cubic"])
def test_model_config_builds_each_baseline(cell):
    from liquidjax.models import ModelConfig, build_model

    cell, _, interpolation = cell.partition(":")
    solver = "euler" if cell in ("ctrnn", "odernn") else None
    cfg = ModelConfig(input_size=6, num_classes=3, cell=cell, units=4, solver=solver,
                      ode_unfolds=2, interpolation=interpolation or "hold")
    model = build_model(cfg, key=jax.random.key(0))
    logits = model(jnp.ones((3, 6)), jnp.array([0.5, 1.0, 0.2]))
    assert logits.shape == (3,) and np.isfinite(logits).all()


def test_model_config_refuses_what_a_baseline_cannot_do():
    from liquidjax.models import ModelConfig

    with pytest.raises(ValueError, match="conductance form"):
        ModelConfig(input_size=3, num_classes=2, cell="ctrnn", solver="fused")
    with pytest.raises(ValueError, match="closed form"):
        ModelConfig(input_size=3, num_classes=2, cell="grud", solver="tsit5")
    with pytest.raises(ValueError, match="multiple of 3"):
        ModelConfig(input_size=4, num_classes=2, cell="grud")
    with pytest.raises(ValueError, match="multiple of 2"):
        ModelConfig(input_size=3, num_classes=2, cell="gruode_bayes")
    with pytest.raises(ValueError, match="needs an ODE cell"):
        ModelConfig(input_size=3, num_classes=2, cell="odernn", interpolation="linear")
    ModelConfig(input_size=3, num_classes=2, cell="ncde", interpolation="cubic")  # a path cell
    with pytest.raises(ValueError, match="cfc and ltc cells only"):
        ModelConfig(input_size=3, num_classes=2, cell="gruode", wiring="ncp", units=8)
