"""LTC: ncps reference case, fused kernel vs diffrax, convergence against scipy, adjoints."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_ref
from scipy.integrate import solve_ivp

from liquidjax.cells import LTC, project_nonnegative
from liquidjax.interop.ncps import from_ncps, to_ncps
from liquidjax.layers import LiquidRNN
from liquidjax.solvers import FusedSemiImplicit, count_vf_evals, solver_from_name
from liquidjax.wirings import AutoNCP

REF = load_ref("a_ltc_fc8")


def _ref_loss(model, x):
    out, h = jax.vmap(model)(x)
    return jnp.sum(out * REF["cot_out"]) + jnp.sum(h * REF["cot_h"])


# ------------------------------------------------------------------------------- ncps reference
@pytest.fixture(scope="module")
def ref_model():
    return from_ncps(REF["params"], kind="ltc", input_size=5, units=8)


def test_ref_forward_float32(ref_model):
    out, h = jax.jit(jax.vmap(ref_model))(jnp.asarray(REF["x"]))
    np.testing.assert_allclose(out, REF["out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(h, REF["h_final"], atol=1e-5, rtol=0)


def test_ref_forward_float64():
    with jax.enable_x64(True):
        model = from_ncps(REF["params"], kind="ltc", input_size=5, units=8)
        assert model.cell.w.dtype == jnp.float64
        out, h = jax.vmap(model)(jnp.asarray(REF["x"], jnp.float64))
        np.testing.assert_allclose(out, REF["out64"], atol=1e-10, rtol=0)
        np.testing.assert_allclose(h, REF["h_final64"], atol=1e-10, rtol=0)


def test_ref_gradients(ref_model):
    x = jnp.asarray(REF["x"])
    loss, (g_model, g_x) = eqx.filter_jit(eqx.filter_value_and_grad(
        lambda mx: _ref_loss(*mx)))((ref_model, x))
    np.testing.assert_allclose(loss, REF["loss"], rtol=1e-5)
    np.testing.assert_allclose(g_x, REF["grad.x"], rtol=1e-3, atol=1e-5)
    names = [k[len("grad.rnn_cell."):] for k in REF if k.startswith("grad.rnn_cell.")]
    assert len(names) == 15
    for name in names:
        np.testing.assert_allclose(getattr(g_model.cell, name), REF[f"grad.rnn_cell.{name}"],
                                   rtol=1e-3, atol=1e-5, err_msg=name)


def test_to_ncps_roundtrip(ref_model):
    sd = to_ncps(ref_model)
    assert set(sd) == set(REF["params"])
    for k, v in REF["params"].items():
        np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_from_ncps_rejects_bad_state_dict():
    sd = dict(REF["params"])
    sd["rnn_cell.w"] = sd["rnn_cell.w"][:, :3]
    with pytest.raises(ValueError, match=r"rnn_cell\.w.*shape \(8, 3\).*expected \(8, 8\)"):
        from_ncps(sd, kind="ltc", input_size=5, units=8)
    with pytest.raises(ValueError, match="kind must be"):
        from_ncps(REF["params"], kind="gru", input_size=5, units=8)
    with pytest.raises(ValueError, match="unknown ncps LTC arguments"):
        from_ncps(REF["params"], kind="ltc", input_size=5, units=8, mode="pure")


# --------------------------------------------------------------- fused kernel vs diffrax solve
def _small_cell(key=0, **kw):
    return LTC(3, AutoNCP(8, 2), key=jax.random.key(key), **kw)


def test_fused_kernel_matches_diffrax_fused_solver():
    """The fast path (custom-VJP kernel) and diffeqsolve with FusedSemiImplicit agree, values and
    gradients with respect to parameters, input, state and elapsed time."""
    cell = _small_cell()
    assert cell.uses_fused_kernel
    x = jnp.array([0.3, -1.2, 0.8])
    v0 = jnp.linspace(-0.3, 0.4, 8)

    def fast(c, x, v0, dt):
        return jnp.sum(jnp.sin(3 * c.advance(v0, x, 0.0, dt)))

    def general(c, x, v0, dt):
        return jnp.sum(jnp.sin(3 * c.solve(v0, x, 0.0, dt).ys[-1]))

    for dt in (0.3, 1.0, 2.5):
        a = eqx.filter_value_and_grad(fast)(cell, x, v0, dt)
        b = eqx.filter_value_and_grad(general)(cell, x, v0, dt)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
        for ga, gb in zip(jax.tree_util.tree_leaves(a[1]), jax.tree_util.tree_leaves(b[1])):
            np.testing.assert_allclose(ga, gb, rtol=2e-4, atol=1e-6)
        gx = jax.grad(fast, argnums=(1, 2, 3))(cell, x, v0, dt)
        gy = jax.grad(general, argnums=(1, 2, 3))(cell, x, v0, dt)
        for ga, gb in zip(gx, gy):
            np.testing.assert_allclose(ga, gb, rtol=2e-4, atol=1e-6)


def test_kernel_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        cell = _small_cell(dtype=jnp.float64)
        x = jnp.array([0.3, -1.2, 0.8])
        v0 = jnp.linspace(-0.3, 0.4, 8)

        def f(c, dt):
            return jnp.sum(jnp.cos(2 * c.advance(v0, x, 0.0, dt)))

        g_cell, g_dt = jax.grad(f, argnums=(0, 1))(cell, 0.7)
        rng = np.random.default_rng(0)
        for name in ("w", "sigma", "mu", "erev", "sensory_w", "sensory_mu", "cm", "gleak"):
            arr = getattr(cell, name)
            idx = tuple(int(rng.integers(s)) for s in arr.shape)
            if name in ("w", "sigma", "mu", "erev") and not cell.mask.array[idx]:
                idx = tuple(int(i) for i in np.argwhere(cell.mask.array)[0])
            eps = 1e-6

            def bump(d, name=name, idx=idx):
                return eqx.tree_at(lambda c: getattr(c, name), cell,
                                   getattr(cell, name).at[idx].add(d))

            fd = (f(bump(eps), 0.7) - f(bump(-eps), 0.7)) / (2 * eps)
            np.testing.assert_allclose(getattr(g_cell, name)[idx], fd, rtol=1e-6, atol=1e-9,
                                       err_msg=name)
        fd = (f(cell, 0.7 + 1e-6) - f(cell, 0.7 - 1e-6)) / 2e-6
        np.testing.assert_allclose(g_dt, fd, rtol=1e-6)


# --------------------------------------------------------------- against an independent solver
def _scipy_reference(cell, x, v0, t1):
    f = jax.jit(lambda y: cell.vector_field(0.0, y, x))
    jac = jax.jit(jax.jacfwd(lambda y: cell.vector_field(0.0, y, x)))
    sol = solve_ivp(lambda t, y: np.asarray(f(jnp.asarray(y))), (0.0, t1), np.asarray(v0),
                    method="Radau", rtol=1e-12, atol=1e-14,
                    jac=lambda t, y: np.asarray(jac(jnp.asarray(y))))
    return sol.y[:, -1]


@pytest.fixture(scope="module")
def stiffish():
    """A float64 LTC, one observation interval, and its tight Radau solution."""
    with jax.enable_x64(True):
        cell = LTC(3, 6, key=jax.random.key(3), dtype=jnp.float64)
        x = jnp.array([0.5, -0.7, 1.1])
        v0 = jnp.linspace(-0.2, 0.3, 6)
        return cell, x, v0, _scipy_reference(cell, x, v0, 1.0)


def _order(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.parametrize("solver", ["fused", "euler"])
def test_first_order_convergence(stiffish, solver):
    cell, x, v0, exact = stiffish
    ns = [16, 32, 64, 128]
    with jax.enable_x64(True):
        errs = []
        for n in ns:
            c = cell.with_solver(solver_from_name(solver), ode_unfolds=n)
            errs.append(float(jnp.max(jnp.abs(c.solve(v0, x, 0.0, 1.0).ys[-1] - exact))))
    assert errs[-1] < 1e-2, errs
    assert 0.9 < _order(ns, errs) < 1.1, errs


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5"])
def test_adaptive_solvers_match_radau(stiffish, solver):
    cell, x, v0, exact = stiffish
    with jax.enable_x64(True):
        c = cell.with_solver(solver_from_name(solver),
                             stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12))
        got = c.advance(v0, x, 0.0, 1.0)
        assert not c.uses_fused_kernel
    np.testing.assert_allclose(got, exact, atol=1e-6, rtol=0)


def test_heun_midpoint_second_order(stiffish):
    cell, x, v0, exact = stiffish
    ns = [16, 32, 64]
    with jax.enable_x64(True):
        for name in ("heun", "midpoint"):
            errs = []
            for n in ns:
                c = cell.with_solver(solver_from_name(name), ode_unfolds=n)
                errs.append(float(jnp.max(jnp.abs(c.solve(v0, x, 0.0, 1.0).ys[-1] - exact))))
            assert 1.8 < _order(ns, errs) < 2.2, (name, errs)


def test_max_steps_error_is_clear():
    cell = _small_cell(solver=diffrax.Tsit5(),
                       stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-9),
                       max_steps=3)
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.block_until_ready(cell.advance(cell.init_state(), jnp.ones(3), 0.0, 5.0))


def test_backsolve_adjoint_matches_checkpointed():
    base = _small_cell(solver=diffrax.Tsit5(),
                       stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9))
    back = base.with_solver(adjoint=diffrax.BacksolveAdjoint(
        solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9)))
    xs = jnp.sin(jnp.arange(12.0)).reshape(4, 3)

    def loss(cell):
        ys, _ = LiquidRNN(cell)(xs)
        return jnp.sum(ys**2)

    g1 = eqx.filter_grad(loss)(base)
    g2 = eqx.filter_grad(loss)(back)
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(g1, eqx.is_inexact_array)),
                    jax.tree_util.tree_leaves(eqx.filter(g2, eqx.is_inexact_array))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_count_vf_evals():
    cell = _small_cell(solver=diffrax.Euler(), ode_unfolds=7)
    x = jnp.ones(3)
    _, n = count_vf_evals(lambda c: c.advance(c.init_state(), x, 0.0, 1.0), cell)
    assert n == 7
    fused = _small_cell(ode_unfolds=5)
    _, n = count_vf_evals(lambda c: c.solve(c.init_state(), x, 0.0, 1.0).ys, fused)
    assert n == 5


def test_fused_step_stays_bounded_where_euler_explodes():
    """Large conductances make the ODE stiff: explicit Euler with 6 steps diverges, the fused
    semi-implicit step stays inside the range of the reversal potentials (ncps's motivation)."""
    cell = _small_cell()
    cell = eqx.tree_at(lambda c: (c.w, c.cm), cell, (cell.w + 20.0, jnp.full(8, -3.0)))
    x, v0 = jnp.ones(3), jnp.zeros(8)
    fused = cell.advance(v0, x, 0.0, 1.0)
    euler = cell.with_solver(diffrax.Euler()).advance(v0, x, 0.0, 1.0)
    assert jnp.all(jnp.abs(fused) <= 1.0 + 1e-5)
    assert not jnp.all(jnp.abs(euler) <= 1.0 + 1e-5)


def test_positivity_projection():
    cell = LTC(3, 4, key=jax.random.key(0), implicit_param_constraints=False)
    cell = eqx.tree_at(lambda c: (c.w, c.vleak), cell, (cell.w - 2.0, cell.vleak - 2.0))
    fixed = project_nonnegative(cell)
    assert jnp.all(fixed.w >= 0) and jnp.any(cell.w < 0)
    np.testing.assert_array_equal(fixed.vleak, cell.vleak)  # vleak is not constrained


def test_masks_are_not_trainable():
    cell = _small_cell()
    assert not cell.mask.array.all()  # AutoNCP is sparse
    # Masks are static configuration: not leaves, so no gradient or optimiser ever sees them, and
    # plain jax.grad over the whole cell works.
    assert all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree_util.tree_leaves(cell)
               if eqx.is_array(leaf))
    g = jax.grad(lambda c: jnp.sum(c.advance(c.init_state(), jnp.ones(3), 0.0, 1.0)))(cell)
    assert jnp.all(jnp.where(cell.mask.array, 0.0, g.w) == 0)
    assert jnp.all(jnp.where(cell.mask.array, g.w, 1.0) != 0)


