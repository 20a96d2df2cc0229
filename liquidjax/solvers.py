"""Solvers for liquid ODE cells.

* :class:`Integrator` — how an ODE cell is integrated (solver, step-size controller, steps per
  interval, adjoint, step budget): one declared object, the field ``integrator`` of every
  :class:`~liquidjax.AbstractODECell`.
* :func:`solve` — the one ``diffrax.diffeqsolve`` set-up used by every cell, by
  :class:`~liquidjax.LiquidRNN` (held and continuous inputs) and by :mod:`liquidjax.inspect`.
* :class:`FusedSemiImplicit` — the ncps "fused" semi-implicit Euler step as a diffrax solver.
* :class:`LiquidTerm` — the diffrax term of an ODE cell; it exposes the conductance split that the
  fused solver needs and the general vector field for every other solver.
* :func:`solver_from_name` — the single place where command-line strings become solver objects.
* :func:`count_vf_evals` — counts vector-field evaluations of a solve (for benchmarks).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from diffrax._root_finder import use_stepsize_tol  # the "take them from the controller" marker
from diffrax._term import WrapTerm
from jaxtyping import Array

from ._checks import check_int

_COUNTER: contextvars.ContextVar[Callable[..., None] | None] = contextvars.ContextVar(
    "liquidjax_vf_counter", default=None
)


class LiquidTerm(diffrax.AbstractTerm):
    """The diffrax term ``f(t, y, args) dt`` of a liquid ODE cell.

    ``vf`` is the cell's vector field ``(num - den * y) / cm``; :meth:`conductances` gives the split
    used by :class:`FusedSemiImplicit`.

    **Arguments:**
    - `cell`: an :class:`~liquidjax.AbstractODECell` (``conductances`` only for an
      :class:`~liquidjax.cells.AbstractConductanceCell`).
    - `counter`: optional host callback called once per vector-field evaluation (see
      :func:`count_vf_evals`); leave ``None`` in normal use.
    """

    cell: Any
    counter: Callable[..., None] | None = eqx.field(default=None, static=True)

    def vf(self, t, y, args):
        _report(self.counter, 1, y)
        return self.cell.vector_field(t, y, args)

    def conductances(self, t, y, args):
        _report(self.counter, 1, y)
        return self.cell.conductances(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return jax.tree_util.tree_map(lambda v: v * control, vf)


class FusedSemiImplicit(diffrax.AbstractSolver):
    r"""The ncps LTC "fused" solver: one semi-implicit (linearly implicit) Euler step.

    For a conductance-form ODE ``cm dy/dt = num(y) - den(y) y`` and a step of size ``h`` it computes

    $$y_1 = \frac{(cm/h)\, y_0 + num(y_0)}{cm/h + den(y_0) + \varepsilon},$$

    which is exactly ncps's ``v ← (cm_t v + gleak vleak + Σ s erev) / (cm_t + gleak + Σ s + ε)``
    with ``cm_t = cm / h``. It is first-order accurate, unconditionally stable for ``den ≥ 0`` and
    keeps the state inside the convex hull of the reversal potentials. ncps's ``ode_unfolds = L``
    is ``L`` constant steps per observation interval.

    Works only with a :class:`LiquidTerm` (it needs the conductance split). Not adaptive.

    **Arguments:**
    - `epsilon`: added to the denominator (ncps default ``1e-8``).

    Reference: Hasani et al., "Liquid Time-constant Networks", AAAI 2021, eq. (3).
    """

    epsilon: float = eqx.field(default=1e-8, static=True)

    term_structure: ClassVar = LiquidTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        num, den, cm = _liquid_term(terms).conductances(t0, y0, args)
        y1 = fused_update(y0, num, den, cm, t1 - t0, self.epsilon)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def fused_update(y: Array, num: Array, den: Array, cm: Array, h: Any, epsilon: float) -> Array:
    """One fused semi-implicit step of size ``h`` from ``y`` for the conductances
    ``(num, den, cm)`` at ``y``: ``(cm/h · y + num) / (cm/h + den + ε)`` — the arithmetic of
    :class:`FusedSemiImplicit` and of a conductance cell's held-input unfolds alike."""
    cm_t = cm / h
    return (cm_t * y + num) / (cm_t + den + epsilon)


def _liquid_term(terms) -> LiquidTerm:
    # diffeqsolve wraps terms in a WrapTerm (the direction of integration); the fused step
    # integrates forward in time and needs the cell's conductance split.
    inner = terms
    while isinstance(inner, WrapTerm):
        inner = inner.term
    if not isinstance(inner, LiquidTerm):
        raise TypeError(
            "FusedSemiImplicit needs a LiquidTerm (the conductance split of a liquid ODE cell), "
            f"got {type(terms).__name__}; use it through a liquidjax cell or make_term(cell)"
        )
    return inner


_SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "fused": FusedSemiImplicit,
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "implicit_euler": diffrax.ImplicitEuler,
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno5": diffrax.Kvaerno5,
}

SOLVER_NAMES: tuple[str, ...] = tuple(_SOLVERS)


def solver_from_name(name: str) -> diffrax.AbstractSolver:
    """Map a command-line solver name to a diffrax solver object.

    **Arguments:**
    - `name`: one of :data:`SOLVER_NAMES` (case-insensitive).

    **Returns:** a fresh solver instance.

    Raises ``ValueError`` listing the valid names for an unknown one.
    """
    try:
        return _SOLVERS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown solver {name!r}; expected one of: {', '.join(SOLVER_NAMES)}"
        ) from None


def is_adaptive(solver: diffrax.AbstractSolver) -> bool:
    """Whether ``solver`` provides an error estimate (can be used with ``PIDController``)."""
    return isinstance(solver, (diffrax.AbstractAdaptiveSolver, diffrax.AbstractImplicitSolver))


def count_vf_evals(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """Run ``fn(*args)`` and count the vector-field evaluations of every liquid ODE cell in it.

    ``fn`` is traced afresh here under ``eqx.filter_jit`` (pass a plain Python function, not an
    already-jitted one whose trace is cached; non-array arguments such as a
    ``diffrax.PIDController`` or a model are fine). Every evaluation reports itself through a
    host callback, so the count is exact, at run time — for benchmarks, not training loops:

    * a diffrax solve counts each call of the term's vector field (or conductances), including
      the evaluations of rejected steps and of implicit solvers' Newton iterations;
    * the fused fast path (:class:`FusedSemiImplicit` with constant steps, held input) counts
      its ``ode_unfolds`` conductance evaluations per observation, like the same solver through
      diffrax;
    * under ``jax.vmap`` the count is the **sum over the batch**: every example counts each
      evaluation made on it — under ``vmap`` an adaptive solve's loop runs until the slowest
      example is done, and examples already done are evaluated (and discarded) too;
    * a padded (masked) step counts what was computed for it: its fused unfolds (they run and
      are discarded), and nothing in an adaptive solve of one sequence (masked steps are
      integrated over Δt = 0, no step is taken).

    **Returns:** ``(fn(*args), number_of_evaluations)``.
    """
    box = np.zeros((), np.int64)

    def tick(n=1):
        box[...] += int(n)

    token = _COUNTER.set(tick)
    try:
        out = jax.block_until_ready(eqx.filter_jit(fn)(*args))
        jax.effects_barrier()
    finally:
        _COUNTER.reset(token)
    return out, int(box)


def _report(counter: Callable[..., None] | None, n: int, state: Any) -> None:
    # The state rides along so that under vmap the callback runs once per example (an
    # unbatched callback would run once per batch).
    if counter is not None:
        jax.debug.callback(lambda _: counter(n), jax.tree_util.tree_leaves(state)[0])


def count_fused_evals(n: int, state: Any) -> None:
    """Report ``n`` conductance evaluations made outside a diffrax term (the fused fast path,
    on `state`) to an enclosing :func:`count_vf_evals`; a no-op otherwise."""
    _report(_COUNTER.get(), n, state)


def make_term(cell: Any) -> LiquidTerm:
    """The :class:`LiquidTerm` of ``cell`` (counting evaluations inside :func:`count_vf_evals`)."""
    return LiquidTerm(cell, _COUNTER.get())


def make_control_term(matrix: Callable[[Any], Any], control: diffrax.AbstractPath,
                      ) -> diffrax.ControlTerm:
    """``diffrax.ControlTerm`` of ``dz = matrix(z) dX`` driven by the path `control`, counting
    its evaluations inside :func:`count_vf_evals` (a controlled differential equation, e.g.
    :class:`~liquidjax.cells.NeuralCDE` over a continuous input path)."""
    counter = _COUNTER.get()

    def vf(t, z, args):
        _report(counter, 1, z)
        return matrix(z)

    return diffrax.ControlTerm(vf, control)


def input_path(knots: Any, values: Any, interpolation: str) -> diffrax.AbstractPath:
    """The continuous input path through ``(knots[k], values[k])``: ``"linear"``
    (``diffrax.LinearInterpolation``) or ``"cubic"`` (Hermite cubic with backward differences,
    ``diffrax.backward_hermite_coefficients`` + ``CubicInterpolation``: C¹, and causal — the
    path up to ``knots[k]`` depends on ``values[: k + 1]`` only)."""
    if interpolation == "linear":
        return diffrax.LinearInterpolation(knots, values)
    if interpolation == "cubic":
        return diffrax.CubicInterpolation(knots,
                                          diffrax.backward_hermite_coefficients(knots, values))
    raise ValueError(f"interpolation must be 'linear' or 'cubic', got {interpolation!r}")


class Integrator(eqx.Module):
    """How an ODE cell is integrated across each observation interval — one declared object.

    Every :class:`~liquidjax.AbstractODECell` has one as its field ``integrator``; :func:`solve`
    is the only consumer. Integration settings are not parameters: checkpoints store a model
    without them, so weights trained with one integrator load into a model configured with
    another (``liquidjax.train.load_checkpoint``).

    **Arguments:**
    - `solver`: a diffrax solver object; default :class:`FusedSemiImplicit` (ncps's scheme, for
      conductance cells). Any diffrax solver works on the general form.
    - `stepsize_controller`: default ``diffrax.ConstantStepSize()``; a
      ``diffrax.PIDController`` makes the solve adaptive (the solver must then be adaptive);
      ``diffrax.StepTo`` fixes the step locations.
    - `ode_unfolds`: constant steps per observation interval (ncps's ``ode_unfolds``, default 6);
      with an adaptive controller, the first step is ``Δt / ode_unfolds``.
    - `adjoint`: diffrax adjoint for gradients through ``diffeqsolve`` (default
      ``RecursiveCheckpointAdjoint()``; ``BacksolveAdjoint()`` for O(1) memory).
    - `max_steps`: step budget of one solve (an interval, or a whole sequence with continuous
      inputs).

    **Example:**
    ```python
    adaptive = Integrator(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-5, atol=1e-7))
    ```
    """

    solver: diffrax.AbstractSolver = FusedSemiImplicit()
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.ConstantStepSize()
    ode_unfolds: int = eqx.field(default=6, static=True)
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    max_steps: int = eqx.field(default=4096, static=True)

    def __check_init__(self):
        check_int("ode_unfolds", self.ode_unfolds, minimum=1)
        check_int("max_steps", self.max_steps, minimum=1)
        for name, value, kind in (
            ("solver", self.solver, diffrax.AbstractSolver),
            ("stepsize_controller", self.stepsize_controller,
             diffrax.AbstractStepSizeController),
            ("adjoint", self.adjoint, diffrax.AbstractAdjoint),
        ):
            if not isinstance(value, kind):
                raise TypeError(
                    f"Integrator.{name} must be a diffrax {kind.__name__}, got {value!r}"
                )
        if self.is_adaptive and not is_adaptive(self.solver):
            raise ValueError(
                f"an adaptive step-size controller needs a solver with an error estimate "
                f"(e.g. diffrax.Tsit5(), diffrax.Kvaerno5()); {type(self.solver).__name__} "
                "has none: use constant steps (diffrax.ConstantStepSize())"
            )
        if (isinstance(self.stepsize_controller, diffrax.ConstantStepSize)
                and self.ode_unfolds > self.max_steps):
            raise ValueError(
                f"ode_unfolds={self.ode_unfolds} constant steps per interval exceed "
                f"max_steps={self.max_steps}, the step budget of a solve: every solve would "
                f"fail; raise max_steps to at least {self.ode_unfolds} or lower ode_unfolds"
            )

    @property
    def is_adaptive(self) -> bool:
        """Whether the step-size controller adapts the steps (``PIDController``)."""
        return isinstance(self.stepsize_controller, diffrax.AbstractAdaptiveStepSizeController)

    @property
    def uses_fused_step(self) -> bool:
        """Whether held inputs take the fused fast path (fused solver, constant steps)."""
        return isinstance(self.solver, FusedSemiImplicit) and isinstance(
            self.stepsize_controller, diffrax.ConstantStepSize
        )

    def replace(self, **changes: Any) -> Integrator:
        """A copy with the given settings replaced (``None`` keeps a setting)."""
        kept = {name: getattr(self, name) for name in
                ("solver", "stepsize_controller", "ode_unfolds", "adjoint", "max_steps")}
        unknown = set(changes) - set(kept)
        if unknown:
            raise ValueError(f"Integrator has no setting(s) {sorted(unknown)}")
        kept.update({k: v for k, v in changes.items() if v is not None})
        return Integrator(**kept)


def solve(
    cell: Any,
    y0: Any,
    x: Any,
    t0: Any,
    t1: Any,
    *,
    saveat: diffrax.SaveAt | None = None,
    observation_times: Any = None,
    term: diffrax.AbstractTerm | None = None,
    throw: bool = True,
) -> diffrax.Solution:
    """Integrate an ODE cell from ``t0`` to ``t1`` with its :class:`Integrator` — the single
    ``diffrax.diffeqsolve`` set-up of the library.

    **Arguments:**
    - `cell`: an :class:`~liquidjax.AbstractODECell`.
    - `y0`: the state at ``t0`` (any pytree).
    - `x`: the observation held over the interval, or a ``diffrax.AbstractPath``.
    - `t0`, `t1`: the interval.
    - `saveat`: default ``SaveAt(t1=True)``.
    - `observation_times`: for a whole sequence with continuous inputs, the knots
      ``T_0 = t0 < T_1 < ... < T_L`` of the input path. Constant steps then take
      ``ode_unfolds`` equal steps inside every ``(T_{k-1}, T_k]`` up to ``t1 = T_L``
      (``StepTo``); an adaptive controller (which may stop early, ``t1 ≤ T_L``)
      is clipped to step exactly onto every ``T_k`` (``ClipStepSizeController``), so
      a state saved at ``T_k`` never depends on later inputs.
    - `term`: the diffrax term to integrate (default the cell's own ODE, :func:`make_term`;
      a controlled differential equation passes :func:`make_control_term`).
    - `throw`: raise (``eqx.error_if``) when the solve fails; ``False`` returns the solution
      with its ``result`` (as ``diffrax.diffeqsolve(..., throw=False)``).

    A failed solve raises diffrax's own message, except an adaptive solve that rejected every
    step: its step-size controller met non-finite values (see :func:`_all_rejected`) and the
    message says so, since diffrax's advice (a larger ``max_steps``) cannot help there.

    Constant steps on one interval take ``ode_unfolds`` steps of ``(t1 − t0) / ode_unfolds``; an
    adaptive controller starts from that step size. Implicit solvers with constant steps get
    Newton tolerances suited to the dtype (:func:`with_root_finder_tols`). ``t0 == t1`` takes no
    step.

    **Returns:** the ``diffrax.Solution``.
    """
    integ: Integrator = cell.integrator
    dtype = jnp.result_type(jax.tree_util.tree_leaves(y0)[0])
    saveat = diffrax.SaveAt(t1=True) if saveat is None else saveat
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    unfolds = integ.ode_unfolds
    controller, adjoint = integ.stepsize_controller, integ.adjoint
    if observation_times is None:
        # StepTo fixes the step locations itself; otherwise start from ode_unfolds equal steps.
        dt0 = None if isinstance(controller, diffrax.StepTo) else (t1 - t0) / unfolds
    else:
        knots = jnp.asarray(observation_times, dtype)
        spans = knots[1:] - knots[:-1]
        if isinstance(controller, diffrax.ConstantStepSize):
            if spans.shape[0] * unfolds > integ.max_steps:
                raise ValueError(
                    f"a continuous-input solve over {spans.shape[0]} observations takes "
                    f"{spans.shape[0]} x ode_unfolds={unfolds} = {spans.shape[0] * unfolds} "
                    f"constant steps, more than max_steps={integ.max_steps} (the budget of the "
                    f"whole sequence here): raise max_steps to at least "
                    f"{spans.shape[0] * unfolds}"
                )
            frac = jnp.arange(unfolds, dtype=dtype) / unfolds
            grid = (knots[:-1, None] + frac[None, :] * spans[:, None]).reshape(-1)
            grid = jnp.concatenate([grid, knots[-1:]])  # ends at t1 = T_L
            controller, dt0 = diffrax.StepTo(grid), None
        else:
            if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController) and not (
                isinstance(controller, diffrax.ClipStepSizeController)
            ):
                controller = diffrax.ClipStepSizeController(controller, step_ts=knots[1:])
            dt0 = spans[0] / unfolds
        if (isinstance(adjoint, diffrax.BacksolveAdjoint) and dt0 is None
                and "stepsize_controller" not in adjoint.kwargs):
            # The forward step grid cannot drive the backward solves (they run T_k -> T_{k-1}):
            # give them constant steps no longer than the forward's shortest step.
            adjoint = diffrax.BacksolveAdjoint(**{
                "dt0": -jnp.min(spans) / unfolds,
                **adjoint.kwargs,
                "stepsize_controller": diffrax.ConstantStepSize(),
            })
    solver = with_root_finder_tols(integ.solver, controller, dtype)
    sol = diffrax.diffeqsolve(
        make_term(cell) if term is None else term, solver, t0, t1, dt0, y0, x,
        saveat=saveat, stepsize_controller=controller, adjoint=adjoint,
        max_steps=integ.max_steps, throw=False,
    )
    if not throw:
        return sol
    advice = _all_rejected(integ, controller)
    if advice is not None:
        rejected_all = ((sol.result == diffrax.RESULTS.max_steps_reached)
                        & (sol.stats["num_accepted_steps"] == 0))
        sol = eqx.error_if(sol, rejected_all, advice)
    # What diffeqsolve(throw=True) does (the adjoints ignore `throw`).
    return sol.result.error_if(sol, jnp.invert(diffrax.is_okay(sol.result)))


