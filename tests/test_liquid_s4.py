"""Liquid-S4: convolution mode held to the step-by-step recurrence, both to independent NumPy
recurrences written from the equations (plain S4D as a direct convolution), gradients to finite
differences, the stack through LiquidRNN and the streaming stepper, the parameter groups."""

import re
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import liquidjax as lj
from liquidjax.cells import LiquidS4, LiquidS4Stack, scan_advance
from liquidjax.models import liquid_s4_classifier, ssm_labels, ssm_param_groups

DOC = Path(__file__).parent.parent / "docs" / "liquid_s4.md"
# (liquid_order, liquid_kernel, discretisation): every kernel, both discretisations, orders 0-3
CASES = [(0, "pb", "zoh"), (2, "pb", "zoh"), (2, "kb", "bilinear"), (3, "kb", "zoh"),
         (3, "pb", "bilinear")]


def _layer(order, kernel, disc, dtype, h=3, n=4, seed=0):
    return LiquidS4(h, n, liquid_order=order, liquid_kernel=kernel, discretisation=disc,
                    dt_min=0.05, dt_max=0.5, dtype=dtype, key=jax.random.key(seed))


def _perturbed(layer, seed=7):
    """Random A, B, C off their structured initialisation (so no test rests on B = 1)."""
    def bump(a, k):
        return a + 0.2 * jax.random.normal(k, a.shape, a.dtype)
    keys = jax.random.split(jax.random.key(seed), 4)
    return eqx.tree_at(lambda m: (m.a_im, m.b_re, m.b_im, m.c_im), layer,
                       (bump(layer.a_im, keys[0]), bump(layer.b_re, keys[1]),
                        bump(layer.b_im, keys[2]), bump(layer.c_im, keys[3])))


