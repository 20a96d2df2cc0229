"""A model reduced to one example's pure step on a flat state vector (:class:`_StepPlan`), the
shapes of its arguments, and the manifest every export writes to describe it."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from .._streaming import AbstractStreaming
from .._version import __version__
from ..cells._base import AbstractCell, portable_cells

FORMAT_VERSION = 1
"""Version of the exported artifacts' layout (the files and the manifest's fields)."""


@dataclasses.dataclass(frozen=True)
class _StepPlan:
    """A model reduced to one example's pure step on a flat state vector."""

    model_name: str
    fn: Callable[[Array, Array, Array], tuple[Array, Array]]  # (S,), (I,), () -> (O,), (S,)
    init: np.ndarray  # (S,)
    unravel: Callable[[Array], PyTree[Array]]
    input_size: int
    output_size: int
    dtype: np.dtype
    cells: tuple[AbstractCell, ...]
    fixed_dt: float | None = None  # a dt fixed when built (the step's dt argument then unused)

    @property
    def description(self) -> str:
        """The model and its cells, as the errors name them: ``"LiquidRNN (LTC)"``."""
        return f"{self.model_name} ({', '.join(type(c).__name__ for c in self.cells)})"


def _plan(model: Any, where: str = "stepper", dt: Any = None, *, poison: bool = False
          ) -> _StepPlan:
    """The per-example step of a model of the streaming contract (a cell, a ``LiquidRNN``, a
    ``SequenceClassifier``: :class:`liquidjax._streaming.AbstractStreaming`); `where`: the
    public function asking (named in the errors).

    With a fixed `dt` (a positive number) the step advances across that ``dt`` whatever its
    ``dt`` argument: the value is a constant of the traced step, so :func:`_folded` computes
    everything that depends on the parameters and ``dt`` alone once (a Liquid-S4 layer's
    discretised ``Ā``, ``B̄``). The steppers refuse a ``dt`` argument that differs from it
    before the call; with `poison` (the exported graphs, which cannot raise) such a step returns
    NaN output and state instead."""
    # Plain JAX ops only: no compiled-kernel custom call (jax.export refuses those) and no custom
    # primitive (jax2onnx converts standard ones).
    model = portable_cells(model)
    if not isinstance(model, AbstractStreaming):
        raise ValueError(  # noqa: TRY004 - the library's one error type for bad arguments
            f"cannot build a stepper for {type(model).__name__}: expected a liquid cell "
            "(liquidjax.cells.AbstractCell), a liquidjax.LiquidRNN or a "
            "liquidjax.models.SequenceClassifier"
        )
    try:
        spec = model.stream_spec()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    state0 = model.stream_init()
    step_tree = model.stream_step
    in_size, out_size, cells = spec
    leaves = jax.tree_util.tree_leaves(state0)
    dtypes = {leaf.dtype for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError(
            f"{type(model).__name__}: the state mixes dtypes {sorted(map(str, dtypes))}; "
            "a stepper keeps the state as one flat array of one dtype"
        )
    flat0, unravel = ravel_pytree(state0)
    fixed = _check_fixed_dt(dt, flat0.dtype, where)

    def fn(flat, x, dt):
        # A fixed dt enters as a constant (a closed-over array): folded with the parameters.
        out, new = step_tree(unravel(flat), x, dt if fixed is None else jnp.asarray(fixed))
        new = ravel_pytree(new)[0]
        if fixed is not None and poison:  # never a step across a stale discretisation
            same = dt == fixed
            out, new = (jnp.where(same, a, jnp.nan) for a in (out, new))
        return out, new

    return _StepPlan(
        model_name=type(model).__name__, fn=fn, init=np.asarray(flat0), unravel=unravel,
        input_size=int(in_size), output_size=int(out_size), dtype=np.dtype(flat0.dtype),
        cells=cells, fixed_dt=None if fixed is None else float(fixed),
    )


def _check_fixed_dt(dt: Any, dtype: Any, where: str) -> np.ndarray | None:
    """A fixed ``dt`` as a NumPy scalar of the state's dtype (``None``: ``dt`` per step)."""
    if dt is None:
        return None
    ok = isinstance(dt, (int, float, np.integer, np.floating)) and not isinstance(dt, bool)
    value = np.asarray(dt, dtype) if ok else None
    if value is None or not (np.isfinite(value) and value > 0):
        raise ValueError(
            f"{where}: dt must be None (the elapsed time given at every step) or one positive, "
            f"finite number (every step the same: a fixed-rate stream), got {dt!r}"
        )
    return value


def _batched(fn: Callable, batch_shape: tuple[int, ...]) -> Callable:
    for _ in batch_shape:
        fn = jax.vmap(fn)
    return fn


def _sequence_fn(fn: Callable) -> Callable:
    """One example's whole sequence: the step scanned over ``T`` observations."""

    def sequence(flat, xs, dts):
        def body(s, x_dt):
            out, s = fn(s, *x_dt)
            return s, out

        new, outs = jax.lax.scan(body, flat, (xs, dts))
        return outs, new

    return sequence


def _check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in batch_shape)
    except TypeError:
        raise ValueError(f"batch_shape must be a tuple of ints, got {batch_shape!r}") from None
    if any(d < 1 for d in shape) or any(isinstance(d, bool) for d in batch_shape):
        raise ValueError(f"batch_shape must hold positive ints, got {batch_shape!r}")
    return shape


