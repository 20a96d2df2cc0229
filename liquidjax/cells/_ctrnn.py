"""The continuous-time RNN baseline, an ODE cell in general form."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..solvers import Integrator
from ._base import AbstractODECell
from ._baseline_parts import check_sizes, default_integrator, uniform_init


class CTRNN(AbstractODECell):
    r"""Continuous-time recurrent network (Funahashi & Nakamura 1993, "Approximation of dynamical
    systems by continuous time recurrent neural networks", Neural Networks 6(6)):

    $$\frac{dh}{dt} = -\frac{h}{\tau} + \tanh(W x + U h + b), \qquad \tau = \mathrm{softplus}(\rho) > 0$$

    with the input ``x`` held over each interval (or a continuous path). The output is ``h``.

    **Arguments:**
    - `input_size`, `units`: sizes.
    - `integrator`: a :class:`~liquidjax.solvers.Integrator` (default Tsit5, 4 constant steps
      per interval).
    - `dtype`: parameter dtype.
    - `key`: PRNG key.

    **Example:**
    ```python
    cell = CTRNN(3, 16, key=jax.random.key(0))
    h = cell.advance(cell.init_state(), jnp.ones(3), 0.0, 0.5)
    ```
    """

    weight_in: Float[Array, "units input"]
    weight_rec: Float[Array, "units units"]
    bias: Float[Array, " units"]
    tau_raw: Float[Array, " units"]
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, integrator: Integrator | None = None,
                 dtype: Any = jnp.float32, key: PRNGKeyArray):
        check_sizes(input_size=input_size, units=units)
        k1, k2 = jax.random.split(key)
        self.weight_in = uniform_init(k1, (units, input_size), input_size, dtype)
        self.weight_rec = uniform_init(k2, (units, units), units, dtype)
        self.bias = jnp.zeros((units,), dtype)
        self.tau_raw = jnp.full((units,), 0.5413, dtype)  # softplus(0.5413) = 1
        self.integrator = default_integrator(integrator)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    @property
    def tau(self) -> Array:
        return jax.nn.softplus(self.tau_raw)

    def init_state(self) -> Float[Array, " units"]:
        return jnp.zeros((self.state_size,), self.bias.dtype)

    def vector_field(self, t, state, x):
        u = self.input_at(x, t)
        return -state / self.tau + jnp.tanh(self.weight_in @ u + self.weight_rec @ state
                                            + self.bias)

    def output(self, state):
        return state
