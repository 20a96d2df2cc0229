"""Compiled CPU kernels, called from JAX through the XLA FFI (``jax.ffi``).

Two C++ sources, one shared library:

* ``ltc_cpu.cc``: the LTC's fused semi-implicit step, forward and backward, for a batch held
  batch-minor (see :mod:`liquidjax.cells._ltc_batched`, which lowers to it on CPU and to its
  pure-JAX reference everywhere else);
* ``cfc_cpu.cc``: the CfC's recurrence over a held-input sequence (with or without mixed
  memory), forward and backward, for a batch held batch-major (see
  :mod:`liquidjax.cells._cfc_sequence`, likewise);

and ``common.h``, what they share. The shared library is built by
``python -m liquidjax._native`` — which ``make`` runs when it sets up the environment — with the
system's C++ compiler (``$CXX``, else ``c++``, else ``g++``) against the headers JAX ships, next
to the source (or in ``$XDG_CACHE_HOME/liquidjax`` when the package folder is read-only), by
:mod:`liquidjax._clib`. Its name carries a hash of the sources, the flags, the jaxlib version and
the CPU's feature flags (it is built with ``-march=native``), so an edit, an upgrade or another
machine rebuilds it, and the build of the older ones is removed.

Under data parallelism each device runs the kernels on its own rows of the batch: a step traced
inside ``jax.set_mesh(mesh)`` (:meth:`liquidjax.train.DataParallel.context`), ``mesh`` having the
axis :data:`DATA_AXIS`, wraps every kernel call in a ``jax.shard_map`` over that axis (the
weights replicated, their gradients summed over the devices). XLA does not split a custom call
by itself: without the context mesh, every device would run the whole batch's kernel. With
several processes (``jax.distributed``) each process computes its own devices' rows only.

If it is missing at first use it is built then (a couple of seconds). If it cannot be built (no
compiler), the LTC and the CfC run their pure-JAX code — the same numbers, slower — and one
:class:`NativeKernelWarning` says why. ``LIQUIDJAX_NATIVE=0`` turns the compiled kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from pathlib import Path

import jax
import jax.ffi
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.sharding import PartitionSpec

from .. import _clib

HERE = Path(__file__).parent
SOURCES = (HERE / "ltc_cpu.cc", HERE / "cfc_cpu.cc")
HEADERS = (HERE / "common.h",)
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17")
TARGETS = {"liquidjax_ltc_forward": "LiquidjaxLtcForward",
           "liquidjax_ltc_backward": "LiquidjaxLtcBackward",
           "liquidjax_cfc_forward": "LiquidjaxCfcForward",
           "liquidjax_cfc_backward": "LiquidjaxCfcBackward"}
# The CfC backbone activations the kernel computes, by the id it takes (cfc_cpu.cc, Activation).
CFC_ACTIVATIONS = ("lecun_tanh", "silu", "relu", "tanh", "gelu")
LIBRARY = "_cpu_kernels"


class NativeKernelWarning(RuntimeWarning):
    """The compiled kernels could not be built or loaded; the pure-JAX code runs instead."""


def _sources() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in SOURCES + HEADERS}


def _folders() -> list[Path]:
    """Where the library is built: beside the sources, else (read-only) the cache folder."""
    return [HERE, _clib.cache_dir()]


def build(verbose: bool = False) -> Path:
    """Compile the kernels (if not already built for these sources, flags, jaxlib and CPU; the
    builds of older ones are removed, :mod:`liquidjax._clib`) and return the library's path.
    Raises ``RuntimeError`` with the compiler's message if it fails."""
    try:
        return _clib.build(LIBRARY, _sources(), [p.name for p in SOURCES], language="c++",
                           flags=(*FLAGS, f"-I{jax.ffi.include_dir()}"), folders=_folders(),
                           extra=jaxlib.__version__.encode(), verbose=verbose)
    except RuntimeError as e:
        raise RuntimeError(f"building the CPU kernels failed: {e}") from None


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    if os.environ.get("LIQUIDJAX_NATIVE", "1") == "0":
        return None
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
    except (RuntimeError, OSError) as e:
        warnings.warn(
            f"liquidjax: the compiled CPU kernels for the LTC and the CfC are unavailable ({e}); "
            "the pure-JAX code runs instead (same numbers, slower). Set LIQUIDJAX_NATIVE=0 to "
            "silence.",
            NativeKernelWarning, stacklevel=3)
        return None
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    return lib


