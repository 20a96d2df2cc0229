"""A model's identity travels with it: wirings are saved, checked on load and drawable; the
integration settings are not parameters (weights load across solvers)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import liquidjax as lj
from liquidjax.train import (
    CheckpointError,
    load_checkpoint,
    read_header,
    restore_model,
    save_checkpoint,
)


def _rnn(seed=1, key=0, **kw):
    return lj.LiquidRNN(lj.LTC(3, lj.AutoNCP(12, 3, seed=seed), key=jax.random.key(key), **kw))


def test_wiring_mismatch_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, _rnn(seed=1), {"step": 1})
    assert read_header(path)["wirings"] == [
        "AutoNCP(units=12, output_size=3, sparsity_level=0.5, seed=1).build(3)"]
    with pytest.raises(CheckpointError, match=r"seed=1\).*seed=2\)"):
        restore_model(path, _rnn(seed=2))
    # the same wiring loads, and gives back the saved weights
    model, _ = restore_model(path, _rnn(seed=1, key=5))
    np.testing.assert_array_equal(model.cell.w, _rnn(seed=1).cell.w)
    # a wired CfC too (its wiring is also part of its identity)
    cfc = lj.LiquidRNN(lj.WiredCfC(3, lj.AutoNCP(12, 3, seed=1), key=jax.random.key(0)))
    p2 = save_checkpoint(tmp_path / "cfc", cfc, {"step": 1})
    other = lj.LiquidRNN(lj.WiredCfC(3, lj.AutoNCP(12, 3, seed=7), key=jax.random.key(0)))
    with pytest.raises(CheckpointError, match="wiring"):
        load_checkpoint(p2, other)


def test_weights_load_across_integrators(tmp_path):
    fused = _rnn()
    pid = diffrax.PIDController(rtol=1e-5, atol=1e-7)
    tsit = eqx.tree_at(lambda r: r.cell, fused,
                       fused.cell.with_solver(diffrax.Tsit5(), stepsize_controller=pid))
    tsit = eqx.tree_at(lambda r: r.cell.w, tsit, tsit.cell.w + 0.25)  # "trained" with Tsit5
    path = save_checkpoint(tmp_path, tsit, {"step": 3})
    loaded, _ = load_checkpoint(path, fused)  # into the fused configuration
    assert loaded.cell.integrator == fused.cell.integrator
    np.testing.assert_array_equal(loaded.cell.w, tsit.cell.w)
    # and back: a fused-trained model into the Tsit5/PID configuration (rtol is a float leaf)
    path2 = save_checkpoint(tmp_path / "b", fused, {"step": 4})
    back, _ = load_checkpoint(path2, tsit)
    assert back.cell.integrator.stepsize_controller.rtol == 1e-5
    np.testing.assert_array_equal(back.cell.w, fused.cell.w)
    x = jnp.ones((4, 3))
    assert bool(jnp.all(jnp.isfinite(back(x)[0])))


def test_plot_wiring_of_a_cell():
    import matplotlib

    matplotlib.use("Agg")
    cell = _rnn().cell
    fig = lj.plot.wiring(cell)
    assert len(fig.axes) >= 1 and len(fig.axes[0].patches) + len(fig.axes[0].collections) > 0
    with pytest.raises(TypeError, match="wired cell"):
        lj.plot.wiring(lj.CfC(3, 4, key=jax.random.key(0)))
    # mixed memory draws its liquid cell's wiring (AbstractCell.connectivity)
    memory = lj.cells.MixedMemory(cell, key=jax.random.key(1))
    assert memory.connectivity is cell.wiring
    assert len(lj.plot.wiring(memory).axes) >= 1
