"""Using every CPU core: one XLA host device per core.

XLA:CPU runs each fused kernel on a single thread, so on a CPU-only machine a single device
uses one core no matter how many there are. Exposing one host device per core and sharding the
batch across them (``liquidjax.train`` does, data-parallel) uses them all. This must be decided
before JAX creates its CPU backend.
"""

from __future__ import annotations

import os
import re
import sys


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
    if "jax" in sys.modules and _backend_initialised():
        import jax

        return len(jax.devices("cpu"))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def _backend_initialised() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)  # private, but the only way to ask without creating one
    except Exception:  # pragma: no cover - defensive across JAX versions
        return True