def _max_err(a, b):
    return max(float(jnp.max(jnp.abs(p - q)))
               for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _scale(tree):
    return max(1.0, max(float(jnp.max(jnp.abs(p))) for p in jax.tree_util.tree_leaves(tree)))


# ------------------------------------------------------------------------ NumPy references
def _np_discrete(layer, tau):
    a = -np.exp(np.asarray(layer.a_log, np.float64)) + 1j * np.asarray(layer.a_im, np.float64)
    b = np.asarray(layer.b_re, np.float64) + 1j * np.asarray(layer.b_im, np.float64)
    step = np.exp(np.asarray(layer.log_dt, np.float64)) * tau
    da = step[:, None] * a
    if layer.discretisation == "zoh":
        abar = np.exp(da)
        return abar, (abar - 1) / a * b
    return (1 + da / 2) / (1 - da / 2), step[:, None] * b / (1 - da / 2)


def _np_liquid_s4(layer, u, taus):
    """The Liquid-S4 recurrence from its equations, one step at a time, from rest."""
    u = np.asarray(u, np.float64)
    c = np.asarray(layer.c_re, np.float64) + 1j * np.asarray(layer.c_im, np.float64)
    d = np.asarray(layer.d, np.float64)
    x = np.zeros(c.shape, complex)
    ys = []
    for k in range(len(u)):
        abar, bbar = _np_discrete(layer, taus[k])
        s = np.sum(bbar, axis=-1) + np.sum(np.conj(bbar), axis=-1)  # 1ᵀB̄ over all N states
        ell = np.zeros(u.shape[1])
        for p in range(2, layer.liquid_order + 1):
            prod = np.prod([u[k - i] if k - i >= 0 else np.zeros(u.shape[1]) for i in range(p)],
                           axis=0)
            ell = ell + s.real ** (p - 1) * prod
        if layer.liquid_kernel == "kb":
            x = abar * x + bbar * (u[k] + ell)[:, None]
            y = 2 * np.sum(c * x, axis=-1).real + d * u[k]
        else:
            x = abar * x + bbar * u[k][:, None]
            y = 2 * np.sum(c * x, axis=-1).real + d * u[k] + 2 * np.sum(c * bbar, -1).real * ell
        ys.append(y)
    return np.stack(ys)


def _np_s4d_convolution(layer, u):
    """Plain S4D written as a direct convolution with K_j = 2 Re Σ C Āʲ B̄ (powers, no FFT)."""
    u = np.asarray(u, np.float64)
    abar, bbar = _np_discrete(layer, 1.0)
    c = np.asarray(layer.c_re, np.float64) + 1j * np.asarray(layer.c_im, np.float64)
    t = len(u)
    kernel = np.stack([2 * np.sum(c * bbar * abar ** j, axis=-1).real for j in range(t)])  # (T, H)
    y = np.stack([sum(kernel[j] * u[k - j] for j in range(k + 1)) for k in range(t)])
    return y + np.asarray(layer.d, np.float64) * u, kernel


# ------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_convolution_mode_equals_recurrence(dtype):
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    with jax.enable_x64(dtype == jnp.float64):
        u = jax.random.normal(jax.random.key(1), (13, 3), dtype)
        for order, kernel, disc in CASES if dtype == jnp.float64 else CASES[:3]:
            layer = _perturbed(_layer(order, kernel, disc, dtype))
            # a non-zero initial state: a stream continued from an earlier call
            s0 = jax.tree_util.tree_map(
                lambda a: 0.3 * jax.random.normal(jax.random.key(2), a.shape, dtype),
                layer.init_state())
            ref = scan_advance(layer, s0, u, None)
            got = layer.advance_sequence(s0, u, None)
            final = layer.advance_sequence(s0, u, None, last=True)
            assert got.y.dtype == dtype and final.re.dtype == dtype
            scale = _scale(ref)
            assert _max_err(ref, got) <= tol * scale, (order, kernel, disc)
            last = jax.tree_util.tree_map(lambda a: a[-1], ref)
            assert _max_err(last, final) <= tol * scale, (order, kernel, disc)
            assert float(jnp.max(jnp.abs(ref.y))) > 0.5  # not vacuous
            if (order, kernel, disc) == CASES[2]:  # the "pb" zoh stack streams below
                # a fixed-rate stepper (Ā, B̄ folded once): the same numbers, dt omitted
                step = lj.export.stepper(layer, dt=1.0)
                flat, ys = step.flatten_state(s0), []
                for k in range(len(u)):
                    y, flat = step(flat, np.asarray(u[k]))
                    ys.append(np.asarray(y))
                assert np.max(np.abs(np.stack(ys) - got.y)) <= tol * scale, (order, kernel, disc)
                assert _max_err(step.unflatten_state(flat), final) <= tol * scale


def test_fixed_dt_step_does_no_discretisation():
    """What a fixed-rate stepper runs per step: no transcendental, no division (Ā, B̄ folded),
    where the per-step-dt step computes them; the arithmetic left is the diagonal update."""
    from liquidjax.export._fold import _folded
    from liquidjax.export._step import _plan, _step_specs

    layer = _perturbed(_layer(2, "pb", "zoh", jnp.float32))

    def primitives(dt):
        plan = _plan(layer, dt=dt)
        specs = _step_specs(plan, ())
        jaxpr = jax.make_jaxpr(_folded(plan.fn, specs, distinct=False))(*specs).jaxpr
        return {e.primitive.name for e in jaxpr.eqns}

    costly = {"exp", "sin", "cos", "div", "log", "atan2", "pow"}
    assert {"exp", "sin", "cos"} <= primitives(None)  # not vacuous: per step they are there
    assert not primitives(1.0) & costly
    with pytest.raises(ValueError, match="dt must be None .* or one positive, finite number"):
        lj.export.stepper(layer, dt=-1.0)


def test_against_numpy_recurrence_and_plain_s4d():
    with jax.enable_x64(True):
        u = jax.random.normal(jax.random.key(3), (12, 3), jnp.float64)
        for order, kernel, disc in CASES:
            layer = _perturbed(_layer(order, kernel, disc, jnp.float64))
            want = _np_liquid_s4(layer, u, np.ones(len(u)))
            got = layer.advance_sequence(layer.init_state(), u, None).y
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
            # recurrent mode with irregular steps: the elapsed time scales the learned step
            taus = np.asarray(jax.random.uniform(jax.random.key(4), (12,), minval=0.2,
                                                 maxval=3.0))
            want = _np_liquid_s4(layer, u, taus)
            got = layer.advance_sequence(layer.init_state(), u, jnp.asarray(taus)).y
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
            if order == 0:  # plain S4D, and its kernel is the impulse response
                want, kern = _np_s4d_convolution(layer, u)
                got = layer.advance_sequence(layer.init_state(), u, None).y
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
                impulse = jnp.zeros_like(u).at[0].set(1.0)
                resp = layer.advance_sequence(layer.init_state(), impulse, None).y
                np.testing.assert_allclose(resp[1:], kern[1:], rtol=1e-10, atol=1e-12)
        # the liquid terms are there: order 2 differs from order 0 with the same parameters
        plain = _perturbed(_layer(0, "pb", "zoh", jnp.float64))
        liquid = lj.replace_fields(plain, liquid_order=2)
        assert not np.allclose(_np_liquid_s4(plain, u, np.ones(12)),
                               _np_liquid_s4(liquid, u, np.ones(12)))


def test_zoh_is_exact_for_held_inputs():
    # continuous time: two half steps with the input held equal one learned step (ZOH, order 0)
    with jax.enable_x64(True):
        layer = _perturbed(_layer(0, "pb", "zoh", jnp.float64))
        x = jnp.asarray([0.3, -1.2, 0.7])
        s = layer.advance(layer.init_state(), x, 0.0, 1.0)
        half = layer.advance(layer.advance(layer.init_state(), x, 0.0, 0.5), x, 0.5, 1.0)
        assert _max_err(s, half) < 1e-12


def test_gradients_finite_differences_and_scan():
    with jax.enable_x64(True):
        u = jax.random.normal(jax.random.key(5), (9, 3), jnp.float64)
        layer = _perturbed(_layer(2, "kb", "zoh", jnp.float64))
        params, static = eqx.partition(layer, eqx.is_inexact_array)

        def loss(p, conv):
            m = eqx.combine(p, static)
            s = (m.advance_sequence(m.init_state(), u, None) if conv
                 else scan_advance(m, m.init_state(), u, None))
            return jnp.sum(jnp.sin(s.y)) + jnp.sum(s.re[-1] ** 2)

        grad = jax.jit(jax.grad(loss), static_argnums=1)
        g_conv, g_scan = grad(params, True), grad(params, False)
        assert _max_err(g_conv, g_scan) < 1e-10 * _scale(g_scan)
        direction = jax.tree_util.tree_map(
            lambda a: jax.random.normal(jax.random.key(a.size), a.shape, a.dtype), params)
        eps = 1e-6
        plus = jax.tree_util.tree_map(lambda a, v: a + eps * v, params, direction)
        minus = jax.tree_util.tree_map(lambda a, v: a - eps * v, params, direction)
        value = jax.jit(loss, static_argnums=1)
        fd = (value(plus, True) - value(minus, True)) / (2 * eps)
        ad = sum(jnp.vdot(g, v) for g, v in zip(jax.tree_util.tree_leaves(g_conv),
                                                 jax.tree_util.tree_leaves(direction)))
        assert abs(float(fd - ad)) < 1e-6 * max(1.0, abs(float(ad)))


def test_vmap_over_a_batch():
    layer = _layer(2, "pb", "zoh", jnp.float32)
    u = jax.random.normal(jax.random.key(6), (2, 7, 3))
    batched = jax.jit(jax.vmap(lambda v: layer.advance_sequence(layer.init_state(), v, None).y))(u)
    one = layer.advance_sequence(layer.init_state(), u[1], None).y
    np.testing.assert_allclose(batched[1], one, rtol=1e-6, atol=1e-6)


def test_bad_configuration_and_shapes_fail_in_one_line():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="ssm_size must be an even int"):
        LiquidS4(3, 5, key=key)
    with pytest.raises(ValueError, match="liquid_order must be 0 .* or an int >= 2"):
        LiquidS4(3, 4, liquid_order=1, key=key)
    with pytest.raises(ValueError, match="liquid_kernel must be one of"):
        LiquidS4(3, 4, liquid_kernel="polyb", key=key)
    with pytest.raises(ValueError, match="discretisation must be one of"):
        LiquidS4(3, 4, discretisation="euler", key=key)
    layer = LiquidS4(3, 4, key=key)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(time, 3\), got \(5, 2\)"):
        layer.advance_sequence(layer.init_state(), jnp.zeros((5, 2)), None)
    with pytest.raises(ValueError, match=r"expected x of shape \(3,\)"):
        layer.advance(layer.init_state(), jnp.zeros(2), 0.0, 1.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        LiquidS4Stack(2, 4, dropout=1.0, key=key)


# ------------------------------------------------------------------------------- the stack
@pytest.fixture(scope="module")
def stack():
    return LiquidS4Stack(2, 6, depth=2, ssm_size=4, dropout=0.25, liquid_order=2,
                         dt_min=0.05, dt_max=0.5, key=jax.random.key(0))


def test_stack_conv_mode_equals_liquidrnn_and_the_stepper(stack):
    x = jax.random.normal(jax.random.key(1), (11, 2))
    states = stack.advance_sequence(stack.init_state(), x, None)
    conv = jax.vmap(stack.output)(states)
    recurrent = scan_advance(stack, stack.init_state(), x, None)  # one advance per step
    assert _max_err(recurrent, states) < 1e-5
    ys, final = lj.LiquidRNN(stack)(x)  # the sequence layer asks the cell: convolution mode
    np.testing.assert_allclose(ys, conv, rtol=1e-5, atol=1e-5)
    assert _max_err(final, jax.tree_util.tree_map(lambda a: a[-1], recurrent)) < 1e-5
    ys_remat, _ = lj.LiquidRNN(stack, remat=True)(x)  # remat: the checkpointed recurrent scan
    np.testing.assert_allclose(ys_remat, conv, rtol=1e-5, atol=1e-5)
    # streaming in recurrent mode (real arithmetic only: the C translation takes it too)
    for backend in ("xla", "c") if shutil.which("cc") else ("xla",):
        step = lj.export.stepper(lj.LiquidRNN(stack), backend=backend)
        state, outs = step.initial_state(), []
        for k in range(len(x)):
            out, state = step(state, np.asarray(x[k]), np.float32(1.0))
            outs.append(np.asarray(out))
        np.testing.assert_allclose(np.stack(outs), conv, rtol=1e-5, atol=1e-5, err_msg=backend)
    # a fixed-rate stream (stepper(..., dt=0.5): the discretisation folded once, not per step)
    # equals the per-step path across the same dt; another dt is refused, never stepped stale
    half = jax.vmap(stack.output)(stack.advance_sequence(stack.init_state(), x,
                                                         jnp.full(len(x), 0.5)))
    assert float(jnp.max(jnp.abs(half - conv))) > 1e-2  # dt matters: not vacuous
    for backend in ("xla", "c") if shutil.which("cc") else ("xla",):
        step = lj.export.stepper(lj.LiquidRNN(stack), backend=backend, dt=0.5)
        state, outs = step.initial_state(), []
        same = [(), (np.float32(0.5),), (0.5,), (np.float64(0.5),), (np.full((), 0.5),)]
        for k in range(len(x)):  # dt omitted, or the same value in any type
            out, state = step(state, np.asarray(x[k]), *same[k % len(same)])
            outs.append(np.asarray(out))
        np.testing.assert_allclose(np.stack(outs), half, rtol=1e-5, atol=1e-5, err_msg=backend)
        for other in (1.0, np.full(3, 0.5)):
            with pytest.raises(ValueError, match=r"built for the fixed dt = 0\.5 .*got dt ="):
                step(state, np.asarray(x[0]), other)
        if backend == "c":  # the generated C refuses it too (to_c's checked <name>_step)
            header = (step.source_dir / "liquidjax.h").read_text()
            assert "#define LIQUIDJAX_FIXED_DT 0.5f" in header
            step._dt[...] = 1.0  # past the Python check, into the bound buffer
            assert step._call() == 1  # LIQUIDJAX_BAD_DT
    # dropout: the same masks per step in both modes, and they do something
    key = jax.random.key(9)
    dropped = stack.advance_sequence(stack.init_state(), x, None, key=key)
    assert _max_err(scan_advance(stack, stack.init_state(), x, None, key=key), dropped) < 1e-5
    assert _max_err(dropped, states) > 1e-2
    # irregular steps: the recurrent path, as LiquidRNN runs it
    taus = jnp.linspace(0.5, 2.0, 11)
    ys_t, _ = lj.LiquidRNN(stack)(x, taus)
    irregular = stack.advance_sequence(stack.init_state(), x, taus)
    np.testing.assert_allclose(jax.vmap(stack.output)(irregular), ys_t, rtol=1e-5, atol=1e-5)


def test_param_groups_train_and_trained_model_streams():
    model = liquid_s4_classifier(1, 2, hidden_size=8, depth=1, ssm_size=4, liquid_order=2,
                                 key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    labels = ssm_labels(params)
    layer = model.layers[0].cell.layers[0]
    lab_layer = labels.layers[0].cell.layers[0]
    assert all(getattr(lab_layer, f) == "ssm" for f in LiquidS4.ssm_fields)
    assert lab_layer.c_re == "default" and labels.head.weight == "default"
    # weight decay acts only outside the SSM: with zero gradients only the others move
    opt = ssm_param_groups(0.1, ssm_learning_rate=0.1, weight_decay=0.5)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    new = eqx.apply_updates(model, updates)
    np.testing.assert_array_equal(new.layers[0].cell.layers[0].a_log, layer.a_log)
    np.testing.assert_allclose(new.head.weight, model.head.weight * (1 - 0.05), rtol=1e-6)
    # a few training steps on a toy task (sign of the sequence's sum)
    x = jax.random.normal(jax.random.key(1), (16, 12, 1))
    y = (jnp.sum(x[:, :, 0], axis=1) > 0).astype(jnp.int32)
    opt = ssm_param_groups(1e-2, ssm_learning_rate=1e-3, clip_norm=1.0)
    state = opt.init(params)

    @eqx.filter_jit
    def train_step(model, state):
        def loss(m):
            logits = jax.vmap(m)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        val, grads = eqx.filter_value_and_grad(loss)(model)
        upd, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, upd), state, val

    losses = []
    for _ in range(25):
        model, state, val = train_step(model, state)
        losses.append(float(val))
    assert losses[-1] < losses[0]
    cell = model.layers[0].cell
    assert _max_err(cell.layers[0].log_dt, layer.log_dt) > 0  # the SSM trained too
    ys, _ = model.layers[0](x[0])  # convolution mode
    recurrent = jax.vmap(cell.output)(scan_advance(cell, cell.init_state(), x[0], None))
    np.testing.assert_allclose(ys, recurrent, rtol=1e-5, atol=1e-5)


def test_docs_page_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), ns)  # noqa: S102