def _all_rejected(integ: Integrator, controller: Any) -> str | None:
    """The message for an adaptive solve that rejected all of its ``max_steps`` steps, when that
    can only mean non-finite values; ``None`` when it could be plain accuracy (too few steps).

    A rejected step shrinks the next one by at least the PID controller's ``safety`` factor
    (0.9): ``max_steps`` rejections in a row on finite errors would shrink the first step below
    a millionth of itself, where an error estimate is tiny. So when ``safety ** max_steps <
    1e-6`` an all-rejected solve met NaN or inf — the first step overflowed (the controller's
    next step size is then NaN and every later step is rejected too), or the vector field is
    not finite at the initial state — and a larger ``max_steps`` fails the same way."""
    inner = controller
    while isinstance(inner, diffrax.ClipStepSizeController):
        inner = inner.controller
    if not isinstance(inner, diffrax.PIDController):
        return None
    safety = float(inner.safety)
    if not 0 < safety < 1 or safety ** integ.max_steps >= 1e-6:
        return None
    remedies = [f"more ode_unfolds (the first step is the interval / ode_unfolds, now "
                f"{integ.ode_unfolds})", "PIDController(dtmax=...) to bound every step"]
    if not isinstance(integ.solver, diffrax.AbstractImplicitSolver):
        remedies.append("an implicit solver for a stiff cell (diffrax.Kvaerno5(), in float64)")
    return (
        f"the adaptive solve rejected all of its max_steps={integ.max_steps} steps, from the "
        "first: the solver met non-finite values (NaN or inf: its first step overflowed, or the "
        "vector field is not finite at the state and input), from which the step-size "
        "controller cannot recover, so a larger max_steps fails the same way. Take a smaller "
        f"first step: {'; '.join(remedies)}; or look for huge inputs or states. "
        "liquidjax.inspect.solver_trace(cell, x, timespans) returns the solve's steps without "
        "raising"
    )


