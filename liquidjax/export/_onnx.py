"""Export to ONNX through ``jax2onnx`` (:func:`to_onnx`)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._fold import _folded, _NotExportable
from ._step import (
    _batched,
    _check_batch_shape,
    _check_length,
    _manifest,
    _output_folder,
    _plan,
    _sequence_fn,
    _sequence_specs,
    _signature,
    _step_specs,
)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    # The converter logs a line per intermediate value whose type it does not record.
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _time_loop(step_fn: Callable, batch_dims: int) -> Callable:
    """``sequence(state, xs, dts)``: :func:`_sequence_fn` of an already batched, folded step
    (whose time axis follows the batch axes)."""
    time_major = _sequence_fn(step_fn)

    def sequence(state, xs, dts):
        outs, new = time_major(state, jnp.moveaxis(xs, batch_dims, 0),
                               jnp.moveaxis(dts, batch_dims, 0))
        return jnp.moveaxis(outs, 0, batch_dims), new

    return sequence


def _drop_unused_initializers(path: Path) -> None:
    """Remove initializers that no node reads (the converter leaves copies of the loop body's
    constants in the outer graph; ONNX Runtime would warn about each)."""
    import onnx

    model = onnx.load(str(path))

    def used_names(graph) -> set[str]:
        names = {o.name for o in graph.output}
        for node in graph.node:
            names.update(node.input)
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    names |= used_names(sub)
        return names

    def prune(graph) -> None:
        used = used_names(graph)
        keep = [t for t in graph.initializer if t.name in used]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    prune(sub)

    prune(model.graph)
    onnx.save(model, str(path))


def _require_onnx():
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"to_onnx needs the optional packages onnx and jax2onnx ({e}): "
            "pip install 'liquidjax[export]'"
        ) from e


def to_onnx(
    model: Any,
    path: str | Path,
    *,
    seq_len: int | None = None,
    batch_shape: Sequence[int] = (),
    opset: int = 21,
    dt: float | None = None,
) -> dict[str, Any]:
    """Export the model's step (and its whole-sequence function) as ONNX graphs.

    Writes the folder `path` with ``step.onnx`` (inputs ``state``, ``x``, ``dt``; outputs
    ``output``, ``new_state``), ``sequence.onnx`` when `seq_len` is given (inputs ``state``,
    ``xs``, ``dts``; outputs ``outputs``, ``new_state``) and ``manifest.json`` (as
    :func:`to_stablehlo`). The calling convention is that of :func:`stepper`; the initial state
    is in the manifest (zeros for every liquidjax cell).

    The graphs are converted by ``jax2onnx`` from the step's jaxpr after inlining the custom
    derivative wrappers (the fused LTC kernel's hand-written VJP), unrolling the LTC's
    ``ode_unfolds`` semi-implicit steps and folding the parameter-only computations; the
    sequence graph is an ONNX ``Loop`` over ``seq_len`` observations around the same step.
    Parameters become ONNX initializers.

    **Arguments:**
    - `model`: as :func:`stepper`. Cells whose step has no fixed-size graph are refused with a
      ``ValueError`` naming the cell: an LTC integrated by a diffrax solver (its
      ``diffeqsolve`` is a ``while`` loop, adaptive or not; use the default
      ``FusedSemiImplicit`` solver, or export to StableHLO).
    - `path`: the folder to write (created if needed).
    - `seq_len`: observations ``T`` of the sequence graph (``None``: step only).
    - `batch_shape`: leading batch dimensions (fixed sizes).
    - `opset`: ONNX opset version.
    - `dt`: ``None`` (default) or a fixed ``dt``, as :func:`to_stablehlo`'s (any other ``dt``
      gives NaN).

    **Returns:** the manifest (a dict).

    **Example:**
    ```python
    liquidjax.export.to_onnx(model, "policy_onnx")
    sess = onnxruntime.InferenceSession("policy_onnx/step.onnx")
    y, state = sess.run(None, {"state": state, "x": x, "dt": np.float32(0.1)})
    ```
    """
    _require_onnx()
    from jax2onnx import to_onnx as j2o

    plan = _plan(model, "to_onnx", dt, poison=True)
    bs = _check_batch_shape(batch_shape)
    length = _check_length(seq_len)
    if plan.dtype != np.float32:
        raise ValueError(
            f"to_onnx exports float32 models; {plan.model_name} has {plan.dtype} parameters "
            "(cast them with jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), model))"
        )
    with _output_folder(path) as out:
        step_specs = _step_specs(plan, bs)
        try:
            step_fn = _folded(_batched(plan.fn, bs), step_specs, onnx=True)
        except _NotExportable as e:
            raise ValueError(
                f"cannot export {plan.description} to ONNX: its step contains {e}. "
                "Use a cell with a fixed-size step (CfC, WiredCfC, LTC with the default "
                "FusedSemiImplicit solver and constant steps), or to_stablehlo"
            ) from None
        todo = [("step", step_fn, step_specs, None, ("state", "x", "dt"), ("output", "new_state"))]
        if length is not None:
            # The time loop stays a loop (an ONNX Loop around the step's graph): the graph's size
            # does not grow with seq_len.
            todo.append(("sequence", _time_loop(step_fn, len(bs)),
                         _sequence_specs(plan, bs, length), length, ("state", "xs", "dts"),
                         ("outputs", "new_state")))
        functions = {}
        for name, fn, specs, n, in_names, out_names in todo:
            fname = f"{name}.onnx"
            with _quiet_loggers("onnx_ir", "jax2onnx"):
                j2o(fn, list(specs), model_name=f"liquidjax_{plan.model_name}_{name}",
                    opset=opset, input_names=list(in_names), output_names=list(out_names),
                    return_mode="file", output_path=str(out / fname))
            _drop_unused_initializers(out / fname)
            functions[name] = {"file": fname, "opset": opset, **_signature(plan, bs, n)}
        manifest = _manifest(plan, "liquidjax.onnx", bs, functions)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest
