"""Issue 24: no silent wrong answer from a data file, the stepper or a solver set-up. Each class
of bad input gets a refusal (one clear line naming what was wrong) or a documented opt-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import liquidjax.data as D
from liquidjax.data._ts_format import MAX_ABS_VALUE

# ------------------------------------------------------------------------------ .ts files

BASE = """@problemName T
@univariate true
@missing false
@equalLength true
@classLabel true a b
@data
1,2,3:a
4,5,6:b
"""


def _read(tmp_path: Path, text: str):
    path = tmp_path / "T_TRAIN.ts"
    path.write_text(text)
    return path, lambda: D.read_ts(path)


@pytest.mark.parametrize("token", ["1e300", "-1e30", "2.5e20", "inf", "-Infinity"])
def test_ts_values_beyond_the_magnitude_limit_are_refused_with_file_line_and_value(
        tmp_path, token):
    assert abs(float(token)) > MAX_ABS_VALUE
    path, read = _read(tmp_path, BASE.replace("4,5,6", f"4,{token},6"))
    with pytest.raises(D.DatasetFormatError) as e:
        read()
    assert f"{path}:8:" in str(e.value) and repr(token) in str(e.value)
    # the largest accepted magnitude reads back exactly as float32 would hold it
    _, read = _read(tmp_path, BASE.replace("4,5,6", "4,-1e20,6"))
    assert read().x[1, 1, 0] == np.float32(-1e20)


def test_ts_regression_targets_and_time_stamps_beyond_the_limit_are_refused(tmp_path):
    reg = BASE.replace("@classLabel true a b", "@targetLabel true").replace(":b", ":3e38")
    path, read = _read(tmp_path, reg.replace(":a", ":1.5"))
    with pytest.raises(D.DatasetFormatError, match=rf"{path}:8: regression target '3e38'"):
        read()
    stamped = ("@timeStamps true\n@univariate true\n@classLabel true a b\n@data\n"
               "(0,1),(1e25,2):a\n")
    path, read = _read(tmp_path, stamped)
    with pytest.raises(D.DatasetFormatError, match=rf"{path}:5: time stamp '1e25'"):
        read()


@pytest.mark.parametrize(
    "change, line, words",
    [
        (("4,5,6", "4,5"), 8, "@equalLength true (line 4)"),
        (("@equalLength true", "@equalLength true\n@seriesLength 4"), 8,
         "@seriesLength 4 (line 5)"),
        (("4,5,6", "4,?,6"), 8, "@missing false (line 3)"),
        (("@data", "@targetLabel true\n@data"), 7, "both @classLabel true (line 5) and "
                                                  "@targetLabel true (line 6)"),
        (("@data", "@dimensions 2\n@data"), 7, "@univariate true (line 2) and @dimensions 2"),
        (("@data", "@missing true\n@data"), 6, "@missing is declared twice (first on line 3)"),
        (("true a b", "true a b a"), 5, "lists ['a'] more than once"),
        (("@equalLength true", "@seriesLength -3"), 4, "@seriesLength needs a positive integer"),
    ],
)
def test_ts_header_contradictions_are_refused_naming_file_and_line(tmp_path, change, line,
                                                                  words):
    path, read = _read(tmp_path, BASE.replace(*change))
    with pytest.raises(D.DatasetFormatError) as e:
        read()
    assert f"{path}:{line}:" in str(e.value) and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_ts_consistent_header_still_reads(tmp_path):
    text = BASE.replace("@equalLength true", "@equalLength true\n@seriesLength 3")
    d = _read(tmp_path, text)[1]()
    np.testing.assert_array_equal(d.x[:, :, 0], [[1, 2, 3], [4, 5, 6]])
    d = _read(tmp_path, BASE.replace("@missing false", "@missing true")
              .replace("4,5,6", "4,?,6"))[1]()
    assert np.isnan(d.x[1, 1, 0]) and d.lengths.tolist() == [3, 3]
    # a second @problemName (aeon's own UnitTest_TEST.ts has one) only labels: the first stands
    d = _read(tmp_path, BASE.replace("@problemName T", "@problemName T\n@problemName U"))[1]()
    assert d.name == "T" and d.y.tolist() == [0, 1]


def test_npz_with_whole_float_labels_is_refused_not_silently_regression(tmp_path):
    x = np.zeros((4, 3, 1), np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(D.DatasetFormatError, match="store class labels as integers, or add an "
                                                   "array task='regression'"):
        D.TimeSeriesData.load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "r.npz", x=x, y=np.array([0.0, 1.0, 1.0, 0.0]), task="regression")
    assert D.TimeSeriesData.load_npz(tmp_path / "r.npz").task == "regression"
    np.savez(tmp_path / "i.npz", x=x, y=np.array([0, 1, 1, 0]))
    assert D.TimeSeriesData.load_npz(tmp_path / "i.npz").task == "classification"
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0.5, 1.0, 1.0, 0.0]))
    assert D.TimeSeriesData.load_npz(tmp_path / "g.npz").task == "regression"


# ------------------------------------------------------------------------------ the stepper


def _stepper_model():
    import jax

    from liquidjax import LiquidRNN
    from liquidjax.cells import LTC

    return LiquidRNN(LTC(3, 5, key=jax.random.key(0)))


@pytest.mark.parametrize("backend", ["xla", "c"])
def test_stepper_refuses_bad_dt_and_x_unless_check_false(backend):
    """What LiquidRNN refuses (dt <= 0, NaN in x) the stepper refuses by default, naming the
    value and the example; check=False passes them through, as the layer's own step does."""
    import jax

    from liquidjax import export

    model = _stepper_model()
    checked = export.stepper(model, backend=backend, batch_shape=(2,))
    raw = export.stepper(model, backend=backend, batch_shape=(2,), check=False)
    assert checked.check and not raw.check
    s0 = checked.initial_state()
    x = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], np.float32)
    y, s1 = checked(s0, x, 0.5)
    y_raw, s1_raw = raw(s0, x, 0.5)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s1_raw))  # the check changes nothing
    nan_x = x.copy()
    nan_x[1, 2] = np.nan
    bad = [((x, np.array([0.5, -1.0], np.float32)), r"dt must be positive and finite, got -1\.0 "
                                                    r"at example 1"),
           ((x, 0.0), r"dt must be positive and finite, got 0\.0 at example 0"),
           ((x, np.inf), "dt must be positive and finite, got inf"),
           ((nan_x, 0.5), r"x must be finite, got x\[2\] = nan at example 1")]
    for (xb, dtb), words in bad:
        with pytest.raises(ValueError, match=words) as e:
            checked(s1, xb, dtb)
        assert "\n" not in str(e.value) and "check=False" in str(e.value)
        _, s_raw = raw(s1, xb, dtb)  # unchecked: what the cell computes from it
        cell_step = jax.vmap(lambda s, xx, d: model.cell.advance(s, xx, 0.0, d))
        ref = cell_step(np.asarray(s1), xb, np.broadcast_to(np.float32(dtb), (2,)))
        np.testing.assert_allclose(np.asarray(s_raw), np.asarray(ref), rtol=1e-4, atol=1e-5)
    assert np.isnan(np.asarray(raw(s1, nan_x, 0.5)[1])[1]).all()  # one NaN poisons the state
    assert np.isfinite(np.asarray(checked(s1, x, 0.5)[1])).all()  # the checked one goes on


