"""The optax transformations a model's parameters need (constraints live in the optimiser chain,
not in the trainer)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from ..cells._ltc import nonnegative_mask, nonnegative_projection


@functools.cache
def _projection() -> optax.GradientTransformation:
    # One object per process: the jitted train step hashes the optimiser by identity.
    return nonnegative_projection()


def constraint_transforms(model: Any) -> tuple[optax.GradientTransformation, ...]:
    """The optax transformations that keep `model`'s parameters valid, to chain **after** the
    optimiser: :func:`liquidjax.nonnegative_projection` if any LTC cell in `model` was built with
    ``implicit_param_constraints=False`` (ncps's clip of ``w``, ``sensory_w``, ``cm``, ``gleak``
    at zero after each step), else nothing.

    **Arguments:**
    - `model`: any pytree of modules (e.g. from :func:`build_model`).

    **Returns:** a tuple of ``optax.GradientTransformation`` (possibly empty).

    **Example:**
    ```python
    result = fit(model, train, config, extra_transforms=constraint_transforms(model))
    ```
    """
    if any(jax.tree_util.tree_leaves(nonnegative_mask(model))):
        return (_projection(),)
    return ()
