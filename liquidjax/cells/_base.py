"""The cell contract shared by every liquid cell.

A cell acts on **one example** (``jax.vmap`` adds the batch). Its state is any pytree of arrays
(a vector for LTC/CfC, a pair ``(h, c)`` with mixed memory). Three kinds of cell:

* :class:`AbstractCell` — anything the sequence layer can run. It implements ``init_state()``,
  ``advance(state, x, t0, t1, *, key=None)`` (the state after ``[t0, t1]`` with the input ``x``
  held: ncps semantics, ``t1 - t0`` is the elapsed time) and ``output(state)``. A CfC advances in
  closed form.
* :class:`AbstractODECell` — a cell whose state obeys an ODE ``dstate/dt = f(t, state, x)``. It
  implements only ``vector_field(t, state, x)`` (plus ``init_state`` and ``output``) and declares
  **how** it is integrated in one field, ``integrator``
  (a :class:`~liquidjax.solvers.Integrator`: solver, step-size controller, steps per interval,
  adjoint, step budget). ``advance`` and ``with_solver`` come from the base; every path (held
  inputs, continuous inputs, :mod:`liquidjax.inspect`) integrates through the one
  :func:`liquidjax.solvers.solve`.
* :class:`AbstractConductanceCell` — an ODE cell that also gives its dynamics in conductance
  form ``cm dy/dt = num − den·y`` (an array state), which the fused semi-implicit solver of ncps
  needs. Asking for the fused solver on a cell without conductance form is an error at
  construction.

A cell with a wiring (:class:`AbstractWiredCell`) keeps the built
:class:`~liquidjax.wirings.Wiring` — kind, arguments, seed and input size — as a static field:
it is part of the model's identity, saved in checkpoints, checked on load and drawable
(``liquidjax.plot.wiring(cell)``).

See ``docs/custom_cells.md`` for a custom cell in a page.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._static import replace_fields
from ..solvers import FusedSemiImplicit, Integrator, count_fused_evals, input_path, solve

State = PyTree[Array]

__all__ = [
    "AbstractCell", "AbstractConductanceCell", "AbstractODECell", "AbstractPathCell",
    "AbstractWiredCell",
]


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


class AbstractWiredCell(AbstractCell):
    """A cell whose connectivity follows a built :class:`~liquidjax.wirings.Wiring`.

    ``wiring`` (a static field: wirings are immutable, hashable host-side configuration) records
    the wiring's kind, constructor arguments (seed included) and input size. Two cells with
    different wirings are different models: :func:`liquidjax.train.load_checkpoint` refuses to
    load one's weights into the other.
    """

    wiring: eqx.AbstractVar[Any]


class AbstractPathCell(AbstractCell):
    """A cell that can also be driven by a **continuous input path** over a whole sequence
    (``LiquidRNN(interpolation="linear" | "cubic")``): one diffrax solve, through
    :func:`liquidjax.solvers.solve` and the cell's ``integrator``, from ``t = 0`` to the last
    observation. ODE cells (:class:`AbstractODECell`) and the Neural CDE are path cells.

    Subclasses declare ``integrator`` (a :class:`~liquidjax.solvers.Integrator`) and implement
    :meth:`solve_path`.
    """

    integrator: eqx.AbstractVar[Integrator]

    @abc.abstractmethod
    def solve_path(
        self,
        state: State,
        knots: Float[Array, " time_plus_one"],
        x: Float[Array, "time input"],
        interpolation: str,
        t_end: Float[Array, ""],
    ) -> State:
        """Integrate from ``knots[0] = 0`` to `t_end` along the `interpolation` (``"linear"`` or
        ``"cubic"``, :func:`liquidjax.solvers.input_path`) of the observations ``x[k]`` at
        ``knots[k + 1]``, starting from `state`.

        **Returns:** the states at ``min(knots[1:], t_end)`` (the cell's state pytree with a
        leading time axis).
        """


class AbstractODECell(AbstractPathCell):
    """A cell whose state obeys an ODE, ``dstate/dt = vector_field(t, state, x)``.

    ``x`` is the raw observation driving the dynamics: an array (held input) or a
    ``diffrax.AbstractPath`` (continuous input, evaluated at ``t``) — see
    :meth:`input_at`.

    Subclasses implement :meth:`vector_field`, :meth:`init_state`, :meth:`output` and declare
    the field ``integrator`` (a :class:`~liquidjax.solvers.Integrator`). Everything else —
    :meth:`advance`, :meth:`solve`, :meth:`with_solver` — is provided here and goes through
    :func:`liquidjax.solvers.solve`.
    """

    integrator: eqx.AbstractVar[Integrator]

    def __check_init__(self):
        if not isinstance(self.integrator, Integrator):
            raise TypeError(
                f"{type(self).__name__}.integrator must be a liquidjax.solvers.Integrator, got "
                f"{type(self.integrator).__name__}"
            )
        if isinstance(self.integrator.solver, FusedSemiImplicit) and not isinstance(
            self, AbstractConductanceCell
        ):
            raise ValueError(
                f"{type(self).__name__} gives its dynamics only in general form (vector_field), "
                "but the fused semi-implicit solver needs the conductance form "
                "cm dy/dt = num - den*y: subclass AbstractConductanceCell and implement "
                "conductances(), or choose another solver (e.g. diffrax.Tsit5())"
            )

    @abc.abstractmethod
    def vector_field(self, t: Any, state: State, x: Any) -> State:
        """The right-hand side ``dstate/dt`` at time ``t`` under the observation ``x`` (an array,
        or a ``diffrax.AbstractPath``: use :meth:`input_at`). Same pytree structure as the
        state."""

    @staticmethod
    def input_at(x: Any, t: Any) -> Array:
        """The observation at time ``t``: ``x`` itself (held input) or ``x.evaluate(t)`` (a
        continuous ``diffrax`` path)."""
        return x.evaluate(t) if isinstance(x, diffrax.AbstractPath) else x

    # -------------------------------------------------------------------- integration settings
    @property
    def solver(self) -> diffrax.AbstractSolver:
        """Shorthand for ``integrator.solver``."""
        return self.integrator.solver

    @property
    def stepsize_controller(self) -> diffrax.AbstractStepSizeController:
        """Shorthand for ``integrator.stepsize_controller``."""
        return self.integrator.stepsize_controller

    @property
    def ode_unfolds(self) -> int:
        """Shorthand for ``integrator.ode_unfolds``."""
        return self.integrator.ode_unfolds

    @property
    def adjoint(self) -> diffrax.AbstractAdjoint:
        """Shorthand for ``integrator.adjoint``."""
        return self.integrator.adjoint

    @property
    def max_steps(self) -> int:
        """Shorthand for ``integrator.max_steps``."""
        return self.integrator.max_steps

    def with_solver(
        self,
        solver: diffrax.AbstractSolver | None = None,
        *,
        ode_unfolds: int | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        max_steps: int | None = None,
    ):
        """The same cell (same parameters) integrated differently; ``None`` keeps a setting.

        ```python
        tsit = cell.with_solver(diffrax.Tsit5(),
                                stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8))
        ```
        """
        integrator = self.integrator.replace(
            solver=solver, ode_unfolds=ode_unfolds, stepsize_controller=stepsize_controller,
            adjoint=adjoint, max_steps=max_steps,
        )
        return replace_fields(self, integrator=integrator)

    # ----------------------------------------------------------------------------- integration
    def solve(self, y0: State, x: Any, t0: Any, t1: Any,
              saveat: diffrax.SaveAt | None = None) -> diffrax.Solution:
        """Integrate from ``t0`` to ``t1`` with ``diffrax.diffeqsolve`` and this cell's
        integrator (:func:`liquidjax.solvers.solve`). ``x``: the raw observation (held) or a path.

        **Returns:** the ``diffrax.Solution`` (``.ys``, ``.stats`` with ``num_steps``).
        """
        return solve(self, y0, x, t0, t1, saveat=saveat)

    def solve_path(self, state, knots, x, interpolation, t_end):
        """The states along the `interpolation` of the observations (held at ``x[0]`` before
        the first one), from one :func:`liquidjax.solvers.solve` stepping onto every knot."""
        path = input_path(knots, jnp.concatenate([x[:1], x], axis=0), interpolation)
        saveat = diffrax.SaveAt(ts=jnp.minimum(knots[1:], t_end))
        return solve(self, state, path, knots[0], t_end, saveat=saveat,
                     observation_times=knots).ys

    def advance(self, state, x, t0, t1, *, key=None):
        """The state at ``t1`` (input ``x`` held over ``[t0, t1]``): ``ode_unfolds`` fused
        semi-implicit steps when the integrator asks for them (a conductance cell, constant
        steps), otherwise one :func:`liquidjax.solvers.solve`. `key` is unused (no dropout)."""
        del key
        if self.integrator.uses_fused_step and isinstance(self, AbstractConductanceCell):
            dtype = jax.tree_util.tree_leaves(state)[0].dtype
            dt = jnp.asarray(t1, dtype) - jnp.asarray(t0, dtype)
            unfolds = self.integrator.ode_unfolds
            count_fused_evals(unfolds, state)
            return self.fused_unfolds(state, x, dt, unfolds, self.integrator.solver.epsilon)
        sol = solve(self, state, x, t0, t1)
        return jax.tree_util.tree_map(lambda y: y[-1], sol.ys)


class AbstractConductanceCell(AbstractODECell):
    r"""An ODE cell in conductance form: ``cm * dy/dt = num(t, y, x) - den(t, y, x) * y`` with
    ``den ≥ 0`` (a leaky neuron with input-dependent conductances), ``y`` an array.

    The general form :meth:`vector_field` is derived; the fused semi-implicit solver
    (:class:`~liquidjax.solvers.FusedSemiImplicit`, ncps's scheme) uses the split directly. With
    constant steps and held input, :meth:`advance` runs ``ode_unfolds`` fused steps in one
    ``lax.fori_loop`` (no diffrax overhead); a cell may supply a faster implementation of exactly
    that loop as the class variable ``fused_kernel`` (the LTC's hand-written VJP kernel), which a
    test must hold to the generic loop.
    """

    # Optional fast implementation of `fused_unfolds`: ``(cell, y0, x, dt, unfolds, epsilon) -> y``.
    fused_kernel: ClassVar[Callable[..., Array] | None] = None

    @abc.abstractmethod
    def conductances(self, t: Any, y: Float[Array, " state"], x: Any) -> tuple[Array, Array, Array]:
        """Return ``(num, den, cm)`` with ``cm * dy/dt = num - den * y``."""

    def split(self, t: Any, y: Float[Array, " state"], x: Any) -> tuple[Array, Array]:
        """Return ``(a, b)`` with ``dy/dt = a - b * y``."""
        num, den, cm = self.conductances(t, y, x)
        return num / cm, den / cm

    def vector_field(self, t: Any, y: Float[Array, " state"], x: Any) -> Float[Array, " state"]:
        """The right-hand side ``dy/dt = (num - den * y) / cm``."""
        num, den, cm = self.conductances(t, y, x)
        return (num - den * y) / cm

    def fused_unfolds(self, y0: Float[Array, " state"], x: Array, dt: Array, unfolds: int,
                      epsilon: float) -> Float[Array, " state"]:
        """``unfolds`` fused semi-implicit steps of size ``dt / unfolds`` with ``x`` held:
        ``y ← (cm/h · y + num) / (cm/h + den + ε)`` (the class's ``fused_kernel`` if it has one)."""
        kernel = type(self).fused_kernel
        if kernel is not None:
            return kernel(self, y0, x, dt, unfolds, epsilon)
        h = dt / unfolds

        def body(_, y):
            num, den, cm = self.conductances(0.0, y, x)
            cm_t = cm / h
            return (cm_t * y + num) / (cm_t + den + epsilon)

        return jax.lax.fori_loop(0, unfolds, body, y0)
