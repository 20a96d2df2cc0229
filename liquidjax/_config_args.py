"""Command-line flags derived from a config dataclass: one flag per field, its type, default,
choices and help all read from the field (type hints, :func:`liquidjax._checks.spec` metadata and
the class docstring's **Arguments** list), never listed by hand.

```python
group = parser.add_argument_group("model")
add_config_arguments(group, ModelConfig)
...
config = ModelConfig(**config_values(args, ModelConfig))
```
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ._checks import (
    FieldType,
    choice_arg,
    field_docs,
    field_spec,
    field_types,
    float_arg,
    int_arg,
    int_tuple_arg,
    parsed_arg,
)

_ROLES = re.compile(r":(class|func|data|meth|mod):")


def flag_names(field: dataclasses.Field) -> tuple[str, ...]:
    """The flags of a config field: its spec's `flags`, else ``--field-name``."""
    return field_spec(field)["flags"] or ("--" + field.name.replace("_", "-"),)


def _arg_type(ft: FieldType, sp: dict[str, Any]):
    if sp["parse"] is not None:
        return parsed_arg(sp["parse"])
    if ft.choices is not None:
        return choice_arg(ft.choices, sp["aliases"])
    if ft.base is int:
        return int_arg(sp["minimum"], sp["maximum"])
    if ft.base is float:
        return float_arg(sp["minimum"], sp["maximum"], min_open=sp["min_open"],
                         max_open=sp["max_open"])
    if ft.base is tuple and ft.item is float:
        return float_tuple_arg(ft.length)
    if ft.base is tuple:
        return int_tuple_arg(sp["minimum"], ft.length)
    return str


def float_tuple_arg(length: int | None = None):
    """An argparse ``type`` for comma-separated reals (``18.1,0.5``); the config checks them."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, e.g. 18.1,0.5; got {text!r}") from None
        if length is not None and len(values) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated numbers, got "
                                             f"{text!r}")
        return values

    return parse


def _help(text: str, ft: FieldType, default: Any, sp: dict[str, Any]) -> str:
    text = _ROLES.sub("", text).replace("``", "").replace("`", "").replace("%", "%%")
    if ft.choices is not None and ft.base is not bool:
        text += f" One of: {', '.join(ft.choices)}."
    shown = sp["cli_default"]
    if shown is None:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})"


def add_config_arguments(group: Any, cls: type, *, skip: tuple[str, ...] = (),
                         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Add one flag per field of the config dataclass `cls` to an argparse parser or group.

    Fields without a default, and those the data fixes (spec `from_data`), default to ``None`` on
    the command line.

    **Arguments:**
    - `group`: an argparse parser or argument group.
    - `cls`: the config dataclass.
    - `skip`: fields that get no flag (the command line fills them in otherwise).
    - `overrides`: per field, what the command line does differently from the field: `flags`,
      `default` (e.g. ``None`` for a default that depends on the data), `shown_default` (the
      default as the help states it), `type` (a converter accepting more spellings).
    """
    docs = field_docs(cls)
    types = field_types(cls)
    overrides = overrides or {}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"overrides for unknown {cls.__name__} fields: {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        sp, ft, ov = field_spec(f), types[f.name], dict(overrides.get(f.name, {}))
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no entry in the class docstring")
        default = None if f.default is dataclasses.MISSING or sp["from_data"] else f.default
        default = ov.get("default", default)
        if "shown_default" in ov:
            sp = dict(sp, cli_default=ov["shown_default"])
        kwargs: dict[str, Any] = dict(dest=f.name, default=default,
                                      help=_help(docs[f.name], ft, default, sp))
        if ft.base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = ov.get("type", _arg_type(ft, sp))
            kwargs["metavar"] = f.name.upper()
        group.add_argument(*ov.get("flags", flag_names(f)), **kwargs)


def from_data_fields(cls: type) -> tuple[str, ...]:
    """The fields of `cls` that the command line fills in from the data."""
    return tuple(f.name for f in dataclasses.fields(cls) if field_spec(f)["from_data"])


def config_values(args: argparse.Namespace, cls: type,
                  skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parsed values of `cls`'s fields, by field name (`skip`: fields that had no flag)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip}
