"""Argument checks shared by every layer of liquidjax: configs, models, wirings, data and the
command line.

Each check raises one ``ValueError`` naming the argument, the value received and what was
expected; the command-line converters (:func:`int_arg`, :func:`float_arg`, :func:`choice_arg`,
...) raise ``argparse.ArgumentTypeError`` with the same description, so argparse reports it as a
usage error. Choice lists are derived from ``Literal`` types with :func:`literal_choices`, never
restated.

A frozen config dataclass declares its checks next to its fields, in the field metadata written
by :func:`spec` (bounds, choices for a plain ``str``, command-line flag names), and validates
itself with :func:`check_fields`; the command line derives its flags from the same fields
(:mod:`liquidjax._config_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

# ------------------------------------------------------------------------------ descriptions


def literal_choices(tp: Any) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` type, in order (``typing.get_args``)."""
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"expected a Literal type, got {tp!r}")
    return tuple(typing.get_args(tp))


def _range_text(kind: str, lo: float | None, hi: float | None, lo_open: bool = False,
                hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {hi}"
    return kind


def _in_range(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and not (v > lo if lo_open else v >= lo):
        return False
    return hi is None or (v < hi if hi_open else v <= hi)


# ------------------------------------------------------------------------------ value checks


def check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless `value` is one of `valid`."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(valid)}")


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              expected: str | None = None) -> int:
    """`value` as a Python ``int``, or ``ValueError`` naming it and the expected range
    (``bool`` is not an integer here). `expected` replaces the range's description."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if not _in_range(value, minimum, maximum, False, False):
        raise ValueError(
            f"{name} must be {expected or _range_text('an integer', minimum, maximum)}, got {value}"
        )
    return value


def check_seed(name: str, value: Any) -> int:
    """A seed in ``[0, 2**32)`` (NumPy's ``RandomState`` range; ``None`` is not replayable)."""
    return check_int(name, value, minimum=0, maximum=2**32 - 1)


def check_real(name: str, value: Any, *, minimum: float | None = None,
               maximum: float | None = None, min_open: bool = False,
               max_open: bool = False) -> float:
    """`value` as a finite Python ``float`` in the given range, or ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if not _in_range(value, minimum, maximum, min_open, max_open):
        raise ValueError(
            f"{name} must be {_range_text('a number', minimum, maximum, min_open, max_open)}, "
            f"got {value}"
        )
    return value


# ------------------------------------------------------------------------------ config fields


def spec(*, minimum: float | None = None, maximum: float | None = None, min_open: bool = False,
         max_open: bool = False, choices: tuple[str, ...] | None = None,
         flags: tuple[str, ...] | None = None, aliases: Mapping[str, str] | None = None,
         cli_default: str | None = None, from_data: bool = False,
         parse: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Field metadata read by :func:`check_fields` and by the command line.

    **Arguments:**
    - `minimum`, `maximum`, `min_open`, `max_open`: bounds of a number (or of every entry of a
      tuple of numbers).
    - `choices`: the valid values of a plain ``str`` field (a ``Literal`` type needs none).
    - `flags`: command-line flags (default ``--field-name``).
    - `aliases`: extra spellings accepted on the command line for a choice.
    - `cli_default`: what the command line shows as the default when it is not the field's.
    - `from_data`: the command line fills this field in from the data (its flag defaults to
      ``None``; a value given must agree with the data).
    - `parse`: checks and normalises the value of a field whose valid values no fixed list
      holds (a ``ValueError`` names what is wrong); it replaces the `choices` check, in the
      config and on the command line alike (`choices` then only lists the names in the help).
    """
    if from_data:
        cli_default = "from the data"
    return {"liquidjax": dict(minimum=minimum, maximum=maximum, min_open=min_open,
                              max_open=max_open, choices=choices, flags=flags,
                              aliases=dict(aliases or {}), cli_default=cli_default,
                              from_data=from_data, parse=parse)}


_NO_SPEC = spec()["liquidjax"]


def config_field(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """``dataclasses.field(default=default, metadata=spec(**kwargs))``."""
    return dataclasses.field(default=default, metadata=spec(**kwargs))


def field_spec(field: dataclasses.Field) -> dict[str, Any]:
    """The :func:`spec` of a dataclass field (defaults if it declares none)."""
    return field.metadata.get("liquidjax", _NO_SPEC)


@dataclasses.dataclass(frozen=True)
class FieldType:
    """A config field's type, resolved: the base type, whether ``None`` is allowed, the choices,
    and for tuples the entry type and length (``None``: any length)."""

    base: Any
    optional: bool
    choices: tuple[str, ...] | None
    item: Any = None
    length: int | None = None


def _resolve(hint: Any, sp: dict[str, Any]) -> FieldType:
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"unsupported config field type {hint!r}")
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return FieldType(str, optional, literal_choices(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return FieldType(tuple, optional, None, args[0], None)
        if len(set(args)) != 1:
            raise TypeError(f"unsupported config field type {hint!r}")
        return FieldType(tuple, optional, None, args[0], len(args))
    if hint not in (int, float, bool, str):
        raise TypeError(f"unsupported config field type {hint!r}")
    return FieldType(hint, optional, sp["choices"])


@functools.cache
def field_types(cls: type) -> dict[str, FieldType]:
    """The resolved :class:`FieldType` of every field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: _resolve(hints[f.name], field_spec(f)) for f in dataclasses.fields(cls)}


def check_value(name: str, value: Any, ft: FieldType, sp: Mapping[str, Any]) -> Any:
    """Check one config value against its type and :func:`spec`; return it normalised (ints
    stay ints, reals become floats, lists become tuples)."""
    if value is None:
        if ft.optional:
            return None
        raise ValueError(f"{name} must not be None")
    bounds = {k: sp[k] for k in ("minimum", "maximum")}
    if sp["parse"] is not None:
        return sp["parse"](value)
    if ft.choices is not None:
        check_choice(name.replace("_", " "), value, ft.choices)
        return value
    if ft.base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return value
    if ft.base is int:
        return check_int(name, value, **bounds)
    if ft.base is float:
        return check_real(name, value, min_open=sp["min_open"], max_open=sp["max_open"], **bounds)
    if ft.base is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    # tuples
    if not isinstance(value, (tuple, list)) or not value or (
        ft.length is not None and len(value) != ft.length
    ):
        n = "a non-empty tuple" if ft.length is None else f"a tuple of {ft.length}"
        raise ValueError(f"{name} must be {n} of {ft.item.__name__}s, got {value!r}")
    inner = FieldType(ft.item, False, None)
    return tuple(check_value(f"{name}[{i}]", v, inner, sp) for i, v in enumerate(value))


def check_fields(obj: Any) -> None:
    """Check every field of the frozen dataclass `obj` against its type and :func:`spec`
    (call it first in ``__post_init__``; cross-field rules follow it)."""
    types_ = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = check_value(f.name, getattr(obj, f.name), types_[f.name], field_spec(f))
        object.__setattr__(obj, f.name, value)


def field_docs(cls: type) -> dict[str, str]:
    """Per-field help from the class docstring's ``- `name`: text`` entries (an entry may name
    several fields: ``- `a`, `b`: text``)."""
    out: dict[str, str] = {}
    names: list[str] = []
    for raw in (cls.__doc__ or "").splitlines():
        line = raw.strip()
        if line.startswith("- `") and "`:" in line:
            head, text = line[2:].split(":", 1)
            names = [n.strip().strip("`") for n in head.split(",")]
            for n in names:
                out[n] = text.strip()
        elif names and line and raw.startswith("      "):
            for n in names:
                out[n] += " " + line
        else:
            names = []
    return out


# ------------------------------------------------------------------------------ command line


def _argtype(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    parse.__name__ = name  # argparse names the converter in its fallback messages
    return parse


def int_arg(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for an integer in a range."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not _in_range(v, minimum, maximum, False, False):
            raise argparse.ArgumentTypeError(
                f"expected {_range_text('an integer', minimum, maximum)}, got {v}")
        return v

    return _argtype(parse, "integer")


def float_arg(minimum: float | None = None, maximum: float | None = None, *,
              min_open: bool = False, max_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a finite number in a range."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or not _in_range(v, minimum, maximum, min_open, max_open):
            lo = minimum if minimum is not None else -math.inf
            hi = maximum if maximum is not None else math.inf
            rng = _range_text("a number", lo, hi, min_open or minimum is None,
                              max_open or maximum is None)
            raise argparse.ArgumentTypeError(f"expected {rng}, got {v}")
        return v

    return _argtype(parse, "number")


def int_tuple_arg(minimum: int | None = 1, length: int | None = None):
    """An argparse ``type`` for comma-separated integers (``32,64,64``); ``none`` is ``None``
    (for an optional field: a recipe's setting turned off)."""

    def parse(text: str) -> tuple[int, ...] | None:
        if text.strip().lower() == "none":
            return None
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, e.g. 32,64,64; got {text!r}") from None
        if length is not None and len(values) != length:
            raise argparse.ArgumentTypeError(
                f"expected {length} comma-separated integers, got {text!r}")
        if minimum is not None and min(values) < minimum:
            raise argparse.ArgumentTypeError(
                f"expected integers >= {minimum}, got {text!r}")
        return values

    return _argtype(parse, "integers")


def parsed_arg(parse: Callable[[str], Any], name: str = "value"):
    """An argparse ``type`` from a function that raises ``ValueError`` on a bad value."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return _argtype(convert, name)


def choice_arg(valid: tuple[str, ...], aliases: Mapping[str, str] | None = None):
    """An argparse ``type`` for a case-insensitive choice (``-`` read as ``_``) whose error lists
    the valid names."""

    def parse(text: str) -> str:
        v = text.strip().lower().replace("-", "_")
        v = (aliases or {}).get(v, v)
        if v not in valid:
            raise argparse.ArgumentTypeError(
                f"unknown value {text!r}; expected one of: {', '.join(valid)}"
            )
        return v

    return _argtype(parse, "choice")
