"""Neural Circuit Policy wirings: `NCP` and `AutoNCP` (ncps's draws, replayed exactly)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._checks import check_int, check_real, check_seed
from ._wiring import NeuronType, Wiring


class NCP(Wiring):
    """A Neural Circuit Policy: four layers sensory → inter → command → motor, with recurrent
    synapses among the command neurons (Lechner et al. 2020, "Neural circuit policies enabling
    auditable autonomy", Nature Machine Intelligence).

    Neuron ids are ordered motor `[0, M)`, command `[M, M+C)`, inter `[M+C, N)`; layer 0 is the
    inter, 1 the command and 2 the motor layer. As in ncps, *all* synapses are drawn at
    [`build`][liquidjax.wirings.Wiring.build] with `numpy.random.RandomState(seed)`: sensory→inter,
    inter→command, recurrent command, command→motor, in that order — so the internal adjacency
    depends on the input size, and an unbuilt NCP has no adjacency matrix yet. Each sensory neuron
    gets exactly `sensory_fanout` distinct inter targets (then inter neurons left without input get
    `max(1, ⌊I·sensory_fanout/inter⌋)` sensory sources), likewise inter→command; each motor neuron
    gets `motor_fanin` distinct command sources (and unused command neurons get motor targets);
    `recurrent_command_synapses` (pre, post) pairs are drawn with replacement, so repeats make the
    recurrent count smaller. Polarities are ±1 with equal probability.

    **Arguments:**

    - `inter_neurons`, `command_neurons`, `motor_neurons`: layer sizes, positive integers
      (`motor_neurons` is the output size).
    - `sensory_fanout`: synapses per input feature onto inter neurons, in `[0, inter_neurons]`.
    - `inter_fanout`: synapses per inter neuron onto command neurons, in
      `[0, command_neurons]`.
    - `recurrent_command_synapses`: number of command→command draws, a non-negative integer.
    - `motor_fanin`: synapses per motor neuron from command neurons, in `[0, command_neurons]`.
    - `seed`: seed of the draws, an integer in `[0, 2**32)`.

    **Raises:** `ValueError` naming the offending argument and the allowed range.

    Example:
        ```python
        wiring = NCP(inter_neurons=12, command_neurons=8, motor_neurons=4, sensory_fanout=4,
                     inter_fanout=4, recurrent_command_synapses=4, motor_fanin=6).build(10)
        wiring.layer_sizes   # (12, 8, 4)
        ```
    """

    __slots__ = ("_inter", "_command", "_motor", "_sensory_fanout", "_inter_fanout",
                 "_recurrent_command_synapses", "_motor_fanin", "_seed")

    _unbuilt_adjacency_reason: ClassVar[str] = (
        "an NCP draws all of its synapses at build time, after the sensory ones, so they "
        "depend on input_dim (as in ncps)."
    )

    def __init__(self, inter_neurons: int, command_neurons: int, motor_neurons: int,
                 sensory_fanout: int, inter_fanout: int, recurrent_command_synapses: int,
                 motor_fanin: int, seed: int = 22222):
        set_ = object.__setattr__
        inter = check_int("inter_neurons", inter_neurons, minimum=1)
        command = check_int("command_neurons", command_neurons, minimum=1)
        motor = check_int("motor_neurons", motor_neurons, minimum=1)
        set_(self, "_inter", inter)
        set_(self, "_command", command)
        set_(self, "_motor", motor)
        set_(self, "_sensory_fanout", check_int(
            "sensory_fanout", sensory_fanout, minimum=0, maximum=inter,
            expected=f"an integer in [0, inter_neurons={inter}]"))
        set_(self, "_inter_fanout", check_int(
            "inter_fanout", inter_fanout, minimum=0, maximum=command,
            expected=f"an integer in [0, command_neurons={command}]"))
        set_(self, "_recurrent_command_synapses", check_int(
            "recurrent_command_synapses", recurrent_command_synapses, minimum=0))
        set_(self, "_motor_fanin", check_int(
            "motor_fanin", motor_fanin, minimum=0, maximum=command,
            expected=f"an integer in [0, command_neurons={command}]"))
        set_(self, "_seed", check_seed("seed", seed))

        units = inter + command + motor
        layers = (np.arange(motor + command, units), np.arange(motor, motor + command),
                  np.arange(motor))
        types: tuple[NeuronType, ...] = (
            ("motor",) * motor + ("command",) * command + ("inter",) * inter
        )
        self._init_structure(units, motor, layers, types)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (counts, fanouts, seed) as keyword arguments."""
        return {"inter_neurons": self._inter, "command_neurons": self._command,
                "motor_neurons": self._motor, "sensory_fanout": self._sensory_fanout,
                "inter_fanout": self._inter_fanout,
                "recurrent_command_synapses": self._recurrent_command_synapses,
                "motor_fanin": self._motor_fanin, "seed": self._seed}

    def _draw_synapses(self, input_dim: int | None):
        if input_dim is None:
            return None, None
        # A literal replay of ncps 1.0.1 `NCP.build`: the same RandomState calls on the same
        # Python lists, in the same order (the draw sequence is the specification).
        rng = np.random.RandomState(self._seed)
        n_motor, n_command, n_inter = self._motor, self._command, self._inter
        motor = list(range(0, n_motor))
        command = list(range(n_motor, n_motor + n_command))
        inter = list(range(n_motor + n_command, n_motor + n_command + n_inter))
        sensory_ids = list(range(0, input_dim))
        adjacency = np.zeros((self._units, self._units), dtype=np.int8)
        sensory = np.zeros((input_dim, self._units), dtype=np.int8)

        # sensory -> inter
        unreachable = list(inter)
        for src in sensory_ids:
            for dest in rng.choice(inter, size=self._sensory_fanout, replace=False):
                if dest in unreachable:
                    unreachable.remove(dest)
                sensory[src, dest] = rng.choice([-1, 1])
        fanin = int(np.clip(int(input_dim * self._sensory_fanout / n_inter), 1, input_dim))
        for dest in unreachable:
            for src in rng.choice(sensory_ids, size=fanin, replace=False):
                sensory[src, dest] = rng.choice([-1, 1])

        # inter -> command
        unreachable = list(command)
        for src in inter:
            for dest in rng.choice(command, size=self._inter_fanout, replace=False):
                if dest in unreachable:
                    unreachable.remove(dest)
                adjacency[src, dest] = rng.choice([-1, 1])
        # ncps clips by the number of command (not inter) neurons; harmless, since the mean
        # fan-in never exceeds the number of inter neurons.
        fanin = int(np.clip(int(n_inter * self._inter_fanout / n_command), 1, n_command))
        for dest in unreachable:
            for src in rng.choice(inter, size=fanin, replace=False):
                adjacency[src, dest] = rng.choice([-1, 1])

        # recurrent command -> command (with replacement: repeats overwrite)
        for _ in range(self._recurrent_command_synapses):
            src = rng.choice(command)
            dest = rng.choice(command)
            adjacency[src, dest] = rng.choice([-1, 1])

        # command -> motor
        unreachable = list(command)
        for dest in motor:
            for src in rng.choice(command, size=self._motor_fanin, replace=False):
                if src in unreachable:
                    unreachable.remove(src)
                adjacency[src, dest] = rng.choice([-1, 1])
        fanout = int(np.clip(int(n_motor * self._motor_fanin / n_command), 1, n_motor))
        for src in unreachable:
            for dest in rng.choice(motor, size=fanout, replace=False):
                adjacency[src, dest] = rng.choice([-1, 1])
        return adjacency, sensory


class AutoNCP(NCP):
    """An [`NCP`][] sized from just the number of neurons and outputs (ncps's `AutoNCP`).

    With `density = 1 − sparsity_level` and `K = units − output_size`: command neurons
    `C = max(⌊0.4 K⌋, 1)`, inter neurons `K − C`, motor neurons `output_size`; sensory fanout
    `max(⌊(K−C)·density⌋, 1)`, inter fanout and motor fan-in `max(⌊C·density⌋, 1)`,
    recurrent command synapses `max(⌊2C·density⌋, 1)`.

    **Arguments:**

    - `units`: total number of neurons N.
    - `output_size`: number of motor neurons, in `[1, units − 3]` (ncps: "less than units−2";
      about 0.3·units is a good choice).
    - `sparsity_level`: in `[0.1, 1.0]` (ncps's check; its message says "0.0 to 0.9").
    - `seed`: seed of the draws, an integer in `[0, 2**32)`.

    **Raises:** `ValueError` naming the offending argument and the allowed range.

    Example:
        ```python
        wiring = AutoNCP(16, 4).build(5)
        wiring.layer_sizes, wiring.synapse_count   # ((8, 4, 4), 28)
        ```
    """

    __slots__ = ("_auto_units", "_output_size", "_sparsity_level")

    def __init__(self, units: int, output_size: int, sparsity_level: float = 0.5,
                 seed: int = 22222):
        units = check_int("units", units, minimum=4,
                           expected="an integer >= 4 (at least one motor, command and inter "
                                    "neuron, and output_size < units - 2)")
        output_size = check_int("output_size", output_size, minimum=1, maximum=units - 3,
                                 expected=f"an integer in [1, units - 3 = {units - 3}] "
                                          f"(less than units - 2, given units={units})")
        sparsity_level = check_real("sparsity_level", sparsity_level)
        if not 0.1 <= sparsity_level <= 1.0:
            raise ValueError(f"sparsity_level must be in [0.1, 1.0], got {sparsity_level}")
        object.__setattr__(self, "_auto_units", units)
        object.__setattr__(self, "_output_size", output_size)
        object.__setattr__(self, "_sparsity_level", sparsity_level)

        density = 1.0 - sparsity_level
        inter_and_command = units - output_size
        command = max(int(0.4 * inter_and_command), 1)
        inter = inter_and_command - command
        super().__init__(
            inter_neurons=inter,
            command_neurons=command,
            motor_neurons=output_size,
            sensory_fanout=max(int(inter * density), 1),
            inter_fanout=max(int(command * density), 1),
            recurrent_command_synapses=max(int(command * density * 2), 1),
            motor_fanin=max(int(command * density), 1),
            seed=seed,
        )

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `units`, `output_size`, `sparsity_level`, `seed`."""
        return {"units": self._auto_units, "output_size": self._output_size,
                "sparsity_level": self._sparsity_level, "seed": self._seed}
