"""The LTC's batch-aware step (``kernel="auto"``: a primitive whose vmap runs one batched kernel,
compiled C++ on CPU) held to the per-example pure-JAX kernels (``kernel="portable"``) and to its
own pure-JAX batched reference: values and gradients, float32 and float64, dense and sparse
synapses, every way of batching (grad of vmap, vmap of grad, ensembles, no vmap, scan, remat),
batch sizes that leave partial chunks."""

import functools
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from liquidjax import _native
from liquidjax.cells import LTC
from liquidjax.cells._ltc_batched import _xla_backward, _xla_forward, full_layout, slot_params
from liquidjax.wirings import AutoNCP

UNFOLDS, EPS = 3, 1e-8
WIRINGS = {"full": lambda: 6, "autoncp": lambda: AutoNCP(10, 3, seed=3)}


def test_the_compiled_kernel_is_built_here():
    # CI builds it (make); everything below would otherwise only test the pure-JAX fallback.
    assert _native.available(), "the compiled LTC kernel is not available: run make"


def _close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(float(np.max(np.abs(y), initial=0.0)), 1.0)
        np.testing.assert_allclose(x, y, rtol=0, atol=tol * scale)


def _inputs(cell, batch, dtype, seed=7):
    # NumPy draws: each eager jax.random call compiles a program per shape and dtype
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((cell.input_size, batch)), dtype),
            jnp.asarray(0.3 * rng.standard_normal((cell.state_size, batch)), dtype),
            jnp.asarray(rng.uniform(0.5, 2.0, batch), dtype))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-12)],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_compiled_kernel_matches_its_jax_reference(wiring, dtype, tol):
    """Forward (every unfold's potentials and denominators) and backward (parameter gradients
    summed over the batch, input, state and timespan cotangents) of the C++ kernel against the
    pure-JAX batch-minor code, with batch sizes that fill one chunk, leave a partial one, and
    span several (so that several workers share the work)."""
    with jax.enable_x64(dtype == jnp.float64):
        cell = LTC(4, WIRINGS[wiring](), key=jax.random.key(0), dtype=dtype)
        layout = cell.synapse_layout or full_layout(cell.state_size, cell.input_size)
        p = slot_params(cell.effective_params(), layout)
        kw = dict(layout=layout, unfolds=UNFOLDS, epsilon=EPS)
        # the references as one compiled program each (op by op they cost more)
        forward = jax.jit(lambda *a: _xla_forward(*a, **kw))
        backward = jax.jit(lambda *a: _xla_backward(*a, **kw))
        for batch in (1, 70, 200):
            x, v0, dt = _inputs(cell, batch, dtype)
            g = jnp.asarray(np.random.default_rng(batch).standard_normal(v0.shape), dtype)
            ref = forward(p, x, v0, dt)
            got = jax.jit(lambda *a: _native.ltc_forward(*a, **kw))(p, x, v0, dt)
            _close(got, ref, tol)
            v_only = jax.jit(lambda *a: _native.ltc_forward(*a, **kw, keep=False))(p, x, v0, dt)
            _close(v_only, ref[0], tol)  # without residuals (inference)
            args = (p, x, dt, ref[1], ref[2], g)
            ref_b = backward(*args)
            got_b = jax.jit(lambda *a: _native.ltc_backward(*a, **kw))(*args)
            _close(got_b, ref_b, tol)
            assert float(jnp.max(jnp.abs(got_b[0][0]))) > 0  # not vacuous


def _loss_fn(batching):
    """A scalar loss of the cell over a batch, batched the given way."""
    def step(cell, v, x, dt):
        return cell.advance(v, x, 0.0, dt)

    def weigh(v):
        return jnp.sum(jnp.sin(3 * v) * jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype))

    if batching == "grad_of_vmap":
        return jax.jit(jax.value_and_grad(
            lambda c, v, x, dt: weigh(jax.vmap(step, (None, 0, 0, 0))(c, v, x, dt)),
            argnums=(0, 1, 2, 3)))
    if batching == "vmap_of_grad":  # per-example gradients
        return jax.jit(jax.vmap(jax.value_and_grad(
            lambda c, v, x, dt: weigh(step(c, v, x, dt)), argnums=(0, 1, 2, 3)),
            in_axes=(None, 0, 0, 0)))
    if batching == "one":
        return jax.jit(jax.value_and_grad(lambda c, v, x, dt: weigh(step(c, v[0], x[0], dt[0])),
                                          argnums=(0, 1, 2, 3)))
    raise AssertionError(batching)


