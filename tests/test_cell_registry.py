"""The cell registry: one table from which ModelConfig's cell kinds and rules, the model
builder's dispatch and the command line's input-layout rule are derived; a user's cell,
registered or named ``module:Class``, builds through ModelConfig and trains from the CLI."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax.cells import AbstractODECell, AbstractPathCell, _registry, cell_kinds, register_cell
from liquidjax.models import CELL_KINDS, ModelConfig, build_model
from liquidjax.train import list_checkpoints, read_header

CELL = "_custom_cell:Leaky"  # tests/_custom_cell.py (pytest puts tests/ on sys.path)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The built-in kinds alone (another test may have registered one), restored after."""
    monkeypatch.setattr(_registry, "_KINDS", {k.name: k for k in _registry._BUILTIN})
    monkeypatch.setattr(_registry, "_IMPORTED", {})


def _cfg(**kw):
    return ModelConfig(**{"input_size": 3, "num_classes": 2, "units": 4, **kw})


def test_model_config_accepts_exactly_the_registry(fresh_registry):
    field = {f.name: f for f in dataclasses.fields(ModelConfig)}["cell"]
    assert field.metadata["liquidjax"]["choices"] == CELL_KINDS == cell_kinds()
    for name in cell_kinds():
        _cfg(cell=name, input_size=6)  # 6: a multiple of every input layout's blocks
    with pytest.raises(ValueError, match="unknown cell 'gru'; expected one of: " +
                       ", ".join(CELL_KINDS) + ", or module.path:ClassName"):
        _cfg(cell="gru")


def test_rules_follow_the_table(fresh_registry):
    """Each kind's flags agree with what its built cell is and what ModelConfig allows."""
    for name in cell_kinds():
        kind = _registry.cell_kind(name)
        cell = build_model(_cfg(cell=name, input_size=6), key=jax.random.key(0)).layers[0].cell
        assert kind.path == isinstance(cell, (AbstractODECell, AbstractPathCell)), name
        for solver, allowed in (("euler", kind.solver), ("fused", kind.fused)):
            if allowed:
                _cfg(cell=name, input_size=6, solver=solver)
            else:
                with pytest.raises(ValueError):
                    _cfg(cell=name, input_size=6, solver=solver)
        if not kind.wired:
            with pytest.raises(ValueError, match="applies to cfc and ltc cells only"):
                _cfg(cell=name, input_size=6, wiring="random")
    assert _registry.solver_cells() == ("ltc", "ctrnn", "gruode", "gruode_bayes", "odernn", "ncde")
    assert _registry.path_cells() == ("ltc", "ctrnn", "gruode", "ncde")
    assert _registry.fused_cells() == ("ltc", "gruode", "gruode_bayes")


def test_input_layouts_one_rule():
    assert _registry.missing_mode_error("cfc", "path") is None
    assert _registry.missing_mode_error("grud", "features") is None
    assert _registry.missing_mode_error("gruode_bayes", "path") is None
    msg = _registry.missing_mode_error("grud", "path")
    assert msg == ("--cell grud reads [x~ | m | delta] blocks (liquidjax.data."
                   "missing_value_features): use --missing features (got --missing path)")
    assert "use --missing path" in _registry.missing_mode_error("gruode_bayes", "features")
    # The cell, ModelConfig and the registry state the layout once: the same message.
    from liquidjax.cells import GRUD

    with pytest.raises(ValueError, match="3 × channels, a multiple of 3; got 4") as a:
        GRUD(4, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="3 × channels, a multiple of 3; got 4") as b:
        _cfg(cell="grud", input_size=4)
    assert str(a.value).split(" reads ")[1] == str(b.value).split(" reads ")[1]


def _euler_reference(cell, head, xs, dts):
    w, u = np.asarray(cell.w, np.float64), np.asarray(cell.u, np.float64)
    h = np.zeros(w.shape[0])
    for x, dt in zip(xs, dts):
        h = h + dt * (-h + np.tanh(w @ x + u @ h))
    return np.asarray(head.weight, np.float64) @ h + np.asarray(head.bias, np.float64)


@pytest.mark.parametrize("how", ["module:Class", "registered"])
def test_a_user_cell_builds_from_model_config(how, fresh_registry):
    from _custom_cell import Leaky

    name = CELL
    if how == "registered":
        kind = register_cell("leaky", Leaky)
        assert "leaky" in cell_kinds() and kind.solver and kind.path and not kind.fused
        name = "leaky"
    cfg = _cfg(cell=name, solver="euler", ode_unfolds=1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # a checkpoint's header names it again
    model = build_model(cfg, key=jax.random.key(1))
    cell = model.layers[0].cell
    assert type(cell) is Leaky and cell.input_size == 3 and cell.state_size == 4
    xs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    dts = np.array([0.3, 0.1, 0.5, 0.2, 0.4], np.float32)
    got = model(jnp.asarray(xs), jnp.asarray(dts))
    np.testing.assert_allclose(got, _euler_reference(cell, model.head, xs, dts),
                               rtol=1e-5, atol=1e-5)  # the config's solver reached the cell
    with pytest.raises(ValueError, match="conductance form"):
        _cfg(cell=name, solver="fused")
    with pytest.raises(ValueError, match="cells only"):
        _cfg(cell=name, wiring="ncp", units=8)


@pytest.mark.parametrize("value, match", [
    ("no_such_module_xyz:Cell", "cannot import module 'no_such_module_xyz'"),
    ("_custom_cell:Missing", "module '_custom_cell' has no 'Missing'"),
    ("_custom_cell:NOT_A_CLASS", "is not a class"),
    ("_custom_cell:jax", "is not a class"),
    ("liquidjax.cells:LSTMCell", "is not a subclass of liquidjax.cells.AbstractCell"),
    ("_custom_cell:NoKey", r"must be callable as .*\(input_size, units, \*, key\)"),
    ("_custom_cell:", "expected module.path:ClassName"),
])
def test_a_bad_cell_is_one_clear_line(value, match, fresh_registry):
    with pytest.raises(ValueError, match=match) as e:
        _cfg(cell=value)
    assert "\n" not in str(e.value)


def test_register_cell_refuses(fresh_registry):
    from _custom_cell import Leaky

    with pytest.raises(ValueError, match="built-in cell kind"):
        register_cell("ltc", Leaky)
    with pytest.raises(ValueError, match="lower-case identifier"):
        register_cell("My Cell", Leaky)
    with pytest.raises(ValueError, match="takes no integrator"):
        register_cell("f", lambda input_size, units, *, key: Leaky(input_size, units, key=key),
                      solver=True)


def test_a_user_cell_trains_from_the_cli(tmp_path, capsys):
    from liquidjax.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", "irregular_sine", "--cell", CELL, "--solver", "euler",
                 "--ode-unfolds", "1", "--units", "4", "--batch-size", "8",
                 "--limit-examples", "16", "--epochs", "1", "--max-steps", "2",
                 "--progress", "plain", "--out-dir", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    header = read_header(list_checkpoints(out / "checkpoints")[-1])
    assert header["model_config"]["cell"] == CELL
    assert header["model_config"]["solver"] == "euler"


def test_a_bad_cli_cell_is_a_usage_error(capsys):
    from liquidjax.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--cell", "_custom_cell:NOT_A_CLASS"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--cell" in err and "is not a class" in err and "Traceback" not in err
