"""liquidjax.inspect (states, time constants, solver traces) and liquidjax.plot (figures)."""

import json

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from liquidjax import inspect as li, plot
from liquidjax.cells import LTC, CfC, MixedMemory
from liquidjax.layers import LiquidRNN
from liquidjax.train import FitResult
from liquidjax.wirings import AutoNCP

KEY = jax.random.key(0)
L = 12


def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_params(cell):
    """The LTC's effective parameters, computed here in float64 NumPy from the raw fields."""
    f = lambda name: np.asarray(getattr(cell, name), np.float64)  # noqa: E731
    mask, smask = np.asarray(cell.mask.array), np.asarray(cell.sensory_mask.array)
    return dict(
        w=np.where(mask, _softplus(f("w")), 0.0), sigma=f("sigma"), mu=f("mu"), erev=f("erev"),
        sw=np.where(smask, _softplus(f("sensory_w")), 0.0), ssigma=f("sensory_sigma"),
        smu=f("sensory_mu"), serev=f("sensory_erev"), gleak=_softplus(f("gleak")),
        vleak=f("vleak"), cm=_softplus(f("cm")), in_w=f("input_w"), in_b=f("input_b"),
    )


def _numpy_run(cell, x, dts):
    """ncps's fused LTC (ode_unfolds semi-implicit steps per observation) in NumPy; returns the
    states and the time constants tau_j = cm_j / (gleak_j + sum_i s_ij + sum_k s_kj) at them."""
    p = _numpy_params(cell)
    v = np.zeros(cell.state_size)
    states, taus = [], []
    for xk, dt in zip(np.asarray(x, np.float64), np.asarray(dts, np.float64)):
        xm = xk * p["in_w"] + p["in_b"]
        s_sens = p["sw"] * _sigmoid(p["ssigma"] * (xm[:, None] - p["smu"]))
        cm_t = p["cm"] / (dt / cell.ode_unfolds)
        for _ in range(cell.ode_unfolds):
            s = p["w"] * _sigmoid(p["sigma"] * (v[:, None] - p["mu"]))
            num = cm_t * v + p["gleak"] * p["vleak"] + (s * p["erev"]).sum(0) \
                + (s_sens * p["serev"]).sum(0)
            den = cm_t + p["gleak"] + s.sum(0) + s_sens.sum(0)
            v = num / (den + cell.epsilon)
        s = p["w"] * _sigmoid(p["sigma"] * (v[:, None] - p["mu"]))
        states.append(v.copy())
        taus.append(p["cm"] / (p["gleak"] + s.sum(0) + s_sens.sum(0)))
    return np.stack(states), np.stack(taus)


@pytest.fixture(scope="module")
def ltc():
    return LTC(2, AutoNCP(8, 1).build(2), key=KEY)


@pytest.fixture(scope="module")
def seq():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(L, 2)).astype(np.float32)
    dts = rng.uniform(0.1, 1.5, L).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(dts)


def test_time_constants_match_numpy(ltc, seq):
    x, dts = seq
    states_np, tau_np = _numpy_run(ltc, x, dts)
    rnn = LiquidRNN(ltc)
    hs = li.hidden_states(rnn, x, dts)
    tau = li.system_time_constants(rnn, x, dts)
    assert hs.shape == tau.shape == (L, 8)
    np.testing.assert_allclose(hs, states_np, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tau, tau_np, rtol=1e-4)
    # Not vacuous: the time constants really move over the sequence, per neuron.
    assert np.all(np.ptp(tau_np, axis=0) > 1e-3)
    # A bare cell is the same as LiquidRNN(cell).
    np.testing.assert_array_equal(li.system_time_constants(ltc, x, dts), tau)


