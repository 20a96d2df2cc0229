"""Argument checks shared by every layer of liquidjax (configs, models, the command line).

Each check raises one ``ValueError`` naming the argument, the value received and what was
expected. Choice lists are passed in (derived from ``Literal`` types with :func:`literal_choices`),
never restated here.
"""

from __future__ import annotations

from typing import Any


def check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless `value` is one of `valid`."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(valid)}")


def check_positive_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless `value` is an ``int`` (not a ``bool``) ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