def _step_specs(plan: _StepPlan, batch_shape: tuple[int, ...]):
    s = jax.ShapeDtypeStruct
    return (s(batch_shape + (plan.init.size,), plan.dtype),
            s(batch_shape + (plan.input_size,), plan.dtype),
            s(batch_shape, plan.dtype))


def _sequence_specs(plan: _StepPlan, batch_shape: tuple[int, ...], length: int):
    s = jax.ShapeDtypeStruct
    return (s(batch_shape + (plan.init.size,), plan.dtype),
            s(batch_shape + (length, plan.input_size), plan.dtype),
            s(batch_shape + (length,), plan.dtype))


def _describe(name: str, spec: Any) -> dict[str, Any]:
    return {"name": name, "shape": list(spec.shape), "dtype": str(np.dtype(spec.dtype))}


def _signature(plan, batch_shape, length=None) -> dict[str, Any]:
    bs = tuple(batch_shape)
    if length is None:
        ins = _step_specs(plan, bs)
        outs = (jax.ShapeDtypeStruct(bs + (plan.output_size,), plan.dtype), ins[0])
        return {"inputs": [_describe(n, s) for n, s in zip(("state", "x", "dt"), ins)],
                "outputs": [_describe(n, s) for n, s in zip(("output", "new_state"), outs)]}
    ins = _sequence_specs(plan, bs, length)
    outs = (jax.ShapeDtypeStruct(bs + (length, plan.output_size), plan.dtype), ins[0])
    return {"inputs": [_describe(n, s) for n, s in zip(("state", "xs", "dts"), ins)],
            "outputs": [_describe(n, s) for n, s in zip(("outputs", "new_state"), outs)]}


def _manifest(plan: _StepPlan, fmt: str, batch_shape, functions: dict) -> dict[str, Any]:
    return {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "liquidjax_version": __version__,
        "jax_version": metadata.version("jax"),
        "model": plan.model_name,
        "input_size": plan.input_size,
        "output_size": plan.output_size,
        "state_size": int(plan.init.size),
        "dtype": str(plan.dtype),
        "batch_shape": list(batch_shape),
        "initial_state": [float(v) for v in plan.init],
        "fixed_dt": plan.fixed_dt,
        "calling_convention": "step(state, x, dt) -> (output, new_state); "
                              "sequence(state, xs, dts) -> (outputs, new_state)",
        "functions": functions,
    }


@contextlib.contextmanager
def _output_folder(path: Any) -> Iterator[Path]:
    """The folder an export writes, created if needed; if the export fails, the folders this
    created (the highest one missing before) are removed: a failed export leaves nothing."""
    out = Path(path)
    created = None
    for folder in (out, *out.parents):
        if folder.exists():
            break
        created = folder
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _check_length(seq_len: Any) -> int | None:
    if seq_len is None:
        return None
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int (or None: step only), got {seq_len!r}")
    return int(seq_len)
