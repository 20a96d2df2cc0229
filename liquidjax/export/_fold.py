"""The step's jaxpr made plain for the exporters: calls and custom-derivative wrappers inlined,
scans unrolled for ONNX, computations on the parameters alone folded into constants, and
products sharing an operand merged (:func:`_folded`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Literal

from ._c._jaxpr import CALL_PARAMS as _CALL_PARAMS, bind as _bind


class _NotExportable(Exception):
    """A primitive that has no fixed-size ONNX form."""


_NO_ONNX = {
    "while": "a data-dependent while loop (diffrax's diffeqsolve steps until t1: adaptive or "
             "not, its number of steps is not fixed)",
    "cond": "a data-dependent branch (lax.cond; diffrax's diffeqsolve steers its steps with "
            "them)",
    "debug_callback": "a host callback (jax.debug.callback, eqx.error_if)",
    "pure_callback": "a host callback (jax.pure_callback, eqx.error_if)",
    "io_callback": "a host callback (io_callback)",
}


def _eval_inlined(jaxpr, consts, args, *, onnx: bool):
    """Evaluate ``jaxpr`` binding plain primitives only: calls and custom-derivative wrappers are
    inlined (an exported forward pass needs no derivative rules). With ``onnx``, scans (fixed
    trip count: the ODE unfolds, the time loop) are unrolled too and what has no fixed-size
    graph raises :class:`_NotExportable`."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CALL_PARAMS and _CALL_PARAMS[name] in eqn.params:
            inner = eqn.params[_CALL_PARAMS[name]]
            if isinstance(inner, ClosedJaxpr):
                outs = _eval_inlined(inner.jaxpr, inner.consts, invals, onnx=onnx)
            else:
                outs = _eval_inlined(inner, (), invals, onnx=onnx)
        elif onnx and name == "scan":
            outs = _unroll_scan(eqn.params, invals)
        elif onnx and name in _NO_ONNX:
            raise _NotExportable(_NO_ONNX[name])
        else:
            outs = _bind(eqn, invals)
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _unroll_scan(params, invals):
    body = params["jaxpr"]
    nc, ncarry, length = params["num_consts"], params["num_carry"], params["length"]
    consts, carry, xs = invals[:nc], list(invals[nc:nc + ncarry]), invals[nc + ncarry:]
    ys = []
    steps = range(length - 1, -1, -1) if params["reverse"] else range(length)
    for i in steps:
        outs = _eval_inlined(body.jaxpr, body.consts, [*consts, *carry, *(x[i] for x in xs)],
                             onnx=True)
        carry, y = outs[:ncarry], outs[ncarry:]
        ys.append(y)
    if params["reverse"]:
        ys.reverse()
    n_ys = len(body.jaxpr.outvars) - ncarry
    stacked = [jnp.stack([y[j] for y in ys]) for j in range(n_ys)]
    return [*carry, *stacked]


def _dots_sharing_an_operand(eqns, known) -> list[tuple[list, int, int]]:
    """Groups of ``dot_general`` equations that multiply one computed value by different folded
    constants (a CfC's four heads all read the backbone's output), as ``(equations, position of
    the constant, its free dimension)``. Each group can run as one product with the constants
    concatenated along that dimension: one matrix kernel call instead of several, which is what
    a batch-1 step pays for."""
    groups: dict[Any, list] = {}
    for eqn in eqns:
        if eqn.primitive.name != "dot_general" or any(isinstance(v, Literal) for v in eqn.invars):
            continue
        is_known = [v in known for v in eqn.invars]
        if sorted(is_known) != [False, True]:
            continue
        pos = is_known.index(True)
        contracting, batch = eqn.params["dimension_numbers"]
        const = eqn.invars[pos]
        free = [d for d in range(const.aval.ndim)
                if d not in contracting[pos] and d not in batch[pos]]
        if batch[pos] or len(free) != 1:
            continue
        params = tuple(sorted(eqn.params.items()))
        try:
            hash(params)
        except TypeError:
            continue
        rest = tuple(n for d, n in enumerate(const.aval.shape) if d != free[0])
        key = (eqn.invars[1 - pos], pos, free[0], rest, const.aval.dtype, params)
        groups.setdefault(key, []).append(eqn)
    return [(members, key[1], key[2]) for key, members in groups.items() if len(members) > 1]


