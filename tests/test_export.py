"""Streaming and export: the stepper equals the sequence layer/model, StableHLO round-trips in a
process without liquidjax, ONNX Runtime gives the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax import export
from liquidjax.cells import LTC, CfC, GRUODEBayes, MixedMemory, NeuralCDE, WiredCfC
from liquidjax.export import _fold, _step
from liquidjax.layers import LiquidRNN
from liquidjax.models import ModelConfig, build_model
from liquidjax.wirings import AutoNCP

I, N, T = 3, 6, 5
KEY = jax.random.key(0)


def _randomise(model, key):
    """Perturb every float parameter so that no test passes on an initialisation pattern."""
    leaves, tree = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_inexact_array))
    keys = jax.random.split(key, len(leaves))
    leaves = [a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), model)


@eqx.filter_jit
def _call(model, *args, **kw):
    return model(*args, **kw)


def _cells():
    k = jax.random.split(KEY, 8)
    return {
        "ltc-fused": LTC(I, N, key=k[0]),
        "ltc-sparse": LTC(I, AutoNCP(12, 2, seed=2), synapses="sparse", key=k[1]),
        "ltc-euler": LTC(I, N, ode_unfolds=3, key=k[1]).with_solver(diffrax.Euler()),
        "ltc-tsit5-adaptive": LTC(I, N, ode_unfolds=2, key=k[2]).with_solver(
            diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-6)),
        "cfc-default": CfC(I, N, backbone_units=5, key=k[3]),
        "cfc-no_gate": CfC(I, N, mode="no_gate", backbone_units=5, backbone_layers=2, key=k[4]),
        "cfc-pure": CfC(I, N, mode="pure", backbone_layers=0, key=k[5]),
        "wired-cfc": WiredCfC(I, AutoNCP(8, 2, seed=1), key=k[6]),
        "mixed-cfc": MixedMemory(CfC(I, N, backbone_units=5, key=k[7]), key=k[0]),
    }


CELLS = _cells()


def _data(batch=(), seed=1):
    kx, kt = jax.random.split(jax.random.key(seed))
    xs = jax.random.normal(kx, batch + (T, I))
    dts = jax.random.uniform(kt, batch + (T,), minval=0.2, maxval=1.5)  # per-step, irregular
    return xs, dts


def _stream(step, xs, dts, state=None):
    state = step.initial_state() if state is None else state
    outs = []
    for k in range(xs.shape[-2]):
        y, state = step(state, xs[..., k, :], dts[..., k])
        outs.append(y)
    return jnp.stack(outs, axis=-2), state


@pytest.mark.parametrize("name", list(CELLS))
def test_stepper_streams_like_the_sequence_layer(name):
    rnn = LiquidRNN(_randomise(CELLS[name], jax.random.key(5)))
    step = export.stepper(rnn)
    xs, dts = _data()
    ys, hT = _stream(step, xs, dts)
    ys_ref, hT_ref = _call(rnn, xs, dts)
    assert ys.shape == ys_ref.shape == (T, rnn.output_size)
    np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=1e-6)
    got = step.unflatten_state(hT)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(hT_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert float(jnp.max(jnp.abs(ys_ref[-1] - ys_ref[0]))) > 1e-3  # the state really moves


@pytest.mark.parametrize("synapses", ["dense", "sparse"])
def test_stepper_batch_proj_and_continuing_state(synapses):
    cell = _randomise(LTC(I, AutoNCP(12, 3, seed=3), synapses=synapses, key=KEY),
                      jax.random.key(2))
    rnn = LiquidRNN(cell, eqx.nn.Linear(3, 2, key=jax.random.key(3)))
    step = export.stepper(rnn, batch_shape=(2, 3))
    xs, dts = _data((2, 3))
    # Start from the state a first half of the sequence left, as a stream would.
    _, h_mid = jax.vmap(jax.vmap(rnn))(xs[..., :2, :], dts[..., :2])
    ys, _ = _stream(step, xs[..., 2:, :], dts[..., 2:], step.flatten_state(h_mid))
    ys_ref, _ = jax.vmap(jax.vmap(rnn))(xs, dts)
    assert ys.shape == (2, 3, T - 2, 2)
    np.testing.assert_allclose(ys, ys_ref[..., 2:, :], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", [
    dict(cell="ltc", layers=2, readout="last", ode_unfolds=2),
    dict(cell="cfc", wiring="ncp", units=10, mixed_memory=True, readout="mean"),
    dict(cell="cfc", layers=2, readout="mean", per_step=True),
], ids=["ltc-2layers-last", "wired-mixed-mean", "cfc-per-step"])
def test_stepper_classifier_logits_at_every_step(cfg):
    cfg = {"units": N, **cfg}
    model = build_model(ModelConfig(input_size=I, num_classes=4, backbone_units=5, **cfg),
                        key=KEY)
    model = _randomise(model, jax.random.key(4))
    step = export.stepper(model)
    xs, dts = _data()
    logits, _ = _stream(step, xs, dts)
    if model.per_step:  # one prediction per observation: the model's whole output sequence
        np.testing.assert_allclose(logits, _call(model, xs, dts), rtol=0, atol=1e-6)
        return
    for k in (1, T):  # the logits after k observations are the model's on the first k
        ref = _call(model, xs[:k], dts[:k])
        np.testing.assert_allclose(logits[k - 1], ref, rtol=0, atol=1e-6)


def test_stepper_float64():
    with jax.enable_x64(True):
        cell = _randomise(LTC(I, N, dtype=jnp.float64, key=KEY), jax.random.key(9))
        rnn = LiquidRNN(MixedMemory(cell, key=KEY))
        rnn = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, rnn)
        step = export.stepper(rnn)
        assert step.dtype == np.float64
        xs, dts = (a.astype(jnp.float64) for a in _data())
        ys, _ = _stream(step, xs, dts)
        ys_ref, _ = _call(rnn, xs, dts)
        assert ys.dtype == jnp.float64
        np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=1e-12)


def test_stepper_accepts_numpy_and_python_scalars():
    step = export.stepper(CELLS["cfc-default"])
    x = np.linspace(-1, 1, I).astype(np.float32)
    y1, s1 = step(step.initial_state(), x, 0.5)
    y2, s2 = step(np.zeros(step.state_size, np.float32), jnp.asarray(x), np.float32(0.5))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1, s2)
    with pytest.raises(ValueError, match=r"flat state of shape \(6,\)"):
        step.unflatten_state(jnp.zeros(3))
    y3, _ = step(np.zeros(step.state_size), list(x), np.array(0.5))  # lists, float64: cast
    np.testing.assert_array_equal(y1, y3)
    with pytest.raises(ValueError,
                       match=r"takes state \(6,\), x \(3,\).*got state \(6,\), x \(4,\)"):
        step(step.initial_state(), np.ones(4, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"got state \(6,\), x \(1,\)"):  # not broadcast
        step(step.initial_state(), np.ones(1, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"got state \(6,\), x \(3,\), dt \(2,\)"):
        step(step.initial_state(), x, np.ones(2, np.float32))
    batched = export.stepper(CELLS["cfc-default"], batch_shape=(2,))
    xb = np.stack([x, -x])
    yb, _ = batched(batched.initial_state(), xb, 0.5)  # one dt for the whole batch
    np.testing.assert_array_equal(yb, batched(batched.initial_state(), xb, np.full(2, 0.5))[0])
    np.testing.assert_allclose(yb[0], y1, rtol=0, atol=1e-6)


def test_stepper_runs_on_its_own_client_and_takes_arrays_from_anywhere():
    rnn = LiquidRNN(_randomise(CELLS["ltc-fused"], jax.random.key(7)))
    step = export.stepper(rnn)
    default = jax.devices()[0]
    if default.platform == "cpu" and jax.config.read("jax_cpu_enable_async_dispatch"):
        # The synchronous client of the stepper's own, not the default asynchronous one.
        assert step.device != default
    xs, dts = _data()
    s0 = np.asarray(step.initial_state()) + 0.1
    y_ref, h_ref = _call(rnn, xs[:1], dts[:1], state=step.unflatten_state(s0))
    # Committed to the default device (the executable's fast path refuses it: placed again),
    # NumPy, and the stepper's own arrays all give the model's step.
    for s in (jax.device_put(jnp.asarray(s0), default), s0, jax.device_put(s0, step.device)):
        y, h = step(s, xs[0], dts[0])
        np.testing.assert_allclose(y, y_ref[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(y, np.asarray(y) + jnp.zeros_like(y))  # jnp works on it
    # The state handed back to the model lives on the default device, beside its parameters.
    tree = step.unflatten_state(h)
    assert tree.devices() == {default}
    np.testing.assert_allclose(tree, h_ref, rtol=0, atol=1e-6)
    assert float(jnp.max(jnp.abs(tree - step.unflatten_state(s0)))) > 1e-3  # the state moved


@pytest.mark.parametrize("batch_shape", [(), (2,)])
def test_stepper_merges_a_cfcs_head_products_and_returns_its_state_once(batch_shape):
    rnn = LiquidRNN(_randomise(CELLS["cfc-default"], jax.random.key(8)))
    step = export.stepper(rnn, batch_shape=batch_shape)
    specs = _step._step_specs(step._plan, batch_shape)
    plain = _fold._folded(step._fn, specs, distinct=False)
    merged = _fold._folded(step._fn, specs, distinct=False, merge_dots=True)

    def products(fn):
        return sum(e.primitive.name == "dot_general" for e in jax.make_jaxpr(fn)(*specs).eqns)

    assert (products(plain), products(merged)) == (5, 2)  # backbone + 4 heads -> backbone + 1
    s, x, dt = (np.asarray(jax.random.normal(jax.random.key(k), a.shape)) for k, a in
                enumerate(specs))
    for a, b in zip(plain(s, x, dt), merged(s, x, dt), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    y, h = step(s, x, dt)
    assert y is h  # a CfC's output is its state: one result, returned twice
    np.testing.assert_allclose(h, plain(s, x, dt)[1], rtol=0, atol=1e-6)


# Cells whose step is a diffrax solve (their default integrator, Tsit5): the XLA stepper streams
# them; C and ONNX refuse the solve's loop, StableHLO its host callbacks, each naming the cell.
BASELINES = {
    "gru-ode-bayes": lambda key: GRUODEBayes(4, N, key=key),  # [x | m]: 2 channels
    "ncde": lambda key: NeuralCDE(I, N, key=key),
}


def _baseline(name):
    rnn = LiquidRNN(_randomise(BASELINES[name](jax.random.key(6)), jax.random.key(5)))
    xs, dts = _data()
    if name == "gru-ode-bayes":  # nothing observed at the 4th step: no jump there
        mask = jnp.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 1]], xs.dtype)
        xs = jnp.concatenate([xs[:, :2], mask], axis=1)
    return rnn, xs, dts


@pytest.mark.parametrize("name", list(BASELINES))
def test_stepper_streams_baseline_cells(name):
    rnn, xs, dts = _baseline(name)
    step = export.stepper(rnn)
    ys, hT = _stream(step, xs, dts)
    ys_ref, hT_ref = _call(rnn, xs, dts)
    np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(step.unflatten_state(hT)),
                    jax.tree_util.tree_leaves(hT_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert float(jnp.max(jnp.abs(ys_ref[-1] - ys_ref[0]))) > 1e-3  # the state really moves


@pytest.mark.parametrize("name", list(BASELINES))
def test_fixed_size_exports_refuse_baseline_cells(name, tmp_path):
    rnn, _, _ = _baseline(name)
    cell = type(rnn.cell).__name__
    with pytest.raises(ValueError, match=rf"cannot generate C for LiquidRNN \({cell}\).*while"):
        export.to_c(rnn, tmp_path / "c")
    with pytest.raises(ValueError, match=rf"cannot export LiquidRNN \({cell}\) to ONNX"):
        export.to_onnx(rnn, tmp_path / "onnx")
    with pytest.raises(ValueError, match=rf"LiquidRNN \({cell}\) to StableHLO.*EQX_ON_ERROR"):
        export.to_stablehlo(rnn, tmp_path / "hlo")


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_exports_refuse_a_continuous_input_path(interpolation, tmp_path):
    # A continuous path is one solve over the whole sequence: no step per observation gives it.
    rnn = LiquidRNN(NeuralCDE(I, N, key=KEY), interpolation=interpolation)
    exports = [("stepper", export.stepper),
               ("stepper", lambda m: export.stepper(m, backend="c")),
               ("to_stablehlo", lambda m: export.to_stablehlo(m, tmp_path)),
               ("to_onnx", lambda m: export.to_onnx(m, tmp_path)),
               ("to_c", lambda m: export.to_c(m, tmp_path))]
    for where, fn in exports:
        with pytest.raises(ValueError, match=rf"^{where}: cannot step a LiquidRNN with "
                           rf"interpolation='{interpolation}' \(NeuralCDE cell\).*"
                           "NeuralCDE with interpolation='hold' follows the same linear path"):
            fn(rnn)
    model = build_model(ModelConfig(input_size=I, num_classes=2, cell="ncde", units=N,
                                    interpolation=interpolation), key=KEY)
    with pytest.raises(ValueError, match=r"^to_c: SequenceClassifier layer 0: cannot step"):
        export.to_c(model, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_stepper_rejects_what_it_cannot_stream():
    with pytest.raises(ValueError, match=r"stepper: cannot step .*interpolation='linear' \(LTC"):
        export.stepper(LiquidRNN(LTC(I, N, key=KEY), interpolation="linear"))
    with pytest.raises(ValueError, match="cannot build a stepper for int"):
        export.stepper(3)
    with pytest.raises(ValueError, match="batch_shape"):
        export.stepper(CELLS["cfc-default"], batch_shape=(0,))


# ------------------------------------------------------------------------------- StableHLO
def test_stablehlo_names_the_host_callbacks_of_diffrax_solvers(tmp_path):
    if os.environ.get("EQX_ON_ERROR") in ("nan", "off"):
        pytest.skip("EQX_ON_ERROR is set: diffrax's checks are not host callbacks here")
    with pytest.raises(ValueError, match=r"LiquidRNN \(LTC\) to StableHLO.*EQX_ON_ERROR=nan"):
        export.to_stablehlo(LiquidRNN(CELLS["ltc-euler"]), tmp_path)


_STABLEHLO_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    from jax import export
    d = Path(sys.argv[1])
    man = json.loads((d / "manifest.json").read_text())
    assert man["format"] == "liquidjax.stablehlo" and man["format_version"] == 1
    data = np.load(d / "inputs.npz")
    out = {}
    for name, spec in man["functions"].items():
        fn = export.deserialize((d / spec["file"]).read_bytes())
        args = [data[name + "." + a["name"]] for a in spec["inputs"]]
        for a, s in zip(args, spec["inputs"]):
            assert list(a.shape) == s["shape"] and str(a.dtype) == s["dtype"], (a.shape, s)
        res = fn.call(*args)
        for r, s in zip(res, spec["outputs"]):
            assert list(r.shape) == s["shape"] and str(r.dtype) == s["dtype"], (r.shape, s)
            out[name + "." + s["name"]] = np.asarray(r)
    np.savez(d / "outputs.npz", **out)
    assert "liquidjax" not in sys.modules and "equinox" not in sys.modules, sorted(sys.modules)
    print("ok")
""")


