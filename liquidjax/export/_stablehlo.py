"""Export to StableHLO with ``jax.export`` (:func:`to_stablehlo`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from ._fold import _folded
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


def to_stablehlo(
    model: Any,
    path: str | Path,
    *,
    seq_len: int | None = None,
    batch_shape: Sequence[int] = (),
    platforms: Sequence[str] | None = None,
    dt: float | None = None,
) -> dict[str, Any]:
    """Serialise the model's step (and its whole-sequence function) with ``jax.export``.

    Writes the folder `path` with

    * ``step.jaxexport`` — ``step(state, x, dt) -> (output, new_state)`` (see :func:`stepper`);
    * ``sequence.jaxexport`` (when `seq_len` is given) —
      ``sequence(state, xs, dts) -> (outputs, new_state)`` over ``seq_len`` observations;
    * ``manifest.json`` — format version, versions of liquidjax and jax, every input's and
      output's name, shape and dtype, the initial state of one example (``initial_state``;
      broadcast it to ``batch_shape``).

    The files are ``jax.export`` serialisations (StableHLO with the parameters as constants):
    any process with a compatible JAX runs them without liquidjax —
    ``jax.export.deserialize(open(p, "rb").read()).call(state, x, dt)``.

    **Arguments:**
    - `model`: as :func:`stepper`.
    - `path`: the folder to write (created if needed; existing files are replaced).
    - `seq_len`: length ``T`` of the exported whole-sequence function (``None``: step only).
    - `batch_shape`: leading batch dimensions of every argument.
    - `platforms`: the platforms to lower for (default: this machine's backend), e.g.
      ``("cpu", "cuda")``.
    - `dt`: ``None`` (default): ``dt`` is an input of every step; a positive number: a
      fixed-rate stream, as :func:`stepper`'s `dt` (what depends on the parameters and ``dt``
      alone is computed once, at export). The functions keep their ``dt`` input; a step given
      any other ``dt`` returns NaN (output and state). The manifest's ``fixed_dt`` records it.

    **Returns:** the manifest (a dict, also written as ``manifest.json``).
    """
    plan = _plan(model, "to_stablehlo", dt, poison=True)
    bs = _check_batch_shape(batch_shape)
    length = _check_length(seq_len)
    with _output_folder(path) as out:
        kw = {} if platforms is None else {"platforms": tuple(platforms)}
        step_fn = _batched(plan.fn, bs)
        todo = [("step", step_fn, _step_specs(plan, bs), None)]
        if length is not None:
            seq_fn = _batched(_sequence_fn(plan.fn), bs)
            todo.append(("sequence", seq_fn, _sequence_specs(plan, bs, length), length))
        functions = {}
        for name, fn, specs, n in todo:
            try:
                exported = jax.export.export(jax.jit(_folded(fn, specs)), **kw)(*specs)
            except Exception as e:  # re-raised with the model named
                hint = ""
                if "callback" in str(e):
                    hint = (". The step checks values at run time with host callbacks "
                            "(eqx.error_if, e.g. inside diffrax's diffeqsolve), which jax.export "
                            "cannot serialise: set the environment variable EQX_ON_ERROR=nan "
                            "before importing liquidjax to export it with NaN outputs on failure "
                            "instead")
                raise ValueError(
                    f"cannot export the {name} of {plan.description} to StableHLO: "
                    f"{type(e).__name__}: {e}{hint}"
                ) from e
            fname = f"{name}.jaxexport"
            (out / fname).write_bytes(exported.serialize())
            functions[name] = {
                "file": fname,
                "platforms": list(exported.platforms),
                "calling_convention_version": exported.calling_convention_version,
                **_signature(plan, bs, n),
            }
        manifest = _manifest(plan, "liquidjax.stablehlo", bs, functions)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest
