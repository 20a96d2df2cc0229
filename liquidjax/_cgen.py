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

A primitive without a C form raises :class:`Unsupported` naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._jaxpr import CALL_PARAMS as _CALL_PARAMS, bind as _bind


class Unsupported(Exception):
    """The jaxpr contains primitives (or forms of them) that have no C translation here."""

    def __init__(self, primitives: Sequence[str], detail: str = ""):
        self.primitives = tuple(primitives)
        self.detail = detail
        super().__init__(", ".join(self.primitives) + (f" ({detail})" if detail else ""))


_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.int8): "int8_t", np.dtype(np.int16): "int16_t",
           np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t",
           np.dtype(np.uint8): "uint8_t", np.dtype(np.uint16): "uint16_t",
           np.dtype(np.uint32): "uint32_t", np.dtype(np.uint64): "uint64_t",
           np.dtype(np.bool_): "unsigned char"}


def ctype(dtype: Any) -> str:
    """The C type of a NumPy dtype."""
    try:
        return _CTYPES[np.dtype(dtype)]
    except KeyError:
        raise Unsupported([f"dtype {np.dtype(dtype)}"],
                          "C types exist for float32/64, (u)int8-64 and bool") from None


def literal(value: Any, dtype: Any) -> str:
    """A C literal of ``dtype`` that reads back exactly ``value``."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "1" if value else "0"
    if dtype.kind in "iu":
        v = int(value)
        suffix = ("u" if dtype.kind == "u" else "") + ("LL" if dtype.itemsize == 8 else "")
        if v == np.iinfo(dtype).min and dtype.kind == "i":  # -2147483648 is not a C literal
            return f"({v + 1}{suffix} - 1)"
        return f"({v}{suffix})" if v < 0 else f"{v}{suffix}"
    v = dtype.type(value)
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    text = repr(float(v)) if dtype == np.float64 else str(np.float32(v))  # shortest round trip
    text += "f" if dtype == np.float32 else ""
    return f"({text})" if text.startswith("-") else text


def _row_major(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


# ------------------------------------------------------------------------------ where values live
@dataclasses.dataclass(eq=False)
class _Block:
    """A slice of a scratch pool, shared by a value and its views; ``users``: reads to come."""

    pool: _Pool
    offset: int
    size: int
    users: int = 0
    freed: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class _Ref:
    """Where a value lives: ``base[off + dyn...]`` (row-major), or a scalar C literal."""

    shape: tuple[int, ...]
    dtype: np.dtype
    base: str = ""
    off: int = 0
    dyn: tuple[str, ...] = ()  # run-time offset terms (a scan's time index)
    literal: str | None = None
    block: _Block | None = None
    value: np.ndarray | None = None  # known now: a constant or a literal
    # Not stored: an elementwise expression of operands (same shape, or scalars), computed
    # where its one reader reads it (fused into the reader's loop).
    deferred: tuple[Callable[[list[str]], str], tuple[_Ref, ...]] | None = None

    def at(self, const: int = 0, terms: Sequence[str] = ()) -> str:
        if self.literal is not None:
            return self.literal
        parts = [*self.dyn, *terms]
        total = self.off + const
        if total or not parts:
            parts.append(str(total))
        return f"{self.base}[{' + '.join(parts)}]"


class _Pool:
    """First-fit allocator over one static array (offsets aligned to 8 elements)."""

    def __init__(self, name: str, ctype_: str):
        self.name, self.ctype = name, ctype_
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted, merged
        self.top = 0

    def take(self, n: int) -> int:
        n = -(-max(n, 1) // 8) * 8
        for k, (off, size) in enumerate(self.free):
            if size >= n:
                self.free[k:k + 1] = [(off + n, size - n)] if size > n else []
                return off
        if self.free and sum(self.free[-1]) == self.top:  # grow the last free slice
            off = self.free.pop()[0]
        else:
            off = self.top
        self.top = off + n
        return off

    def give(self, off: int, n: int) -> None:
        n = -(-max(n, 1) // 8) * 8
        merged = []
        for o, s in sorted([*self.free, (off, n)]):
            if merged and sum(merged[-1]) == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


# ------------------------------------------------------------------------------------ translator
@dataclasses.dataclass(frozen=True)
class CFunction:
    """The translation of a jaxpr: ``definitions`` (helpers, constants, scratch; all static) and
    ``function`` (the definition of ``prototype``)."""

    prototype: str
    definitions: str
    function: str
    scratch_bytes: int
    constant_bytes: int


_TANHF = """\
/* float32 tanh as XLA computes it (Eigen's rational approximation): a few ulp, vectorisable */
static float lj_tanhf(float x)
{
    const float c = 7.90531110763549805f;
    float y = x < -c ? -c : (x > c ? c : x);
    float y2 = y * y;
    float p = -2.76076847742355e-16f;
    float q = 1.19825839466702e-06f;
    p = p * y2 + 2.00018790482477e-13f;
    p = p * y2 + -8.60467152213735e-11f;
    p = p * y2 + 5.12229709037114e-08f;
    p = p * y2 + 1.48572235717979e-05f;
    p = p * y2 + 6.37261928875436e-04f;
    p = p * y2 + 4.89352455891786e-03f;
    q = q * y2 + 1.18534705686654e-04f;
    q = q * y2 + 2.26843463243900e-03f;
    q = q * y2 + 4.89352518554385e-03f;
    return fabsf(x) < 0.0004f ? x : y * p / q;
}
"""
_HELPERS = {"lj_tanhf": _TANHF}


class _Translator:
    def __init__(self):
        self.lines: list[str] = []
        self.depth = 1
        self.pools: dict[str, _Pool] = {}
        self.consts: dict[str, np.ndarray] = {}  # name -> value (emitted if read)
        self.read_consts: set[str] = set()
        self.names = itertools.count()
        self.holds: list[_Ref] = []  # released once an equation's outputs are bound
        self.single_use = False  # the current equation's (first) output is read once

    # -- text
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.names)}"

    def read(self, ref: _Ref, const: int = 0, terms: Sequence[str] = ()) -> str:
        if ref.base in self.consts:
            self.read_consts.add(ref.base)
        return ref.at(const, terms)

    # -- values
    def alloc(self, shape: Sequence[int], dtype: Any) -> _Ref:
        ct = ctype(dtype)
        pool = self.pools.get(ct)
        if pool is None:
            pool = self.pools[ct] = _Pool("scratch_" + ct.replace(" ", "_"), ct)
        n = _size(shape)
        block = _Block(pool, pool.take(n), n)
        return _Ref(tuple(shape), np.dtype(dtype), pool.name, block.offset, block=block)

    def const(self, value: Any, dtype: Any = None) -> _Ref:
        value = np.asarray(value, dtype)
        if value.ndim == 0:
            return _Ref((), value.dtype, literal=literal(value, value.dtype), value=value)
        ctype(value.dtype)
        name = self.fresh("k")
        self.consts[name] = np.ascontiguousarray(value)
        return _Ref(value.shape, value.dtype, name, value=self.consts[name])

    def view(self, ref: _Ref, shape: Sequence[int], off: int = 0) -> _Ref:
        shape = tuple(shape)
        if ref.value is not None and off == 0 and _size(shape) == _size(ref.shape):
            return self.const(ref.value.reshape(shape))  # still known
        if ref.literal is not None:
            return dataclasses.replace(ref, shape=shape)
        return dataclasses.replace(ref, shape=shape, off=ref.off + off, value=None)

    def bind(self, env: dict, var: Any, ref: _Ref, uses: int) -> None:
        env[var] = ref
        if ref.block is not None:
            ref.block.users += uses

    def release(self, ref: _Ref, n: int = 1) -> None:
        block = ref.block
        if block is None or block.freed:
            return
        block.users -= n
        if block.users <= 0:
            block.freed = True
            block.pool.give(block.offset, block.size)

    # -- loops
    def nest(self, sizes: Sequence[int], accesses: Sequence[tuple[_Ref, Sequence[int]]],
             statement: Callable[[list[str]], str | list[str]]) -> None:
        """Loops over ``sizes`` (outermost first) around ``statement`` (given each access's C
        expression); an access is a value and its stride along each loop."""
        if any(n == 0 for n in sizes):
            return
        # A deferred value read once per element is computed in these loops; read more often
        # (broadcast, a product's operand) it is stored first.
        accesses = [(self.materialize(r) if r.deferred is not None and not _once(r, s, sizes)
                     else r, s) for r, s in accesses]
        leaves: list[tuple[_Ref, Sequence[int]]] = []

        def tree(ref: _Ref, strides: Sequence[int]) -> Any:
            if ref.deferred is None:
                leaves.append((ref, strides))
                return len(leaves) - 1
            fn, ops = ref.deferred
            return fn, [tree(op, strides if op.shape == ref.shape else [0] * len(strides))
                        for op in ops]

        trees = [tree(r, s) for r, s in accesses]
        consumed = [r for r, _ in accesses if r.deferred is not None]
        dims: list[tuple[int, list[int]]] = []
        for d, n in enumerate(sizes):
            if n == 1:
                continue
            strides = [s[d] for _, s in leaves]
            if dims and all(p == s * n for p, s in zip(dims[-1][1], strides)):
                dims[-1] = (dims[-1][0] * n, strides)  # merge with the loop outside it
            else:
                dims.append((n, strides))
        loop_vars = [self.fresh("i") for _ in dims]
        for v, (n, _) in zip(loop_vars, dims):
            self.emit(f"for (int {v} = 0; {v} < {n}; ++{v}) {{")
            self.depth += 1
        exprs = []
        for k, (ref, _) in enumerate(leaves):
            terms = [v if st[k] == 1 else f"{st[k]} * {v}"
                     for v, (_, st) in zip(loop_vars, dims) if st[k] != 0]
            exprs.append(self.read(ref, 0, terms))

        def text(node: Any) -> str:
            return exprs[node] if isinstance(node, int) else node[0]([text(n) for n in node[1]])

        body = statement([text(node) for node in trees])
        for line in [body] if isinstance(body, str) else body:
            self.emit(line)
        for _ in dims:
            self.depth -= 1
            self.emit("}")
        while consumed:  # their operands are read: let them go
            ref = consumed.pop()
            for op in ref.deferred[1]:
                if op.deferred is not None:
                    consumed.append(op)
                else:
                    self.release(op)

    def defer(self, shape: Sequence[int], dtype: Any, fn: Callable[[list[str]], str],
              operands: Sequence[_Ref]) -> _Ref:
        """A value computed where it is read (see ``_Ref.deferred``); its operands are held
        until then."""
        for op in operands:
            if op.block is not None:
                op.block.users += 1
        return _Ref(tuple(shape), np.dtype(dtype), deferred=(fn, tuple(operands)))

    def materialize(self, ref: _Ref, hold: bool = True) -> _Ref:
        """``ref`` stored (a deferred value computed now); with ``hold`` the storage is let go
        after the current equation."""
        if ref.deferred is None:
            return ref
        out = self.alloc(ref.shape, ref.dtype)
        self.copy(out, ref)
        if hold:
            out.block.users += 1
            self.holds.append(out)
        return out

    def assign(self, out: _Ref, operands: Sequence[tuple[_Ref, Sequence[int]]],
               expr: Callable[..., str]) -> None:
        """``out[i] = expr(operands at i)`` over every index ``i`` of ``out``."""
        self.nest(out.shape, [(out, _row_major(out.shape)), *operands],
                  lambda e: f"{e[0]} = {expr(*e[1:])};")

    def copy(self, out: _Ref, src: _Ref) -> None:
        self.assign(out, [(src, _broadcast_strides(src.shape, out.shape))], lambda a: a)

    # -- equations
    def run(self, jaxpr: Any, args: Sequence[_Ref], consts: Sequence[_Ref]) -> list[_Ref]:
        """Emit ``jaxpr``'s equations; its outputs each hold one use (the caller releases)."""
        from jax.extend.core import Literal

        uses = Counter(v for eqn in jaxpr.eqns for v in eqn.invars
                       if not isinstance(v, Literal))
        uses.update(v for v in jaxpr.outvars if not isinstance(v, Literal))
        env: dict[Any, _Ref] = {}
        for v, r in [*zip(jaxpr.constvars, consts, strict=True),
                     *zip(jaxpr.invars, args, strict=True)]:
            self.bind(env, v, r, uses[v])

        def get(v):
            return self.const(v.val, v.aval.dtype) if isinstance(v, Literal) else env[v]

        for eqn in jaxpr.eqns:
            ins = [get(v) for v in eqn.invars]
            self.single_use = uses.get(eqn.outvars[0], 0) == 1 and eqn.outvars[0] not in set(
                jaxpr.outvars)
            outs = self.equation(eqn, ins)
            for v, r in zip(eqn.outvars, outs, strict=True):
                self.bind(env, v, r, uses.get(v, 0))
            holds, self.holds = self.holds, []
            for r in [*holds, *(env[v] for v in eqn.invars if not isinstance(v, Literal))]:
                self.release(r)
            for r in outs:
                if r.block is not None and r.block.users == 0:
                    self.release(r, 0)  # an output nobody reads
        return [get(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
        name = eqn.primitive.name
        if name not in _FUSED:
            ins = [self.materialize(r) for r in ins]
        if name in _CALL_PARAMS:
            return _inline(self, eqn, ins)
        rule = _RULES.get(name)
        if rule is None:
            raise Unsupported([name])
        if (name not in _STRUCTURAL and not eqn.effects
                and all(r.value is not None for r in ins)):
            return [self.const(np.asarray(o), o.dtype)
                    for o in _bind(eqn, [r.value for r in ins])]
        return rule(self, eqn, ins)


def _once(ref: _Ref, strides: Sequence[int], sizes: Sequence[int]) -> bool:
    """Whether loops over ``sizes`` read each element of ``ref`` once (no dimension of the
    loops that leaves it in place)."""
    return all(s != 0 for s, n in zip(strides, sizes) if n != 1) and _size(sizes) == _size(
        ref.shape)


def _broadcast_strides(shape: Sequence[int], out: Sequence[int]) -> list[int]:
    """Strides of a row-major value of ``shape`` read at every index of ``out`` (same rank, or
    a scalar; a dimension of 1 broadcast)."""
    if len(shape) == 0:
        return [0] * len(out)
    assert len(shape) == len(out), (shape, out)
    return [s if n == m else 0 for s, n, m in zip(_row_major(shape), shape, out)]


def unsupported_primitives(jaxpr: Any) -> set[str]:
    """Names of the primitives in ``jaxpr`` (and in the sub-jaxprs of the ones translated) that
    have no C translation."""
    from jax.extend.core import ClosedJaxpr

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
    t = _Translator()
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


def _dtype_of(ct: str) -> np.dtype:
    return next(d for d, c in _CTYPES.items() if c == ct)


# ----------------------------------------------------------------------------------------- rules
def _out(eqn: Any, k: int = 0) -> tuple[tuple[int, ...], np.dtype]:
    aval = eqn.outvars[k].aval
    return tuple(aval.shape), np.dtype(aval.dtype)


def _inline(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    from jax.extend.core import ClosedJaxpr

    param = _CALL_PARAMS[eqn.primitive.name]
    if param not in eqn.params:
        raise Unsupported([eqn.primitive.name])
    inner = eqn.params[param]
    if isinstance(inner, ClosedJaxpr):
        outs = t.run(inner.jaxpr, ins, [t.const(np.asarray(c)) for c in inner.consts])
    else:
        outs = t.run(inner, ins, [])
    outs = _stored(t, outs)  # the caller may read them more than once
    t.holds.extend(outs)
    return outs


def _stored(t: _Translator, outs: list[_Ref]) -> list[_Ref]:
    """A jaxpr's outputs (each holding one use), deferred ones stored, holding theirs."""
    stored = [t.materialize(o, hold=False) for o in outs]
    for o, r in zip(outs, stored):
        if r is not o:
            r.block.users += 1
    return stored


def _scan(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
    p = eqn.params
    body, n, nc, nk = p["jaxpr"], p["length"], p["num_consts"], p["num_carry"]
    consts, init, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
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
    t.holds.extend([*carry, *ys])  # the loop's holds, released once the outputs are bound
    return [*carry, *ys]


def _elementwise(expr: Callable[..., str]) -> Callable:
    """A rule ``out = expr(operands...)`` with scalar and size-1 operands broadcast; ``expr``
    gets the operands' C expressions, then ``dtype=`` (the first operand's) and ``eqn=``."""

    def rule(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
        shape, dtype = _out(eqn)
        if t.single_use and all(r.shape == shape or r.shape == () for r in ins):
            return [t.defer(shape, dtype, lambda e: expr(*e, dtype=ins[0].dtype, eqn=eqn), ins)]
        out = t.alloc(shape, dtype)
        operands = [(r, _broadcast_strides(r.shape, shape)) for r in ins]
        t.assign(out, operands, lambda *e: expr(*e, dtype=ins[0].dtype, eqn=eqn))
        return [out]

    return rule


def _is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def _math(fn: str) -> Callable[..., str]:
    """A ``<math.h>`` function (``fnf`` in float32)."""

    def expr(*args: str, dtype: np.dtype, eqn: Any) -> str:
        if not _is_float(dtype):
            raise Unsupported([eqn.primitive.name], f"on {dtype}")
        suffix = "f" if dtype == np.float32 else ""
        return f"{fn}{suffix}({', '.join(args)})"

    return expr


def _one(dtype: np.dtype) -> str:
    return literal(1, dtype)


def _tanh(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    if dtype == np.float32:
        return f"lj_tanhf({a})"
    return _math("tanh")(a, dtype=dtype, eqn=eqn)


def _logistic(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    if dtype == np.float32:  # through the vectorisable tanh: 1/(1+e^-x) = (1 + tanh(x/2)) / 2
        return f"(0.5f * {_tanh(f'(0.5f * {a})', dtype=dtype, eqn=eqn)} + 0.5f)"
    return f"({_one(dtype)} / ({_one(dtype)} + {_math('exp')(f'(-{a})', dtype=dtype, eqn=eqn)}))"


def _integer_pow(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    y = int(eqn.params["y"])
    if y == 0:
        return _one(dtype)
    prod = " * ".join([a] * abs(y))
    return f"({prod})" if y > 0 else f"({_one(dtype)} / ({prod}))"


def _round(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    # lax.RoundingMethod: 0 away from zero (C round), 1 to nearest even (rint in the default mode)
    return _math("rint" if int(eqn.params["rounding_method"]) == 1 else "round")(
        a, dtype=dtype, eqn=eqn)


def _abs(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    return _math("fabs")(a, dtype=dtype, eqn=eqn) if _is_float(dtype) else f"({a} < 0 ? -{a} : {a})"


def _sign(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    z = literal(0, dtype)
    if _is_float(dtype):  # NaN and signed zeros pass through, as in lax.sign
        return f"({a} > {z} ? {_one(dtype)} : ({a} < {z} ? -{_one(dtype)} : {a}))"
    return f"(({a} > 0) - ({a} < 0))"


def _maxmin(op: str) -> Callable[..., str]:
    def expr(a: str, b: str, *, dtype: np.dtype, eqn: Any) -> str:
        if _is_float(dtype):  # NaN propagates, as in lax.max/min
            return f"(({a} {op} {b} || {a} != {a}) ? {a} : {b})"
        return f"({a} {op} {b} ? {a} : {b})"

    return expr


def _infix(op: str, kinds: str = "fiub") -> Callable[..., str]:
    def expr(a: str, b: str, *, dtype: np.dtype, eqn: Any) -> str:
        if dtype.kind not in kinds:
            raise Unsupported([eqn.primitive.name], f"on {dtype}")
        return f"({a} {op} {b})"

    return expr


def _rem(a: str, b: str, *, dtype: np.dtype, eqn: Any) -> str:
    return _math("fmod")(a, b, dtype=dtype, eqn=eqn) if _is_float(dtype) else f"({a} % {b})"


def _not(a: str, *, dtype: np.dtype, eqn: Any) -> str:
    return f"(!{a})" if dtype == np.bool_ else f"(~{a})"


def _select_n(which: str, *cases: str, dtype: np.dtype, eqn: Any) -> str:
    if len(cases) == 1:
        return cases[0]
    if dtype == np.bool_:
        return f"({which} ? {cases[1]} : {cases[0]})"
    expr = cases[-1]
    for k in range(len(cases) - 2, -1, -1):
        expr = f"({which} == {k} ? {cases[k]} : {expr})"
    return expr


def _clamp(lo: str, x: str, hi: str, *, dtype: np.dtype, eqn: Any) -> str:
    return f"({x} < {lo} ? {lo} : ({x} > {hi} ? {hi} : {x}))"


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
    from jax.lax import GatherScatterMode

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


_UNARY = {
    "neg": lambda a, **k: f"(-{a})", "abs": _abs, "sign": _sign, "not": _not,
    "tanh": _tanh, "logistic": _logistic, "integer_pow": _integer_pow, "round": _round,
    "square": lambda a, **k: f"({a} * {a})",
    "rsqrt": lambda a, dtype, eqn: f"({_one(dtype)} / {_math('sqrt')(a, dtype=dtype, eqn=eqn)})",
    "is_finite": lambda a, dtype, eqn: f"(isfinite({a}) != 0)",
    **{n: _math(n) for n in ("exp", "exp2", "log", "log1p", "expm1", "sqrt", "cbrt", "sin",
                             "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh",
                             "acosh", "atanh", "erf", "erfc", "floor", "ceil", "lgamma")},
}
_BINARY = {
    "add": _infix("+"), "sub": _infix("-"), "mul": _infix("*"), "div": _infix("/", "fiu"),
    "rem": _rem, "max": _maxmin(">"), "min": _maxmin("<"), "pow": _math("pow"),
    "atan2": _math("atan2"), "nextafter": _math("nextafter"),
    "and": _infix("&", "iub"), "or": _infix("|", "iub"), "xor": _infix("^", "iub"),
    "eq": _infix("=="), "ne": _infix("!="), "lt": _infix("<"), "le": _infix("<="),
    "gt": _infix(">"), "ge": _infix(">="),
}
_RULES: dict[str, Callable[[_Translator, Any, list[_Ref]], list[_Ref]]] = {
    **{n: _elementwise(f) for n, f in {**_UNARY, **_BINARY}.items()},
    "select_n": _elementwise(lambda w, *c, dtype, eqn: _select_n(w, *c, dtype=dtype, eqn=eqn)),
    "clamp": _elementwise(_clamp),
    "convert_element_type": _convert,
    "copy": _alias, "copy_p": _alias, "optimization_barrier": _alias, "stop_gradient": _alias,
    "squeeze": _alias, "expand_dims": _alias, "reduce_precision": _reduce_precision,
    "reshape": _reshape, "broadcast_in_dim": _broadcast_in_dim, "transpose": _transpose,
    "slice": _slice, "split": _split, "concatenate": _concatenate, "iota": _iota,
    "dynamic_slice": _dynamic_slice, "dynamic_update_slice": _dynamic_update_slice,
    "gather": _gather, "dot_general": _dot_general, "scan": _scan,
    **{n: _reduce for n in _REDUCERS},
}
# Rules that are not evaluated now even when every operand is a constant.
_STRUCTURAL = {"scan"}
# Rules that read deferred operands in their own loops (the others get them stored first).
_FUSED = {*_UNARY, *_BINARY, "select_n", "clamp"}