def _grads(tree):
    return [a for a in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))]


@pytest.mark.parametrize("batching", ["grad_of_vmap", "vmap_of_grad", "one"])
@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_auto_kernel_matches_portable_float32(wiring, batching):
    cell = LTC(5, WIRINGS[wiring](), ode_unfolds=UNFOLDS, key=jax.random.key(1))
    x, v0, dt = (a.T if a.ndim == 2 else a for a in _inputs(cell, 9, jnp.float32))
    f = _loss_fn(batching)
    got = f(cell, v0, x, dt)
    ref = f(cell.with_kernel("portable"), v0, x, dt)
    _close((got[0], _grads(got[1])), (ref[0], _grads(ref[1])), 2e-6)
    if batching == "vmap_of_grad":  # really per example, not the batch sum
        w = got[1][0].w
        assert w.shape[0] == 9 and not np.allclose(w[0], w[1])


@pytest.mark.parametrize("wiring", sorted(WIRINGS))
def test_auto_kernel_matches_portable_float64(wiring):
    with jax.enable_x64(True):
        cell = LTC(5, WIRINGS[wiring](), ode_unfolds=UNFOLDS, dtype=jnp.float64,
                   key=jax.random.key(2))
        x, v0, dt = (a.T if a.ndim == 2 else a for a in _inputs(cell, 67, jnp.float64))
        f = _loss_fn("grad_of_vmap")
        got, ref = f(cell, v0, x, dt), f(cell.with_kernel("portable"), v0, x, dt)
        _close((got[0], _grads(got[1])), (ref[0], _grads(ref[1])), 1e-12)


def test_gradient_matches_finite_differences_float64():
    """The batched backward (through the compiled kernel) against central differences."""
    with jax.enable_x64(True):
        cell = LTC(3, AutoNCP(8, 2, seed=1), ode_unfolds=UNFOLDS, dtype=jnp.float64,
                   key=jax.random.key(3))
        x, v0, dt = (a.T if a.ndim == 2 else a for a in _inputs(cell, 4, jnp.float64))

        def loss(vleak, dt):
            c = eqx.tree_at(lambda c: c.vleak, cell, vleak)
            v = jax.vmap(lambda v, x, d: c.advance(v, x, 0.0, d))(v0, x, dt)
            return jnp.sum(jnp.cos(2 * v))

        gv, gdt = jax.jit(jax.grad(loss, argnums=(0, 1)))(cell.vleak, dt)
        e = jnp.zeros_like(cell.vleak).at[2].set(1e-6)
        np.testing.assert_allclose(gv[2], (loss(cell.vleak + e, dt) - loss(cell.vleak - e, dt))
                                   / 2e-6, rtol=1e-6)
        d = jnp.zeros_like(dt).at[1].set(1e-6)
        np.testing.assert_allclose(gdt[1], (loss(cell.vleak, dt + d) - loss(cell.vleak, dt - d))
                                   / 2e-6, rtol=1e-6)


def test_sequences_ensembles_and_remat():
    """A whole sequence model (scan over observations, optionally checkpointed) trains the same
    with both kernels, and an ensemble (per-example parameters) takes the fallback path."""
    from liquidjax.layers import LiquidRNN

    cell = LTC(3, AutoNCP(9, 2, seed=4), ode_unfolds=2, key=jax.random.key(4))
    xs = jax.random.normal(jax.random.key(5), (6, 7, 3))

    def loss(rnn, remat):
        run = jax.vmap(rnn)
        if remat:
            run = jax.checkpoint(run)
        y, _ = run(xs)
        return jnp.sum(jnp.tanh(y))

    for remat in (False, True):
        got = jax.jit(jax.grad(lambda r: loss(r, remat)))(LiquidRNN(cell))
        ref = jax.jit(jax.grad(lambda r: loss(r, remat)))(LiquidRNN(cell.with_kernel("portable")))
        _close(_grads(got), _grads(ref), 2e-6)

    cells = [cell, eqx.tree_at(lambda c: c.vleak, cell, cell.vleak + 0.1)]
    params, static = eqx.partition(cells, eqx.is_array)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)

    def ens(stacked, kernel):
        def one(p, x):
            c = eqx.combine(p, static[0]).with_kernel(kernel)
            return LiquidRNN(c)(x)[0]

        return jnp.sum(jnp.tanh(jax.vmap(one)(stacked, xs[:2])))

    _close(_grads(jax.jit(jax.grad(lambda s: ens(s, "auto")))(stacked)),
           _grads(jax.jit(jax.grad(lambda s: ens(s, "portable")))(stacked)), 2e-6)


