"""Wirings: exact agreement with ncps 1.0.1 (recorded and live), structure, immutability, errors."""

import copy
import io
import json
import pickle
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from liquidjax.wirings import NCP, AutoNCP, FullyConnected, Random, Wiring, draw

matplotlib.use("Agg")

REFS = Path(__file__).parent / "refs" / "ncps"


def _load(name):
    with np.load(REFS / f"{name}.npz") as z:
        return (z["wiring.adjacency"], z["wiring.sensory_adjacency"],
                json.loads(str(z["meta_json"]))["wiring"])


def _assert_same(ours, adjacency, sensory):
    assert ours.adjacency_matrix.dtype == np.int8
    assert ours.sensory_adjacency_matrix.dtype == np.int8
    np.testing.assert_array_equal(ours.adjacency_matrix, adjacency)
    np.testing.assert_array_equal(ours.sensory_adjacency_matrix, sensory)


def _assert_meta(ours, meta):
    assert ours.units == meta["units"]
    assert ours.input_dim == meta["input_dim"]
    assert ours.output_dim == meta["output_dim"]
    assert ours.num_layers == meta["num_layers"]
    assert [ours.get_neurons_of_layer(i).tolist() for i in range(ours.num_layers)] == meta["layers"]
    assert ours.synapse_count == meta["synapse_count"]
    assert ours.sensory_synapse_count == meta["sensory_synapse_count"]


# --- recorded ncps references ------------------------------------------------------------------


def test_fully_connected_matches_recorded_ncps():
    adjacency, sensory, meta = _load("a_ltc_fc8")
    assert meta["class"] == "FullyConnected"
    wiring = FullyConnected(8).build(5)
    _assert_same(wiring, adjacency, sensory)
    _assert_meta(wiring, meta)
    # not all one sign, so the draws (not a constant) are what matched
    assert {-1, 1} <= set(np.unique(adjacency).tolist())


def test_autoncp_matches_recorded_ncps():
    adjacency, sensory, meta = _load("f_cfc_wired_autoncp")
    assert meta["class"] == "AutoNCP"
    wiring = AutoNCP(16, 4).build(5)
    _assert_same(wiring, adjacency, sensory)
    _assert_meta(wiring, meta)
    assert wiring.layer_sizes == (8, 4, 4)
    assert [wiring.get_type_of_neuron(i) for i in (0, 3, 4, 7, 8, 15)] == [
        "motor", "motor", "command", "command", "inter", "inter"]


# --- ncps's wirings over many arguments (recorded by refs/ncps/record_wirings.py) -------------

with np.load(REFS / "wirings.npz") as _z:
    WIRING_REFS = {k: _z[k] for k in _z.files}
WIRING_CASES = json.loads(str(WIRING_REFS["meta_json"]))["cases"]


@pytest.mark.parametrize("k", range(len(WIRING_CASES)),
                         ids=[f"{c['class']}-{k}" for k, c in enumerate(WIRING_CASES)])
def test_matches_recorded_ncps_wirings(k):
    case = WIRING_CASES[k]
    name, input_dim = case["class"], case["input_dim"]
    ours = globals()[name](*case["args"], **case["kwargs"])
    if name in ("FullyConnected", "Random"):  # drawn at construction in ncps too
        np.testing.assert_array_equal(ours.adjacency_matrix, WIRING_REFS[f"{k}.adjacency"])
    built = ours.build(input_dim)
    _assert_same(built, WIRING_REFS[f"{k}.built_adjacency"], WIRING_REFS[f"{k}.sensory_adjacency"])
    assert built.output_dim == case["output_dim"]
    assert built.num_layers == case["num_layers"]
    assert [built.get_neurons_of_layer(j).tolist() for j in range(built.num_layers)] == \
        case["layers"]
    assert [built.get_type_of_neuron(i) for i in range(built.units)] == case["types"]
    assert built.synapse_count == case["synapse_count"]
    assert built.sensory_synapse_count == case["sensory_synapse_count"]


def test_recorded_wirings_are_not_vacuous():
    assert len(WIRING_CASES) == 15
    assert {c["class"] for c in WIRING_CASES} == {"FullyConnected", "Random", "NCP", "AutoNCP"}
    signs = set()
    for k in range(len(WIRING_CASES)):
        signs |= set(np.unique(WIRING_REFS[f"{k}.built_adjacency"]).tolist())
    assert signs == {-1, 0, 1}


# --- a NumPy-only replay of ncps's scalar draw loops (checks our vectorised draws) --------------


