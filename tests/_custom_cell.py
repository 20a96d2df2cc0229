"""A tiny user cell, imported by name (``_custom_cell:Leaky``) in tests/test_cell_registry.py."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from liquidjax.cells import AbstractODECell
from liquidjax.solvers import Integrator


class Leaky(AbstractODECell):
    """``dh/dt = −h + tanh(W x + U h)``, an ODE cell in general form."""

    w: Float[Array, "units input"]
    u: Float[Array, "units units"]
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, integrator: Integrator | None = None,
                 key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.w = jax.random.normal(k1, (units, input_size)) / input_size**0.5
        self.u = jax.random.normal(k2, (units, units)) / units**0.5
        if integrator is None:
            integrator = Integrator(diffrax.Heun(), ode_unfolds=2)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.w.dtype)

    def vector_field(self, t, state, x):
        return -state + jnp.tanh(self.w @ self.input_at(x, t) + self.u @ state)

    def output(self, state):
        return state


class NoKey(Leaky):
    """A constructor outside the protocol (no `key`)."""

    def __init__(self, input_size: int, units: int):
        super().__init__(input_size, units, key=jax.random.key(0))


NOT_A_CLASS = 3
