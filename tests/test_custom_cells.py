"""The cell contract: the custom-cell guide runs through every path (a general-form cell with a
pytree state, a sequence fast path held to scan_advance, the export matrix); a tuple-state cell;
the integrator is one declared object; epsilon, vf counts and padded adaptive steps."""

import re
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import liquidjax as lj
from liquidjax.cells import AbstractODECell, scan_advance
from liquidjax.solvers import FusedSemiImplicit, Integrator

GUIDE = Path(__file__).parent.parent / "docs" / "custom_cells.md"


@pytest.fixture(scope="module")
def guide():
    """Execute every Python block of docs/custom_cells.md, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), ns)
    return ns


def test_guide_cell_is_short():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    cell_block = next(b for b in blocks if "class CTRNN" in b)
    assert len(cell_block.strip().splitlines()) <= 40


def _ctrnn_rhs(cell, x_of_t):
    W, U, b = (np.asarray(a, np.float64) for a in (cell.W, cell.U, cell.b))
    tau = np.exp(np.asarray(cell.log_tau, np.float64))

    def rhs(t, h):
        return -h / tau + W @ np.tanh(h) + U @ x_of_t(t) + b

    return rhs


def test_guide_ctrnn_against_scipy(guide):
    cell, x, dts = guide["cell"], np.asarray(guide["x"]), np.asarray(guide["dts"])
    knots = np.concatenate([[0.0], np.cumsum(dts)])
    ref, h = [], np.zeros(cell.state_size)
    for k in range(len(x)):
        sol = solve_ivp(_ctrnn_rhs(cell, lambda t, k=k: x[k]), (knots[k], knots[k + 1]), h,
                        method="Radau", rtol=1e-10, atol=1e-12)
        h = sol.y[:, -1]
        ref.append(h)
    ref = np.stack(ref)
    ys, _ = guide["tsit5"](guide["x"], guide["dts"])
    np.testing.assert_allclose(ys, ref, atol=2e-5)
    # The fused and Euler paths converge to the same solution (first order, 6/8 unfolds).
    for name, tol in (("fused", 0.05), ("euler", 0.05)):
        got, _ = guide[name](guide["x"], guide["dts"])
        err = float(jnp.max(jnp.abs(got - ref)))
        assert 1e-6 < err < tol, (name, err)  # not vacuous: a first-order method has an error


def test_guide_paths(guide):
    ys, h = guide["ys"], guide["h"]
    mask = np.asarray(guide["mask"])
    assert ys.shape == (40, 8) and h.shape == (8,)
    assert np.all(np.asarray(ys)[~mask] == 0)
    alone, h_alone = guide["tsit5"](guide["x"][:30], guide["dts"][:30])
    np.testing.assert_allclose(ys[:30], alone, atol=1e-6)
    np.testing.assert_allclose(h, h_alone, atol=1e-6)
    hs = guide["hs"]
    fused_ys, _ = guide["fused"](guide["x"], guide["dts"])
    np.testing.assert_allclose(hs, fused_ys, atol=1e-6)  # CT-RNN outputs its state
    trace = guide["trace"]
    assert trace.num_accepted.shape == (5,) and int(trace.num_accepted.min()) >= 1
    assert guide["evals"] > 40  # Tsit5: several evaluations per interval
    for name in ("linear", "cubic"):
        ys_c, _ = guide[name](guide["x"], guide["dts"])
        assert ys_c.shape == (40, 8) and bool(jnp.all(jnp.isfinite(ys_c)))
    # A continuous path differs from held inputs (the input changes between observations).
    lin, _ = guide["linear"](guide["x"], guide["dts"])
    held, _ = guide["tsit5"](guide["x"], guide["dts"])
    assert float(jnp.max(jnp.abs(lin - held))) > 1e-3


def test_guide_fused_path_equals_diffrax_fused_solver(guide):
    cell, x, dts = guide["cell"], guide["x"], guide["dts"]
    h0 = cell.init_state()
    fast = cell.advance(h0, x[3], 0.0, dts[3])
    slow = cell.solve(h0, x[3], 0.0, dts[3]).ys[-1]
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7)


def test_guide_training(guide):
    result, model = guide["result"], guide["model"]
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 2 and all(np.isfinite(losses))
    trained = result.model.layers[0].cell
    assert float(jnp.max(jnp.abs(trained.W - model.layers[0].cell.W))) > 1e-4  # it learned


def _fhn_reference(cell, x, dts):
    """The FitzHugh-Nagumo states at the observations by scipy (Radau), input held."""
    U, a, b = (np.asarray(c, np.float64) for c in (cell.U, cell.a, cell.b))
    tau, n = np.exp(np.asarray(cell.log_tau, np.float64)), cell.state_size
    y, vs, ws = np.zeros(2 * n), [], []
    for xk, dt in zip(np.asarray(x, np.float64), np.asarray(dts, np.float64)):
        def rhs(t, y, u=U @ xk):
            v, w = y[:n], y[n:]
            return np.concatenate([v - v**3 / 3 - w + u, (v + a - b * w) / tau])

        y = solve_ivp(rhs, (0.0, dt), y, method="Radau", rtol=1e-10, atol=1e-12).y[:, -1]
        vs.append(y[:n])
        ws.append(y[n:])
    return np.stack(vs), np.stack(ws)


def test_guide_pytree_state_cell_every_path(guide):
    """The guide's FitzHugh-Nagumo cell, state (v, w): the layer against scipy, hidden_states and
    solver_trace return the pair whole, the XLA stepper steps the flattened pair."""
    fhn, x, dts, mask = guide["fhn"], guide["x"][:10], guide["dts"][:10], guide["mask"][:10]
    vs_ref, ws_ref = _fhn_reference(fhn, x, dts)
    assert np.max(np.abs(ws_ref)) > 1e-2  # not vacuous: w moves
    ys, (v, w) = guide["rnn"](x, dts)
    np.testing.assert_allclose(ys, vs_ref, atol=1e-5)
    np.testing.assert_allclose(w, ws_ref[-1], atol=1e-5)
    vs, ws = guide["vs"], guide["ws"]
    assert vs.shape == ws.shape == (10, fhn.state_size)
    np.testing.assert_allclose(vs, vs_ref, atol=1e-5)
    np.testing.assert_allclose(ws, ws_ref, atol=1e-5)
    vs5, ws5 = guide["vs5"], guide["ws5"]
    np.testing.assert_allclose(vs5, vs_ref[:5], atol=1e-5)
    np.testing.assert_allclose(ws5, ws_ref[:5], atol=1e-5)
    step = guide["step"]
    assert step.state_size == 2 * fhn.state_size
    np.testing.assert_allclose(guide["v1"], vs_ref[0], atol=1e-5)
    np.testing.assert_allclose(guide["w1"], ws_ref[0], atol=1e-5)
    np.testing.assert_allclose(guide["out"], vs_ref[0], atol=1e-5)
    state = guide["flat"]
    for k in range(1, 4):
        out, state = step(state, x[k], dts[k])
        np.testing.assert_allclose(out, vs_ref[k], atol=1e-5)
    np.testing.assert_allclose(step.unflatten_state(state)[1], ws_ref[3], atol=1e-5)
    ys_m, _ = guide["rnn"](x, dts, mask.at[7:].set(False))  # padded steps: zero outputs
    np.testing.assert_allclose(ys_m[:7], vs_ref[:7], atol=1e-5)
    assert bool(jnp.all(ys_m[7:] == 0))


def test_guide_export_matrix(guide):
    """The guide's export claims: C (and StableHLO) for the CT-RNN on the fused solver, C
    refused for a cell integrated by diffrax, with the reason."""
    assert guide["manifest"]["state_size"] == guide["cell"].state_size
    assert "FHN" in guide["refused"] and "while" in guide["refused"]


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
def test_guide_fast_path_matches_scan_advance(guide, dtype, rtol):
    """The guide's Leaky.advance_sequence (a parallel scan) against scan_advance: every state,
    the final one, masked and unit steps; the gradients with respect to the parameters, the
    inputs, the timespans and the initial state."""
    with jax.enable_x64(dtype == jnp.float64):
        cast = lambda t: jax.tree_util.tree_map(  # noqa: E731
            lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, t)
        leaky = cast(guide["leaky"])
        x, dts = cast(guide["x"][:9]), cast(guide["dts"][:9] * jnp.linspace(0.5, 2.0, 9))
        h0 = cast(guide["h0"])
        mask = jnp.array([1, 1, 0, 1, 0, 1, 1, 1, 0], bool)

        def loss(run, cell, x, dts, h0, mask, last):
            hs = run(cell, h0, x, dts, mask, last=last)
            return jnp.sum(jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
                           * jnp.sin(hs))

        def fast(cell, *a, **kw):
            return cell.advance_sequence(*a, **kw)

        for ts, m, last in ((dts, mask, False), (dts, None, True), (None, mask, False)):
            got, want = (eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=False))(
                run, leaky, x, ts, h0, m, last) for run in (fast, scan_advance))
            for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                scale = float(jnp.max(jnp.abs(r)))
                assert g.dtype == dtype and scale > 0
                assert float(jnp.max(jnp.abs(g - r))) <= rtol * scale
        # Not vacuous: the layer takes the override (no while loop: a parallel scan).
        jaxpr = str(jax.make_jaxpr(lambda c: lj.LiquidRNN(c)(x, dts)[0])(leaky))
        assert "while" not in jaxpr and "scan" not in jaxpr.replace("associative", "")


def test_fused_solver_on_general_form_cell_is_refused():
    with pytest.raises(ValueError, match="conductance form"):
        Oscillator(integrator=Integrator())  # default solver: the fused one


# --- a general-form cell with a tuple state --------------------------------------------------
class Oscillator(AbstractODECell):
    """A damped, driven oscillator: dq/dt = p, dp/dt = −ω² q − 2ζω p + g·x (state (q, p))."""

    omega: jax.Array
    zeta: jax.Array
    gain: jax.Array
    integrator: Integrator
    input_size: int = eqx.field(static=True, default=1)
    state_size: int = eqx.field(static=True, default=2)
    output_size: int = eqx.field(static=True, default=2)

    def __init__(self, integrator=None):
        self.omega, self.zeta = jnp.array([2.0, 3.0]), jnp.array([0.1, 0.3])
        self.gain = jnp.array([1.0, -0.5])
        self.integrator = integrator if integrator is not None else Integrator(
            diffrax.Tsit5(), diffrax.PIDController(rtol=1e-8, atol=1e-10))

    def init_state(self):
        return (jnp.zeros(2), jnp.zeros(2))

    def output(self, state):
        return state[0]

    def vector_field(self, t, state, x):
        q, p = state
        u = self.input_at(x, t)[0]
        return p, -self.omega**2 * q - 2 * self.zeta * self.omega * p + self.gain * u


def test_tuple_state_cell_against_scipy():
    cell = Oscillator()
    x = jnp.array([[1.0], [0.0], [-2.0], [0.5]])
    dts = jnp.array([0.3, 0.7, 0.2, 1.1])
    mask = jnp.array([True, True, True, False])
    rnn = lj.LiquidRNN(cell)
    ys, (q, p) = rnn(x, dts)
    w, z, g = (np.asarray(a, np.float64) for a in (cell.omega, cell.zeta, cell.gain))
    y, ref = np.zeros(4), []
    t = 0.0
    for k in range(4):
        u = float(x[k, 0])
        sol = solve_ivp(lambda t, y: np.concatenate([y[2:], -w**2 * y[:2] - 2 * z * w * y[2:]
                                                     + g * u]),
                        (t, t + float(dts[k])), y, rtol=1e-11, atol=1e-12)
        y, t = sol.y[:, -1], t + float(dts[k])
        ref.append(y[:2])
    np.testing.assert_allclose(ys, np.stack(ref), atol=1e-5)
    np.testing.assert_allclose(p, y[2:], atol=1e-5)
    # masks, continuous inputs, inspect and the explicit fixed-step path on a pytree state
    ys_m, (q_m, _) = rnn(x, dts, mask)
    np.testing.assert_allclose(q_m, ref[2], atol=1e-5)
    lin, _ = lj.LiquidRNN(cell, interpolation="linear")(x, dts, mask)
    assert lin.shape == (4, 2) and bool(jnp.all(lin[3] == 0))
    qs, ps = lj.inspect.hidden_states(rnn, x, dts)  # the state (q, p) whole
    np.testing.assert_allclose(qs, ys, atol=1e-6)
    np.testing.assert_allclose(ps[-1], p, atol=1e-6)
    trace = lj.inspect.solver_trace(cell, x, dts, max_steps=64)
    np.testing.assert_allclose(trace.states[0], ys, atol=1e-6)
    heun = cell.with_solver(diffrax.Heun(), stepsize_controller=diffrax.ConstantStepSize(),
                            ode_unfolds=50)
    ys_h, _ = lj.LiquidRNN(heun)(x, dts)
    np.testing.assert_allclose(ys_h, ys, atol=1e-3)


# --- the integrator is one declared object ---------------------------------------------------
def test_integrator_settings_and_errors():
    cell = lj.LTC(3, 4, key=jax.random.key(0))
    assert cell.integrator == Integrator()
    tsit = cell.with_solver(diffrax.Tsit5(), ode_unfolds=3)
    assert isinstance(tsit.integrator.solver, diffrax.Tsit5) and tsit.ode_unfolds == 3
    assert tsit.w is cell.w  # same parameters
    with pytest.raises(ValueError, match="error estimate"):
        Integrator(diffrax.Euler(), diffrax.PIDController(rtol=1e-3, atol=1e-3))
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        lj.LTC(3, 4, key=jax.random.key(0), max_steps=0)
    with pytest.raises(ValueError, match="either integrator"):
        lj.LTC(3, 4, key=jax.random.key(0), integrator=Integrator(), ode_unfolds=3)
    with pytest.raises(TypeError, match="diffrax AbstractSolver"):
        Integrator("tsit5")


def test_epsilon_is_what_the_dynamics_use():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="disagrees"):
        lj.LTC(3, 4, key=key, epsilon=0.5, solver=FusedSemiImplicit())
    with pytest.raises(ValueError, match="drop epsilon"):
        lj.LTC(3, 4, key=key, epsilon=0.5, solver=diffrax.Euler())
    big = lj.LTC(3, 4, key=key, epsilon=0.5)
    assert big.epsilon == 0.5 and big.solver.epsilon == 0.5
    small = lj.LTC(3, 4, key=key)
    assert small.epsilon == 1e-8
    x, v0 = jnp.ones(3), jnp.full(4, 0.3)
    # 0.5 in the denominator changes the step; the diffrax fused solver sees the same epsilon.
    a, b = big.advance(v0, x, 0.0, 1.0), small.advance(v0, x, 0.0, 1.0)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    np.testing.assert_allclose(a, big.solve(v0, x, 0.0, 1.0).ys[-1], rtol=1e-5, atol=1e-6)
    assert lj.LTC(3, 4, key=key, solver=diffrax.Euler()).epsilon is None


def test_count_vf_evals_fused_pid_and_padding():
    cell = lj.LTC(2, 5, key=jax.random.key(1), ode_unfolds=4)
    x = jnp.ones((6, 2))
    # the fused fast path reports its real count: ode_unfolds per observation
    _, n = lj.count_vf_evals(lambda c: lj.LiquidRNN(c)(x)[0], cell)
    assert n == 6 * 4
    # ... summed over a vmapped batch
    _, n = lj.count_vf_evals(lambda c: jax.vmap(lj.LiquidRNN(c))(jnp.stack([x, x, x]))[0], cell)
    assert n == 3 * 6 * 4
    # a PIDController among the arguments
    pid = diffrax.PIDController(rtol=1e-5, atol=1e-7)
    def run(c, ctrl):
        return lj.LiquidRNN(c.with_solver(diffrax.Tsit5(), stepsize_controller=ctrl))(x)[0]

    _, n_pid = lj.count_vf_evals(run, cell, pid)
    assert n_pid > 6 * 6  # Tsit5: at least 6 evaluations per accepted step
    # padded steps of an adaptive solve cost nothing, and change nothing
    tsit = cell.with_solver(diffrax.Tsit5(), stepsize_controller=pid)
    mask = jnp.arange(6) < 3
    (ys_m, n_m), (ys_3, n_3) = (
        lj.count_vf_evals(lambda c: lj.LiquidRNN(c)(x, mask=mask)[0], tsit),
        lj.count_vf_evals(lambda c: lj.LiquidRNN(c)(x[:3])[0], tsit),
    )
    assert n_m == n_3
    np.testing.assert_allclose(ys_m[:3], ys_3, atol=1e-6)
    for interp in ("linear", "cubic"):
        (ys_m, n_m), (ys_3, n_3) = (
            lj.count_vf_evals(lambda c: lj.LiquidRNN(c, interpolation=interp)(x, mask=mask)[0],
                              tsit),
            lj.count_vf_evals(lambda c: lj.LiquidRNN(c, interpolation=interp)(x[:3])[0], tsit),
        )
        assert n_m == n_3, interp
        np.testing.assert_allclose(ys_m[:3], ys_3, atol=1e-6)


def test_ltc_kernel_equals_conductance_loop():
    # The LTC's fused_unfolds (its kernels) against ncps's update written out over
    # LTC.conductances.
    ltc = lj.LTC(3, lj.AutoNCP(8, 2), key=jax.random.key(3))
    x, v0, dt = jnp.linspace(-1, 1, 3), jnp.linspace(-0.3, 0.3, 8), jnp.asarray(0.7)
    h, v = dt / 6, v0
    for _ in range(6):
        num, den, cm = ltc.conductances(0.0, v, x)
        v = (cm / h * v + num) / (cm / h + den + 1e-8)
    np.testing.assert_allclose(ltc.advance(v0, x, 0.0, dt), v, rtol=1e-6, atol=1e-7)


def test_guide_registered_cell_builds_from_model_config(guide):
    # The guide's own CTRNN, registered by name: ModelConfig's solver reaches its integrator.
    cell = guide["registered"].layers[0].cell
    assert type(cell) is guide["CTRNN"]
    assert type(cell.integrator.solver) is lj.FusedSemiImplicit
    assert cell.integrator.ode_unfolds == 2
    assert guide["logits"].shape == (2,) and np.isfinite(guide["logits"]).all()