def available() -> bool:
    """Whether the compiled CPU kernels are built and registered (building them if needed)."""
    return _load() is not None


def _require() -> None:
    if _load() is None:
        raise RuntimeError("the compiled CPU kernels are unavailable (see the NativeKernelWarning)")


def on_cpu(native, portable, *args):
    """``native(*args)`` (a compiled kernel) when lowering for a CPU with the kernels built,
    ``portable(*args)`` (its JAX definition) elsewhere (``jax.lax.platform_dependent``).
    Differentiating ``native`` differentiates ``portable``, so that derivatives through a
    hand-written VJP that calls a kernel (higher-order ones) still work."""
    if not available():
        return portable(*args)
    native = jax.custom_jvp(native)
    native.defjvp(lambda primals, tangents: jax.jvp(portable, primals, tangents))
    return jax.lax.platform_dependent(*args, cpu=native, default=portable)


# The mesh axis a batch is split over under data parallelism (liquidjax.train.DataParallel's).
DATA_AXIS = "data"
SUM = "sum"  # an output summed over the batch (a weight gradient): summed over the shards too


def _shards(batch: int) -> int:
    """Over how many shards of the batch a kernel runs: the size of the context mesh's
    :data:`DATA_AXIS` (``jax.set_mesh``; 1 without one, inside a ``shard_map`` over it already,
    or when it does not divide the batch)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names or DATA_AXIS in mesh.manual_axes:
        return 1
    n = mesh.shape[DATA_AXIS]
    return n if batch % n == 0 else 1


def _per_shard(call, operands, in_axes, out_axes):
    """``call(*operands)`` (a kernel: arrays in, a tuple of arrays out), on every shard of the
    batch under data parallelism: with a context mesh whose :data:`DATA_AXIS` divides the batch,
    a ``jax.shard_map`` over it, so that XLA runs one kernel per device on its rows (an FFI call
    that is not split is run whole on every device). ``in_axes``: each operand's batch axis, or
    ``None`` (shared: the weights, or ``None`` itself); ``out_axes``: each output's batch axis,
    ``None`` (no batch axis, the same on every shard) or :data:`SUM` (summed over the batch: the
    shards' sums are summed, ``psum``)."""
    batch = next(a.shape[d] for a, d in zip(operands, in_axes) if a is not None and d is not None)
    if _shards(batch) == 1:
        return call(*operands)
    given = [i for i, a in enumerate(operands) if a is not None]

    def spec(axis):
        return PartitionSpec() if axis in (None, SUM) else PartitionSpec(*[None] * axis, DATA_AXIS)

    def body(*args):
        full = [None] * len(operands)
        for i, a in zip(given, args):
            full[i] = a
        outs = call(*full)
        return tuple(jax.lax.psum(o, DATA_AXIS) if ax == SUM else o
                     for o, ax in zip(outs, out_axes))

    sharded = jax.shard_map(body, in_specs=tuple(spec(in_axes[i]) for i in given),
                            out_specs=tuple(map(spec, out_axes)), axis_names={DATA_AXIS},
                            check_vma=False)
    return sharded(*(operands[i] for i in given))


def _indices(layout):
    r, s = layout.recurrent, layout.sensory
    return tuple(jnp.asarray(a, jnp.int32) for a in (r.pre, r.posts, s.pre, s.posts))


def _attrs(unfolds, epsilon):
    return dict(unfolds=np.int64(unfolds), epsilon=np.float64(epsilon))


def ltc_forward(p, x, v0, dt, *, layout, unfolds: int, epsilon: float, keep: bool = True):
    """The batched forward (``x (I, B)``, ``v0 (N, B)``, ``dt (B,)``) → ``(v, vs, dens)``, as
    :func:`liquidjax.cells._ltc_sparse._forward`; with ``keep=False`` only ``v``. Per shard of
    the batch under data parallelism (:func:`_per_shard`)."""
    _require()
    k = 1 if keep else 0

    def call(x, v0, dt, *p):
        n, b = v0.shape
        sds = functools.partial(jax.ShapeDtypeStruct, dtype=v0.dtype)
        out = (sds((n, b)), sds((k * (unfolds + 1), n, b)), sds((k * unfolds, n, b)))
        ffi = jax.ffi.ffi_call("liquidjax_ltc_forward", out, vmap_method="sequential")
        return ffi(*p, *_indices(layout), x, v0, dt, **_attrs(unfolds, epsilon))

    res = _per_shard(call, (x, v0, dt, *p), (1, 1, 0) + (None,) * len(p), (1, 2, 2))
    return res if keep else res[0]


def ltc_backward(p, x, dt, vs, dens, g, *, layout, unfolds: int, epsilon: float):
    """The batched backward → ``(parameter gradients summed over the batch, dx, dv0, ddt)``. Per
    shard of the batch under data parallelism (:func:`_per_shard`; the gradients summed over
    the shards)."""
    _require()

    def call(x, dt, vs, dens, g, *p):
        sds = functools.partial(jax.ShapeDtypeStruct, dtype=g.dtype)
        out = tuple(sds(a.shape) for a in p) + (sds(x.shape), sds(g.shape), sds(dt.shape))
        ffi = jax.ffi.ffi_call("liquidjax_ltc_backward", out, vmap_method="sequential")
        return ffi(*p, *_indices(layout), x, dt, vs, dens, g, **_attrs(unfolds, epsilon))

    res = _per_shard(call, (x, dt, vs, dens, g, *p), (1, 0, 2, 2, 1) + (None,) * len(p),
                     (SUM,) * len(p) + (1, 1, 0))
    return tuple(res[: len(p)]), res[-3], res[-2], res[-1]


def _or_empty(a, dtype):
    """``a`` as ``dtype``, or for ``None`` the empty array the kernels read as absent."""
    return jnp.zeros((0,), dtype) if a is None else a.astype(dtype)


def cfc_forward(x, h0, c0, w_in, b_in, w_h, w_lstm, w_heads, b_heads, dts, mask, *,
                activation: str, no_gate: bool, last: bool, keep: bool):
    """The CfC recurrence of a batch, time-major (``x (T, B, I)``, ``h0 (B, H)``, ``dts`` and
    ``mask (T, B)`` or ``None``; with mixed memory the LSTM's ``c0 (B, H)`` and ``w_lstm (4H, H)``,
    and ``w_in``, ``b_in`` stacked with the LSTM's input map first, else ``None``) → ``(hs, us,
    ps, zs)``: the states ``(T, B, H)`` (mixed memory ``[h | c]``, ``(T, B, 2H)``; with ``last``
    only the last, ``(1, B, ...)``) and, with ``keep``, the backbone, head and LSTM gate
    pre-activations (else empty; ``zs`` ``None`` without mixed memory). Per shard of the batch
    under data parallelism (:func:`_per_shard`)."""
    _require()
    memory = w_lstm is not None

    def call(x, h0, c0, dts, mask, w_in, b_in, w_h, w_lstm, w_heads, b_heads):
        t, b, _ = x.shape
        h, u, p = h0.shape[-1], w_h.shape[0], w_heads.shape[0]
        sds = functools.partial(jax.ShapeDtypeStruct, dtype=x.dtype)
        width = 2 * h if memory else h
        out = (sds((1 if last else t, b, width)), sds((t, b, u) if keep else (0,)),
               sds((t, b, p) if keep else (0,)), sds((t, b, 4 * h) if keep and memory else (0,)))
        ffi = jax.ffi.ffi_call("liquidjax_cfc_forward", out, vmap_method="sequential")
        return ffi(x, h0, _or_empty(c0, x.dtype), w_in, b_in, w_h, _or_empty(w_lstm, x.dtype),
                   w_heads, b_heads, _or_empty(dts, x.dtype), _or_empty(mask, np.uint8),
                   activation=np.int64(CFC_ACTIVATIONS.index(activation)),
                   no_gate=bool(no_gate), last=bool(last))

    kept = 1 if keep else None
    hs, us, ps, zs = _per_shard(call, (x, h0, c0, dts, mask, w_in, b_in, w_h, w_lstm, w_heads,
                                       b_heads),
                                (1, 0, 0, 1, 1) + (None,) * 6,
                                (1, kept, kept, kept if memory else None))
    return hs, us, ps, (zs if memory else None)


def cfc_backward(ct, x, h0, c0, hs, us, ps, zs, dts, mask, w_heads, w_h, w_lstm, *,
                 activation: str, no_gate: bool, last: bool):
    """The CfC recurrence's VJP but the input's cotangent (time-major): ``ct (T, B, W)`` (with
    ``last`` ``(B, W)``: the last state's only; W = H, with mixed memory 2H), the forward's
    ``x``, ``h0`` (and ``c0``), states ``hs`` and pre-activations ``us``, ``ps`` (and ``zs``) →
    ``(dus, d_dts, dh0, d_w_in, d_w_h, d_b_in, d_w_heads, d_b_heads, dzs, d_w_lstm, dc0)``: the
    backbone (and LSTM gate) pre-activations' cotangents, the timespans' ``(T, B)`` (``None`` for
    unit steps), the initial state's, and the weight gradients summed over time and batch (the
    LSTM's input map's rows first in ``d_w_in``, ``d_b_in``); the LSTM's ``None`` without mixed
    memory. Per shard of the batch under data parallelism (:func:`_per_shard`; the weight
    gradients summed over the shards)."""
    _require()
    memory = w_lstm is not None
    unit = dts is None

    def call(ct, x, h0, c0, hs, us, ps, zs, dts, mask, w_heads, w_h, w_lstm):
        t, b, _ = x.shape
        z = 4 * h0.shape[-1] if memory else 0
        sds = functools.partial(jax.ShapeDtypeStruct, dtype=x.dtype)
        out = (sds(us.shape), sds((0,) if unit else (t, b)), sds(h0.shape),
               sds((z + w_h.shape[0], x.shape[-1])), sds(w_h.shape), sds((z + w_h.shape[0],)),
               sds(w_heads.shape), sds(w_heads.shape[:1]),
               sds((t, b, z) if memory else (0,)), sds((z, h0.shape[-1]) if memory else (0,)),
               sds(h0.shape if memory else (0,)))
        ffi = jax.ffi.ffi_call("liquidjax_cfc_backward", out, vmap_method="sequential")
        return ffi(ct, x, h0, _or_empty(c0, x.dtype), hs, us, ps, _or_empty(zs, x.dtype),
                   _or_empty(dts, x.dtype), _or_empty(mask, np.uint8), w_heads, w_h,
                   _or_empty(w_lstm, x.dtype),
                   activation=np.int64(CFC_ACTIVATIONS.index(activation)),
                   no_gate=bool(no_gate), last=bool(last))

    res = _per_shard(call, (ct, x, h0, c0, hs, us, ps, zs, dts, mask, w_heads, w_h, w_lstm),
                     (0 if last else 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, None, None, None),
                     (1, None if unit else 1, 0, SUM, SUM, SUM, SUM, SUM,
                      1 if memory else None, SUM if memory else None, 0 if memory else None))
    lstm = tuple(res[8:]) if memory else (None, None, None)
    return (res[0], None if unit else res[1], *res[2:8], *lstm)
