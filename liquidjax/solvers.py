"""Solvers for liquid ODE cells.

* :class:`FusedSemiImplicit` — the ncps "fused" semi-implicit Euler step as a diffrax solver.
* :class:`LiquidTerm` — the diffrax term of an :class:`~liquidjax.AbstractODECell`; it exposes the
  conductance split that the fused solver needs and the plain vector field for every other solver.
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

from .cells._base import AbstractODECell

_COUNTER: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "liquidjax_vf_counter", default=None
)


class LiquidTerm(diffrax.AbstractTerm):
    """The diffrax term ``f(t, y, args) dt`` of a liquid ODE cell.

    ``vf`` is the cell's vector field ``(num - den * y) / cm``; :meth:`conductances` gives the split
    used by :class:`FusedSemiImplicit`.

    **Arguments:**
    - `cell`: an :class:`~liquidjax.AbstractODECell`.
    - `counter`: optional host callback called once per vector-field evaluation (see
      :func:`count_vf_evals`); leave ``None`` in normal use.
    """

    cell: AbstractODECell
    counter: Callable[[], None] | None = eqx.field(default=None, static=True)

    def _tick(self):
        if self.counter is not None:
            jax.debug.callback(self.counter)

    def vf(self, t, y, args):
        self._tick()
        return self.cell.vector_field(t, y, args)

    def conductances(self, t, y, args):
        self._tick()
        return self.cell.conductances(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return vf * control


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
        cm_t = cm / (t1 - t0)
        y1 = (cm_t * y0 + num) / (cm_t + den + self.epsilon)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def _liquid_term(terms) -> LiquidTerm:
    # diffeqsolve wraps terms (e.g. in a WrapTerm that handles the direction of integration);
    # the fused step integrates forward in time and needs the cell's conductance split.
    inner = terms
    while not isinstance(inner, LiquidTerm) and hasattr(inner, "term"):
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
    """Run ``fn(*args)`` and count the vector-field evaluations made by :class:`LiquidTerm`.

    ``fn`` is traced afresh here (pass a plain Python function, not an already-jitted one whose
    trace is cached): every :class:`LiquidTerm` built while tracing it reports each evaluation
    through a host callback. The count is exact, at run time — for benchmarks, not training loops.
    An LTC on its fused fast path (fused solver, constant steps) bypasses diffrax and the term, so
    it reports 0 there: its cost is known statically, ``ode_unfolds`` conductance evaluations per
    observation. Call ``cell.solve`` (the diffrax path) to count the fused solver through diffrax.

    **Returns:** ``(fn(*args), number_of_evaluations)``.
    """
    box = np.zeros((), np.int64)

    def tick():
        box[...] += 1

    token = _COUNTER.set(tick)
    try:
        out = jax.block_until_ready(jax.jit(fn)(*args))
        jax.effects_barrier()
    finally:
        _COUNTER.reset(token)
    return out, int(box)


def make_term(cell: AbstractODECell) -> LiquidTerm:
    """The :class:`LiquidTerm` of ``cell`` (counting evaluations inside :func:`count_vf_evals`)."""
    return LiquidTerm(cell, _COUNTER.get())


def with_root_finder_tols(
    solver: diffrax.AbstractSolver, controller: diffrax.AbstractStepSizeController, dtype
) -> diffrax.AbstractSolver:
    """An implicit solver ready for ``controller``.

    diffrax's implicit solvers (Kvaerno*, ImplicitEuler) take their Newton tolerances from an
    adaptive controller; with constant steps it refuses to run until they are set. Here they get a
    full Newton root finder with tolerances suited to ``dtype`` (1e-4/1e-6 in float32, where
    tighter ones cannot be met, 1e-8/1e-10 in float64). Solvers whose root finder already has
    tolerances, and adaptive controllers, are left alone.
    """
    import optimistix as optx
    from diffrax._root_finder import use_stepsize_tol  # the "take them from the controller" marker

    if (not isinstance(solver, diffrax.AbstractImplicitSolver)
            or isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
            or getattr(solver.root_finder, "rtol", None) is not use_stepsize_tol):
        return solver
    single = jnp.dtype(dtype) == jnp.float32
    finder = optx.Newton(rtol=1e-4 if single else 1e-8, atol=1e-6 if single else 1e-10)
    return eqx.tree_at(lambda s: s.root_finder, solver, finder)
