"""Devices and processes of a command-line run: the CPU device count (decided before JAX creates
its backend), joining a multi-host run, run-time checks on several devices, and signals."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import equinox._errors as eqx_errors  # see run_time_errors_as_nan
import jax


def max_cpu_devices() -> int:
    """The most CPU devices ``--cpu-devices`` may ask for: 4 per core (more gives no speed)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(8, 4 * (cores or 1))


def join_processes(coordinator: str, num_processes: int, process_id: int) -> str | None:
    """``jax.distributed.initialize`` for a multi-host run; returns an error message or None."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    try:
        # A dead or missing process is reported within these timeouts instead of hanging.
        jax.distributed.initialize(coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=120,
                                   heartbeat_timeout_seconds=30)
    except Exception as e:  # noqa: BLE001 - XLA raises several types; the message says it all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return (f"process {process_id} could not join the {num_processes}-process run at "
                f"{coordinator} ({first[:300]}); start every process with the same "
                "--coordinator and --num-processes, and process 0 first")
    return None


@contextlib.contextmanager
def run_time_errors_as_nan(enabled: bool = True) -> Iterator[None]:
    """Within the block, failing run-time checks (``eqx.error_if``: a solver's max_steps, a NaN
    input) return NaN instead of raising; the previous mode comes back on exit.

    For a data-parallel run over several devices: raised inside a sharded step, such an error
    stops one device while the others wait in the next all-reduce, and XLA:CPU aborts ~40 s
    later with a C++ stack dump (exit 134). As NaN, the failure reaches the trainer's
    non-finite-loss guard, which stops cleanly, naming the step and the last good checkpoint.
    """
    if not enabled:
        yield
        return
    # No public route: equinox's only switch, the EQX_ON_ERROR environment variable, is read
    # once when equinox is imported (before any command line is parsed, and once for a whole
    # notebook), so the module attribute it is read into is set here and put back on exit
    # (docs/troubleshooting.md, "Private names liquidjax relies on").
    before = eqx_errors.EQX_ON_ERROR
    eqx_errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        eqx_errors.EQX_ON_ERROR = before


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler's or ``kill``'s stop) raises ``KeyboardInterrupt``
    in the main thread, as Ctrl-C does: the trainer saves a checkpoint between steps and the
    command line prints how to resume. Elsewhere than the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