def test_generated_c_returns_an_error_code_and_writes_nothing_on_bad_input(tmp_path):
    """The C export's <name>_step checks x and dt (bit tests, so -ffast-math keeps them) and
    returns <NAME>_BAD_DT / <NAME>_BAD_X without writing; <name>_step_unchecked does not."""
    import shutil
    import subprocess

    from liquidjax import export

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    export.to_c(_stepper_model(), tmp_path / "c", name="pol")
    main = r"""
#include <math.h>
#include <stdio.h>
#include "pol.h"
int main(void) {
    float s[POL_STATE_SIZE], out[POL_OUTPUT_SIZE], x[POL_INPUT_SIZE] = {0.5f, -1.0f, 2.0f};
    float good = 0.5f, neg = -0.5f, s0;
    pol_init_state(s);
    s[0] = 0.25f; s0 = s[0]; out[0] = 7.0f;
    int a = pol_step(s, x, &neg, out, s);
    int unchanged = s[0] == s0 && out[0] == 7.0f;
    x[1] = NAN;
    int b = pol_step(s, x, &good, out, s);
    unchanged = unchanged && s[0] == s0 && out[0] == 7.0f;
    x[1] = 1.0f / 0.0f;
    int c = pol_step(s, x, &good, out, s);
    x[1] = -1.0f;
    int d = pol_step(s, x, &good, out, s);
    printf("%d %d %d %d %d %d %d\n", a == POL_BAD_DT, b == POL_BAD_X, c == POL_BAD_X,
           d == POL_OK, unchanged, s[0] != s0, POL_OK == 0);
    return 0;
}
"""
    (tmp_path / "c" / "main.c").write_text(main)
    for flags in (["-O2"], ["-O2", "-ffast-math"]):
        exe = tmp_path / "a.out"
        subprocess.run([cc, "-std=c99", *flags, str(tmp_path / "c" / "main.c"),
                        str(tmp_path / "c" / "pol.c"), "-o", str(exe), "-lm"], check=True)
        assert subprocess.run([str(exe)], capture_output=True, text=True,
                              check=True).stdout.split() == ["1"] * 7, flags