# ------------------------------------------------------- reachable like every other model
def _config(**kw):
    from liquidjax.models import ModelConfig

    base = dict(input_size=2, num_classes=3, cell="liquid_s4", units=4, layers=2, ssm_size=4,
                readout="mean")
    return ModelConfig(**{**base, **kw})


def test_model_config_builds_the_stack_and_trains_it_in_convolution_mode():
    from liquidjax.models import build_model, has_ssm_params
    from liquidjax.train._step import _forward

    cfg = _config(liquid_order=3, liquid_kernel="kb", discretisation="bilinear", ssm_init="inv",
                  glu=False, ssm_dropout=0.2)
    model = build_model(cfg, key=jax.random.key(0))
    assert len(model.layers) == 1  # `layers` is the stack's depth, not stacked recurrent layers
    stack = model.layers[0].cell
    assert isinstance(stack, LiquidS4Stack) and len(stack.layers) == 2
    assert (stack.glu, stack.dropout, stack.output_size) == (False, 0.2, 4)
    layer = stack.layers[0]
    assert (layer.liquid_order, layer.liquid_kernel, layer.discretisation,
            layer.state_size) == (3, "kb", "bilinear", 4)
    assert has_ssm_params(model)
    assert not has_ssm_params(build_model(_config(cell="cfc"), key=jax.random.key(0)))
    # image batches carry no timespans or mask: the trainer's forward is the FFT convolution;
    # a mask (or timespans) takes the recurrent scan
    x = jnp.ones((2, 9, 2))
    conv = str(jax.make_jaxpr(lambda x: _forward(model, {"x": x}, None))(x))
    masked = str(jax.make_jaxpr(
        lambda x: _forward(model, {"x": x, "mask": jnp.ones((2, 9), bool)}, None))(x))
    assert " fft[" in conv and " fft[" not in masked
    for bad, match in ((dict(ssm_size=5), "ssm_size must be even"),
                       (dict(liquid_order=1), "liquid_order must be 0"),
                       (dict(mixed_memory=True), "drop mixed_memory"),
                       (dict(liquid_kernel="kk"), "unknown liquid kernel")):
        with pytest.raises(ValueError, match=match):
            _config(**bad)


