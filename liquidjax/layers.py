"""The sequence layer: a liquid cell run over one sequence of observations."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from ._checks import literal_choices
from ._streaming import AbstractStreaming, StreamSpec
from .cells import AbstractCell, AbstractPathCell, scan_advance

Interpolation = Literal["hold", "linear", "cubic"]
_INTERPOLATIONS: tuple[str, ...] = literal_choices(Interpolation)


def _where_tree(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


class LiquidRNN(AbstractStreaming):
    r"""Runs a liquid cell over one unbatched sequence (``jax.vmap`` adds the batch).

    Observation ``k`` carries the input ``x_k`` and the elapsed time ``Δt_k`` since observation
    ``k − 1`` (ncps "timespans"; default 1.0; the sequence starts at ``t = 0``).

    * ``interpolation="hold"`` (ncps semantics, default): ``x_k`` is held over ``(T_{k−1}, T_k]``;
      the cell runs the sequence with its
      :meth:`~liquidjax.cells.AbstractCell.advance_sequence` (by default a ``lax.scan`` of
      ``cell.advance``, one call per observation; the CfC and the LTC run faster paths of the
      same numbers). Works for every cell.
    * ``"linear"`` / ``"cubic"``: the inputs form a continuous path (diffrax linear interpolation or
      backward-Hermite cubic) and one ``diffeqsolve`` integrates an ODE cell (or a Neural CDE,
      driven by the path: any :class:`~liquidjax.cells.AbstractPathCell`) over the whole
      sequence, saving the state at the observation times (``SaveAt(ts=T)``).

    A boolean ``mask`` marks valid steps: a masked step leaves the state unchanged and its output
    is zero, so a padded batch gives the same result as each sequence alone (in continuous modes
    the mask must be a prefix: valid steps, then padding).

    **Arguments:**
    - `cell`: any :class:`~liquidjax.AbstractCell`.
    - `proj`: optional ``eqx.nn.Linear`` applied to every output (ncps ``proj_size``; the state is
      never projected).
    - `return_sequences`: return every step's output (default) or only the last one.
    - `interpolation`: ``"hold"``, ``"linear"`` or ``"cubic"``.
    - `check_inputs`: check at run time that the inputs and the initial state are finite and
      valid timespans positive (``eqx.error_if``; cheap, on by default).
    - `check_solution`: check at run time that the state stays finite — an explicit solver
      (``diffrax.Euler()``) diverging on a stiff cell is reported with what to do, instead of
      returning NaN/inf outputs (``eqx.error_if``; on by default).
    - `remat`: held inputs only — recompute instead of storing (``jax.checkpoint``): the
      backward pass keeps one state per block of ≈ √L steps and, while it runs, one block's
      states, so training memory grows as √L instead of L, for about two extra forward passes
      of compute.
    - `readout_states`: output the state itself, whole (any pytree: ``(h, c)`` with mixed
      memory), instead of ``cell.output`` and `proj` — what
      :func:`liquidjax.inspect.hidden_states` uses.

    **Returns** (of ``__call__``): ``(outputs, final_state)`` with outputs of shape
    ``(L, out)`` (or ``(out,)`` without `return_sequences`).

    **Example:**
    ```python
    rnn = LiquidRNN(LTC(3, 8, key=jax.random.key(0)))
    ys, h = rnn(jnp.ones((20, 3)))                         # (20, 8), (8,)
    ys, h = jax.vmap(rnn)(xs_batch, timespans_batch)       # per-example timespans
    ```
    """

    cell: AbstractCell
    proj: eqx.nn.Linear | None = None
    return_sequences: bool = eqx.field(default=True, static=True)
    interpolation: str = eqx.field(default="hold", static=True)
    check_inputs: bool = eqx.field(default=True, static=True)
    check_solution: bool = eqx.field(default=True, static=True)
    remat: bool = eqx.field(default=False, static=True)
    readout_states: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.interpolation != "hold" and not isinstance(self.cell, AbstractPathCell):
            raise ValueError(
                f"interpolation={self.interpolation!r} integrates the cell over a continuous "
                f"input path, which needs an ODE cell (e.g. LTC) or a NeuralCDE (an "
                f"AbstractPathCell); {type(self.cell).__name__} advances step by step: use "
                "interpolation='hold'"
            )
        if self.proj is not None and self.proj.in_features != self.cell.output_size:
            raise ValueError(
                f"proj expects {self.proj.in_features} features but the cell outputs "
                f"{self.cell.output_size}"
            )

    @property
    def output_size(self) -> int:
        return self.cell.output_size if self.proj is None else self.proj.out_features

    def readout(self, state: PyTree[Array]) -> PyTree[Array]:
        """The layer's output for one state: ``proj(cell.output(state))``, or the state itself
        with `readout_states`."""
        if self.readout_states:
            return state
        y = self.cell.output(state)
        return y if self.proj is None else self.proj(y)

    # ------------------------------------------------------------------ streaming (export)
    def stream_spec(self) -> StreamSpec:
        """The cell's input, the layer's output; refused for a continuous input path."""
        if self.interpolation != "hold":
            raise ValueError(
                f"cannot step a LiquidRNN with interpolation={self.interpolation!r} "
                f"({type(self.cell).__name__} cell) one observation at a time: it integrates the "
                "cell along a continuous path through all the observations, in one solve over "
                "the whole sequence whose steps cross the observation times, which a step per "
                "observation does not reproduce; rebuild the layer with interpolation='hold' (a "
                "NeuralCDE with interpolation='hold' follows the same linear path, one interval "
                "at a time)"
            )
        return StreamSpec(self.cell.input_size, self.output_size, (self.cell,))

    def stream_init(self) -> PyTree[Array]:
        """The cell's initial state."""
        return self.cell.init_state()

    def stream_step(self, state, x, dt):
        """The cell advanced across ``[0, dt]``, then :meth:`readout` (the per-step output of
        ``return_sequences``)."""
        new = self.cell.advance(state, x, jnp.zeros((), dt.dtype), dt)
        return self.readout(new), new

    def _validate(self, x, timespans, mask, state):
        c = self.cell.input_size
        if x.ndim != 2 or x.shape[1] != c:
            hint = " (batch with jax.vmap)" if x.ndim == 3 else ""
            raise ValueError(f"expected x of shape (time, {c}), got {x.shape}{hint}")
        n = x.shape[0]
        if n == 0:
            raise ValueError("x has no time steps (shape (0, ...)); expected at least one")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"x must be a floating-point array (e.g. float32), got dtype {x.dtype}; convert "
                "it first, e.g. x.astype(jnp.float32)"
            )
        if timespans is None:
            timespans = jnp.ones((n,), x.dtype)
        else:
            timespans = jnp.asarray(timespans)
            if timespans.ndim == 0:
                timespans = jnp.broadcast_to(timespans, (n,))
            if timespans.shape != (n,):
                raise ValueError(
                    f"expected timespans of shape ({n},) (one elapsed time per step of x), "
                    f"got {timespans.shape}"
                )
            if not jnp.issubdtype(timespans.dtype, jnp.floating):
                timespans = timespans.astype(x.dtype)
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.shape != (n,) or mask.dtype != jnp.bool_:
                raise ValueError(
                    f"expected a boolean mask of shape ({n},), got {mask.dtype} {mask.shape}"
                )
        expected = jax.eval_shape(self.cell.init_state)
        if state is None:
            state = self.cell.init_state()
        else:
            got = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state)
            if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(expected) or any(
                a.shape != b.shape
                for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected))
            ):
                raise ValueError(
                    f"expected an initial state like {_describe(expected)}, got {_describe(got)}"
                )
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
                if a.dtype != b.dtype:
                    raise ValueError(
                        f"expected an initial state of dtype {b.dtype} (the cell's), got "
                        f"{a.dtype}; convert it first, e.g. state.astype(jnp.{b.dtype})"
                    )
        if self.check_inputs:
            x = eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), "x contains NaN or inf")
            state = eqx.error_if(state, ~_all_finite(state),
                                 "the initial state contains NaN or inf")
            valid = timespans > 0
            bad = ~valid if mask is None else mask & ~valid
            timespans = eqx.error_if(
                timespans, jnp.any(bad), "timespans must be positive at every valid step"
            )
            if mask is not None and self.interpolation != "hold":
                mask = eqx.error_if(
                    mask, jnp.any(mask[1:] & ~mask[:-1]),
                    "with a continuous input path the mask must be a prefix (valid steps, then "
                    "padding)",
                )
        return x, timespans, mask, state

    def __call__(
        self,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        state: PyTree[Array] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Array, PyTree[Array]]:
        """Run the cell over ``x`` (shape ``(L, input_size)``).

        **Arguments:**
        - `x`: the observations.
        - `timespans`: elapsed time per step, shape ``(L,)`` (or a scalar); default 1.0.
        - `mask`: boolean ``(L,)``, ``True`` on valid steps; default all valid.
        - `state`: the initial state (default: the cell's zero state); pass the final state of a
          previous call to continue a stream.
        - `key`: PRNG key for dropout during training.

        **Returns:** ``(outputs, final_state)``.
        """
        if not _is_traced((self, x, timespans, mask, state, key)):
            # An eager call runs compiled: a run-time error (max_steps reached, a failed check)
            # then reaches the user with its own message (eqx.filter_jit), not as an XLA
            # "INTERNAL: CpuCallback error".
            return _call_compiled(self, x, timespans, mask, state, key)
        return self._call(x, timespans, mask, state, key)

    def _call(self, x, timespans, mask, state, key):
        unit_steps = timespans is None  # every Δt is 1, known at trace time
        x, timespans, mask, state = self._validate(x, timespans, mask, state)
        if self.interpolation == "hold":
            out = self._run_held(x, timespans, mask, state, key, unit_steps)
        else:
            out = self._run_continuous(x, timespans, mask, state)
        if self.check_solution:
            out = eqx.error_if(
                out, ~_all_finite(out[1]),
                f"the cell's state became NaN or inf: {self.cell.divergence_advice()}. "
                "LiquidRNN(check_solution=False) returns the NaN instead",
            )
        return out

    def _run_held(self, x, timespans, mask, state, key, unit_steps=False):
        last = not self.return_sequences
        dts = None if unit_steps else timespans
        if dts is not None and mask is not None:
            # A masked step holds the state whatever its timespan; a zero there (padding, an
            # empty pooled window) would still make a cell's step divide by zero, and that NaN
            # reaches the gradient through the masking where.
            dts = jnp.where(mask, dts, jnp.ones_like(dts))
        if self.remat:
            hs = scan_advance(self.cell, state, x, dts, mask, last=last, key=key, remat=True)
        else:
            hs = self.cell.advance_sequence(state, x, dts, mask, last=last, key=key)
        if last:
            return self.readout(hs), hs
        return self._read_sequence(hs, mask), jax.tree_util.tree_map(lambda a: a[-1], hs)

    def _read_sequence(self, hs, mask):
        """The outputs of the states ``hs`` (leading time axis); zero at masked steps."""
        ys = jax.vmap(self.readout)(hs)
        if mask is None:
            return ys
        return jax.tree_util.tree_map(
            lambda y: jnp.where(mask.reshape((-1,) + (1,) * (y.ndim - 1)), y, 0), ys)

    def _run_continuous(self, x, timespans, mask, state):
        cell = self.cell
        assert isinstance(cell, AbstractPathCell)
        if mask is not None:
            # Padding steps get unit spacing so the path's knots stay strictly increasing.
            timespans = jnp.where(mask, timespans, 1)
        dtype = jax.tree_util.tree_leaves(state)[0].dtype
        ts = jnp.cumsum(timespans.astype(dtype))
        knots = jnp.concatenate([jnp.zeros((1,), dtype), ts])
        last = None if mask is None else jnp.maximum(jnp.sum(mask) - 1, 0)
        t_end = ts[-1]
        if mask is not None and cell.integrator.is_adaptive:
            # Stop at the last valid observation: the padding costs no steps. States "saved" at
            # padded times are the final state (their outputs are zeroed below).
            t_end = jnp.where(jnp.any(mask), ts[last], knots[0])
        hs = cell.solve_path(state, knots, x, self.interpolation, t_end)
        if mask is None:
            h = jax.tree_util.tree_map(lambda a: a[-1], hs)
        else:
            h = _where_tree(jnp.any(mask), jax.tree_util.tree_map(lambda a: a[last], hs), state)
        if not self.return_sequences:
            return self.readout(h), h
        return self._read_sequence(hs, mask), h


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)
                              if jnp.issubdtype(jnp.result_type(a), jnp.inexact)] or
                             [jnp.array(True)]))


def _is_traced(tree) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(tree))


@eqx.filter_jit
def _call_compiled(rnn: LiquidRNN, x, timespans, mask, state, key):
    return rnn._call(x, timespans, mask, state, key)


def _describe(tree) -> str:
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1 and not isinstance(tree, (tuple, list)):
        return f"an array of shape {tuple(leaves[0].shape)}"
    shapes = ", ".join(str(tuple(leaf.shape)) for leaf in leaves)
    return f"a {type(tree).__name__} of arrays with shapes ({shapes})"