def test_hidden_states_are_what_the_layer_reads_out(ltc, seq):
    x, dts = seq
    for interp in ("hold", "linear", "cubic"):
        rnn = LiquidRNN(ltc, interpolation=interp)
        hs = li.hidden_states(rnn, x, dts)
        ys, h = rnn(x, dts)
        np.testing.assert_allclose(jax.vmap(ltc.output)(hs), ys, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(hs[-1], h)


@pytest.mark.parametrize("kind", ["cfc", "mixed"])
def test_hidden_states_other_cells(kind, seq):
    x, dts = seq
    if kind == "cfc":
        cell = CfC(2, 5, backbone_units=8, key=KEY)
    else:
        cell = MixedMemory(LTC(2, 5, key=KEY), key=jax.random.key(1))
    rnn = LiquidRNN(cell)
    hs = li.hidden_states(rnn, x, dts)
    _, h = rnn(x, dts)
    if kind == "mixed":  # the state (h, c) comes whole: the liquid cell's and the LSTM's
        assert isinstance(hs, tuple) and [a.shape for a in hs] == [(L, 5), (L, 5)]
        np.testing.assert_array_equal(hs[0][-1], h[0])
        np.testing.assert_array_equal(hs[1][-1], h[1])
        assert not np.allclose(hs[0], hs[1])
    else:
        assert hs.shape == (L, 5)
        np.testing.assert_array_equal(hs[-1], h)
    with pytest.raises(ValueError, match="LTC"):
        li.system_time_constants(rnn, x, dts)


def test_masks_and_vmap(ltc, seq):
    x, dts = seq
    rnn = LiquidRNN(ltc)
    n = 7
    mask = jnp.arange(L) < n
    tau = li.system_time_constants(rnn, x, dts, mask)
    assert np.all(np.isnan(tau[n:]))
    np.testing.assert_allclose(tau[:n], li.system_time_constants(rnn, x[:n], dts[:n]), rtol=1e-6)
    batch = jax.vmap(li.system_time_constants, in_axes=(None, 0, 0, 0))
    xb, db = jnp.stack([x, -x]), jnp.stack([dts, 2 * dts])
    tb = eqx.filter_jit(batch)(rnn, xb, db, jnp.ones((2, L), bool))
    np.testing.assert_allclose(tb[1], li.system_time_constants(rnn, -x, 2 * dts), rtol=1e-5)


def test_solver_trace_adaptive_and_constant(ltc, seq):
    x, dts = seq
    hs = li.hidden_states(LiquidRNN(ltc), x, dts)
    fused = li.solver_trace(ltc, x, dts, max_steps=8)
    np.testing.assert_array_equal(fused.num_accepted, ltc.ode_unfolds)
    np.testing.assert_allclose(fused.states, hs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.nansum(fused.step_sizes, 1), dts, rtol=1e-5)
    adaptive = ltc.with_solver(diffrax.Tsit5(),
                               stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8))
    tr = li.solver_trace(adaptive, x, dts, max_steps=64)
    k = int(np.argmax(dts))
    assert tr.ts.shape == (L, 64)
    # Steps tile each interval and end at the observation time.
    np.testing.assert_allclose(np.nansum(tr.step_sizes, 1), dts, rtol=1e-5)
    np.testing.assert_allclose(tr.ts[k, tr.num_accepted[k] - 1], tr.observation_times[k],
                               rtol=1e-6)
    assert np.all(np.isinf(tr.ts[k, tr.num_accepted[k]:]))
    # The adaptive answer sits closer to the exact ODE than the fused first-order scheme;
    # both agree to the fused scheme's accuracy.
    np.testing.assert_allclose(tr.states, hs, atol=5e-2)
    # Longer intervals take more adaptive steps than the shortest ones.
    assert tr.num_accepted[k] > tr.num_accepted[int(np.argmin(dts))]


def test_confusion_matrix():
    y = jnp.array([0, 1, 1, 2, 2, 2])
    p = jnp.array([0, 1, 2, 2, 2, 0])
    cm = jax.jit(li.confusion_matrix, static_argnums=2)(y, p, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [1, 0, 2]])
    w = li.confusion_matrix(y, p, 3, weights=jnp.array([1, 1, 1, 1, 1, 0.0]))
    assert w[2, 0] == 0 and w.sum() == 5


# ------------------------------------------------------------------------------------ figures
def _check_axes(fig):
    assert isinstance(fig, Figure)
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        if not ax.axison:
            continue
        assert ax.get_ylabel(), f"unlabelled y axis in {ax.get_title()!r}"
        shared_x = ax.get_shared_x_axes().get_siblings(ax)
        assert ax.get_xlabel() or any(a.get_xlabel() for a in shared_x)
    assert any(ax.get_title() for ax in axes)
    fig.canvas.draw()  # renders without error


