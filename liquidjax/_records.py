"""What a training run leaves: :class:`FitResult` and the JSONL metrics file (below both
:mod:`liquidjax.train`, which makes them and re-exports both, and :mod:`liquidjax.plot`, which
draws them)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a truncated last line, from a kill, is skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    **Attributes:** `model` (trained: with ``TrainConfig.ema``, the parameters' moving average,
    ``state.ema_model``; the last iterate is ``state.model``; with ``TrainConfig.keep_best``,
    the model of the best validation epoch), `state` (the final :class:`TrainState`), `history`
    (one dict per finished epoch: losses, accuracies, time, throughput; with ``ema``, also
    ``raw_val_loss``/``raw_val_accuracy`` of the last iterate), `checkpoint` (the last one
    written), `out_dir`, `metrics` (the ``metrics.jsonl`` file, if written; draw it with
    :func:`liquidjax.plot.training_curves`), `best_epoch` (with ``keep_best``: the 1-based
    epoch whose model is returned), `best_checkpoint` (with ``keep_best`` and an `out_dir`:
    ``checkpoints/best.ljx``), `stop_reason` (``"epochs"``, ``"max_steps"`` or
    ``"time_budget"``).
    """

    model: Any
    state: Any  # the final liquidjax.train.TrainState
    history: list[dict[str, Any]]
    checkpoint: Path | None
    out_dir: Path | None
    metrics: Path | None
    best_epoch: int | None = None
    best_checkpoint: Path | None = None
    stop_reason: str = "epochs"
