"""Implicit solvers (Kvaerno3/5) in float32: the Newton set-up of ``with_root_finder_tols``
for constant steps (issue 13: the CLI's kvaerno runs failed in the nonlinear solver), and a
model with one that trains and evaluates."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from liquidjax.cells import LTC
from liquidjax.solvers import with_root_finder_tols


def test_root_finder_setup_per_dtype_and_controller():
    pid, const = diffrax.PIDController(rtol=1e-5, atol=1e-5), diffrax.ConstantStepSize()
    s = with_root_finder_tols(diffrax.Kvaerno5(), const, jnp.float32)
    assert isinstance(s.root_finder, optx.Newton)
    assert (s.root_finder.rtol, s.root_finder.atol) == (1e-3, 1e-5)
    assert s.root_find_max_steps == 20
    s = with_root_finder_tols(diffrax.Kvaerno3(), const, jnp.float64)
    assert (s.root_finder.rtol, s.root_finder.atol) == (1e-8, 1e-10)
    for dtype in (jnp.float32, jnp.float64):  # adaptive: diffrax's own set-up
        default = diffrax.Kvaerno5()
        assert with_root_finder_tols(default, pid, dtype) is default
    own = diffrax.Kvaerno5(root_finder=optx.Newton(rtol=1e-2, atol=1e-2))
    assert with_root_finder_tols(own, const, jnp.float32) is own  # the user's choice stands
    tsit5 = diffrax.Tsit5()
    assert with_root_finder_tols(tsit5, const, jnp.float32) is tsit5


@pytest.mark.parametrize("solver", [diffrax.Kvaerno3(), diffrax.Kvaerno5()])
def test_float32_implicit_constant_steps_match_reference(solver):
    """Float32 Kvaerno with constant steps (the CLI's default controller) converges in every
    step and matches an explicit solve at a tight tolerance."""
    cell = LTC(2, 16, key=jax.random.key(0)).with_solver(solver, ode_unfolds=6)
    x = jnp.array([0.7, -0.4])
    y = cell.advance(cell.init_state(), x, 0.0, 1.0)
    ref = cell.with_solver(diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(
        rtol=1e-7, atol=1e-7)).advance(cell.init_state(), x, 0.0, 1.0)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, atol=2e-3)
    assert not np.allclose(ref, cell.init_state())


@pytest.mark.slow
def test_kvaerno_model_trains_and_evaluates():
    """`--solver kvaerno5` end to end at library level: a training step and an evaluation
    (the evaluation once failed on the solver's non-array root-finder settings)."""
    from liquidjax.models import ModelConfig, build_model
    from liquidjax.train import ArrayData, TrainConfig, evaluate, fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    cfg = ModelConfig(input_size=2, num_classes=2, cell="ltc", solver="kvaerno5", units=4)
    res = fit(build_model(cfg, key=jax.random.key(0)), ArrayData(x, y),
              TrainConfig(epochs=1, batch_size=8), progress="none",
              parallel=None)
    ev = evaluate(res.model, ArrayData(x, y), batch_size=8)
    assert np.isfinite(ev["loss"]) and ev["count"] == 8