def _fc_loop(units, seed, self_connections, input_dim):
    rng = np.random.default_rng(seed)
    adjacency = np.zeros((units, units), np.int8)
    for src in range(units):
        for dest in range(units):
            if src != dest or self_connections:
                adjacency[src, dest] = rng.choice([-1, 1, 1])
    sensory = np.zeros((input_dim, units), np.int8)
    for src in range(input_dim):
        for dest in range(units):
            sensory[src, dest] = rng.choice([-1, 1, 1])
    return adjacency, sensory


def _random_loop(units, sparsity, seed, input_dim):
    rng = np.random.default_rng(seed)
    adjacency = np.zeros((units, units), np.int8)
    pairs = [(s, d) for s in range(units) for d in range(units)]
    for src, dest in rng.choice(pairs, size=int(np.round(units * units * (1 - sparsity))),
                                replace=False):
        adjacency[src, dest] = rng.choice([-1, 1, 1])
    sensory = np.zeros((input_dim, units), np.int8)
    pairs = [(s, d) for s in range(input_dim) for d in range(units)]
    for src, dest in rng.choice(pairs, size=int(np.round(input_dim * units * (1 - sparsity))),
                                replace=False):
        sensory[src, dest] = rng.choice([-1, 1, 1])
        sensory[src, dest] = rng.choice([-1, 1, 1])
    return adjacency, sensory


@pytest.mark.parametrize("units, seed, self_connections, input_dim",
                         [(1, 0, True, 1), (5, 1111, True, 3), (9, 42, False, 4), (13, 7, True, 2)])
def test_fully_connected_equals_scalar_loop(units, seed, self_connections, input_dim):
    wiring = FullyConnected(units, erev_init_seed=seed,
                            self_connections=self_connections).build(input_dim)
    _assert_same(wiring, *_fc_loop(units, seed, self_connections, input_dim))
    assert wiring.synapse_count == units * units - (0 if self_connections else units)
    assert wiring.sensory_synapse_count == units * input_dim
    if not self_connections:
        assert not np.diagonal(wiring.adjacency_matrix).any()


@pytest.mark.parametrize("units, sparsity, seed, input_dim",
                         [(6, 0.0, 1111, 2), (10, 0.5, 3, 4), (11, 0.75, 9, 3), (3, 0.99, 1, 1)])
def test_random_equals_scalar_loop(units, sparsity, seed, input_dim):
    wiring = Random(units, sparsity_level=sparsity, random_seed=seed).build(input_dim)
    _assert_same(wiring, *_random_loop(units, sparsity, seed, input_dim))
    assert wiring.synapse_count == int(np.round(units * units * (1 - sparsity)))
    assert wiring.sensory_synapse_count == int(np.round(input_dim * units * (1 - sparsity)))


def test_fully_connected_polarity_balance():
    # ncps draws from [-1, 1, 1]: about two thirds excitatory.
    adjacency = FullyConnected(40, erev_init_seed=3).adjacency_matrix
    assert set(np.unique(adjacency).tolist()) == {-1, 1}
    assert 0.6 < np.mean(adjacency == 1) < 0.73


# --- NCP structure ------------------------------------------------------------------------------


def _check_ncp_structure(wiring, inter, command, motor, sensory_fanout, inter_fanout,
                         recurrent, motor_fanin):
    n, i_dim = wiring.units, wiring.input_dim
    assert n == inter + command + motor and wiring.output_dim == motor
    assert wiring.layer_sizes == (inter, command, motor)
    motor_ids, command_ids, inter_ids = (np.arange(motor), np.arange(motor, motor + command),
                                         np.arange(motor + command, n))
    for layer, ids in enumerate((inter_ids, command_ids, motor_ids)):
        np.testing.assert_array_equal(wiring.get_neurons_of_layer(layer), ids)
    a, s = wiring.adjacency_matrix, wiring.sensory_adjacency_matrix
    assert a.shape == (n, n) and s.shape == (i_dim, n)
    assert set(np.unique(a).tolist()) <= {-1, 0, 1} and set(np.unique(s).tolist()) <= {-1, 0, 1}

    allowed = np.zeros((n, n), bool)
    allowed[np.ix_(inter_ids, command_ids)] = True
    allowed[np.ix_(command_ids, command_ids)] = True
    allowed[np.ix_(command_ids, motor_ids)] = True
    assert not a[~allowed].any(), "synapse outside inter->command->motor (+ command recurrence)"
    assert not s[:, : motor + command].any(), "sensory synapse onto a non-inter neuron"

    # sensory -> inter: exact fanout per input, every inter neuron reached
    assert (np.count_nonzero(s[:, inter_ids], axis=1) >= sensory_fanout).all()
    assert (np.count_nonzero(s[:, inter_ids], axis=0) >= 1).all()
    ic = a[np.ix_(inter_ids, command_ids)]
    assert (np.count_nonzero(ic, axis=1) >= inter_fanout).all()
    assert (np.count_nonzero(ic, axis=0) >= 1).all()
    assert np.count_nonzero(a[np.ix_(command_ids, command_ids)]) <= recurrent
    cm = a[np.ix_(command_ids, motor_ids)]
    assert (np.count_nonzero(cm, axis=0) >= motor_fanin).all()
    assert (np.count_nonzero(cm, axis=1) >= 1).all()
    assert [wiring.get_type_of_neuron(i) for i in range(n)] == (
        ["motor"] * motor + ["command"] * command + ["inter"] * inter)


