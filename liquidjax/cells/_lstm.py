"""LSTM memory cell and the mixed-memory wrapper (ncps ``mixed_memory=True``).

Reference: Lechner & Hasani, "Learning long-term dependencies in irregularly-sampled time series"
(2020), https://arxiv.org/abs/2006.04418; layout and initialisation follow ``ncps.torch.LSTMCell``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_int
from ._base import AbstractCell, State


class LSTMCell(eqx.Module):
    r"""The ncps LSTM cell, acting on one example.

    $$ z = W_x x + b_x + W_h h,\qquad [i, g_i, g_f, g_o] = \mathrm{split}_4(z) $$
    $$ c' = c\,σ(g_f + 1) + \tanh(i)\,σ(g_i),\qquad h' = \tanh(c')\,σ(g_o) $$

    (forget-gate bias +1; ``recurrent_map`` has no bias). Initialisation as ncps: ``input_map``
    weight Xavier-uniform, ``recurrent_map`` weight orthogonal, bias ``U(-0.1, 0.1)``.

    **Arguments:**

    - `input_size`: number of input features ``I``.
    - `hidden_size`: number of units ``H``.
    - `key`: PRNG key for the initialisation.

    **Returns:** calling it on ``x (I,)`` and ``(h, c)`` (each ``(H,)``) returns ``(h', c')``.

    ```python
    lstm = LSTMCell(5, 16, key=jax.random.key(0))
    h, c = lstm(jnp.ones(5), (jnp.zeros(16), jnp.zeros(16)))
    ```
    """

    input_map: eqx.nn.Linear
    recurrent_map: eqx.nn.Linear
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, key: PRNGKeyArray):
        input_size = check_int("input_size", input_size, minimum=1)
        hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        self.input_size = input_size
        self.hidden_size = hidden_size
        k_in, k_w, k_b, k_rec, k_r = jr.split(key, 5)
        n = 4 * hidden_size
        limit = math.sqrt(6.0 / (input_size + n))
        linear = eqx.nn.Linear(input_size, n, key=k_in)
        self.input_map = eqx.tree_at(
            lambda l: (l.weight, l.bias),
            linear,
            (
                jr.uniform(k_w, (n, input_size), minval=-limit, maxval=limit),
                jr.uniform(k_b, (n,), minval=-0.1, maxval=0.1),
            ),
        )
        recurrent = eqx.nn.Linear(hidden_size, n, use_bias=False, key=k_rec)
        orthogonal = jax.nn.initializers.orthogonal()(k_r, (n, hidden_size))
        self.recurrent_map = eqx.tree_at(lambda l: l.weight, recurrent, orthogonal)

    def __check_init__(self):
        n = 4 * self.hidden_size
        if self.input_map.weight.shape != (n, self.input_size) or self.input_map.bias is None:
            raise ValueError(
                f"input_map must be a biased Linear {self.input_size} -> {n}, "
                f"got weight {self.input_map.weight.shape}"
            )
        if self.recurrent_map.weight.shape != (n, self.hidden_size) or (
            self.recurrent_map.bias is not None
        ):
            raise ValueError(
                f"recurrent_map must be an unbiased Linear {self.hidden_size} -> {n}, "
                f"got weight {self.recurrent_map.weight.shape}"
            )

    def __call__(
        self,
        x: Float[Array, " input"],
        state: tuple[Float[Array, " hidden"], Float[Array, " hidden"]],
    ) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """One LSTM step: ``(h, c) -> (h', c')`` (see the class doc)."""
        h, c = state
        if x.shape != (self.input_size,):
            raise ValueError(f"expected x of shape ({self.input_size},), got {x.shape}")
        return lstm_gates(self.input_map(x) + self.recurrent_map(h), c)


def lstm_gates(z: Float[Array, "*batch 4*hidden"], c: Float[Array, "*batch hidden"]
               ) -> tuple[Float[Array, "*batch hidden"], Float[Array, "*batch hidden"]]:
    """The LSTM's update from its gate pre-activations ``z = W_x x + b_x + W_h h``:
    ``(h', c')`` (see :class:`LSTMCell`)."""
    i, ig, fg, og = jnp.split(z, 4, axis=-1)
    new_c = c * jax.nn.sigmoid(fg + 1.0) + jnp.tanh(i) * jax.nn.sigmoid(ig)
    return jnp.tanh(new_c) * jax.nn.sigmoid(og), new_c


class MixedMemory(AbstractCell):
    r"""A liquid cell augmented with an LSTM memory (ncps ``mixed_memory=True``).

    The state is the pair ``(h, c)``. Per observation the LSTM first runs on the raw input,
    then the liquid cell advances from the LSTM's new ``h``:

    $$ (\tilde h, c') = \mathrm{LSTM}(x; h, c),\qquad
       h' = \mathrm{cell.advance}(\tilde h, x, t_0, t_1) $$

    Works with any :class:`AbstractCell` whose state is a vector of size ``state_size``
    (CfC, WiredCfC, LTC, ...).

    **Arguments:**

    - `cell`: the liquid cell.
    - `lstm`: an :class:`LSTMCell` with ``input_size == cell.input_size`` and
      ``hidden_size == cell.state_size``; ``None`` creates one (needs `key`).
    - `key`: PRNG key, only used when `lstm` is ``None``.

    **Returns:** :meth:`advance` returns the new pair ``(h', c')``; :meth:`output` is
    ``cell.output(h)``.

    ```python
    cell = MixedMemory(CfC(5, 16, key=k1), key=k2)
    h, c = cell.advance(cell.init_state(), jnp.ones(5), 0.0, 1.0)
    ```
    """

    cell: AbstractCell
    lstm: LSTMCell
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(
        self,
        cell: AbstractCell,
        lstm: LSTMCell | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ):
        if lstm is None:
            if key is None:
                raise ValueError("MixedMemory needs `lstm` or a `key` to create one")
            lstm = LSTMCell(cell.input_size, cell.state_size, key=key)
        self.cell = cell
        self.lstm = lstm
        self.input_size = cell.input_size
        self.state_size = cell.state_size
        self.output_size = cell.output_size

    def __check_init__(self):
        if (self.lstm.input_size, self.lstm.hidden_size) != (
            self.cell.input_size,
            self.cell.state_size,
        ):
            raise ValueError(
                f"the LSTM maps {self.lstm.input_size} -> {self.lstm.hidden_size} but the cell "
                f"has input_size={self.cell.input_size}, state_size={self.cell.state_size}"
            )
        h0 = jax.eval_shape(self.cell.init_state)
        if not isinstance(h0, jax.ShapeDtypeStruct) or h0.shape != (self.cell.state_size,):
            raise ValueError(
                f"MixedMemory needs a cell whose state is one vector of shape "
                f"({self.cell.state_size},), got {h0}"
            )

    def init_state(self) -> tuple[Float[Array, " state"], Float[Array, " state"]]:
        """The zero pair ``(h, c)``."""
        h = self.cell.init_state()
        return h, jnp.zeros_like(h)

    def advance(
        self,
        state: State,
        x: Float[Array, " input"],
        t0: Float[Array, ""] | float,
        t1: Float[Array, ""] | float,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, " state"], Float[Array, " state"]]:
        """LSTM step on ``x``, then ``cell.advance`` across ``[t0, t1]`` from its new ``h``.

        **Arguments:** as :meth:`AbstractCell.advance`, with ``state = (h, c)``; `key` goes to
        the liquid cell (dropout).

        **Returns:** ``(h', c')``.
        """
        h, c = state
        h, c = self.lstm(x, (h, c))
        return self.cell.advance(h, x, t0, t1, key=key), c

    def output(self, state: State) -> Float[Array, " output"]:
        """The liquid cell's output for ``h``."""
        h, _ = state
        return self.cell.output(h)

    def advance_sequence(self, state, x, timespans, mask=None, *, last=False, key=None):
        """:meth:`AbstractCell.advance_sequence`: the liquid cell's fused recurrence with the
        LSTM inside (:meth:`AbstractCell.memory_sequence`, e.g. the CfC's) where it has one,
        otherwise the scan of :meth:`advance`. The states are the
        pair ``(hs, cs)``."""
        states = self.cell.memory_sequence(self.lstm, state, x, timespans, mask, last=last,
                                           key=key)
        if states is not None:
            return states
        return super().advance_sequence(state, x, timespans, mask, last=last, key=key)

    @property
    def is_adaptive(self) -> bool:
        """The liquid cell's (:attr:`AbstractCell.is_adaptive`)."""
        return self.cell.is_adaptive

    def divergence_advice(self) -> str:
        return self.cell.divergence_advice()

    @property
    def connectivity(self):
        """The liquid cell's (:attr:`AbstractCell.connectivity`)."""
        return self.cell.connectivity

    def portable(self) -> MixedMemory:
        """The liquid cell's :meth:`AbstractCell.portable` form inside (the LSTM is plain)."""
        return eqx.tree_at(lambda m: m.cell, self, self.cell.portable())