@pytest.mark.parametrize("name", ["ltc-fused", "ltc-sparse", "cfc-pure", "mixed-cfc"])
def test_stablehlo_round_trip_without_liquidjax(name, tmp_path):
    rnn = LiquidRNN(_randomise(CELLS[name], jax.random.key(6)))
    man = export.to_stablehlo(rnn, tmp_path / "m", seq_len=T, batch_shape=(2,))
    assert json.loads((tmp_path / "m" / "manifest.json").read_text()) == man
    step = export.stepper(rnn, batch_shape=(2,))
    xs, dts = _data((2,))
    s0 = np.asarray(step.initial_state()) + 0.1  # a non-trivial starting state
    np.savez(tmp_path / "m" / "inputs.npz", **{
        "step.state": s0, "step.x": np.asarray(xs[:, 0]), "step.dt": np.asarray(dts[:, 0]),
        "sequence.state": s0, "sequence.xs": np.asarray(xs), "sequence.dts": np.asarray(dts)})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _STABLEHLO_CHILD, str(tmp_path / "m")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    got = np.load(tmp_path / "m" / "outputs.npz")
    y1, h1 = step(jnp.asarray(s0), xs[:, 0], dts[:, 0])
    np.testing.assert_allclose(got["step.output"], y1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["step.new_state"], h1, rtol=0, atol=1e-6)
    ys_ref, h_ref = jax.vmap(rnn)(xs, dts, state=jax.vmap(step._plan.unravel)(jnp.asarray(s0)))
    np.testing.assert_allclose(got["sequence.outputs"], ys_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["sequence.new_state"], step.flatten_state(h_ref), atol=1e-6)