@pytest.mark.parametrize("seed", [0, 1, 22222])
@pytest.mark.parametrize("sizes, input_dim", [((6, 4, 2, 3, 2, 3, 2), 4),
                                              ((10, 5, 3, 1, 5, 0, 1), 7)])
def test_ncp_structure(seed, sizes, input_dim):
    wiring = NCP(*sizes, seed=seed).build(input_dim)
    _check_ncp_structure(wiring, *sizes)
    if seed != 0:
        assert wiring != NCP(*sizes, seed=0).build(input_dim)


@pytest.mark.parametrize("units, output_size, sparsity", [(16, 4, 0.5), (10, 3, 0.1), (20, 2, 0.9)])
def test_autoncp_sizes(units, output_size, sparsity):
    wiring = AutoNCP(units, output_size, sparsity).build(6)
    density = 1 - sparsity
    command = max(int(0.4 * (units - output_size)), 1)
    inter = units - output_size - command
    sizes = (inter, command, output_size, max(int(inter * density), 1),
             max(int(command * density), 1), max(int(command * density * 2), 1),
             max(int(command * density), 1))
    assert isinstance(wiring, NCP)
    _check_ncp_structure(wiring, *sizes)
    _assert_same(wiring, *(lambda w: (w.adjacency_matrix, w.sensory_adjacency_matrix))(
        NCP(*sizes, seed=22222).build(6)))


def test_ncp_adjacency_is_drawn_at_build():
    wiring = AutoNCP(16, 4)
    with pytest.raises(ValueError, match="build"):
        _ = wiring.adjacency_matrix
    # the internal synapses depend on the input size (same random stream as the sensory ones)
    assert not np.array_equal(wiring.build(5).adjacency_matrix, wiring.build(6).adjacency_matrix)


# --- immutability, value semantics, build -------------------------------------------------------

ALL = [FullyConnected(5, 2), Random(6, sparsity_level=0.3), NCP(4, 3, 2, 2, 2, 2, 2),
       AutoNCP(12, 3)]


@pytest.mark.parametrize("wiring", ALL, ids=lambda w: type(w).__name__)
def test_immutable_and_value_semantics(wiring):
    assert not wiring.is_built() and wiring.input_dim is None
    assert wiring.sensory_adjacency_matrix is None
    built = wiring.build(3)
    assert built is not wiring and not wiring.is_built() and built.is_built()
    assert built.build(3) is built
    with pytest.raises(ValueError, match="input_dim=3.*input_dim=4"):
        built.build(4)
    for matrix in (built.adjacency_matrix, built.sensory_adjacency_matrix):
        with pytest.raises(ValueError, match="read-only"):
            matrix[0, 0] = 1
    with pytest.raises(AttributeError):
        built.units = 3
    with pytest.raises(AttributeError):
        built._adjacency = None
    layer = built.get_neurons_of_layer(0)
    layer[:] = -1  # a copy: the wiring is unaffected
    assert built.get_neurons_of_layer(0).min() >= 0

    same = type(wiring)(**wiring.get_config()).build(3)
    assert same == built and hash(same) == hash(built) and same != wiring
    assert len({built, same, wiring}) == 2
    assert pickle.loads(pickle.dumps(built)) == built
    assert copy.deepcopy(built) == built
    _assert_same(pickle.loads(pickle.dumps(built)), built.adjacency_matrix,
                 built.sensory_adjacency_matrix)
    assert repr(built).startswith(type(wiring).__name__ + "(") and repr(built).endswith(".build(3)")
    namespace = {c.__name__: c for c in (FullyConnected, Random, NCP, AutoNCP)}
    assert eval(repr(built), namespace) == built


def test_erev_initializers():
    wiring = FullyConnected(4, erev_init_seed=2).build(3)
    erev = wiring.erev_initializer()
    np.testing.assert_array_equal(erev, wiring.adjacency_matrix)
    erev[...] = 0  # a writable copy
    assert wiring.adjacency_matrix.any()
    sensory = wiring.sensory_erev_initializer(shape=(3, 4), dtype=np.float32)
    assert sensory.dtype == np.float32
    np.testing.assert_array_equal(sensory, wiring.sensory_adjacency_matrix)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        wiring.erev_initializer(shape=(4, 5))
    with pytest.raises(ValueError, match="not built"):
        FullyConnected(4).sensory_erev_initializer()
    with pytest.raises(ValueError, match="not built"):
        _ = FullyConnected(4).sensory_synapse_count


