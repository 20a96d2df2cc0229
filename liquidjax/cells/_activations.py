"""The backbone activations of the CfC (ncps's choices, by name) and the LSTM's gate update:
the elementwise maps shared by the cells and their sequence fast paths (``_cfc_sequence``)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array


def lecun_tanh(x: Array) -> Array:
    """LeCun's scaled tanh, ``1.7159 * tanh(0.666 * x)`` (the ncps CfC default)."""
    return 1.7159 * jnp.tanh(0.666 * x)


def _gelu(x: Array) -> Array:
    # torch.nn.GELU() defaults to the exact (erf) form, not the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "lecun_tanh": lecun_tanh,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": _gelu,
}


def activation_name(fn: Callable[[Array], Array]) -> str:
    """The ncps name of an activation callable from :data:`ACTIVATIONS`."""
    for name, f in ACTIVATIONS.items():
        if f is fn:
            return name
    raise ValueError(f"activation {fn!r} is not one of the ncps activations {list(ACTIVATIONS)}")