def test_fit_trains_ssm_parameters_at_their_own_rate(tmp_path):
    from liquidjax import train as lt
    from liquidjax.models import build_model

    cfg = _config(layers=1, input_size=1, num_classes=2)
    model = build_model(cfg, key=jax.random.key(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (16, 10, 1)), np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    lr, ssm_lr, wd = 1e-2, 1e-4, 0.1
    # two epochs of one full batch each: two steps, a checkpoint after each
    tc = lt.TrainConfig(epochs=2, batch_size=16, learning_rate=lr, ssm_learning_rate=ssm_lr,
                        weight_decay=wd, warmup_fraction=0.0, clip_norm=None)
    assert float(lt.make_schedule(tc, 2)(0)) == pytest.approx(lr)
    result = lt.fit(model, lt.ArrayData(x, y), tc, out_dir=tmp_path, progress="none")
    assert result.history[-1]["epoch"] == 2 and np.isfinite(result.history[-1]["train_loss"])
    first = lt.list_checkpoints(tmp_path / "checkpoints")[0]
    one, header = lt.restore_model(first, model)
    assert header["step"] == 1

    # one hand-computed Adam(W) step from the full-batch gradient: -η (g/(|g|+ε) + wd·p), with
    # the SSM's A, B, log Δ at their own rate and without weight decay
    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), y).mean()

    params = eqx.filter(model, eqx.is_inexact_array)
    grads = eqx.filter_jit(eqx.filter_grad(loss))(model)
    trees = (params, eqx.filter(one, eqx.is_inexact_array), grads, ssm_labels(params))
    moved = {"ssm": 0.0, "default": 0.0}
    for p, q, g, label in zip(*(jax.tree_util.tree_leaves(t) for t in trees)):
        g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
        adam = g / (np.abs(g) + 1e-8)
        want = -ssm_lr * adam if label == "ssm" else -lr * (adam + wd * p)
        np.testing.assert_allclose(np.asarray(q, np.float64) - p, want, rtol=1e-3, atol=1e-6)
        moved[label] = max(moved[label], float(np.max(np.abs(np.asarray(q) - p))))
    assert moved["ssm"] == pytest.approx(ssm_lr, rel=1e-2)  # not vacuous: both groups moved
    assert moved["default"] > 0.5 * lr
    a_log = result.model.layers[0].cell.layers[0].a_log - model.layers[0].cell.layers[0].a_log
    assert 0 < float(jnp.max(jnp.abs(a_log))) <= 2 * ssm_lr * (1 + 1e-3)  # the second step


