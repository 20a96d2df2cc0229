"""ODE-RNN: a latent ODE between observations and a GRU jump at each observation."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ..solvers import Integrator
from ._base import AbstractODECell
from ._baseline_parts import AbstractFlowThenJump, check_sizes, default_integrator


class _LatentFlow(AbstractODECell):
    """``dh/dt = f(h)``: an MLP vector field that ignores the input (ODE-RNN's latent ODE)."""

    mlp: eqx.nn.MLP
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size, units, width, integrator, dtype, key):
        self.mlp = eqx.nn.MLP(units, units, width, 1, activation=jnp.tanh, dtype=dtype, key=key)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.mlp.layers[0].weight.dtype)

    def vector_field(self, t, state, x):
        return self.mlp(state)

    def output(self, state):
        return state


class ODERNN(AbstractFlowThenJump):
    r"""ODE-RNN (Rubanova, Chen & Duvenaud 2019, "Latent ODEs for irregularly-sampled time
    series", NeurIPS; Algorithm 1): between observations the hidden state follows a learned
    ODE, at each observation a GRU cell updates it,

    $$h'_k = \mathrm{ODESolve}(f_\theta, h_{k-1}, (t_{k-1}, t_k)),\qquad
      h_k = \mathrm{GRUCell}(x_k, h'_k),$$

    with ``f_θ`` an MLP (one hidden layer of `width`, tanh). The output is ``h``.

    **Arguments:** `input_size`, `units`, `width` (hidden width of ``f_θ``, default
    `units`), `integrator` of the latent ODE (default Tsit5, 4 steps per interval), `dtype`,
    `key`.

    **Example:**
    ```python
    cell = ODERNN(3, 16, key=jax.random.key(0))
    ```
    """

    flow: _LatentFlow
    gru: eqx.nn.GRUCell
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, width: int | None = None,
                 integrator: Integrator | None = None, dtype: Any = jnp.float32,
                 key: PRNGKeyArray):
        check_sizes(input_size=input_size, units=units)
        k1, k2 = jax.random.split(key)
        self.flow = _LatentFlow(input_size, units, width or units,
                                default_integrator(integrator), dtype, k1)
        self.gru = eqx.nn.GRUCell(input_size, units, dtype=dtype, key=k2)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def advance(self, state, x, t0, t1, *, key=None):
        del key
        return self.gru(x, self.flow.advance(state, x, t0, t1))