# Newton tolerances per dtype for implicit solvers under constant steps (diffrax takes them from
# an adaptive controller and refuses constant steps without them). Newton converges
# quadratically, so its last correction bounds the error far below these.
_NEWTON_TOLS = {"float32": (1e-3, 1e-5), "float64": (1e-8, 1e-10)}
_NEWTON_MAX_STEPS = 20


def with_root_finder_tols(
    solver: diffrax.AbstractSolver, controller: diffrax.AbstractStepSizeController, dtype
) -> diffrax.AbstractSolver:
    """An implicit solver ready for constant steps in ``dtype``.

    diffrax's implicit solvers (Kvaerno*, ImplicitEuler) take their root finder's tolerances
    from an adaptive controller; with constant steps they refuse to run until these are set.
    Here they get a full Newton root finder with tolerances suited to ``dtype`` (rtol/atol
    1e-3/1e-5 in float32, 1e-8/1e-10 in float64) and up to 20 iterations. Adaptive controllers
    keep diffrax's set-up: in float32 it rejects many steps, but a full Newton at looser
    tolerances fared worse on stiff LTCs (measured, docs/solvers.md). Solvers given their own
    root finder tolerances are left alone.
    """
    single = jnp.dtype(dtype) == jnp.float32
    if (not isinstance(solver, diffrax.AbstractImplicitSolver)
            or isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
            or getattr(solver.root_finder, "rtol", None) is not use_stepsize_tol):
        return solver
    rtol, atol = _NEWTON_TOLS["float32" if single else "float64"]
    finder = optx.Newton(rtol=rtol, atol=atol)
    solver = eqx.tree_at(lambda s: s.root_finder, solver, finder)
    if solver.root_find_max_steps < _NEWTON_MAX_STEPS:
        solver = eqx.tree_at(lambda s: s.root_find_max_steps, solver, _NEWTON_MAX_STEPS)
    return solver
