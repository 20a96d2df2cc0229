"""Pieces shared by the continuous-time baseline cells: their default integrator, their
uniform initialisation, the GRU gates, the flow-then-jump pattern and the description of an
input read in per-channel blocks."""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_int
from ..solvers import Integrator
from ._base import AbstractCell, AbstractODECell


def default_integrator(integrator: Integrator | None) -> Integrator:
    """`integrator`, or Tsit5 with 4 constant steps per interval when ``None``."""
    # Four classic Runge-Kutta-quality steps per interval: explicit, cheap, and accurate enough
    # for these non-stiff fields; pass an Integrator for anything else.
    return Integrator(diffrax.Tsit5(), ode_unfolds=4) if integrator is None else integrator


def check_sizes(**sizes: int) -> None:
    """Each size a positive integer, or ``ValueError`` naming it."""
    for name, v in sizes.items():
        check_int(name, v, minimum=1)


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """An input made of per-channel blocks (``input_size = blocks × channels``), as written by
    :func:`liquidjax.data.model_inputs` with ``missing=missing``.

    **Arguments:**
    - `blocks`: values per channel.
    - `missing`: the ``missing`` mode of the data that writes this layout.
    - `description`: what the blocks are, for messages.
    """

    blocks: int
    missing: str
    description: str

    def check(self, who: str, input_size: int) -> None:
        """``ValueError`` unless `input_size` is a multiple of `blocks`; `who` names the reader."""
        if input_size % self.blocks:
            raise ValueError(
                f"{who} reads {self.description} (missing={self.missing!r} data): input_size "
                f"must be {self.blocks} × channels, a multiple of {self.blocks}; got {input_size}"
            )


def uniform_init(key, shape, fan_in: int, dtype) -> Array:
    """``U(−1/√fan_in, 1/√fan_in)`` (torch's default for linear and recurrent weights)."""
    lim = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -lim, lim)


class GRUGates(eqx.Module):
    """The three GRU maps of a hidden state and an input (shared by GRU-ODE and GRU-D)."""

    w_x: Float[Array, "three_units input"]
    w_h: Float[Array, "three_units units"]
    bias: Float[Array, " three_units"]

    def __init__(self, input_size: int, units: int, dtype, key):
        k1, k2 = jax.random.split(key)
        self.w_x = uniform_init(k1, (3 * units, input_size), max(input_size, 1), dtype)
        self.w_h = uniform_init(k2, (3 * units, units), units, dtype)
        self.bias = jnp.zeros((3 * units,), dtype)

    def __call__(self, x, h):
        """``(z, r, g)``: update gate, reset gate and candidate state."""
        n = h.shape[0]
        ax = self.w_x @ x + self.bias
        wz, wr, wg = self.w_h[:n], self.w_h[n : 2 * n], self.w_h[2 * n :]
        z = jax.nn.sigmoid(ax[:n] + wz @ h)
        r = jax.nn.sigmoid(ax[n : 2 * n] + wr @ h)
        g = jnp.tanh(ax[2 * n :] + wg @ (r * h))
        return z, r, g


class AbstractFlowThenJump(AbstractCell):
    """A cell that flows between observations (``flow``, an ODE cell whose state is the cell's)
    and updates at each one: its integrator, initial state and output are the flow's state."""

    flow: eqx.AbstractVar[AbstractODECell]

    @property
    def integrator(self) -> Integrator:
        """The flow's integrator."""
        return self.flow.integrator

    def init_state(self):
        return self.flow.init_state()

    def output(self, state):
        return state