def _folded(fn: Callable, specs, *, onnx: bool = False, distinct: bool = True,
            merge_dots: bool = False) -> Callable:
    """``fn`` with its calls inlined (see :func:`_eval_inlined`) and every computation that
    depends on the parameters only — positivity reparameterisations, masks, transposes, the
    LTC's per-neuron constants — done once, now: the returned function computes only what
    depends on its arguments, with the folded values as constants. With ``distinct`` an output
    that is another output or an input is a copy of its own (an exported graph names each
    value once); without, it is the same value. With ``merge_dots``, products of one computed
    value with several constants run as one (see :func:`_dots_sharing_an_operand`)."""
    closed = jax.make_jaxpr(fn)(*specs)
    inlined = jax.make_jaxpr(
        lambda *a: _eval_inlined(closed.jaxpr, closed.consts, a, onnx=onnx))(*specs)
    jaxpr = inlined.jaxpr
    known = set(jaxpr.constvars)
    now, later = [], []
    for eqn in jaxpr.eqns:
        if not eqn.effects and all(isinstance(v, Literal) or v in known for v in eqn.invars):
            now.append(eqn)
            known.update(eqn.outvars)
        else:
            later.append(eqn)
    needed: dict[Any, None] = {}  # known values the remaining computation reads, in order
    for v in [*(v for eqn in later for v in eqn.invars), *jaxpr.outvars]:
        if not isinstance(v, Literal) and v in known:
            needed[v] = None

    def run(eqns, env, merged=None):
        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for eqn in eqns:
            if merged and id(eqn) in merged:
                members, pos, constant = merged[id(eqn)]
                if members is None:  # computed with the group's first product
                    continue
                operand = read(eqn.invars[1 - pos])
                (product,) = _bind(eqn, [constant, operand] if pos == 0 else [operand, constant])
                axis = 0 if pos == 0 else product.ndim - 1  # where dot_general puts the free dim
                start = 0
                for m in members:
                    size = m.outvars[0].aval.shape[axis]
                    env[m.outvars[0]] = jax.lax.slice_in_dim(product, start, start + size,
                                                             axis=axis)
                    start += size
                continue
            for v, o in zip(eqn.outvars, _bind(eqn, [read(v) for v in eqn.invars]), strict=True):
                env[v] = o
        return read

    def constants(*consts):
        read = run(now, dict(zip(jaxpr.constvars, consts, strict=True)))
        return [read(v) for v in needed]

    values = jax.jit(constants)(*inlined.consts)
    merged: dict[int, tuple[Any, int, Any]] = {}
    if merge_dots:
        folded_values = dict(zip(needed, values, strict=True))
        for members, pos, free in _dots_sharing_an_operand(later, known):
            constant = jnp.concatenate([folded_values[m.invars[pos]] for m in members], free)
            merged[id(members[0])] = (members, pos, constant)
            merged.update((id(m), (None, pos, None)) for m in members[1:])

    def folded(*args):
        env = dict(zip(needed, values, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        read = run(later, env, merged)
        outs = [read(v) for v in jaxpr.outvars]
        if not distinct:
            return tuple(outs)
        # An ONNX value has one name: an output that is another output (a CfC's output is its
        # state) or an input gets a copy of its own.
        seen: set[int] = {id(a) for a in args}
        for i, o in enumerate(outs):
            if id(o) in seen:
                outs[i] = jnp.copy(o)
            seen.add(id(outs[i]))
        return tuple(outs)

    return folded
