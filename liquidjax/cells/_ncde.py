"""A neural controlled differential equation driven by the linear interpolation of the
observations (and time), step by step, or by a continuous linear or cubic control path in one
``diffrax.ControlTerm`` solve."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ..solvers import Integrator, input_path, make_control_term, solve
from ._base import AbstractODECell, AbstractPathCell
from ._baseline_parts import check_sizes, default_integrator


class _CDEField(AbstractODECell):
    """``dz/dt = f(z) · v`` for a held control derivative ``v = dX/dt``."""

    mlp: eqx.nn.MLP
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, control_size, units, width, depth, integrator, dtype, key):
        self.mlp = eqx.nn.MLP(units, units * control_size, width, depth, activation=jax.nn.softplus,
                              final_activation=jnp.tanh, dtype=dtype, key=key)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = control_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.mlp.layers[0].weight.dtype)

    def matrix(self, z):
        """``f(z)``, shape ``(units, control)``."""
        return self.mlp(z).reshape(self.state_size, self.input_size)

    def vector_field(self, t, state, x):
        return self.matrix(state) @ self.input_at(x, t)

    def output(self, state):
        return state


class NeuralCDE(AbstractPathCell):
    r"""Neural controlled differential equation (Kidger, Morrill, Foster & Lyons 2020, "Neural
    controlled differential equations for irregular time series", NeurIPS; eq. 4):

    $$z_0 = \zeta(x_1),\qquad z_t = z_0 + \int_0^t f_\theta(z_s)\,dX_s,$$

    with ``X(t) = (t, x(t))`` the observations augmented with time, ``ζ`` linear and ``f_θ`` an
    MLP (softplus, final tanh) into ``units × (C + 1)`` matrices. As for every cell of
    :class:`~liquidjax.LiquidRNN` the sequence starts at ``t = 0`` and observation ``k`` comes
    at ``T_k = Δt_1 + … + Δt_k``; before the first one the path holds ``x_1`` (so ``z`` follows
    the time channel alone; Kidger et al. start at ``T_1``, the same when ``Δt_1 → 0``).

    * **Held inputs** (``interpolation="hold"``, a step per observation): ``X`` is the
      **linear interpolation** of the observations; over each interval ``dX/dt`` is constant,
      ``(1, (x_k − x_{k−1}) / Δt_k)``, so ``dz/dt = f_θ(z)·dX/dt`` is an ODE with a held input,
      integrated by the cell's :class:`~liquidjax.solvers.Integrator`. The state is
      ``(z, x_prev, started)``.
    * **Continuous path** (``LiquidRNN(cell, interpolation="linear" | "cubic")``,
      :meth:`solve_path`): ``X`` is a diffrax interpolation of the observations over the
      observation times (``LinearInterpolation``, or ``backward_hermite_coefficients`` +
      ``CubicInterpolation``) and one ``diffeqsolve`` integrates ``dz = f_θ(z) dX`` — a
      ``diffrax.ControlTerm`` — over the whole time range with the integrator's solver and
      step-size controller. A linear path is linear inside every step (the steps meet every
      knot), so the term takes the control's exact increments and matches the held mode; a
      cubic path has a continuous derivative, so the term is the ODE ``f_θ(z)·dX/dt``
      (``ControlTerm.to_ode()``: the solver's full order and an honest error estimate).

    **Arguments:** `input_size` (``C``), `units`, `width`/`depth` of ``f_θ`` (default `units`,
    1), `integrator` (default Tsit5, 4 steps per interval), `dtype`, `key`.

    **Example:**
    ```python
    cell = NeuralCDE(3, 16, key=jax.random.key(0))
    zs, _ = LiquidRNN(cell, interpolation="cubic")(xs, timespans)   # continuous control path
    ```
    """

    field: _CDEField
    initial: eqx.nn.Linear
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, width: int | None = None, depth: int = 1,
                 integrator: Integrator | None = None, dtype: Any = jnp.float32,
                 key: PRNGKeyArray):
        check_sizes(input_size=input_size, units=units, depth=depth)
        k1, k2 = jax.random.split(key)
        self.field = _CDEField(input_size + 1, units, width or units, depth,
                               default_integrator(integrator), dtype, k1)
        self.initial = eqx.nn.Linear(input_size, units, dtype=dtype, key=k2)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    @property
    def integrator(self) -> Integrator:
        return self.field.integrator

    def init_state(self):
        dtype = self.initial.weight.dtype
        return (jnp.zeros((self.state_size,), dtype), jnp.zeros((self.input_size,), dtype),
                jnp.zeros((), dtype))

    def _start(self, state, x_first):
        """``(z, x_prev)`` at the start of an interval: the state's, or ``(ζ(x), x)`` before
        the first observation (the path held at it)."""
        z, x_prev, started = state
        go = started > 0
        return jnp.where(go, z, self.initial(x_first)), jnp.where(go, x_prev, x_first)

    def advance(self, state, x, t0, t1, *, key=None):
        del key
        z, x_prev = self._start(state, x)
        dt = jnp.asarray(t1, z.dtype) - jnp.asarray(t0, z.dtype)
        v = jnp.concatenate([jnp.ones((1,), z.dtype), (x - x_prev) / dt])
        return self.field.advance(z, v, t0, t1), x, jnp.ones((), z.dtype)

    def solve_path(self, state, knots, x, interpolation, t_end):
        """The states ``(z, x_k, 1)`` at the observation times along the `interpolation` of
        ``(t, x)`` (one ``diffrax.ControlTerm`` solve, see the class docs)."""
        z0, x_prev = self._start(state, x[0])
        values = jnp.concatenate([knots[:, None], jnp.concatenate([x_prev[None], x])], axis=1)
        term = make_control_term(self.field.matrix, input_path(knots, values, interpolation))
        sol = solve(self, z0, None, knots[0], t_end,
                    saveat=diffrax.SaveAt(ts=jnp.minimum(knots[1:], t_end)),
                    observation_times=knots,
                    term=term if interpolation == "linear" else term.to_ode())
        return sol.ys, x, jnp.ones(x.shape[:1], z0.dtype)

    def output(self, state):
        return state[0]
