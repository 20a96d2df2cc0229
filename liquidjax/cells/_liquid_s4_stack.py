r"""A residual stack of Liquid-S4 layers as one cell (the S4 backbone, recurrent or convolutional).

``z_0 = W_in x``; for each layer ``l``:
``z_l = z_{l-1} + dropout(mix_l(GELU(S4_l(LayerNorm_l(z_{l-1})))))`` with ``mix_l`` a GLU
(``Linear(H→2H)``, ``a ⊙ σ(b)``) or a position-wise ``Linear(H→H)``; the output is
``LayerNorm(z_L)`` (``H`` features; a classifier's head pools and decodes them).

As one cell, :class:`~liquidjax.LiquidRNN`, the exporters and the streaming stepper run it
unchanged: :meth:`LiquidS4Stack.advance` steps every layer once (recurrent mode) and
:meth:`LiquidS4Stack.advance_sequence` runs each layer in convolution mode over the whole
sequence (unit steps), with the same numbers and the same dropout masks.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._base import AbstractCell
from ._liquid_s4 import LiquidS4, LiquidS4State

__all__ = ["LiquidS4Stack"]


class LiquidS4Stack(AbstractCell):
    r"""Encoder ``Linear(input→H)``, ``depth`` residual Liquid-S4 blocks, final ``LayerNorm``.

    State: ``(tuple of layer states, z_L)``; output: ``LayerNorm(z_L)``.

    **Arguments:**
    - `input_size`: features per observation.
    - `hidden_size`: ``H``, the model width.
    - `depth`: the number of residual blocks.
    - `ssm_size`: ``N`` per channel (even).
    - `glu`: GLU mixing (default) or a position-wise linear layer.
    - `dropout`: rate after the mixing (training only: with a `key`).
    - `key`: PRNG key; the remaining keywords go to every :class:`LiquidS4` (``liquid_order``,
      ``liquid_kernel``, ``discretisation``, ``init``, ``dt_min``, ``dt_max``, ``dtype``).

    **Example:**
    ```python
    cell = LiquidS4Stack(1, 16, depth=2, ssm_size=8, key=jax.random.key(0))
    rnn = LiquidRNN(cell)                          # recurrent mode, any timespans
    states = cell.advance_sequence(cell.init_state(), xs, None)    # convolution mode
    ```
    """

    encoder: eqx.nn.Linear
    norms: tuple[eqx.nn.LayerNorm, ...]
    layers: tuple[LiquidS4, ...]
    mixers: tuple[eqx.nn.Linear, ...]
    final_norm: eqx.nn.LayerNorm
    dropout: float = eqx.field(static=True)
    glu: bool = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, depth: int = 4, ssm_size: int = 64,
                 glu: bool = True, dropout: float = 0.0, key: PRNGKeyArray, **layer_kwargs):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LiquidS4Stack {name} must be a positive int, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LiquidS4Stack dropout must be in [0, 1), got {dropout!r}")
        dtype = layer_kwargs.get("dtype") or jnp.float32
        h = hidden_size
        ke, *ks = jax.random.split(key, 1 + 2 * depth)
        self.encoder = eqx.nn.Linear(input_size, h, key=ke, dtype=dtype)
        self.norms = tuple(eqx.nn.LayerNorm(h, dtype=dtype) for _ in range(depth))
        self.layers = tuple(LiquidS4(h, ssm_size, key=k, **layer_kwargs) for k in ks[:depth])
        self.mixers = tuple(eqx.nn.Linear(h, 2 * h if glu else h, key=k, dtype=dtype)
                            for k in ks[depth:])
        self.final_norm = eqx.nn.LayerNorm(h, dtype=dtype)
        self.dropout = float(dropout)
        self.glu = bool(glu)
        self.input_size = input_size
        self.state_size = self.output_size = h

    # ------------------------------------------------------------------------------ pieces
    def _mix(self, mixer, y):
        v = mixer(jax.nn.gelu(y))
        if self.glu:
            a, b = jnp.split(v, 2)
            v = a * jax.nn.sigmoid(b)
        return v

    def _masks(self, key):
        """Dropout keep-masks for one step, ``(depth, H)`` (scaled by ``1/(1-rate)``)."""
        keys = jax.random.split(key, len(self.layers))
        rate = self.dropout
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1 - rate, (self.output_size,)))(keys)
        return keep.astype(self.encoder.weight.dtype) / (1 - rate)

    def _dtype(self):
        return self.encoder.weight.dtype

    # ------------------------------------------------------------------------------ contract
    def init_state(self) -> tuple[tuple[LiquidS4State, ...], Array]:
        """Every layer's zero state, and a zero residual stream."""
        return (tuple(layer.init_state() for layer in self.layers),
                jnp.zeros((self.output_size,), self._dtype()))

    def advance(self, state, x, t0, t1, *, key=None):
        """Recurrent mode: every layer advances once across ``t1 - t0`` (in units of each
        layer's learned step). `key`: dropout (training), or ``None``."""
        if x.shape != (self.input_size,):
            raise ValueError(
                f"LiquidS4Stack expected x of shape ({self.input_size},), got {x.shape}"
            )
        states, _ = state
        masks = None if key is None or self.dropout == 0 else self._masks(key)
        z = self.encoder(x.astype(self._dtype()))
        new = []
        for i, (norm, layer, mixer) in enumerate(zip(self.norms, self.layers, self.mixers)):
            s = layer.advance(states[i], norm(z), t0, t1)
            v = self._mix(mixer, layer.output(s))
            z = z + (v if masks is None else v * masks[i])
            new.append(s)
        return tuple(new), z

    def output(self, state) -> Float[Array, " hidden"]:
        """``LayerNorm(z_L)``."""
        return self.final_norm(state[1])

    def advance_sequence(
        self,
        state,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None,
        mask: Bool[Array, " time"] | None = None,
        *,
        last: bool = False,
        key: PRNGKeyArray | None = None,
    ):
        """The states after every observation (or with `last` the final one). Unit steps
        (``timespans=None``, no `mask`): each layer in convolution mode over the whole sequence,
        dropout masks drawn per step as the recurrent loop draws them; otherwise the recurrent
        scan."""
        if timespans is not None or mask is not None:
            return super().advance_sequence(state, x, timespans, mask, last=last, key=key)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"LiquidS4Stack expected x of shape (time, {self.input_size}), got {x.shape}"
            )
        n = x.shape[0]
        masks = None
        if key is not None and self.dropout > 0:
            masks = jax.vmap(self._masks)(jax.random.split(key, n))  # (T, depth, H)
        states, _ = state
        z = jax.vmap(self.encoder)(x.astype(self._dtype()))
        finals, everies = [], []
        for i, (norm, layer, mixer) in enumerate(zip(self.norms, self.layers, self.mixers)):
            ys, final, every = layer.convolve(states[i], jax.vmap(norm)(z), every_state=not last)
            v = jax.vmap(lambda y, m=mixer: self._mix(m, y))(ys)
            z = z + (v if masks is None else v * masks[:, i])
            finals.append(final)
            everies.append(every)
        if last:
            return tuple(finals), z[-1]
        return tuple(everies), z