@pytest.mark.parametrize("export_name", ["to_c", "to_stablehlo", "to_onnx"])
def test_a_failed_export_leaves_no_folder_behind(tmp_path, export_name, monkeypatch):
    from liquidjax import export

    if export_name == "to_onnx":
        pytest.importorskip("jax2onnx")
    model = _stepper_model()
    target = tmp_path / "new" / "deeper"

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", fail)
    monkeypatch.setattr("pathlib.Path.write_bytes", fail)
    if export_name == "to_onnx":
        monkeypatch.setattr("liquidjax.export._onnx._drop_unused_initializers", fail)
    with pytest.raises(OSError, match="No space left"):
        getattr(export, export_name)(model, target)
    assert list(tmp_path.iterdir()) == []  # both folders it created are gone
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError, match="No space left"):
        getattr(export, export_name)(model, tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()  # a folder that was there stays


# ------------------------------------------------------------------------------ solver advice


def _adaptive_ltc(max_steps):
    import diffrax
    import jax

    from liquidjax.cells import LTC

    return LTC(2, 3, key=jax.random.key(0)).with_solver(
        diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6),
        max_steps=max_steps)


def test_a_solve_that_rejects_every_step_on_non_finite_values_says_so():
    """A first step that overflows (an interval of 1e37 in float32) makes the PID controller's
    next step NaN: every step is rejected whatever max_steps is. The error says so, instead of
    diffrax's "Try increasing max_steps"; solver_trace returns the steps instead of raising."""
    import equinox as eqx
    import jax.numpy as jnp

    from liquidjax import LiquidRNN
    from liquidjax.inspect import solver_trace

    cell = _adaptive_ltc(200)
    x, dts = jnp.ones((2, 2)), jnp.array([1.0, 1e37])
    with pytest.raises(eqx.EquinoxRuntimeError) as e:
        LiquidRNN(cell)(x, dts)
    msg = str(e.value)
    assert "rejected all of its max_steps=200 steps" in msg and "non-finite" in msg
    assert "more ode_unfolds" in msg and "dtmax" in msg and "Kvaerno5" in msg
    assert "Try increasing `max_steps`" not in msg
    trace = solver_trace(cell, x, dts)
    np.testing.assert_array_equal(trace.succeeded, [True, False])
    assert int(trace.num_accepted[0]) > 0 and int(trace.num_rejected[1]) == 200
    assert int(trace.num_accepted[1]) == 0 and np.isinf(np.asarray(trace.ts[1])).all()
    np.testing.assert_array_equal(trace.states[1], trace.states[0])  # the last state reached
    # a plain budget overrun (too few steps for the accuracy) keeps diffrax's own advice
    with pytest.raises(eqx.EquinoxRuntimeError, match="Try increasing `max_steps`"):
        LiquidRNN(_adaptive_ltc(3))(jnp.ones((1, 2)), jnp.array([50.0]))


def test_constant_steps_beyond_max_steps_are_refused_when_the_integrator_is_built():
    import diffrax
    import jax
    import jax.numpy as jnp

    from liquidjax import LiquidRNN
    from liquidjax.cells import LTC
    from liquidjax.solvers import Integrator

    with pytest.raises(ValueError, match=r"ode_unfolds=10 constant steps per interval exceed "
                                         r"max_steps=5"):
        Integrator(diffrax.Euler(), ode_unfolds=10, max_steps=5)
    cell = LTC(2, 3, key=jax.random.key(0), solver=diffrax.Euler())
    with pytest.raises(ValueError, match=r"ode_unfolds=6 .* max_steps=4"):
        cell.with_solver(max_steps=4)
    assert cell.with_solver(max_steps=6).max_steps == 6  # exactly enough is fine
    # with continuous inputs the budget covers the whole sequence: checked when traced
    rnn = LiquidRNN(cell.with_solver(max_steps=10), interpolation="linear")
    with pytest.raises(ValueError, match=r"3 x ode_unfolds=6 = 18 constant steps, more than "
                                         r"max_steps=10"):
        rnn(jnp.ones((3, 2)))
