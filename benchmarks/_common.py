"""Helpers shared by the benchmark scripts: thread pinning, timing, machine details, and writing
a script's section of ``BENCHMARKS.md``.

Import this module (and call :func:`pin_threads`) *before* importing jax or torch: the CPU
affinity and thread environment variables are read when those libraries start.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def pin_threads(threads: int | None) -> int:
    """Restrict this process to ``threads`` CPU cores (default: all it may use) and tell the
    thread pools to use that many. Both XLA (which sizes its CPU pool from the cores it can run
    on) and torch then see the same cores. Returns the thread count in force."""
    avail = sorted(os.sched_getaffinity(0))
    n = len(avail) if threads is None else max(1, min(int(threads), len(avail)))
    if n < len(avail):
        os.sched_setaffinity(0, avail[:n])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, library versions and the JAX device, for the report."""
    import jax

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores_total": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_device": str(jax.devices()[0]),
        "jax_backend": jax.default_backend(),
    }
    from importlib import metadata

    # Distribution metadata, not ``module.__version__``: ncps 1.0.1 reports "0.0.2" there.
    for mod in ("jaxlib", "equinox", "diffrax", "optax", "numpy", "scipy", "torch", "ncps"):
        try:
            info[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            info[mod] = None
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "liquidjax"],
                               capture_output=True, text=True, check=True).stdout.strip()
        info["liquidjax_commit"] = rev + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        info["liquidjax_commit"] = None
    try:
        info["load_avg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    parts = [f"{info['cpu']}, {info['cores_used']}/{info['cores_total']} cores",
             f"jax {info['jax']} ({info['jax_device']})"]
    if info.get("torch"):
        parts.append(f"torch {info['torch']}, ncps {info.get('ncps')}")
    parts.append(f"liquidjax {info.get('liquidjax_commit')}")
    if "load_avg_1min" in info:
        parts.append(f"load avg {info['load_avg_1min']:.2f} at start")
    return "; ".join(parts)


def time_fn(fn: Callable[[], Any], *, warmup: int, repeats: int) -> dict[str, float]:
    """Call ``fn`` (which must block until its result is ready) ``warmup`` times untimed, then
    ``repeats`` times; returns median / min / max in milliseconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts),
            "repeats": repeats}


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int,
                     repeats: dict[str, int], block: int = 1,
                     alternate: bool = False) -> dict[str, dict[str, float]]:
    """Like :func:`time_fn` for several functions, alternating them round-robin (a, b, a, b, ...)
    so that on a shared, noisy machine each sees the same background load. ``repeats`` may
    differ per function (the ones with fewer repeats drop out of later rounds). With ``block``
    > 1 each turn is ``block`` consecutive calls of one function (a×block, b×block, ...): still
    alternating against load drift, but each call follows calls of its own kind, as in a
    program that runs only it (a call right after another library's runs slower than in a run
    of its own: ≈ 9 against 6.4 ms for vs_ncps's row-wise CfC, cause not pinned down; it is not
    torch's OpenMP workers spinning). With ``alternate`` every
    other round runs the functions in reverse order (a, b, then b, a, ...), so that none always
    follows the same other one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for i, start in enumerate(range(0, max(repeats.values()), block)):
        turns = list(fns.items())
        for k, fn in (turns[::-1] if alternate and i % 2 else turns):
            for _ in range(max(0, min(block, repeats[k] - start))):
                t0 = time.perf_counter()
                fn()
                ts[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
                "repeats": len(v)} for k, v in ts.items()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compiled_memory(compiled: Any) -> dict[str, float] | None:
    """XLA's own accounting of a compiled executable's buffers (MiB): arguments, outputs,
    temporaries (the activations/residuals live here) and generated code."""
    compiled = getattr(compiled, "compiled", compiled)  # unwrap equinox's Compiled
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    mib = 1 / 2**20
    out = {
        "argument_mb": m.argument_size_in_bytes * mib,
        "output_mb": m.output_size_in_bytes * mib,
        "temp_mb": m.temp_size_in_bytes * mib,
        "alias_mb": m.alias_size_in_bytes * mib,
        "code_mb": m.generated_code_size_in_bytes * mib,
    }
    out["total_mb"] = out["argument_mb"] + out["output_mb"] + out["temp_mb"] - out["alias_mb"]
    return out


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(name: str, payload: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace the text between ``<!-- BEGIN section -->`` and ``<!-- END section -->`` in
    ``BENCHMARKS.md`` (appending the section if it is missing)."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def classifier_fns(lr: float = 1e-3):
    """The jitted pieces every classifier benchmark times: ``(opt, train_step, forward,
    loss_and_grad)`` — Adam, cross-entropy over ``jax.vmap(model)``, one ``eqx.filter_jit`` each."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(lr)

    def loss_fn(model, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y))

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    @eqx.filter_jit
    def forward(model, x):
        return jax.vmap(model)(x)

    @eqx.filter_jit
    def loss_and_grad(model, x, y):
        return eqx.filter_value_and_grad(loss_fn)(model, x, y)

    return opt, train_step, forward, loss_and_grad
