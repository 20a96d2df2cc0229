"""matplotlib figures of liquid networks: wirings, training curves, solver trade-offs, time
constants, neuron activity and confusion matrices.

Every function returns a `matplotlib.figure.Figure` built without pyplot (nothing is shown,
nothing global changes; in Jupyter a returned figure displays itself, elsewhere call
``fig.savefig(...)``). Axes carry labels, units and a title. Inputs may be JAX or NumPy arrays;
the quantities themselves come from [`liquidjax.inspect`][liquidjax.inspect] and
[`liquidjax.train.fit`][liquidjax.train.fit].

**Example:**
```python
from liquidjax import inspect, plot

tau = inspect.system_time_constants(rnn, xs, timespans)
plot.time_constants(tau, t=np.cumsum(timespans)).savefig("tau.png")
```
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._records import FitResult, read_metrics
from .cells import AbstractCell
from .wirings import Wiring, draw

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .inspect import SolverTrace

__all__ = [
    "activity",
    "confusion_matrix",
    "predictions",
    "solver_pareto",
    "step_sizes",
    "time_constants",
    "training_curves",
    "wiring",
]

TIME_LABEL = "time t (timespan units)"


def _figure(nrows: int = 1, ncols: int = 1, *, figsize=(7.0, 4.0), **kwargs) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _np(a: Any) -> np.ndarray:
    return np.asarray(a)


def _times(t: Any, n: int) -> tuple[np.ndarray, str]:
    if t is None:
        return np.arange(1, n + 1), "observation k"
    t = _np(t)
    if t.shape != (n,):
        raise ValueError(f"expected t of shape ({n},) (one time per step), got {t.shape}")
    return t, TIME_LABEL


# --------------------------------------------------------------------------------------- wiring
def wiring(w: Any, input_dim: int | None = None, *, ax: Axes | None = None,
           **kwargs: Any) -> Figure:
    """Draw a wiring: [`liquidjax.wirings.draw`][liquidjax.wirings.draw], building it first if
    needed. Neurons are coloured and labelled by type (sensory, inter, command, motor).

    **Arguments:**
    - `w`: a [`Wiring`][liquidjax.wirings.Wiring] (e.g. ``AutoNCP(16, 2)``), or a wired cell
      (an LTC or ``WiredCfC``, e.g. one restored from a checkpoint), whose wiring is drawn.
    - `input_dim`: number of inputs, to build an unbuilt wiring (ignored if it is built).
    - `ax`: optional Axes to draw into.
    - `kwargs`: passed on to ``draw`` (``draw_labels``, colours, ``figsize``).

    **Returns:** the Figure.

    **Example:**
    ```python
    fig = plot.wiring(AutoNCP(16, 2), input_dim=3, draw_labels=True)
    ```
    """
    if isinstance(w, AbstractCell):
        w = w if w.connectivity is None else w.connectivity
    if not isinstance(w, Wiring):
        raise TypeError(
            f"plot.wiring draws a Wiring or a wired cell (LTC, WiredCfC), got {type(w).__name__}"
        )
    if not w.is_built():
        if input_dim is None:
            raise ValueError(f"{w!r} is not built: pass input_dim (the number of inputs)")
        w = w.build(input_dim)
    return draw(w, ax, **kwargs)


# ------------------------------------------------------------------------------- training curves
def _records(metrics: Any) -> list[dict[str, Any]]:
    if isinstance(metrics, (str, os.PathLike)):
        return read_metrics(metrics)
    if isinstance(metrics, FitResult):
        return [dict(r, event="epoch") for r in metrics.history]
    return [r if "event" in r else dict(r, event="epoch") for r in metrics]


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def training_curves(metrics: Any, *, figsize: tuple[float, float] = (10.0, 4.0)) -> Figure:
    """Loss and accuracy against training steps, from the trainer's metrics.

    Reads the JSONL records that [`liquidjax.train.fit`][liquidjax.train.fit] writes to
    ``<out_dir>/metrics.jsonl``: ``"train"`` records (running mean over the current epoch, every
    ``log_every`` steps) are drawn as thin lines, ``"epoch"`` records (epoch means and validation
    metrics) as markers at the epoch's last step. A resumed run's repeated records are
    de-duplicated (the last one wins).

    **Arguments:**
    - `metrics`: the path of a ``metrics.jsonl``, its records (``read_metrics(path)``), a
      ``FitResult`` or its ``history`` (epoch records only).
    - `figsize`: figure size in inches.

    **Returns:** a Figure with a loss and an accuracy panel.

    **Example:**
    ```python
    result = fit(model, train, TrainConfig(epochs=3), val_data=val, out_dir="runs/demo")
    plot.training_curves("runs/demo/metrics.jsonl")
    ```
    """
    steps: dict[int, dict[str, Any]] = {}
    epochs: dict[int, dict[str, Any]] = {}
    for rec in _records(metrics):
        if rec.get("event") == "train" and "step" in rec:
            steps[int(rec["step"])] = rec
        elif rec.get("event") == "epoch" and "epoch" in rec:
            epochs[int(rec["epoch"])] = rec
    if not steps and not epochs:
        raise ValueError("no 'train' or 'epoch' records to plot (has an epoch finished?)")
    fig, axes = _figure(1, 2, figsize=figsize)
    ax_loss, ax_acc = axes[0]
    for ax, name, label in ((ax_loss, "loss", "loss (cross-entropy)"),
                            (ax_acc, "accuracy", "accuracy")):
        if steps:
            xs = sorted(steps)
            ax.plot(xs, [_value(steps[s].get(name)) for s in xs], "-", lw=1, alpha=0.6,
                    color="tab:blue", label="train (running epoch mean)")
        if epochs:
            es = sorted(epochs)
            # Without step numbers (a bare history), epochs stand in for steps.
            at = [epochs[e].get("step", e) for e in es]
            ax.plot(at, [_value(epochs[e].get(f"train_{name}")) for e in es], "o", ms=5,
                    color="tab:blue", label="train (epoch)")
            val = [_value(epochs[e].get(f"val_{name}")) for e in es]
            if not all(math.isnan(v) for v in val):
                ax.plot(at, val, "s-", ms=5, color="tab:orange", label="validation (epoch)")
        ax.set(xlabel="training step", ylabel=label, title=f"{name.capitalize()} during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def save_training_curves(metrics_path: str | os.PathLike,
                         out_path: str | os.PathLike) -> Path | None:
    """Write :func:`training_curves` of a ``metrics.jsonl`` file to a PNG (what ``liquidjax
    train`` leaves as ``curves.png`` in its run directory).

    **Returns:** the PNG path, or ``None`` if no epoch has finished yet (nothing to plot).

    **Example:**
    ```python
    result = fit(model, train, TrainConfig(epochs=3), out_dir="runs/demo")
    plot.save_training_curves(result.metrics, "runs/demo/curves.png")
    ```
    """
    if not any(rec.get("event") == "epoch" for rec in read_metrics(metrics_path)):
        return None
    out = Path(out_path)
    # Built without pyplot (no backend switch inside notebooks).
    training_curves(metrics_path).savefig(out, dpi=100)
    return out


# ------------------------------------------------------------------------------ solver trade-offs
def solver_pareto(
    results: Mapping[str, Mapping[str, Any]],
    *,
    cost: str = "time",
    error_label: str = "max |h − h_ref| (state error)",
    figsize: tuple[float, float] = (6.5, 4.5),
) -> Figure:
    """Error against cost for several solvers (log–log): the accuracy/speed trade-off.

    Each solver is one labelled line through its settings (e.g. tolerances or step counts); the
    lower-left points are the best.

    **Arguments:**
    - `results`: ``{solver name: {"time": seconds, "error": error, "evals": count}}``; each value
      a number or a sequence (one entry per setting). ``"evals"`` is needed only for
      ``cost="evals"``.
    - `cost`: the x axis, ``"time"`` (wall-clock seconds per solve) or ``"evals"``
      (vector-field evaluations, from [`count_vf_evals`][liquidjax.solvers.count_vf_evals]).
    - `error_label`: y-axis label.
    - `figsize`: figure size in inches.

    **Returns:** the Figure.

    **Example:**
    ```python
    plot.solver_pareto({"euler": {"time": [1e-3, 4e-3], "error": [1e-1, 2e-2]},
                        "tsit5": {"time": [2e-3, 3e-3], "error": [1e-4, 1e-6]}})
    ```
    """
    if cost not in ("time", "evals"):
        raise ValueError(f"cost must be 'time' or 'evals', got {cost!r}")
    if not results:
        raise ValueError("results is empty: nothing to plot")
    fig, axes = _figure(figsize=figsize)
    ax = axes[0, 0]
    for name, r in results.items():
        if cost not in r or "error" not in r:
            raise ValueError(f"results[{name!r}] needs {cost!r} and 'error', got {sorted(r)}")
        x = np.atleast_1d(_np(r[cost])).astype(float)
        y = np.atleast_1d(_np(r["error"])).astype(float)
        # Exact zeros (a solver that is its own reference) cannot sit on a log axis.
        y = np.where(y > 0, y, np.nan)
        ax.plot(x, y, "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    xlabel = "wall-clock time per solve (s)" if cost == "time" else "vector-field evaluations"
    ax.set(xlabel=xlabel, ylabel=error_label, title="Solver accuracy against cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def step_sizes(trace: SolverTrace, *, title: str | None = None,
               figsize: tuple[float, float] = (8.0, 5.0)) -> Figure:
    """The step sizes a solver chose across a sequence, and the steps per observation.

    **Arguments:**
    - `trace`: a [`SolverTrace`][liquidjax.inspect.SolverTrace] from
      [`solver_trace`][liquidjax.inspect.solver_trace] (one sequence).
    - `title`: optional title of the top panel.
    - `figsize`: figure size in inches.

    **Returns:** a Figure: step size against time (log scale; dotted lines at the observation
    times), and accepted/rejected steps per observation interval.

    **Example:**
    ```python
    plot.step_sizes(solver_trace(adaptive_cell, xs, timespans, max_steps=64))
    ```
    """
    ts, h = _np(trace.ts), _np(trace.step_sizes)
    if ts.ndim != 2:
        raise ValueError(f"expected a trace of one sequence (ts of 2 dims), got ts {ts.shape}")
    ok = np.isfinite(ts) & np.isfinite(h)
    obs = _np(trace.observation_times)
    fig, axes = _figure(2, 1, figsize=figsize, sharex=True)
    ax0, ax1 = axes[:, 0]
    for t in obs:
        ax0.axvline(t, color="0.8", lw=0.6, ls=":", zorder=0)
    ax0.plot(ts[ok], h[ok], ".", ms=4, color="tab:blue", label="accepted step")
    ax0.set_yscale("log")
    ax0.set(ylabel="step size Δh (time units)",
            title=title or "Step sizes chosen by the solver (dotted: observations)")
    ax0.grid(alpha=0.3)
    ax0.legend(fontsize=8)
    widths = np.diff(np.concatenate([[0.0], obs]))
    starts = obs - widths
    ax1.bar(starts, _np(trace.num_accepted), width=widths, align="edge", alpha=0.7,
            edgecolor="white", label="accepted")
    rej = _np(trace.num_rejected)
    if rej.any():
        ax1.bar(starts, rej, width=widths, align="edge", bottom=_np(trace.num_accepted),
                alpha=0.7, color="tab:red", edgecolor="white", label="rejected")
    ax1.set(xlabel=TIME_LABEL, ylabel="steps per interval", title="Steps per observation interval")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------------- dynamics
def _input_panel(ax: Axes, t: np.ndarray, x: np.ndarray, step: bool) -> None:
    x = x.reshape(len(t), -1)
    for i in range(x.shape[1]):
        ax.plot(t, x[:, i], drawstyle="steps-pre" if step else "default", lw=1.2,
                label=f"input {i}")
    ax.set(ylabel="input x")
    ax.grid(alpha=0.3)
    if x.shape[1] <= 6:
        ax.legend(fontsize=7, loc="upper right")


def _main_axes_below_input(x, tt: np.ndarray, figsize, height: float) -> tuple[Figure, Axes]:
    """A figure whose main axes sit under an input panel (when `x` is given), sharing time."""
    if x is None:
        fig, axes = _figure(figsize=figsize)
        return fig, axes[0, 0]
    fig, axes = _figure(2, 1, figsize=figsize, sharex=True, height_ratios=(1, height))
    _input_panel(axes[0, 0], tt, _np(x), step=True)
    axes[0, 0].set_title("Input")
    return fig, axes[1, 0]


def _shade(ax: Axes, regimes: Sequence[tuple[float, float, str]] | None) -> None:
    for k, (t0, t1, label) in enumerate(regimes or ()):
        ax.axvspan(t0, t1, color=f"C{k % 10}", alpha=0.08, lw=0)
        ax.annotate(label, ((t0 + t1) / 2, 0.98), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.7))


def time_constants(
    tau: Any,
    t: Any = None,
    *,
    x: Any = None,
    neurons: Sequence[int] | None = None,
    neuron_labels: Sequence[str] | None = None,
    regimes: Sequence[tuple[float, float, str]] | None = None,
    log: bool = True,
    figsize: tuple[float, float] = (8.0, 5.0),
) -> Figure:
    """The LTC system time constants ``τ_sys`` of neurons over one sequence.

    **Arguments:**
    - `tau`: ``(L, N)`` from [`system_time_constants`][liquidjax.inspect.system_time_constants].
    - `t`: ``(L,)`` observation times (e.g. ``cumsum(timespans)``); default the step index.
    - `x`: optional ``(L, I)`` inputs, drawn (held, as steps) in a panel above.
    - `neurons`: which neurons to draw (default all).
    - `neuron_labels`: one legend label per drawn neuron (default ``"neuron j"``).
    - `regimes`: optional ``(t_start, t_end, label)`` spans to shade, e.g. input regimes.
    - `log`: logarithmic τ axis.
    - `figsize`: figure size in inches.

    **Returns:** the Figure.

    **Example:**
    ```python
    plot.time_constants(tau, t, x=xs, regimes=[(0, 10, "quiet"), (10, 20, "driven")])
    ```
    """
    tau = _np(tau)
    if tau.ndim != 2:
        raise ValueError(f"expected tau of shape (time, neurons), got {tau.shape}")
    tt, tlabel = _times(t, tau.shape[0])
    idx = list(range(tau.shape[1])) if neurons is None else list(neurons)
    labels = list(neuron_labels) if neuron_labels is not None else [f"neuron {j}" for j in idx]
    if len(labels) != len(idx):
        raise ValueError(f"got {len(labels)} neuron labels for {len(idx)} neurons")
    fig, ax = _main_axes_below_input(x, tt, figsize, height=2.5)
    for j, label in zip(idx, labels):
        ax.plot(tt, tau[:, j], lw=1.2, label=label)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel=tlabel, ylabel="τ_sys = cm / (gleak + Σ g_syn)  (time units)",
           title="Liquid time constants τ_sys per neuron")
    ax.grid(alpha=0.3, which="both")
    if len(idx) <= 12:
        ax.legend(fontsize=7, ncol=2, loc="best")
    _shade(ax, regimes)
    return fig


def _neuron_groups(w: Wiring, n: int) -> list[tuple[int, int, str]]:
    """Contiguous runs of neurons of one type, as ``(first, last, type)``."""
    types = [w.get_type_of_neuron(i) for i in range(n)]
    groups, start = [], 0
    for i in range(1, n + 1):
        if i == n or types[i] != types[start]:
            groups.append((start, i - 1, types[start]))
            start = i
    return groups


def activity(
    states: Any,
    t: Any = None,
    *,
    wiring: Wiring | None = None,
    x: Any = None,
    label: str = "membrane potential v",
    title: str = "Neuron activity",
    regimes: Sequence[tuple[float, float, str]] | None = None,
    cmap: str = "RdBu_r",
    figsize: tuple[float, float] = (8.0, 5.0),
) -> Figure:
    """A heat-map of neuron activity (or any per-neuron quantity) over one sequence.

    **Arguments:**
    - `states`: ``(L, N)``, e.g. from [`hidden_states`][liquidjax.inspect.hidden_states] (a
      pytree state, e.g. mixed memory's ``(h, c)``, comes whole from it: pass one part) or
      ``τ_sys``, with `label` changed.
    - `t`: ``(L,)`` observation times (default the step index); cells are centred on them.
    - `wiring`: optional built [`Wiring`][liquidjax.wirings.Wiring]: neuron types are marked on
      the y axis (ncps order: motor neurons first, then command, then inter).
    - `x`: optional ``(L, I)`` inputs drawn in a panel above.
    - `label`: colour-bar label (the quantity and its unit).
    - `title`: title of the heat-map.
    - `regimes`: optional ``(t_start, t_end, label)`` spans marked above the map.
    - `cmap`: a diverging colour map (centred at zero) by default.
    - `figsize`: figure size in inches.

    **Returns:** the Figure.

    **Example:**
    ```python
    plot.activity(hidden_states(rnn, xs, timespans), np.cumsum(timespans), wiring=wiring)
    ```
    """
    s = _np(states)
    if s.ndim != 2:
        raise ValueError(
            f"expected states of shape (time, neurons), got {s.shape}; for a cell whose state "
            "is a pytree (hidden_states returns it whole), pass one part, e.g. hs[0]"
        )
    n_t, n = s.shape
    tt, tlabel = _times(t, n_t)
    fig, ax = _main_axes_below_input(x, tt, figsize, height=3)
    # Cell edges halfway between observation times.
    mid = (tt[1:] + tt[:-1]) / 2 if n_t > 1 else np.array([], float)
    first = tt[0] - (mid[0] - tt[0] if n_t > 1 else 0.5)
    last = tt[-1] + (tt[-1] - mid[-1] if n_t > 1 else 0.5)
    edges = np.concatenate([[first], mid, [last]])
    finite = s[np.isfinite(s)]
    if cmap == "RdBu_r":
        vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
        vmin, vmax = -(vmax or 1.0), (vmax or 1.0)
    else:
        vmin = vmax = None
    mesh = ax.pcolormesh(edges, np.arange(n + 1) - 0.5, s.T, cmap=cmap, vmin=vmin, vmax=vmax,
                         shading="flat")
    ax.set_ylim(n - 0.5, -0.5)
    fig.colorbar(mesh, ax=ax, label=label)
    ax.set(xlabel=tlabel, ylabel="neuron", title=title)
    if wiring is not None:
        if wiring.units != n:
            raise ValueError(f"the wiring has {wiring.units} neurons, states have {n}")
        for a, b, kind in _neuron_groups(wiring, n):
            if b < n - 1:
                ax.axhline(b + 0.5, color="black", lw=0.8)
            ax.annotate(kind, (1.0, (a + b) / 2), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    _shade(ax, regimes)
    return fig


def predictions(
    t: Any,
    targets: Any,
    preds: Any | dict[str, Any],
    *,
    inputs: Any = None,
    mask: Any = None,
    title: str = "Predictions against targets",
    ylabel: str = "value",
    figsize: tuple[float, float] = (8.0, 4.0),
) -> Figure:
    """Per-step predictions of one sequence against its targets (regression).

    **Arguments:**
    - `t`: ``(L,)`` observation times.
    - `targets`: ``(L,)`` or ``(L, 1)`` targets.
    - `preds`: ``(L,)`` predictions, or ``{label: predictions}`` for several models.
    - `inputs`: optional ``(L,)`` observed (e.g. noisy) inputs, drawn as points.
    - `mask`: optional boolean ``(L,)``: only valid steps are drawn.
    - `title`, `ylabel`: labels.
    - `figsize`: figure size in inches.

    **Returns:** the Figure.

    **Example:**
    ```python
    plot.predictions(np.cumsum(dts), y, {"LTC": y_ltc, "CfC": y_cfc}, inputs=x)
    ```
    """
    tt = _np(t)
    keep = np.ones(tt.shape, bool) if mask is None else _np(mask).astype(bool)
    fig, axes = _figure(figsize=figsize)
    ax = axes[0, 0]
    if inputs is not None:
        ax.plot(tt[keep], _np(inputs).reshape(len(tt))[keep], ".", color="0.6", ms=4,
                label="observed input")
    ax.plot(tt[keep], _np(targets).reshape(len(tt))[keep], "-", color="black", lw=2,
            label="target")
    many = preds if isinstance(preds, dict) else {"prediction": preds}
    for name, p in many.items():
        ax.plot(tt[keep], _np(p).reshape(len(tt))[keep], "--", lw=1.5, label=name)
    ax.set(xlabel=TIME_LABEL, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------------- confusion
def confusion_matrix(
    matrix: Any,
    class_names: Sequence[str] | None = None,
    *,
    normalize: bool = True,
    title: str = "Confusion matrix",
    figsize: tuple[float, float] = (6.0, 5.5),
) -> Figure:
    """A confusion matrix as an annotated heat-map.

    **Arguments:**
    - `matrix`: ``(C, C)`` counts, rows = true class, columns = predicted class (e.g. from
      [`liquidjax.inspect.confusion_matrix`][liquidjax.inspect.confusion_matrix]).
    - `class_names`: tick labels (default ``0 … C−1``).
    - `normalize`: show each row as fractions of that class (recall on the diagonal).
    - `title`: the title (the overall accuracy is appended).
    - `figsize`: figure size in inches.

    **Returns:** the Figure.

    **Example:**
    ```python
    plot.confusion_matrix(inspect.confusion_matrix(y, y_hat, 10), CIFAR10_CLASSES)
    ```
    """
    m = _np(matrix).astype(float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square (C, C) matrix, got shape {m.shape}")
    c = m.shape[0]
    names = [str(i) for i in range(c)] if class_names is None else list(class_names)
    if len(names) != c:
        raise ValueError(f"got {len(names)} class names for {c} classes")
    total = m.sum()
    acc = np.trace(m) / total if total else math.nan
    shown = m / np.maximum(m.sum(1, keepdims=True), 1e-12) if normalize else m
    fig, axes = _figure(figsize=figsize)
    ax = axes[0, 0]
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, label="fraction of true class" if normalize else "examples",
                 shrink=0.8)
    ax.set_xticks(range(c), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                  if max(map(len, names)) > 2 else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{title} (accuracy {acc:.1%}, {int(total)} examples)")
    if c <= 12:
        hi = 1.0 if normalize else max(float(np.nanmax(shown)), 1.0)
        for i in range(c):
            for j in range(c):
                v = shown[i, j]
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 * hi else "black")
    return fig
