"""Where the values of a jaxpr live in the generated C, and the loops that compute them.

The translator (:class:`_Translator`) keeps every intermediate value as a slice of a static
scratch array per C type (:class:`_Pool`, first fit, handed back once the value is dead), refers
to values by :class:`_Ref` (a base array, an offset, run-time offset terms, or a C literal, or an
elementwise expression computed where it is read), emits the loop nests that read and write them,
and walks a jaxpr equation by equation through a table of rules (name -> rule) that
:mod:`._cgen` supplies: the rules and :func:`._cgen.translate` live there, the elementwise
expressions in :mod:`._celementwise`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

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



class _Translator:
    """Emits C for jaxprs through ``rules`` (primitive name -> rule); ``structural``: rules
    not evaluated now when every operand is a constant; ``fused``: rules that read deferred
    operands in their own loops."""

    def __init__(self, rules: Mapping[str, Callable[[_Translator, Any, list[_Ref]], list[_Ref]]],
                 structural: Collection[str], fused: Collection[str]):
        self.rules, self.structural, self.fused = rules, structural, fused
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
        if name not in self.fused:
            ins = [self.materialize(r) for r in ins]
        if name in _CALL_PARAMS:
            return _inline(self, eqn, ins)
        rule = self.rules.get(name)
        if rule is None:
            raise Unsupported([name])
        if (name not in self.structural and not eqn.effects
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



def _dtype_of(ct: str) -> np.dtype:
    return next(d for d, c in _CTYPES.items() if c == ct)


def _out(eqn: Any, k: int = 0) -> tuple[tuple[int, ...], np.dtype]:
    aval = eqn.outvars[k].aval
    return tuple(aval.shape), np.dtype(aval.dtype)


def _inline(t: _Translator, eqn: Any, ins: list[_Ref]) -> list[_Ref]:
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
