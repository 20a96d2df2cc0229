"""CfC, wired CfC and mixed memory against ncps 1.0.1 recordings and their closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax.cells._cfc import ACTIVATIONS, CfC
from liquidjax.cells._lstm import LSTMCell, MixedMemory
from liquidjax.cells._wired_cfc import WiredCfC
from liquidjax.interop._cfc import (
    cfc_from_state_dict,
    cfc_ncps_kwargs,
    cfc_to_state_dict,
    lstm_from_state_dict,
    lstm_to_state_dict,
)
from liquidjax.layers import LiquidRNN
from liquidjax.wirings import AutoNCP

REFS = Path(__file__).parent / "refs" / "ncps"
CASES = {
    "c": "c_cfc_default",
    "d": "d_cfc_pure",
    "e": "e_cfc_no_gate",
    "f": "f_cfc_wired_autoncp",
    "g": "g_cfc_default_ts",
    "h": "h_cfc_mixed_proj_timefirst",
}


def _load(case: str):
    z = np.load(REFS / f"{CASES[case]}.npz")
    return {k: z[k] for k in z.files}, json.loads(str(z["meta_json"]))


def _build(case: str, dtype=np.float32) -> LiquidRNN:
    """The liquidjax model of a recorded case, with the recorded ncps parameters."""
    z, meta = _load(case)
    sd = {k[len("param.") :]: z[k].astype(dtype) for k in z if k.startswith("param.")}
    units = AutoNCP(16, 4) if meta["cfc"]["wired"] else meta["ctor"]["units"]
    cell = cfc_from_state_dict(sd, input_size=5, units=units, mode=meta["cfc"]["mode"])
    if meta["mixed_memory"]:
        cell = MixedMemory(cell, lstm_from_state_dict(sd))
    proj = None
    if "fc.weight" in sd:
        proj = eqx.nn.Linear(16, 3, key=jax.random.key(0))
        proj = eqx.tree_at(
            lambda p: (p.weight, p.bias),
            proj,
            (jnp.asarray(sd["fc.weight"]), jnp.asarray(sd["fc.bias"])),
        )
    return LiquidRNN(cell, proj)


def _batch_major(case: str, z: dict, dtype=np.float32):
    """x (B, L, I) and ts (B, L) whatever the recorded layout."""
    x = z["x"].astype(dtype)
    if case == "h":  # time-major recording
        x = x.transpose(1, 0, 2)
    ts = z["ts"] if "ts" in z else np.ones(x.shape[:2])
    return x, ts.astype(dtype)


def _final_h(state):
    return state[0] if isinstance(state, tuple) else state


@eqx.filter_jit
def _forward(model, x, ts):
    return jax.vmap(model)(x, ts)


@eqx.filter_jit
def _loss_and_grads(model, x, ts, cot_out, cot_h):
    def loss(args):
        model, x, ts = args
        out, state = jax.vmap(model)(x, ts)
        return jnp.sum(out * cot_out) + jnp.sum(_final_h(state) * cot_h), (out, state)

    (value, (out, state)), grads = eqx.filter_value_and_grad(loss, has_aux=True)((model, x, ts))
    return value, out, state, grads  # grads = (model, x, ts)


@pytest.fixture(scope="module")
def recorded():
    """Per case: (model, z, value, out, state, grads), computed once (one compile per case)."""
    cache = {}

    def get(case):
        if case not in cache:
            z, _ = _load(case)
            model = _build(case)
            x, ts = _batch_major(case, z)
            cot_out = z["cot_out"].transpose(1, 0, 2) if case == "h" else z["cot_out"]
            value, out, state, grads = _loss_and_grads(
                model, jnp.asarray(x), jnp.asarray(ts), cot_out, z["cot_h"]
            )
            if case == "h":
                out = np.asarray(out).transpose(1, 0, 2)
            cache[case] = (model, z, value, out, state, grads)
        return cache[case]

    return get


# --- ncps reference recordings -------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_matches_ncps_forward(recorded, case):
    _, z, value, out, state, _ = recorded(case)
    np.testing.assert_allclose(out, z["out"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(_final_h(state), z["h_final"], rtol=0, atol=1e-5)
    if case == "h":
        np.testing.assert_allclose(state[1], z["c_final"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(value, z["loss"], rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_ncps_gradients(recorded, case):
    model, z, _, _, _, (g_model, g_x, g_ts) = recorded(case)
    tol = dict(rtol=1e-3, atol=1e-5)
    g_x = np.asarray(g_x).transpose(1, 0, 2) if case == "h" else g_x
    np.testing.assert_allclose(g_x, z["grad.x"], **tol)
    if "grad.ts" in z:
        np.testing.assert_allclose(g_ts, z["grad.ts"], **tol)
    # Parameter gradients, mapped to ncps names (static parts filled in from the model).
    g_model = eqx.combine(g_model, model)
    cell = g_model.cell
    g = {}
    if isinstance(cell, MixedMemory):
        g.update(lstm_to_state_dict(cell.lstm))
        cell = cell.cell
    g.update(cfc_to_state_dict(cell))
    if g_model.proj is not None:
        g["fc.weight"], g["fc.bias"] = g_model.proj.weight, g_model.proj.bias
    expected = {k[len("grad.") :]: v for k, v in z.items() if k.startswith("grad.")}
    expected.pop("x"), expected.pop("ts", None)
    assert set(expected) <= set(g)
    for name, want in expected.items():
        np.testing.assert_allclose(g[name], want, **tol, err_msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_ncps_float64(case):
    z, _ = _load(case)
    with jax.enable_x64(True):
        model = _build(case, np.float64)
        x, ts = _batch_major(case, z, np.float64)
        out, state = _forward(model, jnp.asarray(x), jnp.asarray(ts))
        assert out.dtype == jnp.float64
        out = np.asarray(out)
        out = out.transpose(1, 0, 2) if case == "h" else out
        np.testing.assert_allclose(out, z["out64"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(_final_h(state), z["h_final64"], rtol=0, atol=1e-10)
        if case == "h":
            np.testing.assert_allclose(state[1], z["c_final64"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip(case):
    z, meta = _load(case)
    sd = {k[len("param.") :]: v for k, v in z.items() if k.startswith("param.")}
    cell = _build(case).cell
    back = {}
    if isinstance(cell, MixedMemory):
        back.update(lstm_to_state_dict(cell.lstm))
        cell = cell.cell
    back.update(cfc_to_state_dict(cell))
    sd.pop("fc.weight", None), sd.pop("fc.bias", None)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
        assert back[k].dtype == np.float32
    assert cfc_ncps_kwargs(cell)["mode"] == meta["cfc"]["mode"]


def test_wiring_masks_match_ncps():
    z, meta = _load("f")
    wiring = AutoNCP(16, 4).build(5)
    np.testing.assert_array_equal(wiring.adjacency_matrix, z["wiring.adjacency"])
    np.testing.assert_array_equal(wiring.sensory_adjacency_matrix, z["wiring.sensory_adjacency"])
    cell = WiredCfC(5, AutoNCP(16, 4), key=jax.random.key(1))
    assert cell.layer_sizes == tuple(meta["cfc"]["layer_sizes"])
    assert cell.neuron_ids == tuple(i for layer in meta["wiring"]["layers"] for i in layer)
    assert (cell.input_size, cell.state_size, cell.output_size) == (5, 16, 4)
    assert cell.wiring == wiring
    for l, mask in enumerate(cell.masks):
        assert mask.dtype == jnp.bool_
        np.testing.assert_array_equal(mask, z[f"param.rnn_cell.layer_{l}.sparsity_mask"] != 0)


def test_wired_masked_weights_get_zero_gradient(recorded):
    model, _, _, _, _, (g_model, _, _) = recorded("f")
    cell, g_cell = model.cell, g_model.cell
    # Masks are boolean: never part of the trainable (inexact) leaves.
    trainable = jax.tree_util.tree_leaves(eqx.filter(cell, eqx.is_inexact_array))
    assert not any(leaf.dtype == jnp.bool_ for leaf in trainable)
    # ... nor leaves at all (static constants), so plain jax.grad over the model works too.
    assert not any(eqx.is_array(leaf) and leaf.dtype == jnp.bool_
                   for leaf in jax.tree_util.tree_leaves(cell))
    some_dense_nonzero = False
    for layer, g_layer in zip(cell.layers, g_cell.layers):
        off = ~np.asarray(layer.sparsity_mask)
        assert off.any()
        for name in ("ff1", "ff2"):
            g_w = np.asarray(getattr(g_layer, name).weight)
            assert np.all(g_w[off] == 0.0), name
            assert np.any(g_w[~off] != 0.0)
        # time_a / time_b are dense, as in ncps.
        some_dense_nonzero |= bool(np.any(np.asarray(g_layer.time_a.weight)[off] != 0.0))
    assert some_dense_nonzero


# --- closed form against an independent NumPy implementation -------------------------------------

_NP_ACT = {
    "lecun_tanh": lambda z: 1.7159 * np.tanh(0.666 * z),
    "silu": lambda z: z * 0.5 * (1.0 + np.tanh(0.5 * z)),
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "gelu": lambda z: 0.5 * z * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0))),
}


def _np_cfc(sd, x, h, dt, mode, activation, p="rnn_cell."):
    """ncps CfCCell.forward in float64 NumPy, read from an ncps-layout state dict."""
    sd = {k[len(p) :]: np.asarray(v, np.float64) for k, v in sd.items()}
    sig = lambda u: 0.5 * (1.0 + np.tanh(0.5 * u))  # noqa: E731  (overflow-free sigmoid)
    lin = lambda name, u: sd[f"{name}.weight"] @ u + sd[f"{name}.bias"]  # noqa: E731
    z = np.concatenate([x, h])
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("backbone.")})
    for i in idx:
        z = _NP_ACT[activation](lin(f"backbone.{i}", z))
    ff1 = lin("ff1", z)
    if mode == "pure":
        a, w_tau = sd["A"][0], sd["w_tau"][0]
        return -a * np.exp(-dt * (np.abs(w_tau) + np.abs(ff1))) * ff1 + a
    ff1, ff2 = np.tanh(ff1), np.tanh(lin("ff2", z))
    t_interp = sig(lin("time_a", z) * dt + lin("time_b", z))
    if mode == "no_gate":
        return ff1 + t_interp * ff2
    return ff1 * (1.0 - t_interp) + t_interp * ff2


@pytest.fixture(scope="module")
def advance_over_dts():
    return eqx.filter_jit(
        jax.vmap(
            lambda cell, h, x, t0, t1: cell.advance(h, x, t0, t1), in_axes=(None, None, None, 0, 0)
        )
    )


_CLOSED_FORM_CASES = [
    ("default", "lecun_tanh", 1),
    ("no_gate", "gelu", 2),
    ("pure", "silu", 0),
    ("default", "relu", 0),
    ("no_gate", "tanh", 1),
    ("pure", "lecun_tanh", 2),
]
assert {a for _, a, _ in _CLOSED_FORM_CASES} == set(ACTIVATIONS)


@pytest.mark.parametrize("mode, activation, layers", _CLOSED_FORM_CASES)
def test_closed_form_any_dt(advance_over_dts, mode, activation, layers):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    cell = CfC(
        3, 4, mode=mode, activation=activation, backbone_units=8, backbone_layers=layers, key=k1
    )
    x = jax.random.normal(k2, (3,))
    h = jax.random.normal(k3, (4,))
    dts = np.array([1e-6, 1e-2, 0.5, 1.0, 7.3, 1e3], np.float32)
    t0 = np.full_like(dts, 2.0)
    got = advance_over_dts(cell, h, x, t0, t0 + dts)
    sd = cfc_to_state_dict(cell)
    for dt, row in zip(dts, np.asarray(got)):
        dt64 = float(np.float32(2.0 + dt) - 2.0)  # the elapsed time t1 - t0 in float32
        want = _np_cfc(sd, np.asarray(x), np.asarray(h), dt64, mode, activation)
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5, err_msg=f"dt={dt}")


def test_backbone_index_layout_with_dropout():
    kwargs = dict(backbone_units=6, backbone_layers=3, backbone_dropout=0.2)
    cell = CfC(3, 4, key=jax.random.key(0), **kwargs)
    sd = cfc_to_state_dict(cell)
    # ncps Sequential: Linear, act, [Linear, act, Dropout] * 2.
    assert sorted({int(k.split(".")[2]) for k in sd if ".backbone." in k}) == [0, 2, 5]
    back = cfc_from_state_dict(sd, input_size=3, units=4, backbone_layers=3, backbone_dropout=0.2)
    expected = dict(mode="default", activation="lecun_tanh", **kwargs)
    assert cfc_ncps_kwargs(back) == cfc_ncps_kwargs(cell) == expected
    for k, v in cfc_to_state_dict(back).items():
        np.testing.assert_array_equal(v, sd[k])


# --- dropout, init, options ----------------------------------------------------------------------


def test_dropout_only_with_key_and_not_in_inference_mode():
    kwargs = dict(backbone_units=32, backbone_dropout=0.5, key=jax.random.key(0))
    cell = CfC(3, 4, backbone_layers=2, **kwargs)
    h, x = jnp.zeros(4), jnp.ones(3)
    step = lambda c, k: c.advance(h, x, 0.0, 1.0, key=k)  # noqa: E731
    plain = step(cell, None)
    k1, k2 = jax.random.split(jax.random.key(1))
    a, b = step(cell, k1), step(cell, k2)
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    np.testing.assert_array_equal(step(cell, k1), a)  # deterministic given the key
    np.testing.assert_array_equal(step(eqx.nn.inference_mode(cell), k1), plain)
    # ncps places dropout after blocks >= 2 only: one block has none.
    one = CfC(3, 4, backbone_layers=1, **kwargs)
    np.testing.assert_array_equal(one.advance(h, x, 0.0, 1.0, key=k1), one.advance(h, x, 0.0, 1.0))


def test_init_distributions():
    cell = CfC(5, 16, mode="pure", key=jax.random.key(0))
    for w in (cell.backbone[0].weight, cell.ff1.weight):
        limit = math.sqrt(6.0 / sum(w.shape))
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    limit = math.sqrt(6.0 / 17)  # ncps Xavier-initialises w_tau, A of shape (1, H)
    for v in (cell.w_tau, cell.A):
        assert v.shape == (16,) and np.abs(v).max() <= limit and np.std(np.asarray(v)) > 0.1
    lstm = LSTMCell(5, 16, key=jax.random.key(0))
    r = np.asarray(lstm.recurrent_map.weight)
    np.testing.assert_allclose(r.T @ r, np.eye(16), atol=1e-5)  # orthogonal columns
    assert lstm.recurrent_map.bias is None
    assert np.abs(lstm.input_map.bias).max() <= 0.1
    assert np.abs(lstm.input_map.weight).max() <= math.sqrt(6.0 / (5 + 64))


def test_invalid_options():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"'fancy'.*'default', 'no_gate', 'pure'"):
        CfC(3, 4, mode="fancy", key=key)  # pyright: ignore
    with pytest.raises(ValueError, match=r"'swish'.*'lecun_tanh'"):
        CfC(3, 4, activation="swish", key=key)
    for kwargs in (dict(backbone_layers=-1), dict(backbone_units=0), dict(backbone_dropout=1.0)):
        with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
            CfC(3, 4, key=key, **kwargs)
    with pytest.raises(ValueError, match="boolean"):
        CfC(3, 4, backbone_layers=0, sparsity_mask=np.ones((4, 7)), key=key)
    with pytest.raises(ValueError, match=r"\(4, 7\)"):
        CfC(3, 4, backbone_layers=0, sparsity_mask=np.ones((4, 6), bool), key=key)
    for kwargs in (dict(backbone_units=8), dict(backbone_layers=1), dict(backbone_dropout=0.1)):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}.*wired"):
            WiredCfC(5, AutoNCP(16, 4), key=key, **kwargs)
    with pytest.raises(ValueError, match="input_dim=5"):
        WiredCfC(3, AutoNCP(16, 4).build(5), key=key)
    with pytest.raises(ValueError, match="'fancy'"):
        WiredCfC(5, AutoNCP(16, 4), mode="fancy", key=key)  # pyright: ignore
    with pytest.raises(ValueError, match="hidden|state_size"):
        MixedMemory(CfC(3, 4, key=key), LSTMCell(3, 5, key=key))
    cell = CfC(3, 4, key=key)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        cell.advance(cell.init_state(), jnp.ones(2), 0.0, 1.0)
    sd = cfc_to_state_dict(CfC(3, 4, mode="pure", key=key))
    with pytest.raises(ValueError, match=r"mode='default'.*missing.*ff2.*unexpected.*w_tau"):
        cfc_from_state_dict(sd, input_size=3, units=4)  # mode mismatch: no ff2 heads
    with pytest.raises(ValueError, match="backbone_layers=2"):
        cfc_from_state_dict(sd, input_size=3, units=4, mode="pure", backbone_layers=2)
    with pytest.raises(ValueError, match="unknown ncps CfC arguments"):
        cfc_from_state_dict(sd, input_size=3, units=4, mode="pure", bogus=1)


# --- transformations ----------------------------------------------------------------------------


def test_no_recompile_when_parameters_change():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(cell, x):
        return cell.output(cell.advance(cell.init_state(), x, 0.0, 0.5))

    x = jnp.ones(5)
    outs = [run(CfC(5, 8, backbone_units=8, key=jax.random.key(i)), x) for i in range(2)]
    assert not np.allclose(outs[0], outs[1])

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run_mixed(cell, x):
        h, c = cell.advance(cell.init_state(), x, 0.0, 0.5)
        return cell.output((h, c)), c

    for i in range(2):
        k1, k2 = jax.random.split(jax.random.key(i))
        wired = MixedMemory(WiredCfC(5, AutoNCP(16, 4), key=k1), key=k2)
        y, c = run_mixed(wired, x)
        assert y.shape == (4,) and c.shape == (16,)


def test_vmap_jit_grad_over_batch_and_time():
    cell = CfC(3, 4, backbone_units=8, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 3))
    dts = jnp.array([0.3, 2.0])

    def loss(cell, x, dt):
        h1 = jax.vmap(lambda xi, di: cell.advance(cell.init_state(), xi, 0.0, di))(x, dt)
        return jnp.sum(h1**2)

    g_cell, g_dt = jax.jit(jax.grad(loss, argnums=(0, 2)))(cell, x, dts)
    # d/d dt against a central difference (float32, smooth function).
    eps = 1e-2
    fd = (loss(cell, x, dts.at[0].add(eps)) - loss(cell, x, dts.at[0].add(-eps))) / (2 * eps)
    np.testing.assert_allclose(g_dt[0], fd, rtol=1e-2, atol=1e-4)
    assert np.any(np.asarray(g_cell.time_a.weight) != 0)
