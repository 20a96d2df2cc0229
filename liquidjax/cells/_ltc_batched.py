"""The LTC's batch-aware fused step: one primitive whose ``vmap`` takes the whole batch.

Cells act on one example; models ``jax.vmap`` them over the batch (docs/custom_cells.md). For a
step with a hand-written VJP that has a price: under ``jax.grad(jax.vmap(...))`` JAX runs the
backward pass per example and only then sums the parameter cotangents over the batch, so every
training step writes and reads one copy of every synapse's four parameter gradients **per
example** — for the row-wise LTC-64 with 96 inputs about 0.7 GB per batch of 128, most of the
backward's time.

Here the step is a JAX primitive, ``liquidjax_ltc_step``, with per-example semantics
(``x (I,)``, ``v0 (N,)``, ``dt ()``). Its batching rule sees the whole batch and, when the
parameters are shared across it (the usual case), calls :func:`batched_step` — a custom-VJP
function of the batch held **batch-minor** (``x (I, B)``, ``v0 (N, B)``), whose backward sums
the parameter gradients over the batch as it goes. Because batching runs before
differentiation under ``grad(vmap(...))``, the VJP JAX takes is that batched one. Everywhere
else the primitive behaves like the per-example kernel it replaces:

- no ``vmap`` (one example), or per-example parameters (ensembles): a batch of one, or a
  ``vmap`` of it;
- ``vmap(grad(...))`` (per-example gradients): the per-example VJP, ``vmap``-ed;
- its JVP rule is the custom VJP's, so reverse mode works under ``jit``, ``scan``,
  ``checkpoint``; forward mode is refused as for any ``jax.custom_vjp``.

The batched forward and backward have two implementations, chosen when XLA lowers them
(``jax.lax.platform_dependent``): on CPU the compiled C++ kernel of
:mod:`liquidjax._native` when it is built (both cores, the synapse loop vectorised along the
batch), and everywhere the pure-JAX batch-minor code of :mod:`liquidjax.cells._ltc_sparse`
(the reference; also what GPUs and TPUs run). Tests hold the two to each other and to the
per-example kernels, values and gradients, float32 and float64.

Both work on the padded fan-in layout of :class:`~liquidjax.cells._ltc_sparse.SynapseLayout`;
a fully connected cell uses the full layout (every slot a synapse, no gathers).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import _native
from .._batching import batch_aware_primitive
from ._ltc_kernel import LTCParams
from ._ltc_sparse import LTCSparseParams, SynapseLayout, _backward, _forward, sparse_params


@functools.lru_cache(maxsize=64)
def full_layout(units: int, inputs: int) -> SynapseLayout:
    """The layout of a fully connected LTC: every pre-synaptic neuron in every fan-in list."""
    return SynapseLayout(np.ones((units, units), bool), np.ones((inputs, units), bool))


def slot_params(p: LTCParams, layout: SynapseLayout) -> LTCSparseParams:
    """The effective parameters on the layout's slots (for a full layout: the ``[post, pre]``
    matrices themselves)."""
    if layout.recurrent.full and layout.sensory.full:
        return LTCSparseParams(*p)
    return sparse_params(p, layout)


# ------------------------------------------------------------------ batched forward / backward
def _xla_forward(p, x, v0, dt, *, layout, unfolds, epsilon, keep=True):
    return _forward(p, layout, x, v0, dt, unfolds, epsilon, keep)


def _xla_backward(p, x, dt, vs, dens, g, *, layout, unfolds, epsilon):
    grads, dx, dv0, ddt = _backward(p, layout, x, dt, vs, dens, g, unfolds, epsilon)
    return tuple(jnp.sum(a, axis=-1) for a in grads), dx, dv0, ddt


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def batched_step(p: LTCSparseParams, x, v0, dt, layout: SynapseLayout, unfolds: int,
                 epsilon: float):
    """``unfolds`` fused semi-implicit LTC steps for a batch held batch-minor: ``x (I, B)``,
    ``v0 (N, B)``, ``dt (B,)`` → ``v (N, B)``, parameters shared by the batch. Its VJP returns
    the parameter gradients summed over the batch."""
    kw = dict(layout=layout, unfolds=unfolds, epsilon=epsilon, keep=False)
    return _native.on_cpu(functools.partial(_native.ltc_forward, **kw),
                            functools.partial(_xla_forward, **kw), p, x, v0, dt)


def _fwd(p, x, v0, dt, layout, unfolds, epsilon):
    native = functools.partial(_native.ltc_forward, layout=layout, unfolds=unfolds,
                               epsilon=epsilon)
    portable = functools.partial(_xla_forward, layout=layout, unfolds=unfolds, epsilon=epsilon)
    v, vs, dens = _native.on_cpu(native, portable, p, x, v0, dt)
    return v, (p, x, dt, vs, dens)


def _bwd(layout, unfolds, epsilon, res, g):
    p, x, dt, vs, dens = res
    native = functools.partial(_native.ltc_backward, layout=layout, unfolds=unfolds,
                               epsilon=epsilon)
    portable = functools.partial(_xla_backward, layout=layout, unfolds=unfolds,
                                 epsilon=epsilon)
    grads, dx, dv0, ddt = _native.on_cpu(native, portable, p, x, dt, vs, dens, g)
    return LTCSparseParams(*grads), dx, dv0, ddt.astype(dt.dtype)


batched_step.defvjp(_fwd, _bwd)


# ------------------------------------------------------------------------------ the primitive
_N_PARAMS = len(LTCSparseParams._fields)


def _one(*args, layout, unfolds, epsilon):
    """The per-example semantics: a batch of one."""
    p, (x, v0, dt) = LTCSparseParams(*args[:_N_PARAMS]), args[_N_PARAMS:]
    return batched_step(p, x[:, None], v0[:, None], dt[None], layout, unfolds, epsilon)[:, 0]


def _abstract_eval(*args, layout, unfolds, epsilon):
    del layout, unfolds, epsilon
    v0 = args[_N_PARAMS + 1]
    return jax.core.ShapedArray(v0.shape, v0.dtype)


def _batched(params, data, *, layout, unfolds, epsilon):
    x, v0, dt = data  # batch first → the kernel's batch-minor layout
    return batched_step(LTCSparseParams(*params), x.T, v0.T, dt, layout, unfolds, epsilon).T


ltc_step_p = batch_aware_primitive("liquidjax_ltc_step", n_shared=_N_PARAMS, one=_one,
                                   batched=_batched, out_aval=_abstract_eval)


def ltc_step(p: LTCParams, x, v0, dt, layout: SynapseLayout | None, unfolds: int,
             epsilon: float):
    """``unfolds`` fused semi-implicit LTC steps of one example across ``dt`` with the
    (input-mapped) observation ``x`` held, evaluating the synapses of ``layout`` (``None``: all
    of them). Under ``jax.vmap`` with shared parameters it runs one batched kernel whose
    backward sums the parameter gradients over the batch (see the module docstring).

    **Arguments:** `p` the cell's effective parameters (``[post, pre]``), `x` ``(I,)``,
    `v0` ``(N,)``, `dt` a scalar, `layout`, `unfolds`, `epsilon` (static).

    **Returns:** the potentials after ``dt``, shape ``(N,)``.
    """
    if layout is None:
        layout = full_layout(int(v0.shape[-1]), int(x.shape[-1]))
    dt = jnp.asarray(dt, v0.dtype)
    q = slot_params(p, layout)
    return ltc_step_p.bind(*q, x, v0, dt, layout=layout, unfolds=int(unfolds),
                           epsilon=float(epsilon))
