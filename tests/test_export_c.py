"""The C backend: the translator held to JAX primitive by primitive, the C stepper to the sequence
layer and to the XLA stepper, and the files of ``to_c`` compiled alone with warnings as errors."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_export import CELLS, KEY, I, N, T, _baseline, _call, _data, _randomise, _stream

from liquidjax import export
from liquidjax.cells import GRUD, GRUODE, LTC, GRUODEBayes, MixedMemory
from liquidjax.export._c import _cbuild, _cgen
from liquidjax.layers import LiquidRNN
from liquidjax.models import ModelConfig, build_model
from liquidjax.solvers import Integrator
from liquidjax.wirings import AutoNCP

C_CELLS = ["ltc-fused", "ltc-sparse", "cfc-default", "cfc-no_gate", "cfc-pure", "wired-cfc",
           "mixed-cfc"]


def _compiled(fn, *args):
    """``fn`` translated to C, compiled and loaded: a callable on NumPy arrays."""
    closed = jax.make_jaxpr(fn)(*args)
    n_out = len(closed.jaxpr.outvars)
    ins, outs = [f"in{k}" for k in range(len(args))], [f"out{k}" for k in range(n_out)]
    c = _cgen.translate(closed, "f", ins, outs)
    src = f"#include <math.h>\n#include <stdint.h>\n\n{c.definitions}\n{c.function}"
    lib = ctypes.CDLL(str(_cbuild.build({"f.c": src}, "f.c")))

    def run(*arrays):
        arrays = [np.ascontiguousarray(a) for a in arrays]
        results = [np.empty(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.outvars]
        lib.f(*(ctypes.c_void_p(a.ctypes.data) for a in [*arrays, *results]))
        return results

    return run


def _primitives(x, m, k):
    """One value of each kind of equation the translator handles, from x (5, 19), m (19, 3)
    and an int32 scalar k."""
    y = jnp.tanh(3 * x)  # float32: XLA's rational approximation
    z = x[1:4, 2:9:3]
    i = jnp.arange(6, dtype=x.dtype)

    def body(carry, row):  # a scan with a constant and a sequence; dynamic_slice on the index
        acc, n = carry
        acc = acc + jax.lax.dynamic_slice(row, (n,), (4,)) * 2.0
        return (acc, n + 1), acc.sum()

    (acc, _), seq = jax.lax.scan(body, (jnp.zeros(4, x.dtype), k), x)
    last, back = jax.lax.scan(lambda c, r: (c * 0.5 + r[:3], c), x[0, :3], x[:, 5:8],
                              reverse=True)
    loop = jax.lax.fori_loop(0, 3, lambda n, v: v * 0.5 + n, x[0])
    return (
        y, jax.nn.sigmoid(x), jnp.exp(-x), jnp.log1p(jnp.abs(x)), jnp.sqrt(jnp.abs(x)),
        jax.lax.rsqrt(1 + x * x), x ** 3, jnp.sign(x), jnp.maximum(x, 0.1), jnp.minimum(x, -0.1),
        jnp.where(x > 0, x, 2 * x), jnp.clip(x, -0.5, 0.5), (x >= 0).astype(x.dtype),
        jnp.power(jnp.abs(x) + 1, 0.7), x.sum(axis=1), x.sum(axis=0), x.max(axis=1),
        x.min(), jnp.prod(x[:, :3], axis=1), x @ m, x.T @ x[:, :2], jnp.einsum("ij,kj->ik", x, x),
        x.T, x.reshape(19, 5), jnp.concatenate([x, -x], axis=0), z,
        jnp.stack([x, -x], axis=1), jnp.stack([x[0], x[2], -x[4]]), jnp.stack([x[0, 1], x[3, 2]]),
        jnp.take(x, jnp.array([[4, 0], [2, 7]]), axis=0),  # mode "fill": 7 is out of bounds
        x[:, jnp.array([18, -1, 0])], jnp.take(x, k + jnp.arange(3), axis=1, mode="clip"),
        jax.lax.dynamic_slice(x, (k, k + 1), (2, 4)),
        jax.lax.dynamic_update_slice(x, -z, (k, k - 1)), i * 2, acc, seq, jnp.floor(x * 3),
        jnp.broadcast_to(x[:, :1], (5, 4)), x.astype(jnp.int32), jnp.cos(x) + jax.lax.erf(x),
        last, back, loop, jnp.fmod(x, 0.7), jnp.arctan2(x, 1.5), jnp.round(x * 2),
        jnp.isfinite(jnp.log(x)), jnp.logical_and(x > 0, x < 1), ~(x > 0.5),
        jax.lax.select_n(jnp.clip(x * 2, 0, 2).astype(jnp.int32), x, -x, 2 * x),
        (jnp.abs(x) * 7).astype(jnp.int32) % 3 + k, jnp.max(jnp.abs(x), axis=1) > 2,
        # values read once are computed in their reader's loop; read otherwise, stored first:
        jnp.exp(x[:1]) + x, jnp.sum(jnp.exp(x) * 2, axis=1), jnp.tanh(x) @ m,
        jax.jit(lambda a: a * a + a)(x * 3),
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_translator_matches_jax_on_every_primitive(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        kx, km = jax.random.split(jax.random.key(0))
        x = np.asarray(jax.random.normal(kx, (5, 19), dtype))
        m = np.asarray(jax.random.normal(km, (19, 3), dtype))
        k = np.int32(2)
        got = _compiled(_primitives, x, m, k)(x, m, np.asarray(k))
        want = jax.jit(_primitives)(x, m, k)
    tol = 2e-6 if dtype == jnp.float32 else 1e-13
    assert len(got) == len(want)
    for n, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, (n, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"output {n}")


def test_a_scan_keeps_what_every_iteration_reads():
    # A computed const and sequence of a scan are read by every iteration: the body must not
    # hand their scratch back after its first read (the GRU-ODE-Bayes fused step's step size).
    def f(x, s):
        scale, seq = s * 2, jnp.tanh(x)

        def body(c, row):
            c = c * 0.5 + scale * row
            return c, c.sum() + 1  # a value born after the last read of scale and row

        return jax.lax.scan(body, jnp.zeros(4, x.dtype), seq)

    x, s = np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4), np.float32(0.7)
    for a, b in zip(_compiled(f, x, s)(x, s), f(x, s), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_an_elementwise_chain_is_one_loop():
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)

    def chain(x):
        y = jnp.tanh(x * 2 + 1) * 3
        return y, jnp.exp(-y)  # y read twice: stored, its chain in one loop, and exp in another

    closed = jax.make_jaxpr(chain)(x)
    assert len(closed.jaxpr.eqns) == 6
    assert _cgen.translate(closed, "f", ["x"], ["y", "z"]).function.count("for (") == 2 + 2
    for a, b in zip(_compiled(chain, x)(x), chain(x), strict=True):  # (+ 2 output copies)
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6)


def test_float32_tanh_is_within_a_few_ulp():
    x = np.concatenate([np.linspace(-12, 12, 20001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, 3e-4, 5e-4, np.inf, -np.inf, np.nan])])
    (got,) = _compiled(jnp.tanh, x)(x)
    exact = np.tanh(x.astype(np.float64))
    finite = np.isfinite(x)
    assert np.max(np.abs(got[finite] - exact[finite])) < 4e-7  # a few ulp of 1
    assert np.all(np.abs(got[:-1]) <= 1)
    assert np.isnan(got[-1]) and list(got[-3:-1]) == [1.0, -1.0]
    np.testing.assert_array_equal(got[np.abs(x) < 4e-4], x[np.abs(x) < 4e-4])


@pytest.mark.parametrize("name", C_CELLS)
def test_c_stepper_streams_like_the_sequence_layer(name):
    rnn = LiquidRNN(_randomise(CELLS[name], jax.random.key(5)))
    step = export.stepper(rnn, backend="c")
    xs, dts = (np.asarray(a) for a in _data())
    ys, hT = _stream(step, xs, dts)
    ys_ref, hT_ref = _call(rnn, jnp.asarray(xs), jnp.asarray(dts))
    np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(step.unflatten_state(hT)),
                    jax.tree_util.tree_leaves(hT_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    ys_xla, _ = _stream(export.stepper(rnn), xs, dts)
    np.testing.assert_allclose(ys, ys_xla, rtol=0, atol=1e-5)
    assert float(jnp.max(jnp.abs(ys_ref[-1] - ys_ref[0]))) > 1e-3  # the state really moves


# Baseline cells whose step has a fixed size: no solve (GRU-D), or a flow in conductance form
# with the fused solver, jump included (their default Tsit5 solve is refused: test_export.py).
C_BASELINES = {
    "gru-ode-bayes-fused": lambda: GRUODEBayes(4, N, integrator=Integrator(ode_unfolds=3),
                                               key=KEY),
    "gru-ode-fused": lambda: GRUODE(4, N, integrator=Integrator(ode_unfolds=3), key=KEY),
    "gru-d": lambda: GRUD(6, N, key=KEY),  # [x | m | delta]
}


@pytest.mark.parametrize("name", list(C_BASELINES))
def test_c_stepper_streams_baseline_cells(name):
    rnn = LiquidRNN(_randomise(C_BASELINES[name](), jax.random.key(5)))
    _, xs, dts = _baseline("gru-ode-bayes")  # [x | m], a step with nothing observed
    if name == "gru-d":
        xs = jnp.concatenate([xs, jnp.abs(xs[:, :2]) + 0.1], axis=1)
    xs, dts = np.asarray(xs), np.asarray(dts)
    ys, hT = _stream(export.stepper(rnn, backend="c"), xs, dts)
    ys_ref, hT_ref = _call(rnn, jnp.asarray(xs), jnp.asarray(dts))
    np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(hT, hT_ref, rtol=0, atol=1e-5)
    assert float(jnp.max(jnp.abs(ys_ref[-1] - ys_ref[0]))) > 1e-3  # the state really moves


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [
    dict(cell="ltc", layers=2, readout="last", ode_unfolds=2),
    dict(cell="cfc", wiring="ncp", units=10, mixed_memory=True, readout="mean"),
    dict(cell="cfc", layers=2, readout="mean", per_step=True),
], ids=["ltc-2layers-last", "wired-mixed-mean", "cfc-per-step"])
def test_c_stepper_classifier_logits(cfg):
    model = build_model(ModelConfig(input_size=I, num_classes=4, backbone_units=5,
                                    **{"units": N, **cfg}), key=KEY)
    model = _randomise(model, jax.random.key(4))
    step = export.stepper(model, backend="c")
    xs, dts = (np.asarray(a) for a in _data())
    logits, _ = _stream(step, xs, dts)
    if model.per_step:
        np.testing.assert_allclose(logits, _call(model, xs, dts), rtol=0, atol=1e-5)
        return
    for k in (1, T):
        np.testing.assert_allclose(logits[k - 1], _call(model, xs[:k], dts[:k]), rtol=0,
                                   atol=1e-5)


@pytest.mark.slow
def test_c_stepper_float64():
    with jax.enable_x64(True):
        cell = _randomise(LTC(I, N, dtype=jnp.float64, key=KEY), jax.random.key(9))
        rnn = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
            LiquidRNN(MixedMemory(cell, key=KEY)))
        step = export.stepper(rnn, backend="c")
        assert step.dtype == np.float64
        xs, dts = (np.asarray(a, np.float64) for a in _data())
        ys, _ = _stream(step, xs, dts)
        ys_ref, _ = _call(rnn, jnp.asarray(xs), jnp.asarray(dts))
        assert ys.dtype == np.float64
        np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=1e-12)


def test_c_stepper_batch_arguments_and_two_steppers_of_one_library():
    cell = _randomise(LTC(I, AutoNCP(12, 3, seed=3), key=KEY), jax.random.key(2))
    rnn = LiquidRNN(cell, eqx.nn.Linear(3, 2, key=jax.random.key(3)))
    a = export.stepper(rnn, batch_shape=(2, 3), backend="c")
    b = export.stepper(rnn, batch_shape=(2, 3), backend="c")
    assert a.source_dir == b.source_dir  # one build, one library: the buffers are re-bound
    xs, dts = (np.asarray(v) for v in _data((2, 3)))
    ys_ref, _ = jax.vmap(jax.vmap(rnn))(xs, dts)
    sa, sb = a.initial_state(), b.initial_state() + 0.0
    for k in range(T):  # interleaved, b one step behind a
        ya, sa = a(sa, xs[..., k, :], dts[..., k])
        if k:
            yb, sb = b(sb, xs[..., k - 1, :], dts[..., k - 1])
            np.testing.assert_allclose(yb, ys_ref[..., k - 1, :], rtol=0, atol=1e-5)
        np.testing.assert_allclose(ya, ys_ref[..., k, :], rtol=0, atol=1e-5)
    assert isinstance(ya, np.ndarray) and ya.shape == (2, 3, 2)


def test_c_stepper_arguments():
    step = export.stepper(CELLS["cfc-default"], backend="c")
    x = np.linspace(-1, 1, I).astype(np.float32)
    y1, s1 = step(step.initial_state(), x, 0.5)
    assert y1 is s1  # a CfC's output is its state: one array, returned twice
    y2, _ = step(np.zeros(step.state_size), list(x), np.array(0.5))  # lists, float64: cast
    np.testing.assert_array_equal(y1, y2)
    y3, _ = step(jnp.zeros(step.state_size), jnp.asarray(x), jnp.float32(0.5))
    np.testing.assert_array_equal(y1, y3)
    np.testing.assert_allclose(y1, export.stepper(CELLS["cfc-default"])(
        step.initial_state(), x, 0.5)[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"CStepper.*takes state \(6,\), x \(3,\).*x \(4,\)"):
        step(step.initial_state(), np.ones(4, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"got state \(6,\), x \(1,\)"):  # not broadcast
        step(step.initial_state(), np.ones(1, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"got state \(6,\), x \(3,\), dt \(2,\)"):
        step(step.initial_state(), x, np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"got state \(5,\)"):
        step(np.zeros(5, np.float32), x, 1.0)
    with pytest.raises(ValueError, match="read-only"):
        step.initial_state()[0] = 1.0  # shared: not writable


def test_c_refuses_what_has_no_fixed_size_naming_the_cell(tmp_path):
    for fn in (lambda m: export.to_c(m, tmp_path), lambda m: export.stepper(m, backend="c")):
        with pytest.raises(ValueError, match=r"cannot generate C for LiquidRNN \(LTC\): its "
                                             r"step contains .*while.*backend='xla'"):
            fn(LiquidRNN(CELLS["ltc-euler"]))
    with pytest.raises(ValueError, match=r"backend must be one of \['c', 'xla'\], got 'C'"):
        export.stepper(CELLS["cfc-pure"], backend="C")
    with pytest.raises(ValueError, match="C identifier"):
        export.to_c(CELLS["cfc-pure"], tmp_path, name="my-policy")
    with jax.enable_x64(False), pytest.raises(ValueError, match="dtype=float64 needs"):
        export.to_c(CELLS["cfc-pure"], tmp_path, dtype=jnp.float64)
    with pytest.raises(_cgen.Unsupported, match="cumsum"):
        _cgen.translate(jax.make_jaxpr(jnp.cumsum)(np.ones(3, np.float32)), "f", ["x"], ["y"])


def test_the_build_cache_keeps_the_recently_used_builds(tmp_path, monkeypatch):
    """Every C/C++ library (the C stepper's, the CPU kernels') is built by liquidjax._clib: a
    build is reused while it exists and marked used; after a new build only the KEEP most
    recently used builds of its stem stay (the others are stale: older sources), each a folder
    with its sources, and no temporary file is left behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_cbuild, "KEEP", 2)

    def build(k):
        return _cbuild.build({"f.c": f"int f(void) {{ return {k}; }}\n"}, "f.c")

    a = build(1)
    os.utime(a, (1, 1))  # as if built long ago
    b = build(2)
    os.utime(b, (2, 2))
    assert build(1) == a  # reused, and now the most recently used
    c = build(3)
    assert a.exists() and c.exists() and not b.parent.exists()
    assert sorted(p.name for p in a.parent.parent.iterdir()) == sorted([a.parent.name,
                                                                       c.parent.name])
    assert (c.parent / "f.c").read_text() == "int f(void) { return 3; }\n"
    assert ctypes.CDLL(str(a)).f() == 1 and ctypes.CDLL(str(c)).f() == 3


