"""`draw`: a deterministic matplotlib picture of a wiring."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ._wiring import Wiring

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_NEURON_COLORS = {"sensory": "tab:olive", "inter": "tab:blue", "command": "tab:cyan",
                  "motor": "tab:orange"}
_SYNAPSE_COLORS = {"excitatory": "tab:green", "inhibitory": "tab:red"}
_SYNAPSE_STYLES = {"excitatory": "solid", "inhibitory": "dashed"}
_COLUMN_ORDER = ("sensory", "inter", "command", "motor")


def _edge_path(p0: np.ndarray, p1: np.ndarray, same_column: bool, loop_radius: float):
    from matplotlib.path import Path

    if np.array_equal(p0, p1):  # self-synapse: a small loop to the right of the neuron
        r = loop_radius
        verts = [p0, p0 + (2.5 * r, 1.5 * r), p0 + (2.5 * r, -1.5 * r), p0]
        return Path(verts, [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4])
    if same_column:
        # Bulge sideways (right going down, left going up) so that edges within a column stay
        # visible and a pair of opposite synapses shows as two curves.
        bulge = 0.2 * (p0[1] - p1[1])
        mid = (p0 + p1) / 2 + (bulge, 0.0)
        return Path([p0, mid, p1], [Path.MOVETO, Path.CURVE3, Path.CURVE3])
    return Path([p0, p1], [Path.MOVETO, Path.LINETO])


def draw(
    wiring: Wiring,
    ax: Axes | None = None,
    *,
    neuron_colors: Mapping[str, str] | None = None,
    synapse_colors: Mapping[str, str] | None = None,
    draw_labels: bool = False,
    figsize: tuple[float, float] = (7.0, 5.0),
) -> Figure:
    """Draws a built wiring with matplotlib (never calls `plt.show()`).

    Neurons sit in columns, left to right: sensory (the inputs), inter, command, motor — one
    column per neuron type present, so an NCP is drawn layer by layer and a fully connected
    wiring as inter | motor. Within a column neurons are spread evenly, in id order from the
    top. Each synapse is a line from pre to post neuron: excitatory (+1) solid green,
    inhibitory (−1) dashed red; synapses within a column are curved, self-synapses are small
    loops. A legend names neuron types and synapse signs. The layout is deterministic.

    **Arguments:**

    - `wiring`: a built [`Wiring`][] (`wiring.build(input_dim)`).
    - `ax`: matplotlib Axes to draw into; by default a new `matplotlib.figure.Figure` (not
      registered with pyplot) is created.
    - `neuron_colors`: optional overrides of the colours per type (`"sensory"`, `"inter"`,
      `"command"`, `"motor"`).
    - `synapse_colors`: optional overrides of `"excitatory"` / `"inhibitory"` colours.
    - `draw_labels`: whether to write the neuron ids (`s0`.. for inputs) next to markers.
    - `figsize`: size of the new figure in inches (ignored when `ax` is given).

    **Returns:** the matplotlib `Figure` holding the drawing. Neuron markers are one scatter
    collection per neuron type, with `gid` `"neurons:<type>"`; synapses are one collection per
    sign, with `gid` `"synapses:<sign>"`.

    **Raises:** `ValueError` if the wiring is not built.

    Example:
        ```python
        fig = draw(AutoNCP(16, 4).build(5))
        fig.savefig("wiring.png")
        ```
    """
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not isinstance(wiring, Wiring):
        raise ValueError(f"draw expects a Wiring, got {type(wiring).__name__}")
    if not wiring.is_built():
        raise ValueError(f"{wiring!r} is not built; draw(wiring.build(input_dim)) instead")
    assert wiring.input_dim is not None and wiring.sensory_adjacency_matrix is not None
    n_units, n_inputs = wiring.units, wiring.input_dim
    node_colors = {**_NEURON_COLORS, **(neuron_colors or {})}
    edge_colors = {**_SYNAPSE_COLORS, **(synapse_colors or {})}

    own_figure = ax is None
    if ax is None:
        ax = Figure(figsize=figsize, layout="constrained").add_subplot()
    fig = ax.figure
    while not isinstance(fig, Figure):  # an Axes in a SubFigure: return the root Figure
        fig = fig.figure

    # Node ids: neurons 0..N-1, then inputs N..N+I-1.
    types = [wiring.get_type_of_neuron(i) for i in range(n_units)] + ["sensory"] * n_inputs
    columns = [t for t in _COLUMN_ORDER if t in types]
    tallest = max(types.count(t) for t in columns)
    pos = np.zeros((n_units + n_inputs, 2))
    column_of = np.zeros(n_units + n_inputs, dtype=int)
    for c, kind in enumerate(columns):
        ids = [i for i, t in enumerate(types) if t == kind]
        if kind == "sensory":
            ids = list(range(n_units, n_units + n_inputs))
        ys = (len(ids) - 1) / 2 - np.arange(len(ids))
        ys = ys * (tallest - 1) / max(len(ids) - 1, 1) if len(ids) > 1 else ys
        pos[ids, 0] = c * max(tallest / 3, 1.0)
        pos[ids, 1] = ys
        column_of[ids] = c
    loop_radius = 0.15

    # Synapses, [pre, post]: sensory (I, N) then internal (N, N).
    adjacency = np.zeros((n_units + n_inputs, n_units), dtype=np.int8)
    adjacency[:n_units] = wiring.adjacency_matrix
    adjacency[n_units:] = wiring.sensory_adjacency_matrix
    for sign, name in ((1, "excitatory"), (-1, "inhibitory")):
        pre, post = np.nonzero(adjacency == sign)
        paths = [_edge_path(pos[a], pos[b], column_of[a] == column_of[b], loop_radius)
                 for a, b in zip(pre, post)]
        edges = PathCollection(paths, facecolors="none", edgecolors=edge_colors[name],
                               linestyles=_SYNAPSE_STYLES[name], linewidths=0.8, alpha=0.6,
                               zorder=1)
        edges.set_gid(f"synapses:{name}")
        ax.add_collection(edges)

    handles = []
    for kind in columns:
        ids = [i for i, t in enumerate(types) if t == kind]
        label = f"{kind.capitalize()} neurons"
        ax.scatter(pos[ids, 0], pos[ids, 1], s=120, c=node_colors[kind], edgecolors="black",
                   linewidths=0.5, zorder=3, label=label, gid=f"neurons:{kind}")
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=9,
                              markerfacecolor=node_colors[kind], markeredgecolor="black",
                              label=label))
        if draw_labels:
            for i in ids:
                text = f"s{i - n_units}" if kind == "sensory" else str(i)
                ax.annotate(text, pos[i], xytext=(0, 7), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, zorder=4)
    for name in ("excitatory", "inhibitory"):
        handles.append(Line2D([], [], color=edge_colors[name], linestyle=_SYNAPSE_STYLES[name],
                              label=f"{name.capitalize()} synapse"))

    if own_figure:  # room for the legend beside the drawing
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    else:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
                  fontsize=7, frameon=False)
    ax.set_title(f"{type(wiring).__name__}: {n_inputs} inputs, {n_units} neurons, "
                 f"{wiring.synapse_count + wiring.sensory_synapse_count} synapses", fontsize=9)
    ax.autoscale_view()
    ax.margins(0.1)
    ax.set_aspect("auto")
    ax.axis("off")
    return fig
