"""The cell contract shared by every liquid cell.

A cell acts on **one example** (``jax.vmap`` adds the batch). Its state is any pytree of arrays
(a vector for LTC/CfC, a pair ``(h, c)`` with mixed memory). Three kinds of cell:

* :class:`AbstractCell` — anything the sequence layer can run. It implements ``init_state()``,
  ``advance(state, x, t0, t1, *, key=None)`` (the state after ``[t0, t1]`` with the input ``x``
  held: ncps semantics, ``t1 - t0`` is the elapsed time) and ``output(state)``. A CfC advances in
  closed form. A whole held-input sequence runs through ``advance_sequence`` (what
  ``LiquidRNN`` calls), by default :func:`scan_advance`, a ``lax.scan`` of ``advance``; a cell
  overrides it with a faster computation of the same numbers (the CfC, mixed memory, the LTC).
* :class:`AbstractODECell` — a cell whose state obeys an ODE ``dstate/dt = f(t, state, x)``. It
  implements only ``vector_field(t, state, x)`` (plus ``init_state`` and ``output``) and declares
  **how** it is integrated in one field, ``integrator``
  (a :class:`~liquidjax.solvers.Integrator`: solver, step-size controller, steps per interval,
  adjoint, step budget). ``advance`` and ``with_solver`` come from the base; every path (held
  inputs, continuous inputs, :mod:`liquidjax.inspect`) integrates through the one
  :func:`liquidjax.solvers.solve`.
* :class:`AbstractConductanceCell` — an ODE cell that also gives its dynamics in conductance
  form ``cm dy/dt = num − den·y`` (an array state), which the fused semi-implicit solver of ncps
  needs (it declares ``conductance_form = True``). Asking for the fused solver on a cell without
  conductance form is an error at construction.

A cell with a wiring (:class:`AbstractWiredCell`) keeps the built
:class:`~liquidjax.wirings.Wiring` — kind, arguments, seed and input size — as a static field:
it is part of the model's identity, saved in checkpoints, checked on load and drawable
(``liquidjax.plot.wiring(cell)``).

See ``docs/custom_cells.md`` for a custom cell in a page.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from .._static import replace_fields
from .._streaming import AbstractStreaming, StreamSpec
from ..solvers import (
    FusedSemiImplicit,
    Integrator,
    count_fused_evals,
    fused_update,
    input_path,
    solve,
)

State = PyTree[Array]

__all__ = [
    "AbstractCell", "AbstractConductanceCell", "AbstractODECell", "AbstractPathCell",
    "AbstractWiredCell", "scan_advance",
]


class AbstractCell(AbstractStreaming):
    """A recurrent liquid cell acting on one example.

    Subclasses set ``input_size``, ``state_size`` (size of the hidden vector ``h``) and
    ``output_size``, and implement :meth:`init_state`, :meth:`advance` and :meth:`output`.
    """

    input_size: eqx.AbstractVar[int]
    state_size: eqx.AbstractVar[int]
    output_size: eqx.AbstractVar[int]
    ssm_fields: ClassVar[tuple[str, ...]] = ()
    """Fields (arrays) trained at the slow rate without weight decay of a state-space model's
    ``A``, ``B`` and ``Δt`` (:func:`liquidjax.models.ssm_param_groups`; the trainer gives them
    ``TrainConfig.ssm_learning_rate``). Empty: every parameter trains at the model's rate."""

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

    # ------------------------------------------------------------------ streaming (export)
    def stream_spec(self) -> StreamSpec:
        """One observation of ``input_size`` in, ``output(state)`` out."""
        return StreamSpec(self.input_size, self.output_size, (self,))

    def stream_init(self) -> State:
        """:meth:`init_state`."""
        return self.init_state()

    def stream_step(self, state: State, x: Array, dt: Array) -> tuple[Array, State]:
        """:meth:`advance` across ``[0, dt]``, then :meth:`output`."""
        new = self.advance(state, x, jnp.zeros((), dt.dtype), dt)
        return self.output(new), new

    def advance_sequence(
        self,
        state: State,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None,
        mask: Bool[Array, " time"] | None = None,
        *,
        last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> State:
        """Advance ``state`` over a whole sequence of held observations (one example): what
        :class:`~liquidjax.layers.LiquidRNN` with ``interpolation="hold"`` runs.

        The default is :func:`scan_advance`, a ``lax.scan`` of :meth:`advance`. A cell
        overrides it with a faster computation of exactly the same numbers (a fused recurrence,
        a compiled kernel, per-observation terms computed for all steps at once) and calls
        ``super().advance_sequence(...)`` where its fast path does not apply (mixed dtypes, a
        `key` for dropout it cannot honour, ...). A test must hold the override to
        :func:`scan_advance`, values and gradients.

        **Arguments:**
        - `state`: the initial state (the cell's pytree).
        - `x`: the observations, shape ``(time, input_size)``; ``x[k]`` is held over step ``k``.
        - `timespans`: the elapsed time of every step, shape ``(time,)``; ``None``: every
          ``Δt`` is 1 (known at trace time).
        - `mask`: boolean ``(time,)``; ``False`` marks a step that did not happen (padding):
          the state is kept.
        - `last`: return only the final state.
        - `key`: randomness for dropout (training), or ``None``.

        **Returns:** the states after every observation (every leaf with a leading time axis
        of length ``time``), or with `last` only the final state.
        """
        return scan_advance(self, state, x, timespans, mask, last=last, key=key)

    @property
    def is_adaptive(self) -> bool:
        """Whether :meth:`advance` runs an adaptive solve, whose cost grows with the interval
        (then :func:`scan_advance` integrates a padded step over ``Δt = 0``: no step at all).
        ``False`` here; an ODE cell asks its integrator."""
        return False

    def memory_sequence(
        self,
        lstm: Any,
        state: State,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None,
        mask: Bool[Array, " time"] | None = None,
        *,
        last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> State | None:
        """The states of :class:`~liquidjax.cells.MixedMemory` over this cell and `lstm`
        (state ``(h, c)``), as :meth:`advance_sequence` defines them (`key`: what
        ``MixedMemory.advance`` hands this cell's ``advance``), computed by a fused recurrence
        of this cell's own — or ``None`` (the default) where it has none: ``MixedMemory`` then
        runs its generic scan. The CfC overrides it."""
        del lstm, state, x, timespans, mask, last, key
        return None

    @property
    def connectivity(self) -> Any:
        """The built :class:`~liquidjax.wirings.Wiring` this cell follows (what
        :func:`liquidjax.plot.wiring` draws), or ``None``: a wired cell's ``wiring``, mixed
        memory's liquid cell's."""
        return None

    def portable(self) -> AbstractCell:
        """This cell with its step in plain JAX operations — no compiled-kernel custom call
        (``jax.export`` refuses those), no custom primitive (``jax2onnx`` converts standard
        ones) — what :mod:`liquidjax.export` traces; the same numbers, to rounding. The cell
        itself here; a cell with such kernels overrides it (the LTC)."""
        return self

    def divergence_advice(self) -> str:
        """What to try when this cell's state became NaN or inf over a sequence (the error of
        ``LiquidRNN(check_solution=True)`` quotes it)."""
        return ("check the scale of the inputs and of the parameters (a learning rate too "
                "large for them)")


class AbstractWiredCell(AbstractCell):
    """A cell whose connectivity follows a built :class:`~liquidjax.wirings.Wiring`.

    ``wiring`` (a static field: wirings are immutable, hashable host-side configuration) records
    the wiring's kind, constructor arguments (seed included) and input size. Two cells with
    different wirings are different models: :func:`liquidjax.train.load_checkpoint` refuses to
    load one's weights into the other.
    """

    wiring: eqx.AbstractVar[Any]

    @property
    def connectivity(self) -> Any:
        """The cell's ``wiring``."""
        return self.wiring


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

    # Whether the cell gives its dynamics in conductance form (``conductances``), which the fused
    # semi-implicit solver needs: declared by :class:`AbstractConductanceCell`.
    conductance_form: ClassVar[bool] = False

    def __check_init__(self):
        if not isinstance(self.integrator, Integrator):
            raise TypeError(
                f"{type(self).__name__}.integrator must be a liquidjax.solvers.Integrator, got "
                f"{type(self.integrator).__name__}"
            )
        if isinstance(self.integrator.solver, FusedSemiImplicit) and not self.conductance_form:
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
        """The state at ``t1`` (input ``x`` held over ``[t0, t1]``): one
        :func:`liquidjax.solvers.solve`. `key` is unused (no dropout)."""
        del key
        sol = solve(self, state, x, t0, t1)
        return jax.tree_util.tree_map(lambda y: y[-1], sol.ys)

    @property
    def is_adaptive(self) -> bool:
        """Whether the integrator adapts its steps (``PIDController``)."""
        return self.integrator.is_adaptive

    def divergence_advice(self) -> str:
        return ("the integration diverged. An explicit solver (e.g. diffrax.Euler()) on a stiff "
                "cell needs smaller steps (more ode_unfolds), or use an adaptive solver "
                "(PIDController) or an implicit one (diffrax.Kvaerno5())")


class AbstractConductanceCell(AbstractODECell):
    r"""An ODE cell in conductance form: ``cm * dy/dt = num(t, y, x) - den(t, y, x) * y`` with
    ``den ≥ 0`` (a leaky neuron with input-dependent conductances), ``y`` an array.

    The general form :meth:`vector_field` is derived; the fused semi-implicit solver
    (:class:`~liquidjax.solvers.FusedSemiImplicit`, ncps's scheme) uses the split directly. With
    constant steps and held input, :meth:`advance` runs ``ode_unfolds`` fused steps in one
    ``lax.fori_loop`` (no diffrax overhead); a cell may supply a faster implementation of exactly
    that loop by overriding :meth:`fused_unfolds` (the LTC's hand-written VJP kernel), which a
    test must hold to the generic loop.
    """

    conductance_form: ClassVar[bool] = True

    @abc.abstractmethod
    def conductances(self, t: Any, y: Float[Array, " state"], x: Any) -> tuple[Array, Array, Array]:
        """Return ``(num, den, cm)`` with ``cm * dy/dt = num - den * y``."""

    def system_time_constant(self, y: Float[Array, " state"], x: Any) -> Float[Array, " state"]:
        """τ_sys = cm / den (for the LTC: cm / (gleak + Σ synaptic conductances)): the
        instantaneous ("liquid") time constants at state ``y`` under observation ``x``."""
        _, den, cm = self.conductances(0.0, y, x)
        return cm / den

    def split(self, t: Any, y: Float[Array, " state"], x: Any) -> tuple[Array, Array]:
        """Return ``(a, b)`` with ``dy/dt = a - b * y``."""
        num, den, cm = self.conductances(t, y, x)
        return num / cm, den / cm

    def vector_field(self, t: Any, y: Float[Array, " state"], x: Any) -> Float[Array, " state"]:
        """The right-hand side ``dy/dt = (num - den * y) / cm``."""
        num, den, cm = self.conductances(t, y, x)
        return (num - den * y) / cm

    def advance(self, state, x, t0, t1, *, key=None):
        """The state at ``t1`` (input ``x`` held over ``[t0, t1]``): ``ode_unfolds`` fused
        semi-implicit steps (:meth:`fused_unfolds`) when the integrator asks for them (the
        fused solver, constant steps), otherwise one :func:`liquidjax.solvers.solve`. `key` is
        unused (no dropout)."""
        if not self.integrator.uses_fused_step:
            return super().advance(state, x, t0, t1, key=key)
        dtype = jax.tree_util.tree_leaves(state)[0].dtype
        dt = jnp.asarray(t1, dtype) - jnp.asarray(t0, dtype)
        unfolds = self.integrator.ode_unfolds
        count_fused_evals(unfolds, state)
        return self.fused_unfolds(state, x, dt, unfolds, self.integrator.solver.epsilon)

    def fused_unfolds(self, y0: Float[Array, " state"], x: Array, dt: Array, unfolds: int,
                      epsilon: float) -> Float[Array, " state"]:
        """``unfolds`` fused semi-implicit steps of size ``dt / unfolds`` with ``x`` held:
        ``y ← (cm/h · y + num) / (cm/h + den + ε)``
        (:func:`liquidjax.solvers.fused_update`). A cell may override it with a faster
        computation of the same numbers (the LTC's kernels)."""
        h = dt / unfolds

        def body(_, y):
            num, den, cm = self.conductances(0.0, y, x)
            return fused_update(y, num, den, cm, h, epsilon)

        return jax.lax.fori_loop(0, unfolds, body, y0)

    def divergence_advice(self) -> str:
        if self.integrator.uses_fused_step:
            return ("the fused semi-implicit step stays finite while the conductances are "
                    "non-negative (den >= 0, cm > 0): keep them so (e.g. "
                    "liquidjax.nonnegative_projection() when parameters are used as stored), "
                    "and " + AbstractCell.divergence_advice(self))
        return super().divergence_advice() + (
            ", or the fused semi-implicit solver (liquidjax.solvers.FusedSemiImplicit(), "
            "stable for any step)")


def portable_cells(model: Any) -> Any:
    """`model` (any pytree) with every cell in it replaced by its
    :meth:`AbstractCell.portable` form."""
    def is_cell(x):
        return isinstance(x, AbstractCell)

    return jax.tree_util.tree_map(lambda c: c.portable() if is_cell(c) else c, model,
                                  is_leaf=is_cell)


# --------------------------------------------------------------------------- the reference loop
def scan_advance(
    cell: AbstractCell,
    state: State,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None,
    mask: Bool[Array, " time"] | None = None,
    *,
    last: bool = False,
    key: PRNGKeyArray | None = None,
    remat: bool = False,
) -> State:
    """:meth:`AbstractCell.advance_sequence` by its definition: a ``lax.scan`` of
    ``cell.advance`` over the observations (``x[k]`` held for ``timespans[k]``, 1 when
    ``None``); a masked step (``mask`` False) keeps the state — for an adaptive cell
    (:attr:`AbstractCell.is_adaptive`) it is integrated over ``Δt = 0``, which takes no step.

    With `remat` the scan is checkpointed in two levels (``jax.checkpoint``): the backward pass
    keeps one state per block of ≈ √L steps and recomputes one block at a time, so training
    memory grows as √L instead of L, for about two extra forward passes of compute (what
    ``LiquidRNN(remat=True)`` runs).

    **Returns:** the states after every observation (leading time axis), or with `last` only
    the final state.
    """
    n = x.shape[0]
    if timespans is None:
        timespans = jnp.ones((n,), x.dtype)
    keys = None if key is None else jax.random.split(key, n)
    zero = jnp.zeros((), timespans.dtype)
    if mask is not None and cell.is_adaptive:
        # A padded step is integrated over Δt = 0: an adaptive solve then takes no step.
        # (Constant steps cost the same either way and keep Δt > 0, away from 1/Δt.)
        timespans = jnp.where(mask, timespans, 0)

    def step(h, inp):
        xk, dt, mk, kk = inp
        h_new = cell.advance(h, xk, zero, dt, key=kk)
        if mk is not None:
            h_new = jax.tree_util.tree_map(lambda a, b: jnp.where(mk, a, b), h_new, h)
        return h_new, (None if last else h_new)

    xs = (x, timespans, mask, keys)
    h, hs = _scan_remat(step, state, xs, n) if remat else jax.lax.scan(step, state, xs)
    return h if last else hs


def _remat_block(n: int) -> int:
    """The inner length of a two-level checkpointed scan over ``n`` steps: the largest divisor
    of ``n`` not above ``√n`` (1 when ``n`` is prime: one level)."""
    for b in range(math.isqrt(n), 0, -1):
        if n % b == 0:
            return b
    return 1


def _scan_remat(step, h, xs, n: int):
    """``lax.scan(step, h, xs)`` keeping O(√n) states for the backward pass instead of all n: the
    steps run in blocks of ``b ≈ √n``; the backward pass keeps each block's initial state,
    recomputes one block at a time keeping its ``b`` states, and one step at a time inside it."""
    nothing = jax.checkpoint_policies.nothing_saveable
    step = jax.checkpoint(step, policy=nothing)
    b = _remat_block(n)
    if b == 1:
        return jax.lax.scan(step, h, xs)

    def block(h, chunk):
        return jax.lax.scan(step, h, chunk)

    blocks = jax.tree_util.tree_map(lambda a: a.reshape((n // b, b) + a.shape[1:]), xs)
    h, ys = jax.lax.scan(jax.checkpoint(block, policy=nothing), h, blocks)
    return h, jax.tree_util.tree_map(lambda a: a.reshape((n,) + a.shape[2:]), ys)
