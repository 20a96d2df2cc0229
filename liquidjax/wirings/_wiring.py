"""The abstract `Wiring`: immutable, host-side description of who connects to whom."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

import numpy as np
from jaxtyping import Int8

from .._checks import check_int

NeuronType = Literal["motor", "command", "inter"]


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.int8)
    array.flags.writeable = False
    return array


def _rebuild(cls: type[Wiring], config: dict[str, Any], input_dim: int | None) -> Wiring:
    wiring = cls(**config)
    return wiring if input_dim is None else wiring.build(input_dim)


class Wiring(abc.ABC):
    """Which neurons of a liquid network are connected, and with which sign.

    A wiring is immutable host-side configuration (NumPy arrays, never traced by JAX): every
    matrix is read-only, [`build`][] returns a *new* wiring, and two wirings compare (and hash)
    equal when their class, constructor arguments and input size agree — so a wiring can be a
    static field of an `eqx.Module`. The matrices are exactly those of `ncps` 1.0.1 for the same
    constructor arguments (same NumPy random draws, in the same order).

    Neurons are numbered `0 .. units-1`; the first `output_dim` of them are the motor neurons,
    whose states are the output. Matrices are indexed `[pre, post]` and hold the synapse's
    polarity: `+1` excitatory, `-1` inhibitory, `0` no synapse (the reversal potential `erev` of
    an LTC synapse is initialised to this value).

    This class is abstract; use [`FullyConnected`][], [`Random`][], [`NCP`][] or [`AutoNCP`][].

    Attributes (read-only):
        units: number of neurons N (the state size).
        output_dim: number of motor neurons M (the output size).
        input_dim: number of input features I (sensory neurons), `None` until built.
        adjacency_matrix: `(N, N)` int8 signed adjacency `[pre, post]`.
        sensory_adjacency_matrix: `(I, N)` int8 signed adjacency `[input, post]`, `None`
            until built.

    Example:
        ```python
        wiring = liquidjax.wirings.AutoNCP(16, 4).build(5)
        wiring.layer_sizes                 # (8, 4, 4): inter, command, motor
        wiring.sensory_adjacency_matrix    # (5, 16) int8
        ```
    """

    __slots__ = ("_units", "_output_dim", "_input_dim", "_adjacency", "_sensory_adjacency",
                 "_layers", "_types")

    _units: int
    _output_dim: int
    _input_dim: int | None
    _adjacency: np.ndarray | None
    _sensory_adjacency: np.ndarray | None
    _layers: tuple[np.ndarray, ...]
    _types: tuple[NeuronType, ...]

    # Why an unbuilt wiring has no adjacency matrix (only NCP: it draws all synapses at build).
    _unbuilt_adjacency_reason: ClassVar[str] = ""

    # --- hooks for the concrete classes -------------------------------------------------------

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (resolved), so that `type(w)(**w.get_config())` is `w` unbuilt.

        **Returns:** a new `dict` of keyword arguments.
        """

    @abc.abstractmethod
    def _draw_synapses(
        self, input_dim: int | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Replays ncps's random draws: (adjacency, sensory adjacency) for this input size."""

    def _init_structure(self, units: int, output_dim: int, layers: tuple[np.ndarray, ...],
                        types: tuple[NeuronType, ...]) -> None:
        """Called once by the concrete constructors, after their own fields are set."""
        for array in layers:
            array.flags.writeable = False
        set_ = object.__setattr__
        set_(self, "_units", units)
        set_(self, "_output_dim", output_dim)
        set_(self, "_layers", layers)
        set_(self, "_types", types)
        set_(self, "_input_dim", None)
        adjacency, _ = self._draw_synapses(None)
        set_(self, "_adjacency", None if adjacency is None else _frozen(adjacency))
        set_(self, "_sensory_adjacency", None)

    # --- immutability and value semantics -----------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot delete {name!r}")

    def _key(self) -> tuple[Any, ...]:
        return (type(self), tuple(sorted(self.get_config().items())), self._input_dim)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Wiring):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self):
        return (_rebuild, (type(self), self.get_config(), self._input_dim))

    def __copy__(self) -> Wiring:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Wiring:
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        text = f"{type(self).__name__}({args})"
        return text if self._input_dim is None else f"{text}.build({self._input_dim})"

    # --- public interface ---------------------------------------------------------------------

    @property
    def units(self) -> int:
        """Number of neurons N (the state size)."""
        return self._units

    @property
    def output_dim(self) -> int:
        """Number of motor neurons M; they are neurons `0 .. M-1`."""
        return self._output_dim

    @property
    def input_dim(self) -> int | None:
        """Number of input features (sensory neurons), or `None` if not built yet."""
        return self._input_dim

    @property
    def adjacency_matrix(self) -> Int8[np.ndarray, "units units"]:
        """Read-only `(N, N)` int8 signed adjacency, indexed `[pre, post]` (+1, -1 or 0).

        **Raises:** `ValueError` for an unbuilt [`NCP`][], whose synapses are all drawn by
        [`build`][] (they depend on the input size through the random stream).
        """
        if self._adjacency is None:
            raise ValueError(
                f"{self!r} has no adjacency matrix yet: {self._unbuilt_adjacency_reason} "
                "Call .build(input_dim) first."
            )
        return self._adjacency

    @property
    def sensory_adjacency_matrix(self) -> Int8[np.ndarray, "input_dim units"] | None:
        """Read-only `(I, N)` int8 signed adjacency from the inputs, `[input, post]`; `None`
        until built."""
        return self._sensory_adjacency

    def is_built(self) -> bool:
        """Whether the input size is known (and the sensory synapses drawn)."""
        return self._input_dim is not None

    def build(self, input_dim: int) -> Wiring:
        """Fixes the input size and draws the sensory synapses (as ncps's `build`).

        The draws continue ncps's random stream where the constructor left it, so the result
        equals the ncps wiring built with the same `input_dim`. Does not modify `self`.

        **Arguments:**

        - `input_dim`: number of input features, a positive integer.

        **Returns:** the built wiring — a new one, or `self` if it is already built with this
        `input_dim`.

        **Raises:** `ValueError` if `input_dim` is not a positive integer, or if the wiring is
        already built with a different input size.

        Example:
            ```python
            wiring = FullyConnected(8).build(5)
            wiring.sensory_adjacency_matrix.shape   # (5, 8)
            ```
        """
        input_dim = check_int("input_dim", input_dim, minimum=1)
        if self._input_dim is not None:
            if input_dim == self._input_dim:
                return self
            raise ValueError(
                f"{self!r} is already built with input_dim={self._input_dim}; cannot build it "
                f"again with input_dim={input_dim} (construct a new wiring instead)"
            )
        new = object.__new__(type(self))
        for cls in type(self).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if hasattr(self, slot):
                    object.__setattr__(new, slot, getattr(self, slot))
        adjacency, sensory = new._draw_synapses(input_dim)
        assert adjacency is not None and sensory is not None
        object.__setattr__(new, "_input_dim", input_dim)
        object.__setattr__(new, "_adjacency", _frozen(adjacency))
        object.__setattr__(new, "_sensory_adjacency", _frozen(sensory))
        return new

    @property
    def num_layers(self) -> int:
        """Number of layers (1 for [`FullyConnected`][] and [`Random`][], 3 for [`NCP`][])."""
        return len(self._layers)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Number of neurons in each layer, in the order of [`get_neurons_of_layer`][]."""
        return tuple(len(layer) for layer in self._layers)

    def get_neurons_of_layer(self, layer_id: int) -> np.ndarray:
        """The neuron ids of one layer.

        For an [`NCP`][], layer 0 is the inter, 1 the command and 2 the motor neurons (the order
        in which a wired CfC stacks its blocks); a one-layer wiring has all neurons in layer 0.

        **Arguments:**

        - `layer_id`: an integer in `[0, num_layers)`.

        **Returns:** a new 1-D integer array of neuron ids, ascending.

        Example:
            ```python
            AutoNCP(16, 4).get_neurons_of_layer(2)   # array([0, 1, 2, 3])
            ```
        """
        layer_id = check_int("layer_id", layer_id, minimum=0, maximum=self.num_layers - 1)
        return self._layers[layer_id].copy()

    def get_type_of_neuron(self, neuron_id: int) -> NeuronType:
        """The role of a neuron: `"motor"`, `"command"` or `"inter"` (ncps semantics: in a
        one-layer wiring, neurons below `output_dim` are motor, the others inter).

        **Arguments:**

        - `neuron_id`: an integer in `[0, units)`.

        **Returns:** the neuron type as a string.
        """
        neuron_id = check_int("neuron_id", neuron_id, minimum=0, maximum=self._units - 1)
        return self._types[neuron_id]

    def erev_initializer(self, shape: tuple[int, ...] | None = None,
                         dtype: Any = None) -> np.ndarray:
        """Initial reversal potentials of the internal synapses: a copy of the adjacency matrix
        (ncps semantics; `shape` and `dtype` as in a Keras initializer).

        **Arguments:**

        - `shape`: optional expected shape; must be `(units, units)` if given.
        - `dtype`: optional dtype of the result (default: the matrix's int8).

        **Returns:** a new, writable array.
        """
        return self._initializer(self.adjacency_matrix, "adjacency_matrix", shape, dtype)

    def sensory_erev_initializer(self, shape: tuple[int, ...] | None = None,
                                 dtype: Any = None) -> np.ndarray:
        """Initial reversal potentials of the sensory synapses: a copy of the sensory adjacency
        matrix (ncps semantics). Arguments and result as [`erev_initializer`][].

        **Raises:** `ValueError` if the wiring is not built.
        """
        if self._sensory_adjacency is None:
            raise ValueError(f"{self!r} is not built; call .build(input_dim) first")
        return self._initializer(self._sensory_adjacency, "sensory_adjacency_matrix", shape, dtype)

    @staticmethod
    def _initializer(matrix: np.ndarray, name: str, shape: Any, dtype: Any) -> np.ndarray:
        if shape is not None and tuple(shape) != matrix.shape:
            raise ValueError(f"requested shape {tuple(shape)} but {name} has shape {matrix.shape}")
        return np.array(matrix, dtype=matrix.dtype if dtype is None else dtype, copy=True)

    @property
    def synapse_count(self) -> int:
        """Number of synapses between the neurons (non-zeros of the adjacency matrix)."""
        return int(np.count_nonzero(self.adjacency_matrix))

    @property
    def sensory_synapse_count(self) -> int:
        """Number of synapses from the inputs to the neurons.

        **Raises:** `ValueError` if the wiring is not built.
        """
        if self._sensory_adjacency is None:
            raise ValueError(f"{self!r} is not built; call .build(input_dim) first")
        return int(np.count_nonzero(self._sensory_adjacency))