def test_c_stepper_without_a_compiler_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built yet
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(RuntimeError, match=r"C compiler.*none was found.*backend='xla'"):
        export.stepper(CELLS["cfc-pure"], backend="c")


_MAIN = r"""
#include <stdio.h>
#include "policy.h"

static const {real} XS[{T}][POLICY_BATCH * POLICY_INPUT_SIZE] = {xs};
static const {real} DTS[{T}][POLICY_BATCH] = {dts};

int main(void)
{{
    {real} state[POLICY_BATCH * POLICY_STATE_SIZE];
    {real} y[POLICY_BATCH * POLICY_OUTPUT_SIZE];
    policy_init_state(state);
    for (int t = 0; t < {T}; ++t) {{
        policy_step(state, XS[t], DTS[t], y, state);  /* the state updated in place */
        for (int i = 0; i < POLICY_BATCH * POLICY_OUTPUT_SIZE; ++i) printf("%.17g ", y[i]);
        printf("\n");
    }}
    return 0;
}}
"""


def _c_array(a) -> str:
    a = np.asarray(a)
    if a.ndim == 0:
        return _cgen.literal(a, a.dtype)
    return "{" + ", ".join(_c_array(v) for v in a) + "}"


def _classifier():
    model = build_model(ModelConfig(input_size=I, num_classes=4, units=10, cell="ltc",
                                    wiring="ncp", readout="mean", ode_unfolds=3), key=KEY)
    return _randomise(model, jax.random.key(8))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on this machine")
