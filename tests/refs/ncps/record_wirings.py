"""Record ncps 1.0.1's wirings for tests/test_wirings.py (so the comparison runs without ncps).

    pip install ncps==1.0.1 --no-deps     # ncps.wirings needs only NumPy
    python tests/refs/ncps/record_wirings.py

Writes ``wirings.npz`` next to this file: for case ``k``, ``k.adjacency`` (at construction, before
``build``, for FullyConnected/Random, which draw there), ``k.built_adjacency``,
``k.sensory_adjacency``, and ``meta_json``: the cases (class, args, kwargs, input_dim) and what
ncps reports for each (output_dim, layers, neuron types, synapse counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CASES = [
    ("FullyConnected", (1,), {}, 1),
    ("FullyConnected", (7,), {"output_dim": 3, "erev_init_seed": 5}, 4),
    ("FullyConnected", (6,), {"self_connections": False, "erev_init_seed": 0}, 3),
    ("Random", (9,), {}, 2),
    ("Random", (9,), {"sparsity_level": 0.5, "random_seed": 3}, 4),
    ("Random", (12,), {"output_dim": 2, "sparsity_level": 0.9, "random_seed": 77}, 5),
    ("Random", (1,), {"sparsity_level": 0.6}, 1),
    ("NCP", (12, 8, 4, 4, 4, 4, 6), {"seed": 1}, 10),
    ("NCP", (5, 3, 2, 0, 0, 0, 0), {"seed": 7}, 6),
    ("NCP", (3, 5, 2, 3, 5, 10, 5), {}, 2),
    ("AutoNCP", (16, 4), {}, 5),
    ("AutoNCP", (10, 1), {"sparsity_level": 0.1, "seed": 3}, 2),
    ("AutoNCP", (30, 8), {"sparsity_level": 0.9, "seed": 5}, 20),
    ("AutoNCP", (4, 1), {"sparsity_level": 1.0, "seed": 0}, 1),
    ("AutoNCP", (24, 6), {"sparsity_level": 0.3, "seed": 123}, 33),
]


def main() -> None:
    from importlib.metadata import version

    from ncps import wirings

    arrays: dict[str, np.ndarray] = {}
    meta = {"ncps_version": version("ncps"), "cases": []}
    for k, (name, args, kwargs, input_dim) in enumerate(CASES):
        w = getattr(wirings, name)(*args, **kwargs)
        arrays[f"{k}.adjacency"] = np.asarray(w.adjacency_matrix, np.int8)
        w.build(input_dim)
        arrays[f"{k}.built_adjacency"] = np.asarray(w.adjacency_matrix, np.int8)
        arrays[f"{k}.sensory_adjacency"] = np.asarray(w.sensory_adjacency_matrix, np.int8)
        meta["cases"].append({
            "class": name, "args": list(args), "kwargs": kwargs, "input_dim": input_dim,
            "output_dim": int(w.output_dim), "num_layers": int(w.num_layers),
            "layers": [[int(i) for i in w.get_neurons_of_layer(j)] for j in range(w.num_layers)],
            "types": [w.get_type_of_neuron(i) for i in range(w.units)],
            "synapse_count": int(w.synapse_count),
            "sensory_synapse_count": int(w.sensory_synapse_count),
        })
    out = Path(__file__).with_name("wirings.npz")
    np.savez_compressed(out, meta_json=np.asarray(json.dumps(meta)), **arrays)
    print(f"wrote {out} ({len(CASES)} cases, ncps {meta['ncps_version']})")


if __name__ == "__main__":
    main()
