"""GRU-ODE: the continuous GRU of GRU-ODE-Bayes, an ODE cell in conductance form (so the
fused semi-implicit solver applies as well as any diffrax solver)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ..solvers import Integrator
from ._base import AbstractConductanceCell
from ._baseline_parts import GRUGates, check_sizes, default_integrator


class GRUODE(AbstractConductanceCell):
    r"""GRU-ODE (De Brouwer et al. 2019, "GRU-ODE-Bayes: Continuous modeling of sporadically-
    observed time series", NeurIPS; eq. 3): the GRU update made continuous,

    $$\frac{dh}{dt} = (1 - z) \odot (g - h),\quad z = \sigma(W_z x + U_z h + b_z),\quad
      r = \sigma(W_r x + U_r h + b_r),\quad g = \tanh(W_g x + U_g (r \odot h) + b_g).$$

    It is in conductance form (``cm = 1``, ``num = (1 − z) g``, ``den = 1 − z ≥ 0``), so the
    fused semi-implicit solver applies as well as any diffrax solver; ``h`` stays in
    ``[−1, 1]``. The input is held over each interval (the paper's GRU-Bayes jump at
    observations is not part of this cell; stack it with a discrete update if needed).

    **Arguments:** `input_size`, `units`, `integrator` (default Tsit5, 4 steps per interval),
    `dtype`, `key`.

    **Example:**
    ```python
    cell = GRUODE(3, 16, key=jax.random.key(0))
    ```
    """

    gates: GRUGates
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, integrator: Integrator | None = None,
                 dtype: Any = jnp.float32, key: PRNGKeyArray):
        check_sizes(input_size=input_size, units=units)
        self.gates = GRUGates(input_size, units, dtype, key)
        self.integrator = default_integrator(integrator)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.gates.bias.dtype)

    def conductances(self, t, y, x):
        z, _, g = self.gates(self.input_at(x, t), y)
        return (1 - z) * g, 1 - z, jnp.ones_like(y)

    def output(self, state):
        return state
