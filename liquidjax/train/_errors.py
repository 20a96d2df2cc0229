"""Why a run stopped early: the errors :func:`~liquidjax.train.fit` raises while training."""

from __future__ import annotations

from pathlib import Path

import jax

from ._logging import RunDirError


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or gradient) became NaN/inf.

    **Attributes:** `step` (1-based step), `epoch` (1-based), `checkpoint` (the last good
    checkpoint, or ``None``).
    """

    def __init__(self, step: int, epoch: int, checkpoint: Path | None):
        self.step, self.epoch, self.checkpoint = step, epoch, checkpoint
        where = (
            f"the last good checkpoint is {checkpoint} (nothing was written after it)"
            if checkpoint is not None else "no checkpoint had been written yet"
        )
        super().__init__(
            f"non-finite loss or gradient at step {step} (epoch {epoch}); training stopped "
            f"before applying that update. {where}. Try a lower learning rate, gradient "
            "clipping (clip_norm), or check the data for extreme values."
        )


class PeerFailureError(RuntimeError):
    """A multi-process run stopped because a collective failed: another process died or became
    unreachable (raised on the processes that survive, instead of a hang or a bare XLA error).

    **Attributes:** `step` (steps completed here), `checkpoint` (the last one written, or
    ``None``), `process` (this process's index).
    """

    def __init__(self, step: int, checkpoint: Path | None, cause: BaseException):
        self.step, self.checkpoint = step, checkpoint
        self.process = jax.process_index()
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        where = (f"the last checkpoint is {checkpoint}; restart every process with resume to "
                 "continue from it" if checkpoint is not None else "no checkpoint was written")
        super().__init__(
            f"process {self.process} of {jax.process_count()}: a collective operation failed "
            f"after step {step} — another process has probably died or lost its network "
            f"({type(cause).__name__}: {first[:300]}); {where}"
        )


def is_runtime_failure(e: BaseException) -> bool:
    """An error raised by the XLA runtime (a failed collective surfaces as one of these), not a
    Python-level mistake."""
    if isinstance(e, jax.errors.JaxRuntimeError):
        return True
    text = str(e).lstrip()
    return isinstance(e, (ValueError, RuntimeError)) and text.startswith(
        ("UNKNOWN:", "INTERNAL:", "UNAVAILABLE:", "DEADLINE_EXCEEDED:", "ABORTED:", "CANCELLED:")
    )



class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, or a SIGTERM turned into ``KeyboardInterrupt``) and
    stopped between two steps: the step under way was finished or abandoned, and the state
    after the last finished step was checkpointed (when the run has a checkpoint folder).

    Resuming from `checkpoint` (``fit(..., resume=checkpoint)``) reaches the same parameters,
    bit for bit, as a run that was never interrupted.

    **Attributes:** `step` (steps finished), `checkpoint` (the checkpoint to resume from, or
    ``None`` when the run writes none).
    """

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = (f"its state is saved in {checkpoint}; resume from it to continue"
                 if checkpoint is not None else "no checkpoint was written (no out_dir)")
        super().__init__(f"training interrupted after step {step}; {where}")


class RunWriteError(RunDirError):
    """An output of the run (a checkpoint, the metrics file) could not be written, e.g. on a
    full disk. The partial file is removed; what was written before is intact.

    **Attributes:** `path` (the file that could not be written), `checkpoint` (the last good
    checkpoint, or ``None``).
    """

    def __init__(self, path: str | Path, cause: OSError, checkpoint: Path | None):
        self.checkpoint = checkpoint
        last = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None
                else "no checkpoint had been written")
        super().__init__(path, f"could not be written ({cause.strerror or cause}); training "
                         f"stopped, {last}")
