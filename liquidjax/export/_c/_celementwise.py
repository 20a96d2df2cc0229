"""The C expressions of the elementwise primitives (arithmetic, comparisons, ``<math.h>``
functions, ``select_n``, ``clamp``) and the rule that turns one into a loop, or into an
expression computed inside its one reader's loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._ctranslator import (
    Unsupported,
    _broadcast_strides,
    _out,
    _Ref,
    _Translator,
    literal,
)

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