def test_invalid_configuration_errors():
    with pytest.raises(ValueError, match="input_mapping"):
        LTC(3, 4, key=jax.random.key(0), input_mapping="cubic")
    with pytest.raises(ValueError, match="ode_unfolds"):
        LTC(3, 4, key=jax.random.key(0), ode_unfolds=0)
    with pytest.raises(ValueError, match="input_size"):
        LTC(0, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown solver 'rk99'.*tsit5"):
        solver_from_name("rk99")
    assert isinstance(solver_from_name("FUSED"), FusedSemiImplicit)


def test_nonnegative_projection_in_optax_chain():
    import optax

    from liquidjax import nonnegative_projection

    cell = LTC(3, 4, key=jax.random.key(0), implicit_param_constraints=False)
    params = eqx.filter(cell, eqx.is_inexact_array)
    opt = optax.chain(optax.sgd(10.0), nonnegative_projection())
    state = opt.init(params)
    # A gradient that pushes every parameter up: SGD then drives them far below zero.
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, state = opt.update(grads, state, params)
    new = eqx.apply_updates(cell, updates)
    for name in ("w", "sensory_w", "cm", "gleak"):
        assert jnp.all(getattr(new, name) == 0), name  # clipped exactly at zero
    np.testing.assert_allclose(new.vleak, cell.vleak - 10.0, rtol=1e-6)  # unconstrained
    np.testing.assert_allclose(new.sigma, cell.sigma - 10.0, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the current parameters"):
        opt.update(grads, state)


def test_implicit_solver_with_constant_steps(stiffish):
    """Kvaerno5 / ImplicitEuler need Newton tolerances under constant steps: they get them."""
    cell, x, v0, exact = stiffish
    with jax.enable_x64(True):
        errs = {}
        for name in ("kvaerno5", "implicit_euler"):
            for n in (4, 16):
                c = cell.with_solver(solver_from_name(name), ode_unfolds=n)
                errs[name, n] = float(jnp.max(jnp.abs(c.advance(v0, x, 0.0, 1.0) - exact)))
    assert errs["kvaerno5", 16] < 1e-6, errs
    assert errs["implicit_euler", 16] < errs["implicit_euler", 4] < 0.1, errs
    f32 = LTC(3, 6, key=jax.random.key(3)).with_solver(solver_from_name("kvaerno5"))
    assert jnp.all(jnp.isfinite(f32.advance(f32.init_state(), jnp.ones(3), 0.0, 1.0)))
