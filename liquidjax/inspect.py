"""Look inside a liquid network: hidden states, liquid time constants, solver steps.

Every function here is pure JAX and acts on **one** sequence, like
[`LiquidRNN`][liquidjax.layers.LiquidRNN]; `jax.vmap` adds a batch and `jax.jit` compiles it. None
of them re-implements the dynamics: they run the layer itself, call the cell's own methods
([`system_time_constant`][liquidjax.cells.AbstractConductanceCell.system_time_constant],
[`solve`][liquidjax.solvers.solve]) and read diffrax's own records.

* [`hidden_states`][liquidjax.inspect.hidden_states]: the state after every observation.
* [`system_time_constants`][liquidjax.inspect.system_time_constants]: the "liquid" time
  constant of every neuron (of an LTC, or any conductance cell) at every observation.
* [`solver_trace`][liquidjax.inspect.solver_trace]: the steps an (adaptive) diffrax solver takes
  across a sequence.
* [`confusion_matrix`][liquidjax.inspect.confusion_matrix]: counts of (true, predicted) labels.

Figures of these quantities come from [`liquidjax.plot`][liquidjax.plot].
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._static import replace_fields
from .cells import AbstractCell, AbstractConductanceCell, AbstractODECell
from .layers import LiquidRNN
from .solvers import solve

__all__ = [
    "SolverTrace",
    "confusion_matrix",
    "hidden_states",
    "solver_trace",
    "system_time_constants",
]


def _as_rnn(rnn_or_cell: LiquidRNN | AbstractCell) -> LiquidRNN:
    if isinstance(rnn_or_cell, LiquidRNN):
        return rnn_or_cell
    if isinstance(rnn_or_cell, AbstractCell):
        return LiquidRNN(rnn_or_cell)
    raise TypeError(
        f"expected a liquidjax LiquidRNN or cell, got {type(rnn_or_cell).__name__}"
    )


def hidden_states(
    rnn: LiquidRNN | AbstractCell,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None = None,
    mask: Bool[Array, " time"] | None = None,
    state: PyTree[Array] | None = None,
    *,
    key: PRNGKeyArray | None = None,
) -> PyTree[Float[Array, "time ..."]]:
    r"""The hidden state after every observation of one sequence.

    Runs `rnn` itself (same solver, interpolation, mask and timespan semantics) with its readout
    replaced by the identity, so row ``k`` is exactly the state $h(T_k)$ that the layer reads
    out at observation ``k`` (``T_k = Δt_1 + … + Δt_k``).

    **Arguments:**
    - `rnn`: a [`LiquidRNN`][liquidjax.layers.LiquidRNN], or a bare cell (run as
      ``LiquidRNN(cell)``: held inputs).
    - `x`: the observations, shape ``(L, input_size)``.
    - `timespans`: elapsed time before each observation, shape ``(L,)``; default 1.0.
    - `mask`: boolean ``(L,)``, ``True`` on valid steps.
    - `state`: the initial state (default: the cell's zero state).
    - `key`: PRNG key for dropout (``None``: inference).

    **Returns:** the states, shape ``(L, state_size)`` for a vector state; a cell whose state
    is a pytree gets it whole, every leaf with a leading time axis (``MixedMemory``: the pair
    ``(hs, cs)`` of the liquid cell's states and the LSTM memory; a ``(v, w)`` state: ``(vs,
    ws)``). Rows of padded steps (``mask`` false) are zero, like the layer's outputs.

    **Example:**
    ```python
    rnn = LiquidRNN(LTC(2, AutoNCP(8, 1), key=jax.random.key(0)))
    hs = hidden_states(rnn, xs)                                      # (L, 8)
    hs = jax.vmap(hidden_states, in_axes=(None, 0, 0, 0))(rnn, xb, tb, mb)  # (B, L, 8)
    ```
    """
    probe = replace_fields(_as_rnn(rnn), readout_states=True, return_sequences=True)
    hs, _ = probe(x, timespans, mask, state, key=key)
    return hs


def _conductance_cell(rnn: LiquidRNN | AbstractCell) -> AbstractConductanceCell:
    cell = rnn.cell if isinstance(rnn, LiquidRNN) else rnn
    if not isinstance(cell, AbstractConductanceCell):
        raise ValueError(
            f"system time constants need a cell in conductance form (an LTC, or an "
            f"AbstractConductanceCell), got {type(cell).__name__}; a cell without conductances "
            "(e.g. a CfC, which has no ODE) has no instantaneous time constant"
        )
    return cell


def system_time_constants(
    rnn: LiquidRNN | AbstractCell,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None = None,
    mask: Bool[Array, " time"] | None = None,
    state: Float[Array, " state"] | None = None,
) -> Float[Array, "time state"]:
    r"""The "liquid" system time constant of every neuron after every observation (an LTC, or
    any conductance cell: ``τ = cm / den``).

    With the LTC written as ``cm_j dv_j/dt = num_j(v, x) − den_j(v, x) v_j``, neuron ``j``
    relaxes towards ``num_j/den_j`` with the instantaneous time constant

    $$\tau_{sys,j}(v, x) = \frac{cm_j}{gleak_j + \sum_i s_{ij}(v) + \sum_k s^{sens}_{kj}(x)}$$

    (Hasani et al., AAAI 2021, eq. 2): the synapses that open make the neuron faster. Row ``k``
    is evaluated at the state $h(T_k)$ reached at observation ``k`` (see
    [`hidden_states`][liquidjax.inspect.hidden_states]) and the input ``x_k``, by the cell's own
    [`system_time_constant`][liquidjax.cells.AbstractConductanceCell.system_time_constant].

    **Arguments:**
    - `rnn`: a [`LiquidRNN`][liquidjax.layers.LiquidRNN] of an LTC (any conductance cell), or
      the cell itself.
    - `x`, `timespans`, `mask`, `state`: as for
      [`hidden_states`][liquidjax.inspect.hidden_states].

    **Returns:** ``τ_sys`` of shape ``(L, units)``, in the units of `timespans`; ``NaN`` at padded
    steps.

    **Example:**
    ```python
    tau = system_time_constants(rnn, xs, timespans)           # (L, units)
    fig = liquidjax.plot.time_constants(tau, jnp.cumsum(timespans))
    ```
    """
    cell = _conductance_cell(rnn)
    hs = hidden_states(rnn, x, timespans, mask, state)
    tau = jax.vmap(cell.system_time_constant)(hs, x)
    if mask is not None:
        tau = jnp.where(jnp.asarray(mask)[:, None], tau, jnp.nan)
    return tau


class SolverTrace(NamedTuple):
    """The steps a diffrax solver took across one sequence (held inputs).

    Observation interval ``k`` is ``(T_{k−1}, T_k]``; each is one ``diffeqsolve``, as in
    ``LTC.advance``. Arrays are padded to the cell's `max_steps`.

    **Fields:**
    - `ts`: ``(L, max_steps)`` end time of every accepted step (``+inf`` padding).
    - `step_sizes`: ``(L, max_steps)`` size of every accepted step (``NaN`` padding).
    - `num_accepted`: ``(L,)`` accepted steps per interval.
    - `num_rejected`: ``(L,)`` rejected steps per interval (adaptive controllers only).
    - `observation_times`: ``(L,)`` the times ``T_k``.
    - `states`: the state at every ``T_k``: ``(L, state_size)`` for a vector state; for a
      pytree state (e.g. ``(v, w)``) the same pytree, every leaf with a leading axis ``L``.
    """

    ts: Float[Array, "time max_steps"]
    step_sizes: Float[Array, "time max_steps"]
    num_accepted: Int[Array, " time"]
    num_rejected: Int[Array, " time"]
    observation_times: Float[Array, " time"]
    states: PyTree[Float[Array, "time ..."]]


def solver_trace(
    cell: AbstractODECell,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None = None,
    state: PyTree[Array] | None = None,
    *,
    max_steps: int | None = None,
) -> SolverTrace:
    """Record every step the cell's diffrax solver takes across one sequence.

    Each observation interval is integrated by [`solve`][liquidjax.solvers.solve] with the
    cell's own integrator (solver, step-size controller, ``ode_unfolds`` initial step) and
    ``diffrax.SaveAt(steps=True)``, so an adaptive controller (``diffrax.PIDController``) shows
    where it shrinks its steps — e.g. right after the input jumps — and a constant-step solver
    shows its ``ode_unfolds`` equal steps per interval.

    **Arguments:**
    - `cell`: an ODE cell (e.g. an [`LTC`][liquidjax.cells.LTC], possibly from
      ``LTC.with_solver(...)``, or a custom ``AbstractODECell``).
    - `x`: the observations ``(L, input_size)``, each held over its interval.
    - `timespans`: ``(L,)`` elapsed times (default 1.0).
    - `state`: initial state (default zero).
    - `max_steps`: step budget per interval, and the padded length of the outputs (default:
      the cell's ``max_steps``; memory grows as ``L × max_steps × state_size``).

    **Returns:** a [`SolverTrace`][liquidjax.inspect.SolverTrace].

    **Example:**
    ```python
    adaptive = cell.with_solver(diffrax.Tsit5(),
                                stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6))
    trace = solver_trace(adaptive, xs, timespans, max_steps=64)
    fig = liquidjax.plot.step_sizes(trace)
    ```
    """
    if not isinstance(cell, AbstractODECell):
        raise ValueError(
            f"solver_trace needs an ODE cell (an AbstractODECell, e.g. LTC), got "
            f"{type(cell).__name__}; a CfC advances in closed form, without solver steps"
        )
    if x.ndim != 2 or x.shape[1] != cell.input_size:
        raise ValueError(f"expected x of shape (time, {cell.input_size}), got {x.shape}")
    if max_steps is not None:
        cell = cell.with_solver(max_steps=max_steps)
    y0 = cell.init_state() if state is None else state
    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    dts = jnp.ones(x.shape[0], dtype) if timespans is None else jnp.asarray(timespans, dtype)
    if dts.shape != (x.shape[0],):
        raise ValueError(f"expected timespans of shape ({x.shape[0]},), got {dts.shape}")
    dts = eqx.error_if(dts, jnp.any(dts <= 0), "timespans must be positive")
    t_end = jnp.cumsum(dts)
    t_start = jnp.concatenate([jnp.zeros((1,), dtype), t_end[:-1]])

    def step(h, inp):
        xk, t0, t1 = inp
        sol = solve(cell, h, xk, t0, t1, saveat=diffrax.SaveAt(steps=True))
        ts = sol.ts
        n = sol.stats["num_accepted_steps"]
        h1 = jax.tree_util.tree_map(lambda a: a[jnp.maximum(n - 1, 0)], sol.ys)
        prev = jnp.concatenate([t0[None], ts[:-1]])
        sizes = jnp.where(jnp.isfinite(ts), ts - prev, jnp.nan)
        return h1, (ts, sizes, n, sol.stats["num_rejected_steps"], h1)

    _, (ts, sizes, n_acc, n_rej, hs) = jax.lax.scan(step, y0, (x, t_start, t_end))
    return SolverTrace(ts, sizes, n_acc, n_rej, t_end, hs)


def confusion_matrix(
    labels: Int[Array, " n"],
    predictions: Int[Array, " n"],
    num_classes: int,
    weights: Float[Array, " n"] | None = None,
) -> Float[Array, "classes classes"]:
    """Counts of (true class, predicted class) pairs.

    ``C[i, j]`` is the (weighted) number of examples of class ``i`` predicted as class ``j``; the
    diagonal holds the correct predictions. Pure JAX (works under ``jit``); accumulate over
    batches by adding the matrices.

    **Arguments:**
    - `labels`: integer true classes ``(n,)``.
    - `predictions`: integer predicted classes ``(n,)`` (e.g. ``logits.argmax(-1)``).
    - `num_classes`: number of classes (static).
    - `weights`: optional per-example weights (e.g. ``0`` for padding rows of the last batch).

    **Returns:** a float32 ``(num_classes, num_classes)`` matrix.

    **Example:**
    ```python
    cm = confusion_matrix(y, jax.vmap(model)(x).argmax(-1), 10)
    ```
    """
    labels, predictions = jnp.asarray(labels), jnp.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-D of equal shape, got {labels.shape} and "
            f"{predictions.shape}"
        )
    w = (jnp.ones(labels.shape, jnp.float32) if weights is None
         else jnp.asarray(weights, jnp.float32))
    return jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, predictions].add(w)
