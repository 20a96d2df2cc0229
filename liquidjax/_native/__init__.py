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
system's C++ compiler (``$CXX``, else ``g++``) against the headers JAX ships, next to the source
(or in ``$XDG_CACHE_HOME/liquidjax`` when the package folder is read-only). Its name carries a
hash of the sources, the flags, the jaxlib version and the CPU's feature flags (it is built with
``-march=native``), so an edit, an upgrade or another machine rebuilds it.

If it is missing at first use it is built then (a couple of seconds). If it cannot be built (no
compiler), the LTC and the CfC run their pure-JAX code — the same numbers, slower — and one
:class:`NativeKernelWarning` says why. ``LIQUIDJAX_NATIVE=0`` turns the compiled kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

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


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _cpu_features() -> bytes:
    """The CPU's feature flags (``-march=native`` builds for them): a library built on another
    machine sharing this folder is not loaded here."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for line in f:
                if line.startswith((b"flags", b"Features")):
                    return line
    except OSError:
        pass
    import platform

    return f"{platform.machine()} {platform.processor()}".encode()


def _tag() -> str:
    import jaxlib

    h = hashlib.sha256()
    for path in SOURCES + HEADERS:
        h.update(path.read_bytes())
    h.update(" ".join(FLAGS).encode())
    h.update(jaxlib.__version__.encode())
    h.update(_cpu_features())
    return h.hexdigest()[:16]


def _candidates() -> list[Path]:
    name = f"{LIBRARY}.{_tag()}.so"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liquidjax"
    return [HERE / name, cache / name]


def build(verbose: bool = False) -> Path:
    """Compile the kernels (if not already built for these sources, flags and jaxlib) and return
    the library's path. Raises ``RuntimeError`` with the compiler's message if it fails."""
    for path in _candidates():
        if path.exists():
            return path
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(
            f"no C++ compiler found ({os.environ.get('CXX', 'g++')}); install g++ or set $CXX"
        )
    import jax.ffi

    errors = []
    for path in _candidates():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
            os.close(fd)
        except OSError as e:  # read-only package folder: try the cache
            errors.append(f"{path.parent}: {e}")
            continue
        cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", *map(str, SOURCES), "-o", tmp]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"building the CPU kernels failed:\n{res.stderr[-4000:]}")
        os.replace(tmp, path)  # atomic: concurrent builders each write their own temp file
        # builds of older sources or jaxlibs (and of the LTC-only library before the CfC's)
        for old in [*path.parent.glob(f"{LIBRARY}.*.so"), *path.parent.glob("_ltc_cpu.*.so")]:
            if old != path:
                old.unlink(missing_ok=True)
        return path
    raise RuntimeError("no writable folder for the compiled kernel: " + "; ".join(errors))


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
    import jax.ffi

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
    import jax

    native = jax.custom_jvp(native)
    native.defjvp(lambda primals, tangents: jax.jvp(portable, primals, tangents))
    return jax.lax.platform_dependent(*args, cpu=native, default=portable)


def _indices(layout):
    import jax.numpy as jnp

    r, s = layout.recurrent, layout.sensory
    return tuple(jnp.asarray(a, jnp.int32) for a in (r.pre, r.posts, s.pre, s.posts))


def _attrs(unfolds, epsilon):
    return dict(unfolds=np.int64(unfolds), epsilon=np.float64(epsilon))


def ltc_forward(p, x, v0, dt, *, layout, unfolds: int, epsilon: float, keep: bool = True):
    """The batched forward (``x (I, B)``, ``v0 (N, B)``, ``dt (B,)``) → ``(v, vs, dens)``, as
    :func:`liquidjax.cells._ltc_sparse._forward`; with ``keep=False`` only ``v``."""
    import jax

    _require()
    n, b = v0.shape
    sds = functools.partial(jax.ShapeDtypeStruct, dtype=v0.dtype)
    k = 1 if keep else 0
    out = (sds((n, b)), sds((k * (unfolds + 1), n, b)), sds((k * unfolds, n, b)))
    call = jax.ffi.ffi_call("liquidjax_ltc_forward", out, vmap_method="sequential")
    res = call(*p, *_indices(layout), x, v0, dt, **_attrs(unfolds, epsilon))
    return res if keep else res[0]


def ltc_backward(p, x, dt, vs, dens, g, *, layout, unfolds: int, epsilon: float):
    """The batched backward → ``(parameter gradients summed over the batch, dx, dv0, ddt)``."""
    import jax

    _require()
    sds = functools.partial(jax.ShapeDtypeStruct, dtype=g.dtype)
    out = tuple(sds(a.shape) for a in p) + (sds(x.shape), sds(g.shape), sds(dt.shape))
    call = jax.ffi.ffi_call("liquidjax_ltc_backward", out, vmap_method="sequential")
    res = call(*p, *_indices(layout), x, dt, vs, dens, g, **_attrs(unfolds, epsilon))
    return tuple(res[: len(p)]), res[-3], res[-2], res[-1]


def _or_empty(a, dtype):
    """``a`` as ``dtype``, or for ``None`` the empty array the kernels read as absent."""
    import jax.numpy as jnp

    return jnp.zeros((0,), dtype) if a is None else a.astype(dtype)


def cfc_forward(x, h0, c0, w_in, b_in, w_h, w_lstm, w_heads, b_heads, dts, mask, *,
                activation: str, no_gate: bool, last: bool, keep: bool):
    """The CfC recurrence of a batch, time-major (``x (T, B, I)``, ``h0 (B, H)``, ``dts`` and
    ``mask (T, B)`` or ``None``; with mixed memory the LSTM's ``c0 (B, H)`` and ``w_lstm (4H, H)``,
    and ``w_in``, ``b_in`` stacked with the LSTM's input map first, else ``None``) → ``(hs, us,
    ps, zs)``: the states ``(T, B, H)`` (mixed memory ``[h | c]``, ``(T, B, 2H)``; with ``last``
    only the last, ``(1, B, ...)``) and, with ``keep``, the backbone, head and LSTM gate
    pre-activations (else empty; ``zs`` ``None`` without mixed memory)."""
    import jax

    _require()
    t, b, _ = x.shape
    h, u, p = h0.shape[-1], w_h.shape[0], w_heads.shape[0]
    memory = w_lstm is not None
    sds = functools.partial(jax.ShapeDtypeStruct, dtype=x.dtype)
    width = 2 * h if memory else h
    out = (sds((1 if last else t, b, width)), sds((t, b, u) if keep else (0,)),
           sds((t, b, p) if keep else (0,)), sds((t, b, 4 * h) if keep and memory else (0,)))
    call = jax.ffi.ffi_call("liquidjax_cfc_forward", out, vmap_method="sequential")
    hs, us, ps, zs = call(x, h0, _or_empty(c0, x.dtype), w_in, b_in, w_h,
                          _or_empty(w_lstm, x.dtype), w_heads, b_heads, _or_empty(dts, x.dtype),
                          _or_empty(mask, np.uint8),
                          activation=np.int64(CFC_ACTIVATIONS.index(activation)),
                          no_gate=bool(no_gate), last=bool(last))
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
    memory."""
    import jax

    _require()
    t, b, _ = x.shape
    memory = w_lstm is not None
    z = 4 * h0.shape[-1] if memory else 0
    sds = functools.partial(jax.ShapeDtypeStruct, dtype=x.dtype)
    out = (sds(us.shape), sds((t, b) if dts is not None else (0,)), sds(h0.shape),
           sds((z + w_h.shape[0], x.shape[-1])), sds(w_h.shape), sds((z + w_h.shape[0],)),
           sds(w_heads.shape), sds(w_heads.shape[:1]),
           sds((t, b, z) if memory else (0,)), sds((z, h0.shape[-1]) if memory else (0,)),
           sds(h0.shape if memory else (0,)))
    call = jax.ffi.ffi_call("liquidjax_cfc_backward", out, vmap_method="sequential")
    res = call(ct, x, h0, _or_empty(c0, x.dtype), hs, us, ps, _or_empty(zs, x.dtype),
               _or_empty(dts, x.dtype), _or_empty(mask, np.uint8), w_heads, w_h,
               _or_empty(w_lstm, x.dtype),
               activation=np.int64(CFC_ACTIVATIONS.index(activation)), no_gate=bool(no_gate),
               last=bool(last))
    lstm = tuple(res[8:]) if memory else (None, None, None)
    return (res[0], None if dts is None else res[1], *res[2:8], *lstm)
