"""Closed-form continuous-time (CfC) cell, ncps torch form.

Reference: Hasani et al., "Closed-form continuous-time neural networks", Nature Machine
Intelligence 4, 992-1003 (2022), https://arxiv.org/abs/2106.13898; the arrangement of every
formula follows ``ncps.torch.CfCCell`` (ncps 1.0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._checks import check_int
from .._static import StaticArray
from . import _cfc_sequence
from ._activations import (
    ACTIVATIONS as ACTIVATIONS,
    activation_name as activation_name,
    lecun_tanh as lecun_tanh,
)
from ._base import AbstractCell

Mode = Literal["default", "no_gate", "pure"]
_MODES: tuple[str, ...] = get_args(Mode)


def _xavier_uniform(key: PRNGKeyArray, shape: tuple[int, int]) -> Array:
    # torch.nn.init.xavier_uniform_ on an (out, in) tensor: U(-a, a), a = sqrt(6 / (in + out)).
    fan_out, fan_in = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jr.uniform(key, shape, minval=-limit, maxval=limit)


def _linear(in_features: int, out_features: int, *, key: PRNGKeyArray) -> eqx.nn.Linear:
    # ncps: torch's default bias init U(+-1/sqrt(in)) (= equinox's), Xavier-uniform weight.
    wkey, lkey = jr.split(key)
    linear = eqx.nn.Linear(in_features, out_features, key=lkey)
    weight = _xavier_uniform(wkey, (out_features, in_features))
    return eqx.tree_at(lambda l: l.weight, linear, weight)


def _choice_error(what: str, value: object, valid: tuple[str, ...] | list[str]) -> ValueError:
    return ValueError(f"unknown {what} {value!r}; valid options are {list(valid)}")


class CfC(AbstractCell):
    r"""Closed-form continuous-time cell (ncps ``CfCCell``), acting on one example.

    With ``z = backbone([x, h])`` (``backbone_layers`` blocks of Linear -> activation; with
    ``backbone_layers=0`` the heads read ``[x, h]`` directly) and the elapsed time
    ``Δt = t1 - t0``:

    $$ f_1 = \tanh(W_1 z + b_1),\quad f_2 = \tanh(W_2 z + b_2),\quad
       σ = \mathrm{sigmoid}((W_a z + b_a)\,Δt + W_b z + b_b) $$

    - ``"default"``: $h' = f_1 (1 - σ) + σ f_2$
    - ``"no_gate"``: $h' = f_1 + σ f_2$
    - ``"pure"``: $h' = -A \exp(-Δt\,(|w_τ| + |u|))\, u + A$ with $u = W_1 z + b_1$
      (no ``ff2``/``time_a``/``time_b`` heads).

    Dropout (``backbone_dropout``) follows ncps: only after backbone blocks 2, 3, ...; it is
    active only when a ``key`` is passed to :meth:`advance` and the cell is not in
    ``eqx.nn.inference_mode``.

    **Arguments:**

    - `input_size`: number of input features ``I``.
    - `units`: number of hidden units ``H`` (state and output size).
    - `mode`: ``"default"``, ``"no_gate"`` or ``"pure"``.
    - `activation`: backbone activation: ``"lecun_tanh"`` (``1.7159 tanh(0.666 x)``),
      ``"silu"``, ``"relu"``, ``"tanh"`` or ``"gelu"`` (exact erf form, as torch).
    - `backbone_units`: width ``U`` of each backbone layer.
    - `backbone_layers`: number of backbone blocks (``0``: no backbone).
    - `backbone_dropout`: dropout rate in ``[0, 1)`` (no effect with fewer than 2 blocks, as
      in ncps).
    - `sparsity_mask`: optional boolean ``(H, cat)`` mask multiplied into the ``ff1``/``ff2``
      weights only (used by :class:`WiredCfC`; ``cat`` is the head input width).
    - `key`: PRNG key for the initialisation (Xavier-uniform weights, as ncps).

    **Returns:** :meth:`advance` returns the new hidden state ``(H,)``; :meth:`output` is the
    state itself.

    ```python
    cell = CfC(5, 16, key=jax.random.key(0))
    h = cell.advance(cell.init_state(), jnp.ones(5), 0.0, 1.0)
    ```
    """

    backbone: tuple[eqx.nn.Linear, ...]
    dropout: eqx.nn.Dropout | None
    ff1: eqx.nn.Linear
    ff2: eqx.nn.Linear | None
    time_a: eqx.nn.Linear | None
    time_b: eqx.nn.Linear | None
    w_tau: Float[Array, " units"] | None
    A: Float[Array, " units"] | None
    sparsity_mask: StaticArray | None = eqx.field(static=True)  # bool (units, cat)
    activation: Callable[[Array], Array] = eqx.field(static=True)
    mode: str = eqx.field(static=True)
    backbone_dropout: float = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        units: int,
        *,
        mode: Mode = "default",
        activation: str = "lecun_tanh",
        backbone_units: int = 128,
        backbone_layers: int = 1,
        backbone_dropout: float = 0.0,
        sparsity_mask: Bool[np.ndarray | Array, "units cat"] | None = None,
        key: PRNGKeyArray,
    ):
        if mode not in _MODES:
            raise _choice_error("mode", mode, _MODES)
        if activation not in ACTIVATIONS:
            raise _choice_error("activation", activation, list(ACTIVATIONS))
        check_int("input_size", input_size, minimum=1)
        check_int("units", units, minimum=1)
        check_int("backbone_layers", backbone_layers, minimum=0)
        if backbone_layers > 0:
            check_int("backbone_units", backbone_units, minimum=1,
                      expected="a positive integer when backbone_layers > 0")
        if not 0.0 <= backbone_dropout < 1.0:
            raise ValueError(f"backbone_dropout must lie in [0, 1), got {backbone_dropout!r}")

        self.input_size = int(input_size)
        self.state_size = self.output_size = int(units)
        self.mode = mode
        self.activation = ACTIVATIONS[activation]

        keys = jr.split(key, backbone_layers + 6)
        widths = [input_size + units] + [backbone_units] * backbone_layers
        self.backbone = tuple(
            _linear(widths[i], widths[i + 1], key=keys[i]) for i in range(backbone_layers)
        )
        self.backbone_dropout = float(backbone_dropout)
        # ncps has Dropout modules only after blocks >= 2; without any, the cell holds only
        # arrays (plain `jax.jit`/`jax.grad` work on it, not just the `eqx.filter_*` versions).
        use_dropout = backbone_dropout > 0 and backbone_layers >= 2
        self.dropout = eqx.nn.Dropout(self.backbone_dropout) if use_dropout else None
        cat = widths[-1]
        hkeys = keys[backbone_layers:]
        self.ff1 = _linear(cat, units, key=hkeys[0])
        if mode == "pure":
            self.ff2 = self.time_a = self.time_b = None
            # ncps Xavier-initialises every 2-D parameter, w_tau and A (shape (1, H)) included.
            self.w_tau = _xavier_uniform(hkeys[1], (1, units))[0]
            self.A = _xavier_uniform(hkeys[2], (1, units))[0]
        else:
            self.ff2 = _linear(cat, units, key=hkeys[1])
            self.time_a = _linear(cat, units, key=hkeys[2])
            self.time_b = _linear(cat, units, key=hkeys[3])
            self.w_tau = self.A = None
        # Static configuration (a compile-time constant): never a gradient or optimiser leaf.
        self.sparsity_mask = None if sparsity_mask is None else StaticArray(sparsity_mask)

    def __check_init__(self):
        cat = self.ff1.in_features
        if self.sparsity_mask is not None:
            if self.sparsity_mask.array.dtype != np.bool_:
                raise ValueError(
                    "sparsity_mask must be a boolean array, got dtype "
                    f"{self.sparsity_mask.array.dtype}"
                )
            if self.sparsity_mask.shape != (self.state_size, cat):
                raise ValueError(
                    f"sparsity_mask must have shape (units, head inputs) = "
                    f"{(self.state_size, cat)}, got {self.sparsity_mask.shape}"
                )
        if (self.mode == "pure") != (self.ff2 is None):
            raise ValueError(f"mode {self.mode!r} does not match the heads present")

    @property
    def backbone_layers(self) -> int:
        """Number of backbone blocks."""
        return len(self.backbone)

    @property
    def backbone_units(self) -> int | None:
        """Width of the backbone layers (``None`` without a backbone)."""
        return self.backbone[0].out_features if self.backbone else None

    def init_state(self) -> Float[Array, " units"]:
        """The zero state ``(units,)`` in the parameters' dtype."""
        return jnp.zeros(self.state_size, self.ff1.weight.dtype)

    def masked_weight(self, linear: eqx.nn.Linear) -> Array:
        """``linear.weight`` with the sparsity mask applied (``ff1``/``ff2`` only)."""
        weight = linear.weight
        if self.sparsity_mask is not None:
            # `where`, not a product: masked weights get exactly zero gradient.
            weight = jnp.where(self.sparsity_mask.array, weight, jnp.zeros((), weight.dtype))
        return weight

    def _masked(self, linear: eqx.nn.Linear, z: Array) -> Array:
        assert linear.bias is not None
        return self.masked_weight(linear) @ z + linear.bias

    def advance(
        self,
        state: Float[Array, " units"],
        x: Float[Array, " input"],
        t0: Float[Array, ""] | float,
        t1: Float[Array, ""] | float,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " units"]:
        """The closed-form state after ``Δt = t1 - t0`` with ``x`` held (see the class doc).

        **Arguments:**

        - `state`: hidden state ``(units,)`` at ``t0``.
        - `x`: observation ``(input_size,)``.
        - `t0`, `t1`: the interval; only ``t1 - t0`` matters.
        - `key`: enables backbone dropout (training); ``None`` disables it.

        **Returns:** the hidden state ``(units,)`` at ``t1``.
        """
        if x.shape != (self.input_size,):
            raise ValueError(f"expected x of shape ({self.input_size},), got {x.shape}")
        if state.shape != (self.state_size,):
            raise ValueError(f"expected state of shape ({self.state_size},), got {state.shape}")
        dt = jnp.asarray(t1) - jnp.asarray(t0)
        z = jnp.concatenate([x, state])
        n = len(self.backbone)
        keys = [None] * n if key is None else list(jr.split(key, n))
        for i, (linear, k) in enumerate(zip(self.backbone, keys)):
            z = self.activation(linear(z))
            if i >= 1 and self.dropout is not None:  # ncps: Dropout only after blocks >= 2.
                z = self.dropout(z, key=k, inference=True if k is None else None)
        ff1 = self._masked(self.ff1, z)
        if self.mode == "pure":
            assert self.w_tau is not None and self.A is not None
            return -self.A * jnp.exp(-dt * (jnp.abs(self.w_tau) + jnp.abs(ff1))) * ff1 + self.A
        assert self.ff2 is not None and self.time_a is not None and self.time_b is not None
        ff1 = jnp.tanh(ff1)
        ff2 = jnp.tanh(self._masked(self.ff2, z))
        sigma = jax.nn.sigmoid(self.time_a(z) * dt + self.time_b(z))
        if self.mode == "no_gate":
            return ff1 + sigma * ff2
        return ff1 * (1.0 - sigma) + sigma * ff2

    def output(self, state: Float[Array, " units"]) -> Float[Array, " units"]:
        """The output is the hidden state itself."""
        return state

    def _fast_sequence(self, *data: Any) -> bool:
        """Whether :mod:`._cfc_sequence` computes this cell's held sequence: one backbone layer
        (no dropout to honour), a gated mode, every operand (`data`) in the weights' dtype."""
        dtype = self.ff1.weight.dtype
        return (self.mode in _cfc_sequence.FAST_MODES and len(self.backbone) == 1
                and all(jnp.result_type(a) == dtype for a in jax.tree_util.tree_leaves(data)))

    def advance_sequence(self, state, x, timespans, mask=None, *, last=False, key=None):
        """:meth:`AbstractCell.advance_sequence`, for one backbone layer in ``"default"`` or
        ``"no_gate"`` mode with every operand in the weights' dtype a fused recurrence of the
        same numbers (stacked heads, a hand-written VJP, the compiled CPU kernel:
        :mod:`liquidjax.cells._cfc_sequence`); otherwise the scan of :meth:`advance`."""
        if self._fast_sequence(state, x, timespans):
            return _cfc_sequence.held_sequence(self, x, timespans, state, mask, last=last)
        return super().advance_sequence(state, x, timespans, mask, last=last, key=key)

    def memory_sequence(self, lstm, state, x, timespans, mask=None, *, last=False, key=None):
        """``MixedMemory(self, lstm)``'s held sequence as one fused recurrence (the LSTM's
        gates inside the CfC's loop, :mod:`liquidjax.cells._cfc_sequence`) where
        :meth:`advance_sequence` has its fast path; ``None`` otherwise. `key` is unused, as in
        :meth:`advance` (the CfC has no dropout of its own)."""
        del key
        weights = (lstm.input_map.weight, lstm.recurrent_map.weight)
        if not self._fast_sequence(state, x, timespans, weights):
            return None
        return _cfc_sequence.held_sequence(self, x, timespans, state, mask, last=last, lstm=lstm)