def test_plots_return_labelled_figures(ltc, seq, tmp_path):
    x, dts = seq
    rnn = LiquidRNN(ltc)
    t = np.cumsum(dts)
    tau = li.system_time_constants(rnn, x, dts)
    hs = li.hidden_states(rnn, x, dts)
    figs = [
        plot.time_constants(tau, t, x=x, regimes=[(0, t[5], "a"), (t[5], t[-1], "b")]),
        plot.time_constants(tau, neurons=[0, 3], neuron_labels=["motor", "inter"], log=False),
        plot.activity(hs, t, wiring=AutoNCP(8, 1).build(2), x=x),
        plot.activity(tau, label="τ_sys (time units)", cmap="viridis"),
        plot.step_sizes(li.solver_trace(ltc, x, dts, max_steps=8)),
        plot.solver_pareto({"euler": {"time": [1e-3, 2e-3], "error": [1e-1, 1e-2]},
                            "tsit5": {"time": 3e-3, "error": 0.0, "evals": 30}}),
        plot.solver_pareto({"tsit5": {"time": 3e-3, "error": 1e-5, "evals": 30}}, cost="evals"),
        plot.confusion_matrix(li.confusion_matrix(jnp.array([0, 1, 2]), jnp.array([0, 2, 2]), 3),
                              ["a", "b", "c"]),
        plot.predictions(t, np.sin(t), {"ltc": np.sin(t) + 0.1}, inputs=np.cos(t),
                         mask=np.arange(L) < 9),
    ]
    for fig in figs:
        _check_axes(fig)
    wfig = plot.wiring(AutoNCP(8, 1), input_dim=2)
    assert isinstance(wfig, Figure) and wfig.axes[0].get_title()
    with pytest.raises(ValueError, match="input_dim"):
        plot.wiring(AutoNCP(8, 1))

    # The trainer's metrics.jsonl: a resumed run repeats records; the last one wins.
    path = tmp_path / "metrics.jsonl"
    recs = [{"event": "start", "step": 0}]
    recs += [{"event": "train", "step": s, "epoch": 1, "loss": 1.0 / s, "accuracy": 0.1 * s}
             for s in range(1, 5)]
    recs += [{"event": "epoch", "epoch": 1, "step": 4, "train_loss": 9.0, "train_accuracy": 0.2},
             {"event": "epoch", "epoch": 1, "step": 4, "train_loss": 0.3, "train_accuracy": 0.4,
              "val_loss": 0.5, "val_accuracy": 0.35}]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{truncated")
    fig = plot.training_curves(path)
    _check_axes(fig)
    loss_ax = fig.axes[0]
    epoch_points = [line for line in loss_ax.get_lines() if line.get_label() == "train (epoch)"]
    np.testing.assert_allclose(epoch_points[0].get_ydata(), [0.3])
    _check_axes(plot.training_curves([{k: v for k, v in recs[-1].items() if k != "event"}]))
    # fit's result: its history, epoch records without an "event" key.
    history = [{k: v for k, v in recs[-1].items() if k != "event"}]
    result = FitResult(model=None, state=None, history=history, checkpoint=None, out_dir=None,
                       metrics=None)
    by_result = plot.training_curves(result).axes[0].get_lines()
    np.testing.assert_allclose(
        [line.get_ydata() for line in by_result if line.get_label() == "train (epoch)"], [[0.3]])
    with pytest.raises(ValueError, match="no 'train' or 'epoch'"):
        plot.training_curves([{"event": "start"}])


def test_plot_input_errors():
    with pytest.raises(ValueError, match="time, neurons"):
        plot.time_constants(np.zeros(5))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        plot.activity(np.zeros((5, 3)), np.arange(4))
    with pytest.raises(ValueError, match="square"):
        plot.confusion_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="cost"):
        plot.solver_pareto({"a": {"time": 1, "error": 1}}, cost="flops")