@pytest.mark.parametrize("case", ["ltc-classifier-batch2-float32", "mixed-cfc-float64"])
def test_to_c_compiles_alone_with_warnings_as_errors(case, tmp_path):
    f64 = case.endswith("float64")
    with jax.enable_x64(f64):
        if f64:  # a float32 model written as float64 C (to_c's dtype)
            model, bs, dtype, tol = LiquidRNN(_randomise(CELLS["mixed-cfc"], KEY)), (), "f8", 1e-12
        else:
            model, bs, dtype, tol = _classifier(), (2,), None, 1e-5
        man = export.to_c(model, tmp_path, batch_shape=bs, name="policy", dtype=dtype)
        if f64:
            model = jax.tree_util.tree_map(
                lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
        assert man["format"] == "liquidjax.c"
        assert man["functions"]["step"]["symbol"] == "policy_step"
        assert json.loads((tmp_path / "manifest.json").read_text()) == man
        xs, dts = (np.asarray(a, np.float64 if f64 else np.float32) for a in _data((2,)))
        xs, dts = (xs, dts) if bs else (xs[0], dts[0])
        flat_xs = xs.transpose(1, 0, 2).reshape(T, -1) if bs else xs
        (tmp_path / "main.c").write_text(_MAIN.format(
            real="double" if f64 else "float", T=T, xs=_c_array(flat_xs),
            dts=_c_array(dts.T if bs else dts[:, None])))
        cmd = ["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O2", "main.c",
               "policy.c", "-o", "main", "-lm"]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True,
                             check=True)
        got = np.array([[float(v) for v in line.split()] for line in out.stdout.splitlines()])
        if not bs:  # a LiquidRNN: its outputs over the whole sequence
            ys_ref, _ = _call(model, jnp.asarray(xs), jnp.asarray(dts))
            np.testing.assert_allclose(got, ys_ref, rtol=0, atol=tol)
            return
        assert got.shape == (T, 2 * 4)
        for k in (1, T):  # the logits after k observations are the model's on the first k
            ref = jax.vmap(lambda x, d: _call(model, x, d))(xs[:, :k], dts[:, :k])
            np.testing.assert_allclose(got[k - 1].reshape(2, 4), ref, rtol=0, atol=tol)
