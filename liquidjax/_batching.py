"""Batch-aware primitives: per-example semantics, one batched custom-VJP call under ``vmap``.

Cells are written per example and models are ``jax.vmap``-ed over the batch. A fast path with a
hand-written VJP then has a price under ``jax.grad(jax.vmap(...))``: JAX runs its backward per
example and only afterwards sums the gradients of the parameters the batch shares, writing one
copy of them per example. A ``custom_vmap`` rule cannot sum them itself (it cannot tell
``grad(vmap(f))``, where the sum is wanted, from ``vmap(grad(f))``, where per-example gradients
are).

A primitive can: under ``grad(vmap(...))`` batching runs first, so the primitive's batching
rule sees the whole batch and calls a **batched** custom-VJP function whose backward sums over
the batch as it goes; the differentiation that follows takes that function's VJP. Everywhere
else — no ``vmap``, ``vmap(grad(...))``, per-example shared operands (ensembles) — the primitive
is its per-example definition (its JVP is that definition's, so reverse mode works under
``jit``, ``scan``, ``checkpoint``; forward mode is refused as for any ``jax.custom_vjp``).
Used by the LTC's fused step (:mod:`liquidjax.cells._ltc_batched`) and the CfC's sequence fast
path (:mod:`liquidjax.cells._cfc_sequence`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


def batch_aware_primitive(name: str, *, n_shared: int, one: Callable, batched: Callable,
                          out_aval: Callable) -> Primitive:
    """A primitive whose operands are ``n_shared`` shared ones (parameters) then data.

    **Arguments:**
    - `one(*operands, **params)`: the per-example definition (typically ``batched`` on a batch
      of one); its VJP is the primitive's.
    - `batched(shared, data, **params)`: the shared operands (a list) and the data operands with
      the batch on axis 0 → the output with the batch on axis 0. Called by the batching rule
      when no shared operand is batched.
    - `out_aval(*operand_avals, **params)`: the per-example output's ``ShapedArray``.
    """
    prim = Primitive(name)
    prim.def_abstract_eval(out_aval)
    prim.def_impl(lambda *args, **params: jax.jit(functools.partial(one, **params))(*args))
    mlir.register_lowering(prim, mlir.lower_fun(one, multiple_results=False))

    def jvp(primals, tangents, **params):
        tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
        return jax.jvp(functools.partial(one, **params), tuple(primals), tangents)

    def batch(args, dims, **params):
        if any(d is not None for d in dims[:n_shared]):  # per-example shared operands
            return jax.vmap(functools.partial(one, **params), in_axes=tuple(dims))(*args), 0
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        data = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
                for a, d in zip(args[n_shared:], dims[n_shared:])]
        return batched(list(args[:n_shared]), data, **params), 0

    ad.primitive_jvps[prim] = jvp
    batching.primitive_batchers[prim] = batch
    return prim
