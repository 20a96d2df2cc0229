"""Hashable wrappers for host-side constants stored in static Module fields."""

from __future__ import annotations

import dataclasses

import numpy as np


class StaticArray:
    """A read-only NumPy array usable as an ``eqx.field(static=True)`` value.

    Wiring masks are configuration, not parameters: stored this way they are compile-time
    constants that no gradient, optimiser or ``jax.grad`` over the whole model ever sees, and two
    models with equal masks share compiled code (hash and equality are by value).
    """

    __slots__ = ("_array", "_hash")

    def __init__(self, array):
        arr = np.array(array, copy=True)
        arr.flags.writeable = False
        self._array = arr
        self._hash = hash((arr.shape, arr.dtype.str, arr.tobytes()))

    @property
    def array(self) -> np.ndarray:
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    def __array__(self, dtype=None, copy=None):
        return self._array if dtype is None else self._array.astype(dtype)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, StaticArray)
            and self._hash == other._hash
            and self._array.shape == other._array.shape
            and bool(np.array_equal(self._array, other._array))
        )

    def __repr__(self) -> str:
        nnz = int(np.count_nonzero(self._array))
        return f"StaticArray({self._array.dtype}{list(self._array.shape)}, nnz={nnz})"


def replace_fields(module, **changes):
    """A copy of the Module ``module`` with the given fields (static ones included) replaced.

    ``eqx.tree_at`` only replaces pytree leaves; configuration such as ``ode_unfolds`` or a wiring
    mask lives in static fields. Invariants are re-checked (``__check_init__``).
    """
    names = {f.name for f in dataclasses.fields(module)}
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"{type(module).__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(type(module))
    for name in names:
        object.__setattr__(new, name, changes.get(name, getattr(module, name)))
    for cls in type(module).__mro__:
        check = cls.__dict__.get("__check_init__")
        if check is not None:
            check(new)
    return new
