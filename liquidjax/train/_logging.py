"""Run logs: a progress bar (tqdm) on a terminal or plain lines otherwise, and a JSONL metrics
file (figures of it: :func:`liquidjax.plot.training_curves`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import jax
from tqdm.auto import tqdm

from .._records import read_metrics as read_metrics  # re-exported by liquidjax.train


class RunDirError(RuntimeError):
    """The run directory cannot hold the run's outputs (a path is a file where a folder is
    needed or the other way round, or a folder is not writable).

    Raised by :func:`check_run_dir` before any training, so that no work is lost at the first
    save. **Attributes:** `path` — the offending path.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        super().__init__(f"run directory: {self.path} {problem}")


def _probe_dir(d: Path) -> None:
    if d.exists() and not d.is_dir():
        raise RunDirError(d, "is a file, not a folder; remove it or choose another out dir")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".liquidjax-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except NotADirectoryError:
        raise RunDirError(d, "cannot be created: a parent of it is a file") from None
    except OSError as e:
        raise RunDirError(d, f"is not writable ({e.strerror or e}); fix its permissions or "
                          "choose another out dir") from None


def check_run_dir(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` and ``out_dir/checkpoints`` if needed and check that every output of a
    run can be written there: the two folders (a real write), ``metrics.jsonl`` (a file, or
    absent) and ``curves.png`` (not a folder). Only process 0 checks (only it writes).

    **Returns:** the run directory as a ``Path``. **Raises:** :class:`RunDirError` naming the
    path and the problem.

    **Example:**
    ```python
    check_run_dir("runs/demo")  # before an hour of training, not at its first save
    ```
    """
    run = Path(out_dir)
    if jax.process_index() != 0:
        return run
    for d in (run, run / "checkpoints"):
        _probe_dir(d)
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        if not metrics.is_file():
            raise RunDirError(metrics, "is not a file; remove it or choose another out dir")
        try:
            with open(metrics, "a"):
                pass
        except OSError as e:
            raise RunDirError(metrics, f"cannot be appended to ({e.strerror or e})") from None
    curves = run / "curves.png"
    if curves.is_dir():
        raise RunDirError(curves, "is a folder; remove it or choose another out dir")
    return run


def _finite(v: Any) -> Any:
    """`v` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


class RunLogger:
    """Progress display plus a JSONL record of every metrics read.

    **Arguments:**
    - `out_dir`: the run directory (``metrics.jsonl`` is appended there); ``None``: no file.
    - `progress`: ``"auto"`` (a tqdm bar when `stream` is a terminal), ``"bar"``, ``"plain"`` or
      ``"none"``.
    - `stream`: where the display goes (default ``sys.stderr``).

    Only process 0 writes anything.
    """

    def __init__(self, out_dir: str | os.PathLike | None, *, progress: str = "auto",
                 stream: TextIO | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.main = jax.process_index() == 0
        if progress == "auto":
            progress = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        if progress not in ("bar", "plain", "none"):
            raise ValueError(f"progress must be one of auto, bar, plain, none; got {progress!r}")
        self.progress = progress if self.main else "none"
        self.path = None if out_dir is None else Path(out_dir) / "metrics.jsonl"
        if self.path is not None and self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._bar = None

    # ----------------------------------------------------------------------------- records
    def record(self, event: str, **fields: Any) -> None:
        """Append ``{"event": event, "time": ..., **fields}`` to the JSONL file, as one line of
        valid JSON (a NaN or infinite value is written as ``null``). A failed write (e.g. a full
        disk) cuts the file back to its last complete line and raises the ``OSError``."""
        if self.path is None or not self.main:
            return
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        line = (json.dumps(_finite(rec), allow_nan=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except BaseException:  # a full disk, an interrupt: no half line is left behind
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)

    def message(self, text: str) -> None:
        """A line for the user (above the bar if one is shown)."""
        if self.progress == "none":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    # ----------------------------------------------------------------------------- progress
    def start_epoch(self, epoch: int, epochs: int, total: int, initial: int = 0) -> None:
        if self.progress == "bar":
            # A pseudo-terminal may report a 0×0 size, with which tqdm draws nothing.
            size = shutil.get_terminal_size((100, 24))
            self._bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch}/{epochs}",
                             unit="step", file=self.stream, ncols=min(size.columns or 100, 140),
                             nrows=size.lines or 24, leave=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def show(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        """Show a metrics read (bar postfix, or one plain line)."""
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in metrics.items()}, refresh=False)
        elif self.progress == "plain":
            text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            print(f"epoch {epoch} step {step} {text}", file=self.stream, flush=True)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
