"""One-layer wirings: `FullyConnected` and `Random` (ncps's draws, replayed exactly)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_int, check_real, check_seed
from ._wiring import NeuronType, Wiring

# ncps draws each polarity as `rng.choice([-1, 1, 1])`: excitatory with probability 2/3.
_POLARITIES = np.array([-1, 1, 1], dtype=np.int64)


def _one_layer(units: int, output_dim: int) -> tuple[tuple[np.ndarray], tuple[NeuronType, ...]]:
    types: tuple[NeuronType, ...] = tuple(
        "motor" if i < output_dim else "inter" for i in range(units)
    )
    return (np.arange(units),), types


def _check_units_and_output(units: Any, output_dim: Any) -> tuple[int, int]:
    units = check_int("units", units, minimum=1)
    if output_dim is None:
        output_dim = units
    output_dim = check_int("output_dim", output_dim, minimum=1, maximum=units,
                            expected=f"an integer in [1, units={units}]")
    return units, output_dim


def _all_pairs(rows: int, cols: int) -> np.ndarray:
    """`[(src, dest) for src in range(rows) for dest in range(cols)]` as a (rows*cols, 2) array."""
    src, dest = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    return np.stack([src, dest], axis=1)


class FullyConnected(Wiring):
    """Every neuron connects to every neuron (and every input to every neuron).

    Polarities are drawn as in ncps: `numpy.random.default_rng(erev_init_seed)`, one
    `choice([-1, 1, 1])` per synapse, row by row (`[pre, post]`), then — at
    [`build`][liquidjax.wirings.Wiring.build] — the sensory synapses from where the stream left off.

    **Arguments:**

    - `units`: number of neurons N, a positive integer.
    - `output_dim`: number of motor neurons (neurons `0 .. output_dim-1`); default `units`.
    - `erev_init_seed`: seed of the polarity draws, an integer in `[0, 2**32)`.
    - `self_connections`: whether neuron i has a synapse onto itself.

    **Raises:** `ValueError` on a non-positive `units`, an `output_dim` outside `[1, units]`, or
    an invalid seed.

    Example:
        ```python
        wiring = FullyConnected(8).build(5)
        wiring.synapse_count, wiring.sensory_synapse_count   # (64, 40)
        ```
    """

    __slots__ = ("_erev_init_seed", "_self_connections")

    def __init__(self, units: int, output_dim: int | None = None, erev_init_seed: int = 1111,
                 self_connections: bool = True):
        units, output_dim = _check_units_and_output(units, output_dim)
        if not isinstance(self_connections, (bool, np.bool_)):
            raise ValueError(f"self_connections must be a bool, got {self_connections!r}")
        object.__setattr__(self, "_erev_init_seed", check_seed("erev_init_seed", erev_init_seed))
        object.__setattr__(self, "_self_connections", bool(self_connections))
        self._init_structure(units, output_dim, *_one_layer(units, output_dim))

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: units, output_dim, erev_init_seed, self_connections."""
        return {"units": self._units, "output_dim": self._output_dim,
                "erev_init_seed": self._erev_init_seed, "self_connections": self._self_connections}

    def _draw_synapses(self, input_dim: int | None):
        n = self._units
        rng = np.random.default_rng(self._erev_init_seed)
        # One vector draw consumes the stream exactly like ncps's scalar draws in a loop
        # (checked against ncps in the tests).
        adjacency = np.zeros((n, n), dtype=np.int8)
        if self._self_connections:
            adjacency[...] = rng.choice(_POLARITIES, size=n * n).reshape(n, n)
        else:
            off_diagonal = ~np.eye(n, dtype=bool)
            adjacency[off_diagonal] = rng.choice(_POLARITIES, size=n * (n - 1))
        if input_dim is None:
            return adjacency, None
        sensory = rng.choice(_POLARITIES, size=input_dim * n).reshape(input_dim, n)
        return adjacency, sensory.astype(np.int8)


class Random(Wiring):
    """A random sparse one-layer wiring.

    As in ncps: `numpy.random.default_rng(random_seed)` picks `round(N² (1 − sparsity_level))`
    distinct `(pre, post)` pairs, then one `choice([-1, 1, 1])` polarity for each; at
    [`build`][liquidjax.wirings.Wiring.build] it picks `round(I·N (1 − sparsity_level))` distinct
    sensory pairs. (ncps draws
    *two* polarities per sensory synapse and keeps the second; this is replayed, so the
    matrices are identical.)

    **Arguments:**

    - `units`: number of neurons N, a positive integer.
    - `output_dim`: number of motor neurons (neurons `0 .. output_dim-1`); default `units`.
    - `sparsity_level`: fraction of absent synapses, in `[0, 1)`.
    - `random_seed`: seed of the draws, an integer in `[0, 2**32)`.

    **Raises:** `ValueError` on a non-positive `units`, an `output_dim` outside `[1, units]`, a
    `sparsity_level` outside `[0, 1)`, or an invalid seed.

    Example:
        ```python
        wiring = Random(10, sparsity_level=0.5).build(3)
        wiring.synapse_count   # 50
        ```
    """

    __slots__ = ("_sparsity_level", "_random_seed")

    def __init__(self, units: int, output_dim: int | None = None, sparsity_level: float = 0.0,
                 random_seed: int = 1111):
        units, output_dim = _check_units_and_output(units, output_dim)
        sparsity_level = check_real("sparsity_level", sparsity_level)
        if not 0.0 <= sparsity_level < 1.0:
            raise ValueError(f"sparsity_level must be in [0, 1), got {sparsity_level}")
        object.__setattr__(self, "_sparsity_level", sparsity_level)
        object.__setattr__(self, "_random_seed", check_seed("random_seed", random_seed))
        self._init_structure(units, output_dim, *_one_layer(units, output_dim))

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `units`, `output_dim`, `sparsity_level`, `random_seed`."""
        return {"units": self._units, "output_dim": self._output_dim,
                "sparsity_level": self._sparsity_level, "random_seed": self._random_seed}

    def _draw_synapses(self, input_dim: int | None):
        n = self._units
        density = 1 - self._sparsity_level
        rng = np.random.default_rng(self._random_seed)

        adjacency = np.zeros((n, n), dtype=np.int8)
        count = int(np.round(n * n * density))
        used = rng.choice(_all_pairs(n, n), size=count, replace=False)
        adjacency[used[:, 0], used[:, 1]] = rng.choice(_POLARITIES, size=count)
        if input_dim is None:
            return adjacency, None

        sensory = np.zeros((input_dim, n), dtype=np.int8)
        count = int(np.round(input_dim * n * density))
        used = rng.choice(_all_pairs(input_dim, n), size=count, replace=False)
        # Two draws per synapse in ncps; the second overwrites the first.
        sensory[used[:, 0], used[:, 1]] = rng.choice(_POLARITIES, size=2 * count)[1::2]
        return adjacency, sensory
