"""The cell contract shared by every liquid cell.

A cell acts on **one example** (``jax.vmap`` adds the batch). Its state is a pytree (an array of
shape ``(state_size,)`` for LTC/CfC, a pair ``(h, c)`` with mixed memory). The only thing the
sequence layer needs from a cell is

* ``init_state()`` — the zero state,
* ``advance(state, x, t0, t1, *, key=None)`` — the state after the interval ``[t0, t1]`` during
  which the input ``x`` is held (ncps semantics: ``t1 - t0`` is the elapsed time, "timespan"),
* ``output(state)`` — the cell's output for a state.

ODE cells additionally expose their dynamics as a diffrax vector field ``(t, y, args)`` and the
conductance split ``dy/dt = a - b * y`` (see :class:`AbstractODECell`).
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

State = PyTree[Array]


class AbstractCell(eqx.Module):
    """A recurrent liquid cell acting on one example.

    Subclasses set ``input_size``, ``state_size`` (size of the hidden vector ``h``) and
    ``output_size``, and implement :meth:`init_state`, :meth:`advance` and :meth:`output`.
    """

    input_size: eqx.AbstractVar[int]
    state_size: eqx.AbstractVar[int]
    output_size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def init_state(self) -> State:
        """The zero initial state (float32 unless the parameters are float64)."""

    @abc.abstractmethod
    def advance(
        self,
        state: State,
        x: Float[Array, " input"],
        t0: Float[Array, ""] | float,
        t1: Float[Array, ""] | float,
        *,
        key: PRNGKeyArray | None = None,
    ) -> State:
        """Advance ``state`` across ``[t0, t1]`` with the input ``x`` held constant.

        **Arguments:**
        - `state`: the state at ``t0``.
        - `x`: the observation, shape ``(input_size,)``.
        - `t0`, `t1`: the interval; ``t1 - t0`` is the elapsed time (ncps "timespan").
        - `key`: randomness for dropout (training only), or ``None``.

        **Returns:** the state at ``t1``.
        """

    @abc.abstractmethod
    def output(self, state: State) -> Float[Array, " output"]:
        """The cell's output for ``state`` (e.g. the motor neurons of an LTC)."""


class AbstractODECell(AbstractCell):
    """A cell whose hidden state obeys a conductance-form ODE

        cm * dy/dt = num(t, y, args) - den(t, y, args) * y

    i.e. ``dy/dt = a - b * y`` with ``a = num / cm`` and ``b = den / cm``. ``args`` is the raw
    observation driving the dynamics: an array (held input) or a ``diffrax.AbstractPath``
    (continuous input, evaluated at ``t``).

    The fused semi-implicit solver (:class:`liquidjax.solvers.FusedSemiImplicit`) uses the
    conductance form directly; every other diffrax solver uses :meth:`vector_field`.
    """

    @abc.abstractmethod
    def conductances(self, t: Any, y: Float[Array, " state"], args: Any) -> tuple[Array, Array, Array]:
        """Return ``(num, den, cm)`` with ``cm * dy/dt = num - den * y``."""

    def split(self, t: Any, y: Float[Array, " state"], args: Any) -> tuple[Array, Array]:
        """Return ``(a, b)`` with ``dy/dt = a - b * y``."""
        num, den, cm = self.conductances(t, y, args)
        return num / cm, den / cm

    def vector_field(self, t: Any, y: Float[Array, " state"], args: Any) -> Float[Array, " state"]:
        """The right-hand side ``dy/dt`` in diffrax's ``(t, y, args)`` form."""
        num, den, cm = self.conductances(t, y, args)
        return (num - den * y) / cm
