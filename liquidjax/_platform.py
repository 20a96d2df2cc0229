"""Using every CPU core: one XLA host device per core.

XLA:CPU runs each fused kernel on a single thread, so on a CPU-only machine a single device
uses one core no matter how many there are. Exposing one host device per core and sharding the
batch across them (``liquidjax.train`` does, data-parallel) uses them all. This must be decided
before JAX creates its CPU backend.
"""

from __future__ import annotations

import os
import re

import jax

try:  # private, but the only way to ask whether a backend exists without creating one
    from jax._src import xla_bridge as _xla_bridge
except ImportError:  # pragma: no cover - defensive across JAX versions
    _xla_bridge = None


def use_cpu_cores(n: int | None = None) -> int:
    """Ask XLA for ``n`` CPU devices (default: the cores this process may use).

    Call it **before** anything initialises JAX's backends (importing jax is fine; creating an
    array is not). Has no effect on GPU/TPU backends. If the backend already exists, or
    ``XLA_FLAGS`` already sets a device count, it leaves things alone.

    **Returns:** the number of CPU devices JAX will expose (or already exposes).
    """
    if n is None:
        n = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"n must be a positive number of devices, got {n}")
    flags = os.environ.get("XLA_FLAGS", "")
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
    if m:
        return int(m.group(1))
    if _backend_initialised():
        return len(jax.devices("cpu"))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def _backend_initialised() -> bool:
    try:
        return bool(_xla_bridge._backends)
    except Exception:  # pragma: no cover - defensive across JAX versions
        return True
