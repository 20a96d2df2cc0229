"""Export to dependency-free C99 (:func:`to_c`): the step's jaxpr translated by
:mod:`liquidjax._cgen`, wrapped in files by :mod:`liquidjax._cbuild`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._fold import _NO_ONNX, _folded
from .._step import (
    _batched,
    _check_batch_shape,
    _manifest,
    _output_folder,
    _plan,
    _signature,
    _step_specs,
    _StepPlan,
)
from . import _cbuild, _cgen


def to_c(
    model: Any,
    path: str | Path,
    *,
    batch_shape: Sequence[int] = (),
    dtype: Any = None,
    name: str = "liquidjax",
    dt: float | None = None,
) -> dict[str, Any]:
    """Write the model's step as dependency-free C99: for a microcontroller, or any C program.

    Writes the folder `path` with ``<name>.h``, ``<name>.c`` and ``manifest.json`` (as
    :func:`to_stablehlo`). The header declares

    ```c
    void <name>_init_state(float *state);
    int <name>_step(const float *state, const float *x, const float *dt,
                    float *output, float *new_state);
    void <name>_step_unchecked(const float *state, const float *x, const float *dt,
                               float *output, float *new_state);
    ```

    (``double`` for a float64 model). ``<name>_step`` first checks every ``dt`` (positive and
    finite) and ``x`` (finite), with bit tests that ``-ffast-math`` keeps: on bad input it
    returns ``<NAME>_BAD_DT`` (1) or ``<NAME>_BAD_X`` (2) and writes nothing (a state updated in
    place stays the last good one); otherwise it steps and returns ``<NAME>_OK`` (0).
    ``<name>_step_unchecked`` is the step alone. Both follow the calling convention of
    :func:`stepper`: ``dt``
    one per example, every array row-major with ``batch_shape`` first, ``new_state`` may be
    ``state`` itself. ``<NAME>_STATE_SIZE``, ``<NAME>_INPUT_SIZE``, ``<NAME>_OUTPUT_SIZE`` and
    ``<NAME>_BATCH`` give the sizes. The weights are ``static const`` arrays (in flash on a
    microcontroller); intermediate values live in static scratch arrays reused once dead (no
    ``malloc``; the header states both sizes), so the step is not reentrant. Only ``<math.h>``
    and ``<stdint.h>`` are included; link with ``-lm``.

    The code is generated from the step's jaxpr (the one :func:`stepper` compiles), equation by
    equation, after folding the computations on the parameters alone: loops for the
    elementwise operations, reductions and matrix products, a ``for`` loop for the LTC's
    ``ode_unfolds`` semi-implicit steps.

    **Arguments:**
    - `model`: as :func:`stepper`. Its step must have a fixed size: an LTC integrated by a
      diffrax solver (its ``diffeqsolve`` is a ``while`` loop with host callbacks) is refused
      with a ``ValueError`` naming the cell and what it contains (use the default
      ``FusedSemiImplicit`` solver, or :func:`to_stablehlo` / the XLA stepper).
    - `path`: the folder to write (created if needed, and removed again if the export fails;
      existing files are replaced).
    - `batch_shape`: leading batch dimensions of every argument (fixed sizes).
    - `dtype`: ``float32`` or ``float64`` to cast the parameters to first (default: the model's
      own dtype).
    - `name`: the prefix of the C names and the files (a C identifier).
    - `dt`: ``None`` (default): ``dt`` is an argument of every step; a positive number: a
      fixed-rate stream, as :func:`stepper`'s `dt` (what depends on the parameters and ``dt``
      alone is computed at export, e.g. a Liquid-S4 layer's discretisation). The functions keep
      their ``dt`` argument: ``<name>_step`` returns ``<NAME>_BAD_DT`` for any other value
      (``<NAME>_FIXED_DT``), ``<name>_step_unchecked`` ignores it.

    **Returns:** the manifest (a dict).

    **Example:**
    ```python
    liquidjax.export.to_c(model, "policy_c", name="policy")
    # cc -O2 -c policy_c/policy.c   and in the controller:
    #   if (policy_step(state, x, &dt, action, state) != POLICY_OK) { /* bad x or dt */ }
    ```
    """
    name = _cbuild.check_name(name)
    bs = _check_batch_shape(batch_shape)
    if dtype is not None:
        model = _cast(model, dtype)
    plan = _plan(model, "to_c", dt)
    fn, _ = _c_step(plan, bs, name)
    header, source = _c_files(plan, bs, fn, name)
    with _output_folder(path) as out:
        files = {f"{name}.h": header, f"{name}.c": source}
        for fname, text in files.items():
            (out / fname).write_text(text)
        functions = {"step": {"files": list(files), "symbol": f"{name}_step",
                              "init_state_symbol": f"{name}_init_state",
                              "scratch_bytes": fn.scratch_bytes,
                              "constant_bytes": fn.constant_bytes, **_signature(plan, bs)}}
        manifest = _manifest(plan, "liquidjax.c", bs, functions)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest


def _c_step(plan: _StepPlan, batch_shape: tuple[int, ...],
            name: str) -> tuple[_cgen.CFunction, bool]:
    """The step translated to C, ``<name>_step_unchecked(state, x, dt, output, new_state)``
    (:func:`liquidjax._cbuild.files` adds the checking ``<name>_step``), and whether
    its output is its new state (a cell without readout)."""
    specs = _step_specs(plan, batch_shape)
    folded = _folded(_batched(plan.fn, batch_shape), specs, distinct=False, merge_dots=True)
    closed = jax.make_jaxpr(folded)(*specs)
    try:
        fn = _cgen.translate(closed, f"{name}_step_unchecked", ("state", "x", "dt"),
                             ("output", "new_state"))
    except _cgen.Unsupported as e:
        what = "; ".join(f"{p} ({_NO_ONNX[p]})" if p in _NO_ONNX else p for p in e.primitives)
        raise ValueError(
            f"cannot generate C for {plan.description}: its step contains {what}"
            f"{f' ({e.detail})' if e.detail else ''}, which has no C translation. Use a cell "
            "with a fixed-size step (CfC, WiredCfC, LTC with the default FusedSemiImplicit "
            "solver), or the XLA stepper (stepper(..., backend='xla')) / to_stablehlo"
        ) from None
    outvars = closed.jaxpr.outvars
    return fn, outvars[0] is outvars[1]


def _c_files(plan: _StepPlan, batch_shape: tuple[int, ...], fn: _cgen.CFunction,
             name: str) -> tuple[str, str]:
    return _cbuild.files(fn, name=name, model=plan.description, dtype=plan.dtype,
                         batch_shape=batch_shape, input_size=plan.input_size,
                         output_size=plan.output_size, init=plan.init,
                         fixed_dt=plan.fixed_dt)


def _cast(model: Any, dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError("dtype=float64 needs JAX's 64-bit mode: jax.config.update("
                         "'jax_enable_x64', True), or call inside `with jax.enable_x64(True)`")
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