# ------------------------------------------------------------------------------------- ONNX
ONNX_CASES = ["ltc-fused", "ltc-sparse", "cfc-default", "cfc-no_gate", "cfc-pure", "wired-cfc",
              "mixed-cfc"]


def _ort():
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:  # pragma: no cover - CI installs the `test` extra, which has them
        pytest.skip(f"ONNX export needs the `export` extra (onnx, onnxruntime, jax2onnx): {e}")
    return onnxruntime


@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnx_runtime_matches_the_stepper(name, tmp_path):
    ort = _ort()
    rnn = LiquidRNN(_randomise(CELLS[name], jax.random.key(7)))
    man = export.to_onnx(rnn, tmp_path, seq_len=T)
    assert man["format"] == "liquidjax.onnx"
    assert [i["name"] for i in man["functions"]["step"]["inputs"]] == ["state", "x", "dt"]
    step = export.stepper(rnn)
    xs, dts = (np.asarray(a) for a in _data())
    s0 = np.asarray(step.initial_state()) + 0.05
    sess = ort.InferenceSession(str(tmp_path / "step.onnx"))
    state, ys = s0, []
    for k in range(T):  # stream through ONNX Runtime, feeding its own state back
        y, state = sess.run(None, {"state": state, "x": xs[k], "dt": dts[k:k + 1].reshape(())})
        ys.append(y)
    ys_ref, h_ref = _call(rnn, jnp.asarray(xs), jnp.asarray(dts), state=step._plan.unravel(s0))
    np.testing.assert_allclose(np.stack(ys), ys_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(state, step.flatten_state(h_ref), rtol=0, atol=1e-5)
    seq = ort.InferenceSession(str(tmp_path / "sequence.onnx"))
    ys_seq, h_seq = seq.run(None, {"state": s0, "xs": xs, "dts": dts})
    np.testing.assert_allclose(ys_seq, ys_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_seq, state, rtol=0, atol=1e-5)


def test_onnx_batched_classifier(tmp_path):
    ort = _ort()
    model = build_model(ModelConfig(input_size=I, num_classes=4, units=10, cell="ltc",
                                    wiring="ncp", readout="mean", ode_unfolds=3), key=KEY)
    model = _randomise(model, jax.random.key(8))
    export.to_onnx(model, tmp_path, batch_shape=(2,), seq_len=T)
    step = export.stepper(model, batch_shape=(2,))
    xs, dts = (np.asarray(a) for a in _data((2,)))
    sess = ort.InferenceSession(str(tmp_path / "step.onnx"))
    state = np.asarray(step.initial_state())
    for k in range(T):
        logits, state = sess.run(None, {"state": state, "x": xs[:, k], "dt": dts[:, k]})
    ref = jax.vmap(lambda x, t: _call(model, x, t))(jnp.asarray(xs), jnp.asarray(dts))
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-5)
    seq = ort.InferenceSession(str(tmp_path / "sequence.onnx"))
    all_logits, final = seq.run(None, {"state": np.asarray(step.initial_state()), "xs": xs,
                                       "dts": dts})
    assert all_logits.shape == (2, T, 4)
    np.testing.assert_allclose(all_logits[:, -1], ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(final, state, rtol=0, atol=1e-5)


def test_onnx_refuses_diffrax_solvers_naming_the_cell(tmp_path):
    _ort()
    for name in ("ltc-euler", "ltc-tsit5-adaptive"):
        with pytest.raises(ValueError, match=r"cannot export LiquidRNN \(LTC\) to ONNX.*"
                                             r"(while|branch)"):
            export.to_onnx(LiquidRNN(CELLS[name]), tmp_path)
    with pytest.raises(ValueError, match="float32"):
        export.to_onnx(jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float16) if eqx.is_inexact_array(a) else a,
            CELLS["cfc-pure"]), tmp_path)