def test_kernel_setting_is_checked_and_kept():
    cell = LTC(2, 4, key=jax.random.key(0))
    assert cell.kernel == "auto" and cell.with_kernel("portable").kernel == "portable"
    with pytest.raises(ValueError, match="kernel must be one of"):
        LTC(2, 4, kernel="cuda", key=jax.random.key(0))


def _run_python(code, **env):
    return _wait(_start_python(code, **env))


def _start_python(code, **env):
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def _wait(proc):
    """The finished process (``returncode``, ``stdout``, ``stderr``) of :func:`_start_python`."""
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


CHECK = """
import warnings, jax, jax.numpy as jnp
from liquidjax import _native
from liquidjax.cells import LTC, CfC
from liquidjax.layers import LiquidRNN
cell = LTC(2, 4, key=jax.random.key(0))
f = jax.jit(jax.grad(lambda c: jnp.sum(jax.vmap(lambda x: c.advance(c.init_state(), x, 0., 1.))(
    jnp.ones((3, 2))))))
rnn = LiquidRNN(CfC(2, 4, backbone_units=5, key=jax.random.key(0)))
f_cfc = jax.jit(jax.grad(lambda r: jnp.sum(jax.vmap(lambda x: r(x)[0])(jnp.ones((3, 4, 2))) ** 2)))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    g = f(cell)
    g_cfc = f_cfc(rnn)
print("available", _native.available(), "warnings", [str(x.message)[:80] for x in w],
      "hlo_has_custom_call", "liquidjax_ltc" in f.lower(cell).as_text(),
      "cfc_hlo_has_custom_call", "liquidjax_cfc" in f_cfc.lower(rnn).as_text(),
      float(g_cfc.cell.backbone[0].weight[0, 0]), float(g.vleak[0]))
"""