def _tiny_classifier():
    from liquidjax.models import build_model

    model = build_model(_config(), key=jax.random.key(3))
    return jax.tree_util.tree_map(  # off the structured initialisation (B = 1, ...)
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape, a.dtype)
        if eqx.is_inexact_array(a) else a, model)


def _conv_mode_logits(model, x):
    """The classifier's logits after every prefix of `x`, from one convolution-mode pass: the
    head of the running mean of the stack's outputs."""
    ys, _ = model.layers[0](x)
    means = jnp.cumsum(ys, axis=0) / jnp.arange(1, len(x) + 1)[:, None]
    return jax.vmap(model.head)(means)


def test_onnx_and_stablehlo_stream_the_convolution_mode(tmp_path):
    model = _tiny_classifier()
    x = np.asarray(jax.random.normal(jax.random.key(4), (7, 2)), np.float32)
    ref = np.asarray(_conv_mode_logits(model, jnp.asarray(x)))
    np.testing.assert_allclose(ref[-1], model(jnp.asarray(x)), rtol=1e-6, atol=1e-6)
    dts = np.ones(len(x), np.float32)
    step = lj.export.stepper(model)
    s0 = np.asarray(step.initial_state())

    def stream(fn):
        state, outs = s0, []
        for k in range(len(x)):
            out, state = fn.call(state, x[k], dts[k])
            outs.append(np.asarray(out))
        return np.stack(outs)

    lj.export.to_stablehlo(model, tmp_path / "hlo", seq_len=len(x))
    fn = jax.export.deserialize((tmp_path / "hlo" / "step.jaxexport").read_bytes())
    np.testing.assert_allclose(stream(fn), ref, rtol=0, atol=1e-5)
    seq = jax.export.deserialize((tmp_path / "hlo" / "sequence.jaxexport").read_bytes())
    ys, _ = seq.call(s0, x, dts)
    np.testing.assert_allclose(ys, ref, rtol=0, atol=1e-5)
    # a fixed dt, folded at export: the same outputs; another dt gives NaN, not a stale step
    man = lj.export.to_stablehlo(model, tmp_path / "fixed", dt=1.0)
    assert man["fixed_dt"] == 1.0
    fn = jax.export.deserialize((tmp_path / "fixed" / "step.jaxexport").read_bytes())
    np.testing.assert_allclose(stream(fn), ref, rtol=0, atol=1e-5)
    out, state = fn.call(s0, x[0], np.float32(0.5))
    assert np.isnan(out).all() and np.isnan(state).all()

    try:
        import jax2onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - CI installs the `test` extra
        pytest.skip(f"ONNX export needs the `export` extra: {e}")
    lj.export.to_onnx(model, tmp_path / "onnx", seq_len=len(x))
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "step.onnx"))
    state, outs = s0, []
    for k in range(len(x)):
        out, state = sess.run(None, {"state": state, "x": x[k], "dt": dts[k:k + 1].reshape(())})
        outs.append(out)
    np.testing.assert_allclose(np.stack(outs), ref, rtol=0, atol=1e-5)
    seq = ort.InferenceSession(str(tmp_path / "onnx" / "sequence.onnx"))
    ys, _ = seq.run(None, {"state": s0, "xs": x, "dts": dts})
    np.testing.assert_allclose(ys, ref, rtol=0, atol=1e-5)
