"""GRU-ODE-Bayes: the GRU-ODE between observations and the GRU-Bayes jump at each one
(reads ``[x | m]``)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..solvers import Integrator
from ._base import AbstractConductanceCell
from ._baseline_parts import (
    AbstractFlowThenJump,
    GRUGates,
    InputLayout,
    check_sizes,
    default_integrator,
)

GRUODE_BAYES_INPUTS = InputLayout(
    2, "path", "[x | m] blocks (values and observation mask)")


class _PredictedGRUODE(AbstractConductanceCell):
    """GRU-ODE read by its own prediction ``p(h)`` (GRU-ODE-Bayes between observations)."""

    gates: GRUGates
    predict: eqx.nn.MLP
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, channels, units, p_hidden, integrator, dtype, key):
        k1, k2 = jax.random.split(key)
        self.gates = GRUGates(2 * channels, units, dtype, k1)
        self.predict = eqx.nn.MLP(units, 2 * channels, p_hidden, 1, activation=jax.nn.relu,
                                  dtype=dtype, key=k2)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = 2 * channels, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.gates.bias.dtype)

    def conductances(self, t, y, x):
        z, _, g = self.gates(self.predict(y), y)
        return (1 - z) * g, 1 - z, jnp.ones_like(y)

    def output(self, state):
        return state


class GRUODEBayes(AbstractFlowThenJump):
    r"""GRU-ODE-Bayes (De Brouwer et al. 2019, NeurIPS; section 4): a GRU-ODE between
    observations and the **GRU-Bayes jump** at each observation.

    Between observations ``h`` follows the GRU-ODE (:class:`GRUODE`'s equation) read by its own
    prediction of the observations, ``p(h) = (μ, log σ²)`` (an MLP, ReLU, ``p_hidden`` wide: the
    paper's ``p_model``, with ``impute``). At an observation ``x`` with mask ``m`` it jumps:

    $$e_d = \frac{x_d − μ_d}{σ_d},\quad
      u_d = m_d\,\mathrm{ReLU}\bigl([x_d, μ_d, \log σ_d^2, e_d]\,W_d + b_d\bigr),\quad
      h^+ = \mathrm{GRUCell}(u, h^-),$$

    per channel ``d`` (``W_d`` of shape ``4 × prep_hidden``; the paper's
    ``GRUObservationCellLogvar``); a step where nothing was observed does not jump.
    :class:`GRUODE` is the flow alone, read by a held input; here the flow reads ``p(h)``
    instead, as in the paper. It is in conductance form, so the fused solver applies.

    The input of a step is ``[x | m]`` (``input_size = 2 C``, e.g. ``missing="path"`` from
    :func:`liquidjax.data.model_inputs`); values where ``m = 0`` are not read. :meth:`predict`
    gives ``p(h)`` for the paper's observation loss (the Gaussian NLL of the next observations).

    **Arguments:** `input_size` (``2 C``), `units`, `p_hidden` (default `units`), `prep_hidden`
    (default 4), `integrator` (default Tsit5, 4 steps per interval), `dtype`, `key`.

    **Example:**
    ```python
    cell = GRUODEBayes(2 * 3, 16, key=jax.random.key(0))   # 3 channels: [x | m]
    ```
    """

    flow: _PredictedGRUODE
    w_prep: Float[Array, "channels 4 prep"]
    b_prep: Float[Array, "channels prep"]
    gru: eqx.nn.GRUCell
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, p_hidden: int | None = None,
                 prep_hidden: int = 4, integrator: Integrator | None = None,
                 dtype: Any = jnp.float32, key: PRNGKeyArray):
        check_sizes(input_size=input_size, units=units, prep_hidden=prep_hidden)
        GRUODE_BAYES_INPUTS.check("GRU-ODE-Bayes", input_size)
        c = input_size // 2
        k1, k2, k3 = jax.random.split(key, 3)
        self.flow = _PredictedGRUODE(c, units, p_hidden or units, default_integrator(integrator),
                                     dtype, k1)
        std = (2.0 / (4 + prep_hidden)) ** 0.5  # the paper's initialisation
        self.w_prep = std * jax.random.normal(k2, (c, 4, prep_hidden), dtype)
        self.b_prep = jnp.full((c, prep_hidden), 0.1, dtype)
        self.gru = eqx.nn.GRUCell(c * prep_hidden, units, dtype=dtype, key=k3)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def predict(self, state) -> tuple[Array, Array]:
        """``(μ, log σ²)``: the predicted distribution of each channel's next observation."""
        mean, logvar = jnp.split(self.flow.predict(state), 2)
        return mean, logvar

    def jump(self, state, x):
        """The GRU-Bayes update ``h⁺`` of `state` (``h⁻``) by the observation ``x = [x | m]``."""
        c = self.input_size // 2
        obs, m = x[:c], x[c:]
        mean, logvar = self.predict(state)
        error = (obs - mean) * jnp.exp(-0.5 * logvar)
        feats = jnp.stack([obs, mean, logvar, error], axis=-1)
        u = jax.nn.relu(jnp.einsum("cf,cfp->cp", feats, self.w_prep) + self.b_prep)
        u = jnp.where(m[:, None] > 0, u, 0)  # an unobserved value (NaN-free or not) is not read
        return jnp.where(jnp.any(m > 0), self.gru(u.reshape(-1), state), state)

    def advance(self, state, x, t0, t1, *, key=None):
        del key
        return self.jump(self.flow.advance(state, x, t0, t1), x)
