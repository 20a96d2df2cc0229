"""A closed jaxpr translated to one dependency-free C99 function.

:func:`translate` turns a closed jaxpr — its constants are the folded parameters — into the C
source of ``void f(const T *in0, ..., T *out0, ...)``, equation by equation:

* constants become ``static const`` arrays (only those read), scalar literals C literals;
* every intermediate value is a slice of a static scratch array per C type, handed back once the
  value is dead and reused (no ``malloc``; the footprint is fixed when the code is generated);
  shape-only operations (``reshape``, contiguous ``slice``/``split``, ``squeeze``, ...) are views
  and copy nothing;
* elementwise operations are loops over the output, broadcast operands read with zero strides
  and adjacent dimensions merged, so that a plain elementwise operation is one flat loop the C
  compiler vectorises; a value read once by another elementwise operation is not stored but
  computed inside its reader's loop (a chain ``0.5 * tanh(0.5 * w * x) + 0.5`` is one loop and
  one stored value); reductions and ``dot_general`` accumulate with the kept dimensions
  innermost (independent sums side by side rather than one long dependency chain), a constant
  operand stored transposed to the order the loops read it;
* ``scan`` becomes a ``for`` loop around its body; calls and custom-derivative wrappers
  (``pjit``, ``custom_jvp_call``, ...) are inlined; an equation whose operands are all
  constants is evaluated now (by JAX) and becomes a constant;
* float32 ``tanh`` is XLA's rational approximation (a few ulp, vectorisable); everything else
  calls ``<math.h>``.

The only headers are ``<math.h>`` and ``<stdint.h>``. The function keeps its scratch in static
storage: it is not reentrant (one call at a time per program). An output may be the same buffer
as an input (e.g. a state updated in place): outputs are written last, from scratch.

A primitive without a C form raises :class:`Unsupported` naming it. The translator and its
value model are in :mod:`._ctranslator`, the elementwise expressions in
:mod:`._celementwise`; this module holds the table of rules and the array rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.extend.core import ClosedJaxpr
from jax.lax import GatherScatterMode

from ._celementwise import (
    _BINARY,
    _HELPERS,
    _UNARY,
    _clamp,
    _elementwise,
    _is_float,
    _maxmin,
    _select_n,
)
from ._ctranslator import (
    CFunction as CFunction,
    Unsupported as Unsupported,
    _dtype_of,
    _out,
    _Ref,
    _row_major,
    _size,
    _stored,
    _Translator,
    ctype as ctype,
    literal as literal,
)
from ._jaxpr import CALL_PARAMS as _CALL_PARAMS


def unsupported_primitives(jaxpr: Any) -> set[str]:
    """Names of the primitives in ``jaxpr`` (and in the sub-jaxprs of the ones translated) that
    have no C translation."""
    found: set[str] = set()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _CALL_PARAMS and _CALL_PARAMS[name] in eqn.params:
            subs = [eqn.params[_CALL_PARAMS[name]]]
        elif name in _RULES:
            subs = [p for p in eqn.params.values() if isinstance(p, ClosedJaxpr)]
        else:
            found.add(name)
            continue
        for sub in subs:
            found |= unsupported_primitives(sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub)
    return found


def translate(closed: Any, name: str, inputs: Sequence[str], outputs: Sequence[str]) -> CFunction:
    """The C function ``name(const T *inputs..., T *outputs...)`` computing ``closed`` (a
    ``ClosedJaxpr``; its constants become static arrays). Raises :class:`Unsupported`."""
    missing = unsupported_primitives(closed.jaxpr)
    if missing:
        raise Unsupported(sorted(missing))
    jaxpr = closed.jaxpr
    t = _Translator(_RULES, _STRUCTURAL, _FUSED)
    args = [_Ref(tuple(v.aval.shape), np.dtype(v.aval.dtype), n) for v, n in
            zip(jaxpr.invars, inputs, strict=True)]
    consts = [t.const(np.asarray(c)) for c in closed.consts]
    outs = [t.materialize(r, hold=False) for r in t.run(jaxpr, args, consts)]
    # Outputs last, from scratch: an output buffer may be an input buffer (a state in place).
    staged = []
    for r in outs:
        if r.base in inputs and len(outs) > 1:
            tmp = t.alloc(r.shape, r.dtype)
            t.copy(tmp, r)
            r = tmp
        staged.append(r)
    for n, v, r in zip(outputs, jaxpr.outvars, staged, strict=True):
        t.copy(_Ref(tuple(v.aval.shape), np.dtype(v.aval.dtype), n), r)

    params = [f"const {ctype(v.aval.dtype)} *{n}" for v, n in zip(jaxpr.invars, inputs)]
    params += [f"{ctype(v.aval.dtype)} *{n}" for v, n in zip(jaxpr.outvars, outputs)]
    prototype = f"void {name}({', '.join(params)})"
    body = "\n".join(t.lines)
    defs = [text for helper, text in _HELPERS.items() if f"{helper}(" in body]
    const_bytes = 0
    for cname, value in t.consts.items():
        if cname not in t.read_consts:
            continue
        const_bytes += value.nbytes
        flat = value.reshape(-1)
        items = [literal(x, value.dtype) for x in flat] or ["0"]
        rows = ",\n    ".join(", ".join(items[k:k + 8]) for k in range(0, len(items), 8))
        defs.append(f"static const {ctype(value.dtype)} {cname}[{max(flat.size, 1)}] = {{\n"
                    f"    {rows}\n}};")
    scratch_bytes = 0
    for pool in t.pools.values():
        if pool.top:
            scratch_bytes += pool.top * np.dtype(_dtype_of(pool.ctype)).itemsize
            defs.append(f"static {pool.ctype} {pool.name}[{pool.top}];")
    function = f"{prototype}\n{{\n{body}\n}}\n"
    return CFunction(prototype, "\n".join(defs) + "\n", function, scratch_bytes, const_bytes)



def _scan(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    p = eqn.params
    body, n, nc, nk = p["jaxpr"], p["length"], p["num_consts"], p["num_carry"]
    consts, init, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
    # Read by every iteration: held through the loop (the body lets go of what it read once,
    # and a block freed there would be reused, and overwritten, before the next iteration).
    held = [r for r in [*consts, *xs] if r.block is not None]
    for r in held:
        r.block.users += 1
    carry = []
    for r in init:
        c = t.alloc(r.shape, r.dtype)
        c.block.users += 1  # held through the loop
        t.copy(c, r)
        carry.append(c)
    ys = []
    for v in body.jaxpr.outvars[nk:]:
        y = t.alloc((n, *v.aval.shape), v.aval.dtype)
        y.block.users += 1
        ys.append(y)
    i = t.fresh("t")
    idx = i if not p["reverse"] else f"({n - 1} - {i})"
    t.emit(f"for (int {i} = 0; {i} < {n}; ++{i}) {{")
    t.depth += 1
    xs_now = []
    for x in xs:
        step = _size(x.shape[1:])
        xs_now.append(dataclasses.replace(x, shape=x.shape[1:], literal=None, value=None,
                                          dyn=(*x.dyn, idx if step == 1 else f"{idx} * {step}")))
    outs = t.run(body.jaxpr, [*consts, *carry, *xs_now],
                 [t.const(np.asarray(c)) for c in body.consts])
    outs = _stored(t, outs)  # now, before any carry is overwritten
    for y, src in zip(ys, outs[nk:]):  # first: a y may be the carry before this step
        step = _size(y.shape[1:])
        t.copy(dataclasses.replace(y, shape=y.shape[1:],
                                   dyn=(idx if step == 1 else f"{idx} * {step}",)), src)
    carry_blocks = {c.block for c in carry}
    moves = []
    for c, src in zip(carry, outs[:nk]):
        if src.block is c.block and src.off == c.off and not src.dyn:
            continue  # carried unchanged
        if src.block in carry_blocks:  # read a carry that is being overwritten: stage it
            tmp = t.alloc(src.shape, src.dtype)
            t.copy(tmp, src)
            t.holds.append(tmp)
            tmp.block.users += 1
            src = tmp
        moves.append((c, src))
    for c, src in moves:
        t.copy(c, src)
    for r in [*outs, *t.holds]:
        t.release(r)
    t.holds = []
    t.depth -= 1
    t.emit("}")
    t.holds.extend([*carry, *ys, *held])  # the loop's holds, released once the outputs are bound
    return [*carry, *ys]



def _convert(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    shape, dtype = _out(eqn)
    (a,) = ins
    if dtype == a.dtype:
        return [a]
    out = t.alloc(shape, dtype)
    if dtype == np.bool_:
        t.assign(out, [(a, _row_major(shape))], lambda e: f"({e} != 0)")
    else:
        t.assign(out, [(a, _row_major(shape))], lambda e: f"({ctype(dtype)}){e}")
    return [out]


def _alias(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    """Operations that change no element (copies, barriers, shape-only): the same storage."""
    return [t.view(r, _out(eqn, k)[0]) for k, r in enumerate(ins[:len(eqn.outvars)])]


def _reduce_precision(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    info = np.finfo(ins[0].dtype)
    if (eqn.params["exponent_bits"], eqn.params["mantissa_bits"]) != (info.nexp, info.nmant):
        raise Unsupported(["reduce_precision"], "to a narrower format")
    return [ins[0]]


def _contiguous_block(shape: Sequence[int], starts: Sequence[int], sizes: Sequence[int],
                      steps: Sequence[int]) -> bool:
    """Whether a strided window of a row-major array is one contiguous run."""
    k = next((d for d, n in enumerate(sizes) if n != 1), len(sizes))
    if k < len(sizes) and steps[k] != 1:
        return False
    return all(s == 0 and n == m and st == 1
               for s, n, m, st in zip(starts[k + 1:], sizes[k + 1:], shape[k + 1:], steps[k + 1:]))


def _window(t: _Translator, src: _Ref, starts: Sequence[int], sizes: Sequence[int],
            steps: Sequence[int] | None = None) -> _Ref:
    """``src[starts : starts + sizes * steps : steps]``: a view when contiguous."""
    steps = list(steps or [1] * len(sizes))
    rm = _row_major(src.shape)
    off = sum(s * r for s, r in zip(starts, rm))
    if _contiguous_block(src.shape, starts, sizes, steps):
        return t.view(src, sizes, off)
    out = t.alloc(sizes, src.dtype)
    t.assign(out, [(t.view(src, src.shape, off), [st * r for st, r in zip(steps, rm)])],
             lambda a: a)
    return out


def _slice(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    p = eqn.params
    shape, _ = _out(eqn)
    return [_window(t, ins[0], p["start_indices"], shape, p["strides"])]


def _split(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    (src,) = ins
    axis = int(eqn.params["axis"])
    outs, start = [], 0
    for k in range(len(eqn.outvars)):
        shape, _ = _out(eqn, k)
        starts = [0] * len(shape)
        starts[axis] = start
        outs.append(_window(t, src, starts, shape))
        start += shape[axis]
    return outs


def _concatenate(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    shape, dtype = _out(eqn)
    dim = int(eqn.params["dimension"])
    out = t.alloc(shape, dtype)
    rm, start = _row_major(shape), 0
    for r in ins:
        region = t.view(out, shape, start * rm[dim])
        t.nest(r.shape, [(region, rm), (r, _row_major(r.shape))], lambda e: f"{e[0]} = {e[1]};")
        start += r.shape[dim]
    return [out]


def _stack(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    shape, dtype = _out(eqn)
    axis = int(eqn.params["axis"])
    out = t.alloc(shape, dtype)
    rm = _row_major(shape)
    into = rm[:axis] + rm[axis + 1:]  # where an operand's elements land, the new axis fixed
    for k, r in enumerate(ins):
        region = t.view(out, shape, k * rm[axis])
        t.nest(r.shape, [(region, into), (r, _row_major(r.shape))], lambda e: f"{e[0]} = {e[1]};")
    return [out]


def _broadcast_in_dim(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    shape, dtype = _out(eqn)
    src = ins[0]
    if _size(src.shape) == _size(shape):  # only inserts dimensions of 1: a view
        return [t.view(src, shape)]
    dims = eqn.params["broadcast_dimensions"]
    rm = _row_major(src.shape)
    strides = [0] * len(shape)
    for i, j in enumerate(dims):
        strides[j] = rm[i] if src.shape[i] == shape[j] else 0
    out = t.alloc(shape, dtype)
    t.assign(out, [(src, strides)], lambda a: a)
    return [out]


def _transpose(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    shape, dtype = _out(eqn)
    src, perm = ins[0], eqn.params["permutation"]
    moved = [d for d in perm if src.shape[d] != 1]
    if moved == sorted(moved):  # only dimensions of 1 move: a view
        return [t.view(src, shape)]
    rm = _row_major(src.shape)
    out = t.alloc(shape, dtype)
    t.assign(out, [(src, [rm[d] for d in perm])], lambda a: a)
    return [out]


def _reshape(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    if eqn.params.get("dimensions") is not None:
        raise Unsupported(["reshape"], "with dimensions (a transposing reshape)")
    return [t.view(ins[0], _out(eqn)[0])]


def _iota(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    shape, dtype = _out(eqn)
    dim = int(eqn.params["dimension"])
    along = np.arange(shape[dim], dtype=dtype).reshape([-1 if d == dim else 1
                                                         for d in range(len(shape))])
    return [t.const(np.broadcast_to(along, shape).copy())]


def _static_index(t: _Translator, ref: _Ref, size: int, limit: int) -> int | str:
    """A start index clamped to ``[0, limit - size]`` as lax does: an int when known now,
    else the name of a C variable holding it."""
    hi = max(limit - size, 0)
    if ref.value is not None:
        return min(max(int(ref.value), 0), hi)
    v = t.fresh("j")
    t.emit(f"int {v} = (int){t.read(ref)};")
    t.emit(f"{v} = {v} < 0 ? 0 : ({v} > {hi} ? {hi} : {v});")
    return v


def _offset(t: _Translator, src: _Ref, starts: Sequence[int | str]) -> _Ref:
    rm = _row_major(src.shape)
    const = sum(s * r for s, r in zip(starts, rm) if isinstance(s, int))
    dyn = tuple(s if r == 1 else f"{r} * {s}" for s, r in zip(starts, rm) if isinstance(s, str))
    view = t.view(src, src.shape, const)
    return dataclasses.replace(view, dyn=view.dyn + dyn)


def _dynamic_slice(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    src, *idx = ins
    sizes = eqn.params["slice_sizes"]
    starts = [_static_index(t, r, n, m) for r, n, m in zip(idx, sizes, src.shape)]
    if all(isinstance(s, int) for s in starts):
        return [_window(t, src, starts, sizes)]
    out = t.alloc(sizes, src.dtype)
    t.assign(out, [(_offset(t, src, starts), _row_major(src.shape))], lambda a: a)
    return [out]


def _dynamic_update_slice(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    src, update, *idx = ins
    out = t.alloc(src.shape, src.dtype)
    t.copy(out, src)
    starts = [_static_index(t, r, n, m) for r, n, m in zip(idx, update.shape, src.shape)]
    region = _offset(t, out, starts)
    t.nest(update.shape, [(region, _row_major(src.shape)), (update, _row_major(update.shape))],
           lambda e: f"{e[0]} = {e[1]};")
    return [out]


def _gather(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    """``jnp.take(operand, indices, axis)`` (``x[idx]``, and its vmapped forms) only."""
    src, idx = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    shape, dtype = _out(eqn)
    axes = tuple(int(d) for d in dn.start_index_map)
    kept = [d for d in range(len(src.shape)) if d not in axes]
    offset_dims = [int(d) for d in dn.offset_dims]
    if (len(axes) != 1 or idx.shape[-1:] != (1,) or tuple(dn.collapsed_slice_dims) != axes
            or tuple(dn.operand_batching_dims) or len(offset_dims) != len(kept)
            or any(p["slice_sizes"][d] != (1 if d in axes else src.shape[d])
                   for d in range(len(src.shape)))):
        raise Unsupported(["gather"], "only jnp.take(operand, indices, axis)")
    mode = p["mode"]
    if mode == GatherScatterMode.FILL_OR_DROP and not _is_float(dtype):
        raise Unsupported(["gather"], "filling out-of-bounds integer indices")
    (axis,) = axes
    n = src.shape[axis]
    rm_src, rm_idx = _row_major(src.shape), _row_major(idx.shape[:-1])
    src_strides, idx_strides, batch = [], [], iter(range(len(idx.shape) - 1))
    for j in range(len(shape)):
        if j in offset_dims:
            src_strides.append(rm_src[kept[offset_dims.index(j)]])
            idx_strides.append(0)
        else:
            src_strides.append(0)
            idx_strides.append(rm_idx[next(batch)])
    out = t.alloc(shape, dtype)
    j = t.fresh("j")
    row = dataclasses.replace(src, dyn=(*src.dyn, f"{rm_src[axis]} * {j}"))

    def statement(e: list[str]) -> list[str]:
        if mode == GatherScatterMode.FILL_OR_DROP:
            fill = literal(np.nan if p["fill_value"] is None else p["fill_value"], dtype)
            return [f"int {j} = (int){e[1]};",
                    f"{e[0]} = ({j} < 0 || {j} > {n - 1}) ? {fill} : {e[2]};"]
        return [f"int {j} = (int){e[1]};",  # CLIP, and PROMISE_IN_BOUNDS kept in bounds
                f"{j} = {j} < 0 ? 0 : ({j} > {n - 1} ? {n - 1} : {j});",
                f"{e[0]} = {e[2]};"]

    t.nest(shape, [(out, _row_major(shape)), (idx, idx_strides), (row, src_strides)],
           statement)
    return [out]


_LANES = 8  # partial results of a long contiguous reduction (a 256-bit vector of float32)
_REDUCERS = {  # name: (init, combine)
    "reduce_sum": (lambda d: literal(0, d), lambda a, b, d: f"{a} + {b}"),
    "reduce_prod": (lambda d: literal(1, d), lambda a, b, d: f"{a} * {b}"),
    "reduce_max": (lambda d: literal(-np.inf if _is_float(d) else np.iinfo(d).min, d),
                   lambda a, b, d: _maxmin(">")(a, b, dtype=d, eqn=None)),
    "reduce_min": (lambda d: literal(np.inf if _is_float(d) else np.iinfo(d).max, d),
                   lambda a, b, d: _maxmin("<")(a, b, dtype=d, eqn=None)),
    "reduce_and": (lambda d: "1", lambda a, b, d: f"{a} && {b}"),
    "reduce_or": (lambda d: "0", lambda a, b, d: f"{a} || {b}"),
}


def _reduce(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    (src,) = ins
    init, combine = _REDUCERS[eqn.primitive.name]
    shape, dtype = _out(eqn)
    axes = sorted(int(a) for a in eqn.params["axes"])
    kept = [d for d in range(len(src.shape)) if d not in axes]
    out = t.alloc(shape, dtype)
    zero = init(dtype)
    big = [d for d in range(len(src.shape)) if src.shape[d] != 1]
    run = _size([src.shape[d] for d in axes])
    trailing = max([d for d in big if d not in axes], default=-1) < min(
        [d for d in big if d in axes], default=-1)
    if run >= 2 * _LANES and trailing:
        # Each output reduces one contiguous run of ``src``: _LANES partial results side by
        # side (a vector), combined at the end, instead of one long chain of dependent adds.
        c, lane, acc = t.fresh("i"), t.fresh("i"), t.fresh("acc")
        ct, whole = ctype(dtype), run // _LANES * _LANES
        tree = [f"{acc}[{k}]" for k in range(_LANES)]
        while len(tree) > 1:
            tree = [f"({combine(tree[k], tree[k + 1], dtype)})" for k in range(0, len(tree), 2)]
        # The run's elements: src[offset of the output's run + c + lane] (and + c in the tail).
        in_lanes = dataclasses.replace(src, dyn=(*src.dyn, c, lane))
        in_tail = dataclasses.replace(src, dyn=(*src.dyn, c))

        def reduce_run(e: list[str]) -> list[str]:
            return [
                f"{ct} {acc}[{_LANES}] = {{{', '.join([zero] * _LANES)}}};",
                f"for (int {c} = 0; {c} < {whole}; {c} += {_LANES}) {{",
                f"    for (int {lane} = 0; {lane} < {_LANES}; ++{lane}) {{",
                f"        {acc}[{lane}] = {combine(f'{acc}[{lane}]', e[1], dtype)};",
                "    }",
                "}",
                *([f"for (int {c} = {whole}; {c} < {run}; ++{c}) {{",
                   f"    {acc}[0] = {combine(f'{acc}[0]', e[2], dtype)};",
                   "}"] if whole < run else []),
                f"{e[0]} = {tree[0]};",
            ]

        strides = [run * s for s in _row_major(shape)]
        t.nest(shape, [(out, _row_major(shape)), (in_lanes, strides), (in_tail, strides)],
               reduce_run)
        return [out]
    t.nest(shape, [(out, _row_major(shape))], lambda e: f"{e[0]} = {zero};")
    # The reduced dimensions outermost: the sums for different outputs run side by side.
    order = [*axes, *kept]
    rm_src, rm_out = _row_major(src.shape), _row_major(shape)
    out_strides = [0] * len(src.shape)
    for k, d in enumerate(kept):
        out_strides[d] = rm_out[k]
    t.nest([src.shape[d] for d in order],
           [(out, [out_strides[d] for d in order]), (src, [rm_src[d] for d in order])],
           lambda e: f"{e[0]} = {combine(e[0], e[1], dtype)};")
    return [out]


def _dot_general(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = (tuple(int(d) for d in x) for x in (lc, rc, lb, rb))
    shape, dtype = _out(eqn)
    lf = [d for d in range(len(lhs.shape)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rhs.shape)) if d not in rc and d not in rb]
    # Loops: batch, contracting, lhs free, rhs free (the output's last dimensions innermost).
    loops = ([("b", k) for k in range(len(lb))] + [("c", k) for k in range(len(lc))]
             + [("l", k) for k in range(len(lf))] + [("r", k) for k in range(len(rf))])
    sizes = ([lhs.shape[d] for d in lb] + [lhs.shape[d] for d in lc]
             + [lhs.shape[d] for d in lf] + [rhs.shape[d] for d in rf])

    def operand(ref: _Ref, batch, contract, free, tag) -> tuple[_Ref, list[int]]:
        own = {"b": list(batch), "c": list(contract), tag: list(free)}
        order = [own[kind][k] for kind, k in loops if kind in own]
        if ref.value is not None and order != sorted(order):
            # A constant is stored in the order the loops read it: unit stride innermost.
            ref = t.const(np.ascontiguousarray(np.transpose(ref.value, order)))
            rm = dict(zip(order, _row_major(ref.shape)))
        else:
            rm = dict(enumerate(_row_major(ref.shape)))
        return ref, [rm[own[kind][k]] if kind in own else 0 for kind, k in loops]

    a, sa = operand(lhs, lb, lc, lf, "l")
    b, sb = operand(rhs, rb, rc, rf, "r")
    rm_out = _row_major(shape)
    out_pos = {("b", k): k for k in range(len(lb))}
    out_pos.update({("l", k): len(lb) + k for k in range(len(lf))})
    out_pos.update({("r", k): len(lb) + len(lf) + k for k in range(len(rf))})
    so = [rm_out[out_pos[lp]] if lp in out_pos else 0 for lp in loops]
    out = t.alloc(shape, dtype)
    zero = literal(0, dtype)
    t.nest(shape, [(out, rm_out)], lambda e: f"{e[0]} = {zero};")
    ct = ctype(dtype)
    cast = "" if a.dtype == b.dtype == dtype else f"({ct})"
    t.nest(sizes, [(out, so), (a, sa), (b, sb)],
           lambda e: f"{e[0]} += {cast}{e[1]} * {cast}{e[2]};")
    return [out]


_RULES: dict[str, Callable[[_Translator, Any, list[_Ref]], list[_Ref]]] = {
    **{n: _elementwise(f) for n, f in {**_UNARY, **_BINARY}.items()},
    "select_n": _elementwise(lambda w, *c, dtype, eqn: _select_n(w, *c, dtype=dtype, eqn=eqn)),
    "clamp": _elementwise(_clamp),
    "convert_element_type": _convert,
    "copy": _alias, "copy_p": _alias, "optimization_barrier": _alias, "stop_gradient": _alias,
    "squeeze": _alias, "expand_dims": _alias, "reduce_precision": _reduce_precision,
    "reshape": _reshape, "broadcast_in_dim": _broadcast_in_dim, "transpose": _transpose,
    "slice": _slice, "split": _split, "concatenate": _concatenate, "stack": _stack,
    "iota": _iota, "dynamic_slice": _dynamic_slice, "dynamic_update_slice": _dynamic_update_slice,
    "gather": _gather, "dot_general": _dot_general, "scan": _scan,
    **{n: _reduce for n in _REDUCERS},
}
# Rules that are not evaluated now even when every operand is a constant.
_STRUCTURAL = {"scan"}
# Rules that read deferred operands in their own loops (the others get them stored first).
_FUSED = {*_UNARY, *_BINARY, "select_n", "clamp"}
