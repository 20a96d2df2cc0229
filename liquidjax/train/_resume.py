"""Continuing from a checkpoint: where a run resumes, the checks that it continues the same run,
and :func:`restore_model` (only the model, for inference)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..models import ModelConfig
from ._checkpoint import (
    CheckpointError,
    check_model_identity,
    config_mismatches,
    latest_checkpoint,
    load_checkpoint,
    read_header,
)
from ._config import TRAJECTORY_FIELDS, TrainConfig
from ._step import TrainState


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A run's state read back from a checkpoint: the state, its header, the checkpoint and the
    data position ``(epoch, batch)`` at which training continues."""

    state: TrainState
    header: dict[str, Any]
    checkpoint: Path
    epoch: int
    batch: int


def resolve_resume(resume: Any, ckpt_dir: Path | None) -> Path | None:
    """The checkpoint that `resume` (``fit``'s argument) names, or ``None`` to start afresh."""
    if resume is None or resume is False:
        return None
    if resume is True or resume == "latest":
        if ckpt_dir is None:
            raise ValueError("resume='latest' needs an out_dir holding checkpoints")
        return latest_checkpoint(ckpt_dir)
    return Path(resume)


def saved_ema(header: dict[str, Any]) -> Any:
    """The ``ema`` of the run that wrote a checkpoint (``None`` also for files older than it)."""
    config = header.get("train_config")
    return config.get("ema") if isinstance(config, dict) else None


def resume_run(ckpt: Path, fresh: TrainState, config: TrainConfig, *, seed: int,
               num_examples: int, model_config: dict[str, Any] | None) -> Resumed:
    """Load `ckpt` into the shape of `fresh` after checking that it continues the run that
    `config`, the data order (`seed`, `num_examples`) and `model_config` describe; every
    difference is named in one :class:`CheckpointError`."""
    saved = saved_ema(read_header(ckpt))
    if saved != config.ema:
        # The average is part of the state: another decay (or none) cannot continue it.
        raise CheckpointError(
            ckpt, f"it belongs to a run with ema={saved!r} (a moving average of the "
            f"parameters {'kept' if saved is not None else 'not kept'} in its state), "
            f"but ema={config.ema!r} was requested: resume with the same ema")
    state, header = load_checkpoint(ckpt, fresh, model_config=model_config)
    diff = config_mismatches(header.get("train_config") or {}, config.to_dict(),
                             TRAJECTORY_FIELDS)
    data_state = header.get("data") or {}
    if not (isinstance(data_state, dict) and all(
            isinstance(data_state.get(k), int) and not isinstance(data_state.get(k), bool)
            and data_state[k] >= 0 for k in ("epoch", "batch"))):
        raise CheckpointError(ckpt, f"no usable data position in its header (data: "
                              f"{str(data_state)[:200]})")
    if data_state.get("seed") != seed:
        diff.append(f"data seed: checkpoint has {data_state.get('seed')!r}, requested {seed}")
    if data_state.get("num_examples") != num_examples:
        diff.append(f"training examples: checkpoint has {data_state.get('num_examples')!r}, "
                    f"requested {num_examples}")
    if diff:
        raise CheckpointError(
            ckpt, "it belongs to a run with different training settings:\n  " + "\n  ".join(diff)
        )
    return Resumed(state, header, ckpt, int(data_state["epoch"]), int(data_state["batch"]))


def evaluated(state: TrainState) -> Any:
    """The model a run evaluates and returns: the parameters' moving average if it keeps one."""
    return state.model if state.ema_model is None else state.ema_model


def restore_model(path: str | os.PathLike, like: Any, *, ema: bool | None = None,
                  model_config: ModelConfig | dict[str, Any] | None = None,
                  ) -> tuple[Any, dict[str, Any]]:
    """Load only the model from a checkpoint written by :func:`fit` (any optimiser).

    Before any array is read, the checkpoint is compared with `like`: the model configuration
    in its header with `model_config` field by field (as ``liquidjax train --resume`` does), the
    model's identity (its classes, activation functions and wirings — not its integration
    settings, so weights load across solvers) and the size of its parameters against the
    payload's. A difference is refused naming it, e.g. ``activation lecun_tanh vs relu``.

    **Arguments:**
    - `path`: the checkpoint.
    - `like`: a model of the same configuration (e.g. ``build_model(config, key=...)``).
    - `ema`: for a run trained with ``TrainConfig.ema``: ``True`` or ``None`` (default) load
      the parameters' moving average (what the run evaluated), ``False`` the last iterate.
      ``True`` for a checkpoint without an average is an error.
    - `model_config`: the :class:`~liquidjax.models.ModelConfig` (or its ``to_dict()``) that
      built `like`; compared with the one in the checkpoint's header, if it has one.

    **Returns:** ``(model, header)``. Raises :class:`CheckpointError` like
    :func:`load_checkpoint`.

    **Example:**
    ```python
    model, header = restore_model("runs/x/checkpoints/ckpt-000000100.ljx", fresh_model,
                                  model_config=config)
    ```
    """
    header = read_header(path)
    saved = header.get("model_config")
    if model_config is not None and isinstance(saved, dict):
        wanted = (model_config.to_dict() if isinstance(model_config, ModelConfig)
                  else model_config)
        diff = config_mismatches(saved, wanted, style="short")
        if diff:
            raise CheckpointError(path, "it was written for a different model (checkpoint vs "
                                  "the model to load into): " + "; ".join(diff))
    check_model_identity(path, header, like)
    has_ema = saved_ema(header) is not None
    if ema and not has_ema:
        raise CheckpointError(path, "it holds no moving average of the parameters (its run "
                              "was trained without ema): load it with ema=False or None")
    if ema is False or not has_ema:
        # TrainState serialises its model first, so the payload starts with the model's leaves.
        return load_checkpoint(path, like, prefix=True)
    (_, averaged), header = load_checkpoint(path, (like, like), prefix=True)
    return averaged, header



def load_best(path: Path, header: dict[str, Any], fresh: TrainState) -> tuple[Any, ...] | None:
    """The best-validation record ``(score, epoch, state, path)`` that a resumed run continues
    from: the one named in its checkpoint's `header`, read from `path` (``best.ljx``) if that
    file holds the same epoch (a later one would be re-reached by the resumed run)."""
    best = header.get("best")
    if not (isinstance(best, dict) and isinstance(best.get("epoch"), int) and path.is_file()):
        return None
    saved = read_header(path).get("best")
    if not (isinstance(saved, dict) and saved.get("epoch") == best["epoch"]):
        return None
    state, _ = load_checkpoint(path, fresh)
    score = tuple(float("-inf") if v is None else float(v) for v in best.get("score") or ())
    return score, best["epoch"], state, path
