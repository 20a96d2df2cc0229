"""``fit`` and ``evaluate``: the training loop around :func:`~liquidjax.train.train_step`."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data import Loader
from ._checkpoint import (
    CheckpointError,
    config_mismatches,
    latest_checkpoint,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from ._config import TRAJECTORY_FIELDS, TrainConfig, make_optimizer, make_schedule
from ._logging import RunDirError, RunLogger, check_run_dir
from ._sharding import DataParallel
from ._step import TrainState, _forward, eval_step, train_step

_OPTIONAL = ("timespans", "mask", "y_mask")


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayData:
    """A split held in host memory: what :func:`fit` and :func:`evaluate` read.

    **Arguments:**
    - `x`: inputs, shape ``(n, ...)`` (e.g. ``(n, L, C)`` sequences or ``(n, H, W, C)`` images),
      in the dtype the model takes.
    - `y`: integer labels ``(n,)`` (per sequence) or ``(n, L)`` (per step), or real targets
      ``(n,)``, ``(n, D)`` (per sequence) or ``(n, L, D)`` (per step).
    - `timespans`: optional ``(n, L)`` elapsed times per step.
    - `mask`: optional boolean ``(n, L)``, ``True`` on valid steps.
    - `y_mask`: optional boolean ``(n, L)`` for per-step targets: the steps that carry one
      (default: `mask`).

    **Example:**
    ```python
    data = ArrayData(x=np.zeros((64, 10, 3), np.float32), y=np.zeros(64, np.int32))
    ```
    """

    x: np.ndarray
    y: np.ndarray
    timespans: np.ndarray | None = None
    mask: np.ndarray | None = None
    y_mask: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.x)
        y = np.asarray(self.y)
        if np.issubdtype(y.dtype, np.integer):
            big = np.abs(y.astype(np.int64, copy=False)) > np.iinfo(np.int32).max
            if big.any():  # checked before the int32 cast, under which they would wrap around
                i = int(np.flatnonzero(big.reshape(-1))[0])
                raise ValueError(f"y: label {int(y.reshape(-1)[i])} at index {i} is not a "
                                 "class index (labels must be 0..num_classes-1)")
        object.__setattr__(self, "y", _targets(y, n))
        for name in _OPTIONAL:
            v = getattr(self, name)
            if v is not None and np.shape(v)[:1] != (n,):
                raise ValueError(f"{name} must have {n} rows like x, got shape {np.shape(v)}")

    def __len__(self) -> int:
        return int(len(self.x))

    def arrays(self) -> dict[str, np.ndarray]:
        """``x``, ``y`` and the optional arrays present, as a dict."""
        out = {"x": self.x, "y": self.y}
        for name in _OPTIONAL:
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out

    def loader(self, batch_size: int, *, seed: int = 0, train: bool = True) -> Loader:
        """A :class:`liquidjax.data.Loader` over these arrays: shuffled full batches for training,
        or the stored order with a padded, masked last batch for evaluation."""
        return Loader(self.arrays(), batch_size, seed=seed, shuffle=train, drop_last=train)


DataLike = Union[Loader, ArrayData]


def _targets(y: Any, n: int | None = None) -> np.ndarray:
    """Labels as int32, real targets as float32; anything else is refused."""
    y = np.asarray(y)
    if n is not None and y.shape[:1] != (n,):
        raise ValueError(f"y must have {n} rows like x, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.integer) and y.ndim in (1, 2):
        return y.astype(np.int32, copy=False)
    if np.issubdtype(y.dtype, np.floating) and y.ndim in (1, 2, 3):
        return y.astype(np.float32, copy=False)
    raise ValueError(
        f"y must be integer labels (batch,) or (batch, time), or real targets (batch,), "
        f"(batch, D) or (batch, time, D); got {y.dtype} {y.shape}"
    )


def batch_dict(data: Any) -> dict[str, np.ndarray]:
    """The ``{"x", "y", "timespans"?, "mask"?, "y_mask"?}`` dict of a loader batch's data
    pytree: a dict, an ``(x, y)`` tuple (image tasks), or a named tuple with ``x``, ``y`` and
    optionally ``timespans``/``mask`` (:class:`liquidjax.data.SequenceData`). Labels become
    int32, real targets float32."""
    if isinstance(data, dict):
        d = dict(data)
    elif hasattr(data, "_fields"):
        d = data._asdict()
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        d = {"x": data[0], "y": data[1]}
    else:
        raise ValueError(
            f"cannot read a batch from {type(data).__name__}: expected a dict, an (x, y) tuple, "
            "or a named tuple with fields x, y (and optionally timespans, mask)"
        )
    if "x" not in d or "y" not in d:
        raise ValueError(f"a batch needs 'x' and 'y', got fields {sorted(d)}")
    out = {"x": np.asarray(d["x"]), "y": _targets(d["y"])}
    for name in _OPTIONAL:
        if d.get(name) is not None:
            out[name] = np.asarray(d[name])
    return out


def check_labels(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
    """Raise ``ValueError`` naming the values of `labels` outside ``[0, num_classes)`` (how many
    of each, and the first index), so that none is silently trained as another class or turns
    the loss into NaN.

    **Example:**
    ```python
    check_labels(np.array([0, 3, -1]), 3)  # ValueError: ... -1 (1 example, index 2), 3 (...)
    ```
    """
    y = np.asarray(labels)
    bad = (y < 0) | (y >= num_classes)
    if not bad.any():
        return
    values, first, counts = np.unique(y[bad], return_index=True, return_counts=True)
    where = np.flatnonzero(bad)[first]
    shown = ", ".join(f"{int(v)} ({int(c)} example{'s' if c > 1 else ''}, first at index {int(i)})"
                      for v, c, i in list(zip(values, counts, where))[:8])
    more = f" and {len(values) - 8} more values" if len(values) > 8 else ""
    raise ValueError(
        f"{what}: {int(bad.sum())} of {y.size} labels are outside the valid range "
        f"[0, {num_classes - 1}] (num_classes={num_classes}): {shown}{more}. Labels must be "
        f"class indices 0..{num_classes - 1}; re-map them, or build the model with more classes"
    )


def _host_labels(data: DataLike) -> np.ndarray | None:
    """All labels of `data` as stored (before any batch transform), or ``None`` if the loader's
    data is not an ``(x, y)`` pair, a dict or a named tuple with ``y``."""
    raw = data.y if isinstance(data, ArrayData) else data.data
    if isinstance(raw, dict):
        raw = raw.get("y")
    elif hasattr(raw, "_fields"):
        raw = getattr(raw, "y", None)
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        raw = raw[1]
    elif not isinstance(data, ArrayData):
        raw = None
    if raw is None:
        return None
    y = np.asarray(raw)
    return y if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else None


def _num_classes(model: Any, loader: Loader) -> int:
    from ..models import AbstractClassifier

    if isinstance(model, AbstractClassifier):
        return int(model.num_classes)
    batch = batch_dict(loader.batch(0, 0).data)
    return int(eqx.filter_eval_shape(_forward, model, batch, None).shape[-1])


def _check_data_labels(model: Any, loader: Loader, splits: dict[str, DataLike | None]) -> None:
    """Check every split's labels once, on the host, against the model's number of classes
    (read from the model, or from its output shape on `loader`'s first batch)."""
    labels = {what: _host_labels(d) for what, d in splits.items() if d is not None}
    if any(y is not None for y in labels.values()):
        num_classes = _num_classes(model, loader)
        for what, y in labels.items():
            if y is not None:
                check_labels(y, num_classes, what)


def _as_loader(data: DataLike, batch_size: int, seed: int, train: bool) -> Loader:
    if isinstance(data, ArrayData):
        return data.loader(batch_size, seed=seed, train=train)
    if data.batch_size != batch_size:
        raise ValueError(
            f"the {'training' if train else 'evaluation'} loader has batch_size "
            f"{data.batch_size}, but the config asks for {batch_size}"
        )
    if train and not data.drop_last:
        raise ValueError("the training loader must drop the last partial batch (drop_last=True)")
    return data


def _rows(batch: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in batch.items()}


_PROBE_STEPS = 5  # timed steps (after compilation) behind the epoch-time estimate


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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


def _is_runtime_failure(e: BaseException) -> bool:
    """An error raised by the XLA runtime (a failed collective surfaces as one of these), not a
    Python-level mistake."""
    if isinstance(e, jax.errors.JaxRuntimeError):
        return True
    text = str(e).lstrip()
    return isinstance(e, (ValueError, RuntimeError)) and text.startswith(
        ("UNKNOWN:", "INTERNAL:", "UNAVAILABLE:", "DEADLINE_EXCEEDED:", "ABORTED:", "CANCELLED:")
    )


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    **Attributes:** `model` (trained: with ``TrainConfig.ema``, the parameters' moving average,
    ``state.ema_model``; the last iterate is ``state.model``), `state` (the final
    :class:`TrainState`), `history` (one dict per finished epoch: losses, accuracies, time,
    throughput; with ``ema``, also ``raw_val_loss``/``raw_val_accuracy`` of the last
    iterate), `checkpoint` (the last one written), `out_dir`, `metrics` (the
    ``metrics.jsonl`` file, if written; draw it with :func:`liquidjax.plot.training_curves`).
    """

    model: Any
    state: TrainState
    history: list[dict[str, Any]]
    checkpoint: Path | None
    out_dir: Path | None
    metrics: Path | None


def _read(state: TrainState, labels: bool = True) -> dict[str, Any]:
    loss_sum, correct, count, bad, step = jax.device_get(
        (state.loss_sum, state.correct, state.count, state.bad_step, state.step)
    )
    count = int(count)
    return {
        "loss": float(loss_sum) / count if count else float("nan"),
        "accuracy": int(correct) / count if count and labels else float("nan"),
        "count": count,
        "bad_step": int(bad),
        "step": int(step),
    }


def evaluate(
    model: Any,
    data: DataLike,
    *,
    batch_size: int = 256,
    parallel: DataParallel | None = None,
    regression_loss: str = "mse",
) -> dict[str, float]:
    """Loss and metrics of `model` on `data` (inference mode: no dropout).

    The last partial batch is padded with zero-weight rows, so every batch has one shape (one
    compile). Sums stay on device; the host reads them once. Targets count as in training
    (:func:`~liquidjax.train.target_terms`): per sequence, or per step where a step mask allows.

    **Arguments:**
    - `model`: ``model(x, timespans, mask, *, key) -> outputs`` (logits, or real predictions;
      per sequence or per step).
    - `data`: an :class:`ArrayData`, or an evaluation :class:`liquidjax.data.Loader`
      (unshuffled, padded last batch; its batch size wins).
    - `batch_size`: evaluation batch size for an :class:`ArrayData` (divisible by the device
      count).
    - `parallel`: the :class:`DataParallel` to shard over (default: all devices).
    - `regression_loss`: ``"mse"`` or ``"mae"``: the `loss` reported for real targets.

    **Returns:** ``{"loss", "accuracy", "count"}`` and, for labels, ``"macro_f1"`` and (two
    classes) ``"auc"`` (of ``logit_1 − logit_0``); for real targets ``"mse"``, ``"mae"``,
    ``"rmse"`` (of the predicted mean) with ``accuracy`` NaN. ``count`` is the number of
    counted targets (examples, or steps).

    **Example:**
    ```python
    evaluate(model, test_data, batch_size=512)["accuracy"]
    ```
    """
    from ._metrics import binary_auc, f1_from_confusion
    from ._step import eval_sums

    dp = DataParallel.create() if parallel is None else parallel
    if isinstance(data, Loader):
        batch_size = data.batch_size
    loader = _as_loader(data, batch_size, 0, train=False)
    dp.check_batch_size(batch_size, "eval batch size")
    if loader.num_examples == 0:
        raise ValueError("cannot evaluate on an empty split")
    _check_data_labels(model, loader, {"evaluation data": data})
    model = dp.replicate(model)
    rows = dp.local_rows(batch_size)
    sums = None
    labels = binary = False
    scores: list[Any] = []
    for b in loader.epoch(0):
        batch = batch_dict(b.data)
        batch["weight"] = b.mask.astype(np.float32)
        if sums is None:
            labels = np.issubdtype(batch["y"].dtype, np.integer)
            shape = eqx.filter_eval_shape(_forward, model, batch, None).shape
            binary = labels and shape[-1] == 2
            sums = jax.device_put(eval_sums(shape[-1] if labels else None), dp.replicated)
        sharded = dp.shard_batch(_rows(batch, rows), batch_size)
        sums, outputs = eval_step(model, sharded, sums, regression_loss)
        if binary:
            scores.append((outputs, sharded))
    host = jax.device_get(sums)
    count = float(host["count"])
    out: dict[str, Any] = {"loss": float(host["loss"]) / count, "count": round(count)}
    if labels:
        out["accuracy"] = float(host["correct"]) / count
        out["macro_f1"] = float(f1_from_confusion(jnp.asarray(host["confusion"])))
        if binary:
            out["auc"] = _binary_auc(scores, regression_loss, binary_auc)
    else:
        out["accuracy"] = float("nan")
        out["mse"] = float(host["sq_err"]) / count
        out["mae"] = float(host["abs_err"]) / count
        out["rmse"] = out["mse"] ** 0.5
    return out


def _binary_auc(scores: list[Any], regression_loss: str, binary_auc) -> float:
    from ._step import target_terms

    s, y, w = [], [], []
    for outputs, batch in scores:
        _, weight, _ = target_terms(outputs, batch, regression_loss=regression_loss)
        s.append((outputs[..., 1] - outputs[..., 0]).reshape(-1))
        y.append(batch["y"].reshape(-1))
        w.append(weight.reshape(-1))
    return float(binary_auc(jnp.concatenate(s), jnp.concatenate(y), jnp.concatenate(w)))


@functools.lru_cache(maxsize=64)
def _chained(optimizer: optax.GradientTransformation,
             extra: tuple[optax.GradientTransformation, ...]) -> optax.GradientTransformation:
    # Cached like make_optimizer: the same pieces give the same object, so the jitted step (which
    # hashes the optimiser by identity) is not recompiled when training restarts in-process.
    return optimizer if not extra else optax.chain(optimizer, *extra)


def _resolve_resume(resume: Any, ckpt_dir: Path | None) -> Path | None:
    if resume is None or resume is False:
        return None
    if resume is True or resume == "latest":
        if ckpt_dir is None:
            raise ValueError("resume='latest' needs an out_dir holding checkpoints")
        return latest_checkpoint(ckpt_dir)
    return Path(resume)


def fit(
    model: Any,
    train_data: DataLike,
    config: TrainConfig,
    *,
    val_data: DataLike | None = None,
    optimizer: optax.GradientTransformation | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike | None = None,
    model_config: dict[str, Any] | None = None,
    extra_header: dict[str, Any] | None = None,
    progress: str = "auto",
    parallel: DataParallel | None = None,
    extra_transforms: Sequence[optax.GradientTransformation] = (),
) -> FitResult:
    """Train `model` on `train_data`: shuffled batches, one jitted step each, checkpoints.

    Batches come from a :class:`liquidjax.data.Loader` (an :class:`ArrayData` is wrapped in
    one seeded with ``config.seed``): batch ``s`` of epoch ``e`` depends only on the loader's
    seed, ``e`` and ``s``, so the data position is just ``(e, s)``; step ``k`` draws its dropout
    keys from ``fold_in(key(seed), k)``.
    With ``config.ema``, an exponential moving average of the parameters is kept alongside
    (:func:`train_step`); the validation figures are the average's, and it is the returned
    model. Metrics stay on device and are read every ``log_every`` steps; a checkpoint (model,
    moving average, optimiser state, step, RNG, epoch/batch position, configs) is written at
    the end of every epoch and every ``checkpoint_every`` steps, so a run killed at any point
    and resumed from its last checkpoint reaches bit-identical parameters.

    **Arguments:**
    - `model`: the model (e.g. from :func:`liquidjax.models.build_model`).
    - `train_data`: an :class:`ArrayData` or a training :class:`liquidjax.data.Loader`
      (``drop_last=True``, batch size ``config.batch_size``).
    - `val_data`: optional validation data (an :class:`ArrayData` or an evaluation loader),
      evaluated after every epoch.
    - `config`: a :class:`TrainConfig`.
    - `optimizer`: any ``optax.GradientTransformation`` (default :func:`make_optimizer`).
    - `out_dir`: run directory for ``checkpoints/`` and ``metrics.jsonl`` (``None``: nothing
      written).
    - `resume`: ``True``/``"latest"`` (the newest checkpoint in ``out_dir/checkpoints``; starts
      afresh if there is none) or a checkpoint path.
    - `model_config`: JSON-ready description of the model, stored in checkpoints and checked on
      resume (:meth:`liquidjax.models.ModelConfig.to_dict`).
    - `extra_header`: more JSON metadata for the checkpoints (e.g. the dataset options).
    - `progress`: ``"auto"``, ``"bar"``, ``"plain"`` or ``"none"``.
    - `parallel`: a :class:`DataParallel` (default: every device).
    - `extra_transforms`: optax transformations chained **after** the optimiser, e.g. parameter
      constraints such as :func:`liquidjax.nonnegative_projection` (what a model needs is
      :func:`liquidjax.models.constraint_transforms`; the command line passes it). The trainer
      itself knows no model: every step calls the model with a PRNG key (training mode).

    **Returns:** a :class:`FitResult`.

    Raises :class:`NonFiniteLossError` (naming the step) if the loss becomes non-finite,
    :class:`CheckpointError` for an unusable checkpoint, and, before training starts,
    :class:`RunDirError` if `out_dir` cannot hold the outputs (:func:`check_run_dir`).

    **Example:**
    ```python
    result = fit(model, train, TrainConfig(epochs=2), val_data=val, out_dir="runs/demo",
                 extra_transforms=constraint_transforms(model))
    ```
    """
    dp = DataParallel.create() if parallel is None else parallel
    B = config.batch_size
    dp.check_batch_size(B)
    eval_bs = config.eval_batch_size or B
    dp.check_batch_size(eval_bs, "eval_batch_size")
    n = len(train_data) if isinstance(train_data, ArrayData) else train_data.num_examples
    if n < B:
        raise ValueError(f"batch_size={B} is larger than the training set ({n} examples)")
    loader = _as_loader(train_data, B, config.seed, train=True)
    _check_data_labels(model, loader, {"training data": train_data, "validation data": val_data})
    # Labels or real targets (read from the first batch): only the metrics shown depend on it.
    labels = True
    steps_per_epoch = loader.num_batches
    total_steps = config.epochs * steps_per_epoch
    schedule = None
    if optimizer is None:
        from ..models import Ensemble

        optimizer = make_optimizer(config, total_steps, members=isinstance(model, Ensemble))
        schedule = make_schedule(config, total_steps)
    optimizer = _chained(optimizer, tuple(extra_transforms))

    run_dir = None if out_dir is None else check_run_dir(out_dir)  # before any work is done
    ckpt_dir = None if run_dir is None else run_dir / "checkpoints"
    logger = RunLogger(run_dir, progress=progress)
    train_key = jax.random.fold_in(jax.random.key(config.seed), 0x7EA1)
    state = TrainState.create(model, optimizer, train_key, ema=config.ema is not None)
    epoch0, batch0 = 0, 0
    last_ckpt: Path | None = None

    ckpt = _resolve_resume(resume, ckpt_dir)
    if ckpt is not None:
        saved_ema = _saved_ema(read_header(ckpt))
        if saved_ema != config.ema:
            # The average is part of the state: another decay (or none) cannot continue it.
            raise CheckpointError(
                ckpt, f"it belongs to a run with ema={saved_ema!r} (a moving average of the "
                f"parameters {'kept' if saved_ema is not None else 'not kept'} in its state), "
                f"but ema={config.ema!r} was requested: resume with the same ema")
        state, header = load_checkpoint(ckpt, state, model_config=model_config)
        diff = config_mismatches(header.get("train_config") or {}, config.to_dict(),
                                 TRAJECTORY_FIELDS)
        data_state = header.get("data") or {}
        if not (isinstance(data_state, dict) and all(
                isinstance(data_state.get(k), int) and not isinstance(data_state.get(k), bool)
                and data_state[k] >= 0 for k in ("epoch", "batch"))):
            raise CheckpointError(ckpt, f"no usable data position in its header (data: "
                                  f"{str(data_state)[:200]})")
        if data_state.get("seed") != loader.seed:
            diff.append(f"data seed: checkpoint has {data_state.get('seed')!r}, "
                        f"requested {loader.seed}")
        if data_state.get("num_examples") != n:
            diff.append(f"training examples: checkpoint has {data_state.get('num_examples')!r}, "
                        f"requested {n}")
        if diff:
            raise CheckpointError(
                ckpt, "it belongs to a run with different training settings:\n  "
                + "\n  ".join(diff)
            )
        epoch0, batch0 = int(data_state["epoch"]), int(data_state["batch"])
        last_ckpt = ckpt
        logger.message(f"resumed from {ckpt} (step {header['step']}, epoch {epoch0 + 1}, "
                       f"batch {batch0})")
    elif resume and ckpt_dir is not None:
        logger.message(f"no checkpoint in {ckpt_dir}; starting from scratch")
    state = dp.replicate(state)
    step = int(jax.device_get(state.step))

    header_base = {
        "model_config": model_config,
        "train_config": config.to_dict(),
        "num_devices": dp.num_devices,
        **(extra_header or {}),
    }
    logger.record("start", step=step, resumed_from=None if ckpt is None else str(ckpt),
                  devices=[str(d) for d in dp.mesh.devices.flat], steps_per_epoch=steps_per_epoch,
                  **{k: v for k, v in header_base.items() if k != "num_devices"})

    def save(epoch: int, batch: int) -> Path | None:
        nonlocal last_ckpt
        if ckpt_dir is None:
            return None
        header = dict(header_base, step=step, epoch=epoch, data={
            "epoch": epoch, "batch": batch, "seed": loader.seed, "num_examples": n,
            "batch_size": B})
        last_ckpt = save_checkpoint(ckpt_dir, state, header, keep=config.keep_checkpoints)
        return last_ckpt

    def check(read: dict[str, Any], epoch: int) -> None:
        if read["bad_step"] >= 0:
            logger.end_epoch()
            err = NonFiniteLossError(read["bad_step"], epoch + 1, last_ckpt)
            logger.record("nonfinite", step=read["bad_step"], epoch=epoch + 1,
                          checkpoint=None if last_ckpt is None else str(last_ckpt))
            raise err

    history: list[dict[str, Any]] = []
    rows = dp.local_rows(B)
    compile_s = None
    stop = config.max_steps is not None and step >= config.max_steps
    try:
        estimated = False
        for epoch in range(epoch0, config.epochs):
            if stop:
                break
            start_b = batch0 if epoch == epoch0 else 0
            if start_b == 0:
                state = state.reset_epoch_metrics()
            logger.start_epoch(epoch + 1, config.epochs, steps_per_epoch, start_b)
            t_epoch, steps_timed = time.perf_counter(), 0
            b = start_b
            for item in loader.epoch(epoch, start_step=start_b):
                b = item.step
                host_batch = batch_dict(item.data)
                labels = bool(np.issubdtype(host_batch["y"].dtype, np.integer))
                batch = dp.shard_batch(_rows(host_batch, rows), B)
                state = train_step(state, optimizer, batch,
                                   label_smoothing=config.label_smoothing,
                                   regression_loss=config.regression_loss,
                                   ema=config.ema, replicated=dp.replicated)
                step += 1
                logger.advance()
                if compile_s is None:
                    # One sync at the start of the run separates compile time from throughput.
                    jax.block_until_ready(state.step)
                    compile_s = time.perf_counter() - t_epoch
                    logger.record("compiled", step=step, seconds=round(compile_s, 3))
                    t_epoch = time.perf_counter()
                else:
                    steps_timed += 1
                    if not estimated and steps_timed == _PROBE_STEPS:
                        # One sync a few steps in: tell the user what the run will cost.
                        jax.block_until_ready(state.step)
                        per_step = (time.perf_counter() - t_epoch) / steps_timed
                        estimated = True
                        epoch_s = per_step * steps_per_epoch
                        left = per_step * (steps_per_epoch * (config.epochs - epoch) - b - 1)
                        logger.record("estimate", step=step, seconds_per_step=round(per_step, 5),
                                      seconds_per_epoch=round(epoch_s, 1))
                        logger.message(
                            f"about {_duration(epoch_s)} per epoch ({steps_per_epoch} steps of "
                            f"{1e3 * per_step:.0f} ms, evaluation not included); "
                            f"about {_duration(left)} of training left")
                at_end = b == steps_per_epoch - 1
                hit_max = config.max_steps is not None and step >= config.max_steps
                want_ckpt = (config.checkpoint_every is not None
                             and step % config.checkpoint_every == 0)
                if step % config.log_every == 0 or at_end or hit_max or want_ckpt:
                    read = _read(state, labels)
                    check(read, epoch)
                    elapsed = time.perf_counter() - t_epoch
                    shown = {"loss": read["loss"],
                             **({"acc": read["accuracy"]} if labels else {})}
                    if steps_timed and elapsed > 0:
                        shown["ex/s"] = round(steps_timed * B / elapsed, 1)
                    if schedule is not None:
                        shown["lr"] = float(schedule(step - 1))
                    logger.show(step, epoch + 1, shown)
                    logger.record("train", step=step, epoch=epoch + 1, loss=read["loss"],
                                  accuracy=read["accuracy"], examples_per_s=shown.get("ex/s"),
                                  lr=shown.get("lr"))
                    if (want_ckpt or hit_max) and not at_end:
                        save(epoch, b + 1)
                if hit_max:
                    stop = True
                    break
            read = _read(state, labels)
            check(read, epoch)
            train_time = time.perf_counter() - t_epoch
            logger.end_epoch()
            if stop and b != steps_per_epoch - 1:
                break  # a partial epoch (max_steps): its checkpoint was written above
            rec: dict[str, Any] = {
                "epoch": epoch + 1, "step": step, "train_loss": read["loss"],
                "train_accuracy": read["accuracy"], "train_time_s": round(train_time, 3),
                "examples_per_s": round(steps_timed * B / train_time, 1) if steps_timed else None,
            }
            if val_data is not None:
                t0 = time.perf_counter()
                ev = evaluate(_evaluated(state), val_data, batch_size=eval_bs, parallel=dp,
                              regression_loss=config.regression_loss)
                rec.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
                rec.update({f"val_{k}": ev[k] for k in ("macro_f1", "auc", "mse", "mae", "rmse")
                            if k in ev})
                if state.ema_model is not None:  # what the average adds, for the record
                    raw = evaluate(state.model, val_data, batch_size=eval_bs, parallel=dp,
                                   regression_loss=config.regression_loss)
                    rec.update(raw_val_loss=raw["loss"], raw_val_accuracy=raw["accuracy"])
                rec["eval_time_s"] = round(time.perf_counter() - t0, 3)
            path = save(epoch + 1, 0)
            rec["checkpoint"] = None if path is None else str(path)
            history.append(rec)
            logger.record("epoch", **rec)
            logger.message(
                f"epoch {epoch + 1}/{config.epochs}: train loss {rec['train_loss']:.4f}"
                + (f" acc {rec['train_accuracy']:.4f}" if labels else "")
                + (f", val loss {rec['val_loss']:.4f}" if "val_loss" in rec else "")
                + (f" acc {rec['val_accuracy']:.4f}" if "val_loss" in rec and labels else "")
                + (f" (raw weights {rec['raw_val_accuracy']:.4f})"
                   if "raw_val_accuracy" in rec and labels else "")
                + (f" rmse {rec['val_rmse']:.4f}" if "val_rmse" in rec else "")
                + f", {train_time:.1f} s"
                + (f" ({rec['examples_per_s']:.0f} examples/s)" if rec["examples_per_s"] else "")
            )
    except (NonFiniteLossError, CheckpointError, RunDirError):
        raise
    except Exception as e:
        if jax.process_count() > 1 and _is_runtime_failure(e):
            raise PeerFailureError(step, last_ckpt, e) from e
        raise

    logger.record("end", step=step, checkpoint=None if last_ckpt is None else str(last_ckpt))
    return FitResult(model=_evaluated(state), state=state, history=history,
                     checkpoint=last_ckpt, out_dir=run_dir, metrics=logger.path)


def _saved_ema(header: dict[str, Any]) -> Any:
    """The ``ema`` of the run that wrote a checkpoint (``None`` also for files older than it)."""
    config = header.get("train_config")
    return config.get("ema") if isinstance(config, dict) else None


def _evaluated(state: TrainState) -> Any:
    """The model a run evaluates and returns: the parameters' moving average if it keeps one."""
    return state.model if state.ema_model is None else state.ema_model


def restore_model(path: str | os.PathLike, like: Any, *,
                  ema: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """Load only the model from a checkpoint written by :func:`fit` (any optimiser).

    **Arguments:**
    - `path`: the checkpoint.
    - `like`: a model of the same configuration (e.g. ``build_model(config, key=...)``).
    - `ema`: for a run trained with ``TrainConfig.ema``: ``True`` or ``None`` (default) load
      the parameters' moving average (what the run evaluated), ``False`` the last iterate.
      ``True`` for a checkpoint without an average is an error.

    **Returns:** ``(model, header)``. Raises :class:`CheckpointError` like
    :func:`load_checkpoint`.

    **Example:**
    ```python
    model, header = restore_model("runs/x/checkpoints/ckpt-000000100.ljx", fresh_model)
    ```
    """
    has_ema = _saved_ema(read_header(path)) is not None
    if ema and not has_ema:
        raise CheckpointError(path, "it holds no moving average of the parameters (its run "
                              "was trained without ema): load it with ema=False or None")
    if ema is False or not has_ema:
        # TrainState serialises its model first, so the payload starts with the model's leaves.
        return load_checkpoint(path, like, prefix=True)
    (_, averaged), header = load_checkpoint(path, (like, like), prefix=True)
    return averaged, header
