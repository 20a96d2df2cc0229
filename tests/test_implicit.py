"""Implicit solvers (Kvaerno3/5) in float32: the Newton set-up of ``with_root_finder_tols``
(issue 13: diffrax's default chord iteration at the controller's tolerance rejected about half
of Kvaerno5's steps on an LTC and could exhaust max_steps where Tsit5 succeeded)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from liquidjax.cells import LTC
from liquidjax.solvers import make_term, with_root_finder_tols


def test_root_finder_setup_per_dtype_and_controller():
    pid, const = diffrax.PIDController(rtol=1e-5, atol=1e-5), diffrax.ConstantStepSize()
    for ctrl in (pid, const):
        s = with_root_finder_tols(diffrax.Kvaerno5(), ctrl, jnp.float32)
        assert isinstance(s.root_finder, optx.Newton)
        assert (s.root_finder.rtol, s.root_finder.atol) == (1e-3, 1e-5)
        assert s.root_find_max_steps == 20
    s = with_root_finder_tols(diffrax.Kvaerno3(), const, jnp.float64)
    assert (s.root_finder.rtol, s.root_finder.atol) == (1e-8, 1e-10)
    default = diffrax.Kvaerno5()
    assert with_root_finder_tols(default, pid, jnp.float64) is default  # diffrax's own set-up
    own = diffrax.Kvaerno5(root_finder=optx.Newton(rtol=1e-2, atol=1e-2))
    assert with_root_finder_tols(own, pid, jnp.float32) is own  # the user's choice stands
    tsit5 = diffrax.Tsit5()
    assert with_root_finder_tols(tsit5, pid, jnp.float32) is tsit5


@pytest.mark.parametrize("solver", [diffrax.Kvaerno3(), diffrax.Kvaerno5()])
def test_float32_implicit_solve_accepts_its_steps(solver):
    """A float32 LTC under PIDController(1e-5): with the Newton set-up few steps are rejected
    and the answer matches a tight float64 solve; diffrax's default set-up rejects many more."""
    cell = LTC(2, 16, key=jax.random.key(0))
    x = jnp.array([0.7, -0.4])
    pid = diffrax.PIDController(rtol=1e-5, atol=1e-5)

    def run(s, dtype, ctrl):
        sol = diffrax.diffeqsolve(make_term(cell), s, 0.0, 1.0, 1 / 6, jnp.zeros(16, dtype),
                                  x.astype(dtype), stepsize_controller=ctrl, max_steps=4096)
        return np.asarray(sol.ys[-1], np.float64), int(sol.stats["num_accepted_steps"]), \
            int(sol.stats["num_rejected_steps"])

    y, acc, rej = run(with_root_finder_tols(solver, pid, jnp.float32), jnp.float32, pid)
    ref, _, _ = run(diffrax.Tsit5(), jnp.float32, diffrax.PIDController(rtol=1e-7, atol=1e-7))
    np.testing.assert_allclose(y, ref, atol=2e-4)
    _, acc0, rej0 = run(solver, jnp.float32, pid)
    assert rej <= acc / 2, (acc, rej)
    assert acc + rej <= acc0 + rej0, ((acc, rej), (acc0, rej0))


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