def test_layer_and_type_queries():
    wiring = FullyConnected(5, output_dim=2)
    assert wiring.num_layers == 1 and wiring.layer_sizes == (5,)
    assert [wiring.get_type_of_neuron(i) for i in range(5)] == ["motor"] * 2 + ["inter"] * 3
    with pytest.raises(ValueError, match="layer_id"):
        wiring.get_neurons_of_layer(1)
    with pytest.raises(ValueError, match="neuron_id"):
        wiring.get_type_of_neuron(5)
    assert isinstance(wiring, Wiring)
    with pytest.raises(TypeError):
        Wiring()  # abstract


@pytest.mark.parametrize("make, match", [
    (lambda: FullyConnected(0), "units must be an integer >= 1, got 0"),
    (lambda: FullyConnected(4.0), "units must be an integer"),
    (lambda: FullyConnected(4, output_dim=5), r"output_dim must be an integer in \[1, units=4\]"),
    (lambda: FullyConnected(4, erev_init_seed=None), "erev_init_seed"),
    (lambda: Random(-2), "units"),
    (lambda: Random(4, sparsity_level=1.0), r"sparsity_level must be in \[0, 1\), got 1.0"),
    (lambda: Random(4, sparsity_level=-0.1), "sparsity_level"),
    (lambda: NCP(0, 3, 2, 1, 1, 1, 1), "inter_neurons"),
    (lambda: NCP(4, 3, 2, 5, 1, 1, 1),
     r"sensory_fanout must be an integer in \[0, inter_neurons=4\], got 5"),
    (lambda: NCP(4, 3, 2, 2, 4, 1, 1), "inter_fanout.*command_neurons=3.*got 4"),
    (lambda: NCP(4, 3, 2, 2, 2, -1, 1), "recurrent_command_synapses"),
    (lambda: NCP(4, 3, 2, 2, 2, 1, 4), "motor_fanin.*got 4"),
    (lambda: NCP(4, 3, 2, 2, 2, 1, 1, seed=-1), "seed"),
    (lambda: AutoNCP(16, 14), r"output_size must be an integer in \[1, units - 3 = 13\].*got 14"),
    (lambda: AutoNCP(16, 0), "output_size"),
    (lambda: AutoNCP(3, 1), "units must be an integer >= 4"),
    (lambda: AutoNCP(16, 4, sparsity_level=0.05), r"sparsity_level must be in \[0.1, 1.0\]"),
    (lambda: AutoNCP(16, 4, sparsity_level=1.5), "got 1.5"),
    (lambda: FullyConnected(4).build(0), "input_dim must be an integer >= 1, got 0"),
    (lambda: AutoNCP(16, 4).build(True), "input_dim must be an integer"),
])
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- drawing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wiring", [AutoNCP(12, 3).build(4), FullyConnected(5, 2).build(2)],
                         ids=["autoncp", "fc"])
def test_draw(wiring):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = draw(wiring, draw_labels=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    neurons = {c.get_gid(): len(c.get_offsets()) for c in ax.collections
               if (c.get_gid() or "").startswith("neurons:")}
    assert sum(neurons.values()) == wiring.units + wiring.input_dim
    assert neurons["neurons:sensory"] == wiring.input_dim
    assert neurons["neurons:motor"] == wiring.output_dim
    synapses = {c.get_gid(): len(c.get_paths()) for c in ax.collections
                if (c.get_gid() or "").startswith("synapses:")}
    a, s = wiring.adjacency_matrix, wiring.sensory_adjacency_matrix
    assert synapses["synapses:excitatory"] == np.sum(a == 1) + np.sum(s == 1)
    assert synapses["synapses:inhibitory"] == np.sum(a == -1) + np.sum(s == -1)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Sensory neurons" in labels and "Inhibitory synapse" in labels
    FigureCanvasAgg(fig).print_png(io.BytesIO())  # renders without error or warning

    # deterministic layout
    again = draw(wiring).axes[0]
    for c1, c2 in zip(ax.collections, again.collections):
        if (c1.get_gid() or "").startswith("neurons:"):
            np.testing.assert_array_equal(c1.get_offsets(), c2.get_offsets())


def test_draw_into_given_axes_and_errors():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert draw(NCP(3, 2, 1, 2, 1, 1, 1).build(2), ax) is fig
    assert ax.get_legend() is not None
    with pytest.raises(ValueError, match="not built"):
        draw(FullyConnected(3))
