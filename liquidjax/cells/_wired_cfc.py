"""CfC over an NCP wiring (ncps ``WiredCfCCell``): one sparse CfC block per wiring layer."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ..wirings import Wiring
from . import _cfc_sequence
from ._base import AbstractWiredCell
from ._cfc import CfC, Mode


def wired_cfc_masks(wiring: Any) -> list[np.ndarray]:
    """The boolean ``(n_l, in_l + n_l)`` ff1/ff2 masks of each layer of a built wiring.

    Layer 0 reads the sensory synapses onto its neurons, layer ``l > 0`` the synapses from layer
    ``l - 1``; every layer also reads its own state densely (ncps ``WiredCfCCell``).
    """
    masks = []
    for layer in range(wiring.num_layers):
        ids = np.asarray(wiring.get_neurons_of_layer(layer), dtype=int)
        if layer == 0:
            incoming = np.asarray(wiring.sensory_adjacency_matrix)[:, ids]
        else:
            prev = np.asarray(wiring.get_neurons_of_layer(layer - 1), dtype=int)
            incoming = np.asarray(wiring.adjacency_matrix)[prev][:, ids]
        full = np.concatenate([incoming != 0, np.ones((len(ids), len(ids)), bool)], axis=0)
        masks.append(np.ascontiguousarray(full.T))
    return masks


class WiredCfC(AbstractWiredCell):
    r"""A CfC whose connectivity follows an NCP wiring (ncps ``WiredCfCCell``).

    One :class:`CfC` block without backbone (``backbone_layers=0``) per wiring layer
    ``l = 0 (inter), 1 (command), 2 (motor), ...``. The state is **layer-ordered**
    ``h = [h_0 | h_1 | ...]``; per step

    $$ h_0' = \mathrm{CfC}_0(h_0; x, Δt),\qquad h_l' = \mathrm{CfC}_l(h_l; h_{l-1}', Δt) $$

    where the ``ff1``/``ff2`` weights of block ``l`` are masked by the wiring's synapses into
    layer ``l`` (``time_a``/``time_b`` and the biases are dense). The masks are static boolean
    constants: they are never trained, and masked weights get exactly zero gradient. The output is
    the last layer's new state (the motor neurons for NCP/AutoNCP).

    **Arguments:**

    - `input_size`: number of input features; the wiring is built with it if it is not built
      yet (``None``: take it from an already built wiring).
    - `wiring`: a wiring (``num_layers``, ``get_neurons_of_layer``, ``adjacency_matrix``,
      ``sensory_adjacency_matrix``, ``build``), e.g. ``liquidjax.wirings.AutoNCP(16, 4)``.
    - `mode`: ``"default"``, ``"no_gate"`` or ``"pure"``.
    - `backbone_units`, `backbone_layers`, `backbone_dropout`, `activation`: not supported by a
      wired CfC (it has no backbone); anything but ``None`` raises ``ValueError``, like ncps.
    - `key`: PRNG key for the initialisation.

    **Returns:** :meth:`advance` returns the new layer-ordered state ``(units,)``;
    :meth:`output` its last ``layer_sizes[-1]`` entries. The built wiring is kept as the static
    field ``wiring`` (it must be hashable, as ``liquidjax.wirings`` are); ``neuron_ids[k]`` is
    the wiring neuron held in state entry ``k``.

    ```python
    cell = WiredCfC(5, AutoNCP(16, 4), key=jax.random.key(0))
    y = cell.output(cell.advance(cell.init_state(), jnp.ones(5), 0.0, 1.0))  # (4,)
    ```
    """

    layers: tuple[CfC, ...]
    wiring: Wiring = eqx.field(static=True)
    layer_sizes: tuple[int, ...] = eqx.field(static=True)
    neuron_ids: tuple[int, ...] = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int | None,
        wiring: Any,
        *,
        mode: Mode = "default",
        backbone_units: int | None = None,
        backbone_layers: int | None = None,
        backbone_dropout: float | None = None,
        activation: str | None = None,
        key: PRNGKeyArray,
    ):
        for name, value in (
            ("backbone_units", backbone_units),
            ("backbone_layers", backbone_layers),
            ("backbone_dropout", backbone_dropout),
            ("activation", activation),
        ):
            if value is not None:
                raise ValueError(
                    f"cannot use {name}={value!r} with a wired CfC (it has no backbone); "
                    f"pass units as an int for a backbone"
                )
        if not isinstance(wiring, Wiring):
            raise TypeError(
                f"wiring must be a liquidjax.wirings.Wiring (e.g. AutoNCP(16, 4)), got "
                f"{type(wiring).__name__}"
            )
        built_dim = wiring.input_dim
        if built_dim is None:
            if input_size is None:
                raise ValueError(
                    "the wiring is not built and input_size is None: pass input_size"
                )
            wiring = wiring.build(input_size)
        elif input_size is not None and built_dim != input_size:
            raise ValueError(
                f"the wiring is built for input_dim={built_dim}, got input_size={input_size}"
            )
        masks = wired_cfc_masks(wiring)
        sizes = [m.shape[0] for m in masks]
        if sum(sizes) != wiring.units:
            raise ValueError(
                f"the wiring's layers {sizes} do not cover its {wiring.units} units"
            )
        in_sizes = [wiring.input_dim] + sizes[:-1]
        keys = jr.split(key, len(masks))
        self.layers = tuple(
            CfC(n_in, n, mode=mode, backbone_layers=0, sparsity_mask=m, key=k)
            for n_in, n, m, k in zip(in_sizes, sizes, masks, keys)
        )
        self.wiring = wiring
        self.layer_sizes = tuple(int(s) for s in sizes)
        self.neuron_ids = tuple(
            int(i) for layer in range(wiring.num_layers) for i in wiring.get_neurons_of_layer(layer)
        )
        self.input_size = int(wiring.input_dim)
        self.state_size = int(wiring.units)
        self.output_size = self.layer_sizes[-1]

    def __check_init__(self):
        if len(self.layers) != len(self.layer_sizes) or any(
            layer.state_size != n for layer, n in zip(self.layers, self.layer_sizes)
        ):
            raise ValueError(
                f"layer blocks {[l.state_size for l in self.layers]} do not match "
                f"layer_sizes {self.layer_sizes}"
            )

    @property
    def mode(self) -> str:
        return self.layers[0].mode

    @property
    def masks(self) -> tuple[Bool[Array, "n cat"], ...]:
        """The boolean ff1/ff2 mask of each layer."""
        return tuple(layer.sparsity_mask.array for layer in self.layers)  # pyright: ignore

    def init_state(self) -> Float[Array, " units"]:
        """The zero layer-ordered state ``(units,)``."""
        return jnp.zeros(self.state_size, self.layers[0].ff1.weight.dtype)

    def advance(
        self,
        state: Float[Array, " units"],
        x: Float[Array, " input"],
        t0: Float[Array, ""] | float,
        t1: Float[Array, ""] | float,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " units"]:
        """Advance every layer in order across ``[t0, t1]``; layer ``l`` reads layer ``l-1``'s
        new state.

        **Arguments:** as :meth:`AbstractCell.advance` (`key` is unused: no dropout).

        **Returns:** the new layer-ordered state ``(units,)``.
        """
        del key
        if state.shape != (self.state_size,):
            raise ValueError(f"expected state of shape ({self.state_size},), got {state.shape}")
        bounds = np.cumsum((0,) + self.layer_sizes)
        inputs = x
        new = []
        for layer, lo, hi in zip(self.layers, bounds[:-1], bounds[1:]):
            inputs = layer.advance(state[lo:hi], inputs, t0, t1)
            new.append(inputs)
        return jnp.concatenate(new)

    def output(self, state: Float[Array, " units"]) -> Float[Array, " output"]:
        """The last layer's state (the motor neurons)."""
        return state[self.state_size - self.output_size :]

    def advance_sequence(self, state, x, timespans, mask=None, *, last=False, key=None):
        """:meth:`AbstractCell.advance_sequence`; in ``"default"`` or ``"no_gate"`` mode with
        every operand in the weights' dtype a scan whose step stacks each layer's heads into one
        product (:func:`liquidjax.cells._cfc_sequence.wired_sequence`, the same numbers);
        otherwise the scan of :meth:`advance`."""
        dtype = self.layers[0].ff1.weight.dtype
        data = jax.tree_util.tree_leaves((state, x, timespans))
        if self.mode in _cfc_sequence.FAST_MODES and all(
                jnp.result_type(a) == dtype for a in data):
            return _cfc_sequence.wired_sequence(self, x, timespans, state, mask, last=last)
        return super().advance_sequence(state, x, timespans, mask, last=last, key=key)