def test_without_the_compiled_kernel_the_jax_path_runs():
    """LIQUIDJAX_NATIVE=0: no custom call in the graph (LTC and CfC), same gradients; a failed
    build (no compiler, nothing built) warns once, naming the cause, and falls back."""
    # A build that cannot happen: point the library's candidates at an empty folder and the
    # compiler at nothing. (The three processes run side by side: each mostly imports.)
    broken = CHECK.replace(
        "from liquidjax import _native\n",
        "from liquidjax import _native\nimport tempfile, pathlib\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "_native._folders = lambda: [d]\n")
    on, off, res = (_wait(p) for p in [_start_python(CHECK),
                                       _start_python(CHECK, LIQUIDJAX_NATIVE="0"),
                                       _start_python(broken, CXX="/nonexistent/c++")])
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "available True" in on.stdout and " hlo_has_custom_call True" in on.stdout
    assert "cfc_hlo_has_custom_call True" in on.stdout
    assert "available False" in off.stdout and " hlo_has_custom_call False" in off.stdout
    assert "cfc_hlo_has_custom_call False" in off.stdout
    assert "warnings []" in off.stdout
    for i in (-1, -2):  # the LTC's gradient, the CfC's
        g_on, g_off = float(on.stdout.split()[i]), float(off.stdout.split()[i])
        assert g_off != 0 and abs(g_on - g_off) <= 1e-6 * max(1.0, abs(g_off))
    assert res.returncode == 0, res.stderr
    assert "available False" in res.stdout
    assert "compiled CPU kernels for the LTC and the CfC" in res.stdout
    assert " hlo_has_custom_call False" in res.stdout
    assert "cfc_hlo_has_custom_call False" in res.stdout


# A data-parallel train step (loss and gradients) over 2 host CPU devices, the batch sharded on
# the context mesh as DataParallel shards it, against the same step on one device; and the
# compiled program's kernel calls, which must see the per-device rows only. B = 10 rows, 5 per
# device; no other size of the models is 5 or 10.
SHARDED = """
import re
import equinox as eqx, jax, jax.numpy as jnp, numpy as np
from liquidjax import _native
from liquidjax.cells import LTC, CfC, MixedMemory
from liquidjax.layers import LiquidRNN
from liquidjax.train import DataParallel
assert jax.device_count() == 2 and _native.available()
B, T, I, H = 10, 3, 3, 4
x = jax.random.normal(jax.random.key(1), (B, T, I))
ts = jax.random.uniform(jax.random.key(2), (B, T), minval=0.5, maxval=1.5)
mask = jax.random.uniform(jax.random.key(3), (B, T)) > 0.3
models = {models}
dp = DataParallel.create()
for name, model in models.items():
    params, static = eqx.partition(model, eqx.is_array)

    def loss(p, x, ts, mask):
        m = eqx.combine(p, static)
        return jnp.mean(jnp.sin(jax.vmap(lambda a, b, c: m(a, b, c)[0])(x, ts, mask)))

    step = jax.jit(jax.value_and_grad(loss))
    one = step(params, x, ts, mask)
    with dp.context():
        data = (jax.device_put(a, dp.batch_sharding) for a in (x, ts, mask))
        args = (dp.replicate(params), *data)
        two = step(*args)
        hlo = step.lower(*args).compile().as_text()
    calls = [l.split(" custom-call(")[0] for l in hlo.splitlines()
             if 'custom_call_target="liquidjax_' in l]
    shapes = [s for c in calls for s in re.findall(r"\\[([0-9,]*)\\]", c)]
    dims = {{int(d) for s in shapes for d in s.split(",") if d}}
    err = max(float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(a))))
              for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)))
    print(name, "calls", len(calls), "per_shard", 5 in dims, "whole_batch", 10 in dims,
          "err", err, "grad", float(jnp.max(jnp.abs(jax.tree.leaves(one[1])[0]))))
"""


def run_sharded(models: str) -> dict[str, list[str]]:
    """Run :data:`SHARDED` for ``models`` (the source of a dict name → model) over 2 host CPU
    devices; its output line per model, split."""
    res = _run_python(SHARDED.format(models=models),
                      XLA_FLAGS="--xla_force_host_platform_device_count=2", LIQUIDJAX_NATIVE="1")
    assert res.returncode == 0, res.stderr[-3000:]
    return {line.split()[0]: line.split() for line in res.stdout.splitlines()}


@functools.cache
def sharded_runs() -> dict[str, list[str]]:
    """:func:`run_sharded` once for the LTC here and the CfC's (plain and mixed memory) of
    ``test_cfc_native``: one process for both files (each start costs an import and a JIT)."""
    return run_sharded(
        '{"ltc": LiquidRNN(LTC(I, H, key=jax.random.key(0))), '
        '"cfc": LiquidRNN(CfC(I, H, backbone_units=7, key=jax.random.key(0)), '
        'return_sequences=False), "memory": LiquidRNN(MixedMemory(CfC(I, H, '
        'backbone_units=7, key=jax.random.key(0)), key=jax.random.key(4)))}')


def check_sharded(out: list[str], calls: int) -> None:
    fields = dict(zip(out[1::2], out[2::2]))
    assert int(fields["calls"]) >= calls, out  # the kernels ran, forward and backward
    assert fields["per_shard"] == "True" and fields["whole_batch"] == "False", out
    assert float(fields["err"]) < 1e-5 and float(fields["grad"]) > 0, out


def test_the_kernels_run_per_shard_under_data_parallelism():
    """Over 2 devices the batch is split and each device's kernel (forward and backward) sees
    its own 5 rows, not the 10 (XLA does not split a custom call by itself); loss and weight
    gradients (summed over the shards) equal the one-device step's to summation order."""
    out = sharded_runs()
    assert set(out) == {"ltc", "cfc", "memory"}
    check_sharded(out["ltc"], calls=2)
