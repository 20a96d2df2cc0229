"""``fit``: the training loop around :func:`~liquidjax.train.train_step` — one epoch after
another, metrics read every few steps, validation and checkpoints at epoch ends, and the ways a
run stops (the epochs done, ``max_steps``, a time budget, a non-finite loss, an interrupt)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from .._records import FitResult
from ..data import Loader
from ..models import AbstractEnsemble, has_fixed_params, has_ssm_params
from ._checkpoint import CheckpointError, save_checkpoint
from ._config import TrainConfig, make_optimizer, make_schedule
from ._data import ArrayData, DataLike, as_loader, batch_dict, check_data_labels, rows_of
from ._errors import (
    NonFiniteLossError,
    PeerFailureError,
    RunWriteError,
    TrainingInterrupted,
    is_runtime_failure,
)
from ._evaluate import evaluate
from ._logging import RunDirError, RunLogger, check_run_dir
from ._resume import evaluated, load_best, resolve_resume, resume_run
from ._sharding import DataParallel
from ._step import TrainState, train_step

_PROBE_STEPS = 5  # timed steps (after compilation) behind the epoch-time estimate
BEST = "best"  # the best-validation checkpoint's file name, without the suffix


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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


@functools.lru_cache(maxsize=64)
def _chained(optimizer: optax.GradientTransformation,
             extra: tuple[optax.GradientTransformation, ...]) -> optax.GradientTransformation:
    # Cached like make_optimizer: the same pieces give the same object, so the jitted step (which
    # hashes the optimiser by identity) is not recompiled when training restarts in-process.
    return optimizer if not extra else optax.chain(optimizer, *extra)


def _score(rec: dict[str, Any], labels: bool) -> tuple[float, ...]:
    """What "better on validation" means (larger is better): accuracy, then loss, for labels;
    the loss for real targets. NaN counts as worst."""
    def finite(v: float) -> float:
        return v if np.isfinite(v) else -np.inf

    if labels:
        return finite(rec["val_accuracy"]), finite(-rec["val_loss"])
    return (finite(-rec["val_loss"]),)


class _Run:
    """One call of :func:`fit`: the state as it evolves, what was written, and the steps of the
    loop (train an epoch, validate, checkpoint, stop)."""

    def __init__(self, *, config: TrainConfig, dp: DataParallel, loader: Loader,
                 optimizer: optax.GradientTransformation, schedule: optax.Schedule | None,
                 logger: RunLogger, ckpt_dir: Path | None, header: dict[str, Any],
                 num_examples: int, val_data: DataLike | None, state: TrainState,
                 last_ckpt: Path | None, best: tuple[Any, ...] | None, started: float):
        self.config, self.dp, self.loader, self.optimizer = config, dp, loader, optimizer
        self.schedule, self.logger, self.ckpt_dir = schedule, logger, ckpt_dir
        self.header, self.n, self.val_data, self.state = header, num_examples, val_data, state
        self.last_ckpt, self.started = last_ckpt, started
        # (score, epoch, state, checkpoint) of the best validation epoch so far (keep_best).
        self.best = best
        self.steps_per_epoch = loader.num_batches
        self.step = int(jax.device_get(state.step))
        self.labels = True
        self.compile_s: float | None = None
        self.estimated = False
        self.history: list[dict[str, Any]] = []
        self.stop_reason = "epochs"

    # ------------------------------------------------------------------------------ outputs
    def record(self, event: str, **fields: Any) -> None:
        try:
            self.logger.record(event, **fields)
        except OSError as e:
            raise RunWriteError(self.logger.path or "metrics", e, self.last_ckpt) from None

    def _write(self, state: TrainState, step: int, epoch: int, batch: int, *,
               name: str | None = None, **extra: Any) -> Path | None:
        if self.ckpt_dir is None:
            return None
        header = dict(self.header, step=step, epoch=epoch, data={
            "epoch": epoch, "batch": batch, "seed": self.loader.seed,
            "num_examples": self.n, "batch_size": self.config.batch_size}, **extra)
        if self.best is not None:
            header["best"] = {"epoch": self.best[1],
                              "score": [v if np.isfinite(v) else None for v in self.best[0]]}
        try:
            return save_checkpoint(self.ckpt_dir, state, header, name=name,
                                   keep=self.config.keep_checkpoints)
        except OSError as e:
            where = self.ckpt_dir / (f"{name}.ljx" if name else f"ckpt-{step:09d}.ljx")
            raise RunWriteError(where, e, self.last_ckpt) from None

    def save(self, epoch: int, batch: int) -> Path | None:
        path = self._write(self.state, self.step, epoch, batch)
        if path is not None:
            self.last_ckpt = path
        return path

    def check(self, read: dict[str, Any], epoch: int) -> None:
        if read["bad_step"] >= 0:
            self.logger.end_epoch()
            self.record("nonfinite", step=read["bad_step"], epoch=epoch + 1,
                        checkpoint=None if self.last_ckpt is None else str(self.last_ckpt))
            raise NonFiniteLossError(read["bad_step"], epoch + 1, self.last_ckpt)

    # ------------------------------------------------------------------------------- the loop
    def train(self, epoch0: int, batch0: int) -> None:
        """Epochs `epoch0`.. from batch `batch0` of the first, until a stop."""
        config = self.config
        stop = config.max_steps is not None and self.step >= config.max_steps
        for epoch in range(epoch0, config.epochs):
            if stop:
                self.stop_reason = "max_steps"
                break
            stop, done, read, train_time, timed = self._epoch(
                epoch, batch0 if epoch == epoch0 else 0)
            if stop:
                self.stop_reason = "max_steps"
            if not done:
                break  # a partial epoch (max_steps): its checkpoint was written in it
            self._end_epoch(epoch, read, train_time, timed)
            elapsed = time.perf_counter() - self.started
            if (config.time_budget is not None and elapsed >= config.time_budget
                    and epoch + 1 < config.epochs and not stop):
                self.stop_reason = "time_budget"
                self.record("stop", reason="time_budget", epoch=epoch + 1, step=self.step,
                            seconds=round(elapsed, 1))
                self.logger.message(
                    f"time budget of {_duration(config.time_budget)} reached after epoch "
                    f"{epoch + 1} of {config.epochs} ({_duration(elapsed)} elapsed): stopping")
                break

    def _epoch(self, epoch: int, start_b: int) -> tuple[bool, bool, dict[str, Any], float, int]:
        """Train one epoch from batch `start_b`. **Returns:** ``(stop, done, read, seconds,
        timed steps)``: whether ``max_steps`` was hit, whether the epoch ran to its end, the
        epoch's metrics read, its training time and the number of steps timed."""
        config, dp, B = self.config, self.dp, self.config.batch_size
        if start_b == 0:
            self.state = self.state.reset_epoch_metrics()
        self.logger.start_epoch(epoch + 1, config.epochs, self.steps_per_epoch, start_b)
        t_epoch, steps_timed = time.perf_counter(), 0
        rows = dp.local_rows(B)
        b, stop = start_b, False
        for item in self.loader.epoch(epoch, start_step=start_b):
            b = item.step
            host_batch = batch_dict(item.data)
            self.labels = bool(np.issubdtype(host_batch["y"].dtype, np.integer))
            batch = dp.shard_batch(rows_of(host_batch, rows), B)
            self.state = train_step(self.state, self.optimizer, batch,
                                    label_smoothing=config.label_smoothing,
                                    regression_loss=config.regression_loss,
                                    ema=config.ema, replicated=dp.replicated)
            self.step += 1
            self.logger.advance()
            if self.compile_s is None:
                # One sync at the start of the run separates compile time from throughput.
                jax.block_until_ready(self.state.step)
                self.compile_s = time.perf_counter() - t_epoch
                self.record("compiled", step=self.step, seconds=round(self.compile_s, 3))
                t_epoch = time.perf_counter()
            else:
                steps_timed += 1
                if not self.estimated and steps_timed == _PROBE_STEPS:
                    self._estimate(epoch, b, (time.perf_counter() - t_epoch) / steps_timed)
            at_end = b == self.steps_per_epoch - 1
            hit_max = config.max_steps is not None and self.step >= config.max_steps
            want_ckpt = (config.checkpoint_every is not None
                         and self.step % config.checkpoint_every == 0)
            if self.step % config.log_every == 0 or at_end or hit_max or want_ckpt:
                self._show(epoch, t_epoch, steps_timed)
                if (want_ckpt or hit_max) and not at_end:
                    self.save(epoch, b + 1)
            if hit_max:
                stop = True
                break
        read = _read(self.state, self.labels)
        self.check(read, epoch)
        train_time = time.perf_counter() - t_epoch
        self.logger.end_epoch()
        done = not stop or b == self.steps_per_epoch - 1
        return stop, done, read, train_time, steps_timed

    def _estimate(self, epoch: int, b: int, per_step: float) -> None:
        # One sync a few steps in: tell the user what the run will cost.
        jax.block_until_ready(self.state.step)
        self.estimated = True
        spe = self.steps_per_epoch
        epoch_s = per_step * spe
        left = per_step * (spe * (self.config.epochs - epoch) - b - 1)
        self.record("estimate", step=self.step, seconds_per_step=round(per_step, 5),
                    seconds_per_epoch=round(epoch_s, 1))
        self.logger.message(
            f"about {_duration(epoch_s)} per epoch ({spe} steps of {1e3 * per_step:.0f} ms, "
            f"evaluation not included); about {_duration(left)} of training left")

    def _show(self, epoch: int, t_epoch: float, steps_timed: int) -> None:
        read = _read(self.state, self.labels)
        self.check(read, epoch)
        elapsed = time.perf_counter() - t_epoch
        shown = {"loss": read["loss"], **({"acc": read["accuracy"]} if self.labels else {})}
        if steps_timed and elapsed > 0:
            shown["ex/s"] = round(steps_timed * self.config.batch_size / elapsed, 1)
        if self.schedule is not None:
            shown["lr"] = float(self.schedule(self.step - 1))
        self.logger.show(self.step, epoch + 1, shown)
        self.record("train", step=self.step, epoch=epoch + 1, loss=read["loss"],
                    accuracy=read["accuracy"], examples_per_s=shown.get("ex/s"),
                    lr=shown.get("lr"))

    def _end_epoch(self, epoch: int, read: dict[str, Any], train_time: float,
                   steps_timed: int) -> dict[str, Any]:
        """Validate, keep the best model, checkpoint and report a finished epoch."""
        config, B, labels = self.config, self.config.batch_size, self.labels
        rec: dict[str, Any] = {
            "epoch": epoch + 1, "step": self.step, "train_loss": read["loss"],
            "train_accuracy": read["accuracy"], "train_time_s": round(train_time, 3),
            "examples_per_s": round(steps_timed * B / train_time, 1) if steps_timed else None,
        }
        if self.val_data is not None:
            rec.update(self._validate())
        best_note = ""
        if config.keep_best and (self.best is None or _score(rec, labels) > self.best[0]):
            self.best = (_score(rec, labels), epoch + 1, self.state, None)
            path = self._write(self.state, self.step, epoch + 1, 0, name=BEST)
            self.best = self.best[:3] + (path,)
            rec["best"] = True
            best_note = " (best so far)"
        path = self.save(epoch + 1, 0)
        rec["checkpoint"] = None if path is None else str(path)
        self.history.append(rec)
        self.record("epoch", **rec)
        self.logger.message(
            f"epoch {epoch + 1}/{config.epochs}: train loss {rec['train_loss']:.4f}"
            + (f" acc {rec['train_accuracy']:.4f}" if labels else "")
            + (f", val loss {rec['val_loss']:.4f}" if "val_loss" in rec else "")
            + (f" acc {rec['val_accuracy']:.4f}" if "val_loss" in rec and labels else "")
            + (f" (raw weights {rec['raw_val_accuracy']:.4f})"
               if "raw_val_accuracy" in rec and labels else "")
            + (f" rmse {rec['val_rmse']:.4f}" if "val_rmse" in rec else "")
            + f", {train_time:.1f} s"
            + (f" ({rec['examples_per_s']:.0f} examples/s)" if rec["examples_per_s"] else "")
            + best_note
        )
        return rec

    def _validate(self) -> dict[str, Any]:
        config, dp = self.config, self.dp
        eval_bs = config.eval_batch_size or config.batch_size
        t0 = time.perf_counter()
        ev = evaluate(evaluated(self.state), self.val_data, batch_size=eval_bs, parallel=dp,
                      regression_loss=config.regression_loss)
        out = {"val_loss": ev["loss"], "val_accuracy": ev["accuracy"]}
        out.update({f"val_{k}": ev[k] for k in ("macro_f1", "auc", "mse", "mae", "rmse")
                    if k in ev})
        if self.state.ema_model is not None:  # what the average adds, for the record
            raw = evaluate(self.state.model, self.val_data, batch_size=eval_bs, parallel=dp,
                           regression_loss=config.regression_loss)
            out.update(raw_val_loss=raw["loss"], raw_val_accuracy=raw["accuracy"])
        out["eval_time_s"] = round(time.perf_counter() - t0, 3)
        return out

    def interrupted(self) -> TrainingInterrupted:
        """Checkpoint the state after the last finished step (the step under way, if any, is
        abandoned: its result was never stored) and say how to go on."""
        self.logger.end_epoch()
        state = jax.block_until_ready(self.state)
        step = int(jax.device_get(state.step))
        path = self.last_ckpt
        if self.ckpt_dir is not None and (path is None or path.name != f"ckpt-{step:09d}.ljx"):
            epoch, batch = divmod(step, self.steps_per_epoch)
            path = self._write(state, step, epoch, batch)
            self.last_ckpt = path
        self.record("interrupted", step=step, checkpoint=None if path is None else str(path))
        return TrainingInterrupted(step, path)


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

    A run stops after ``config.epochs``, at ``config.max_steps``, or at the first epoch end
    past ``config.time_budget`` seconds (it says so). With ``config.keep_best`` the model of
    the epoch with the best validation figures (accuracy, then loss, for labels; the loss for
    real targets) is returned and written to ``checkpoints/best.ljx``. An interrupt
    (``KeyboardInterrupt``) stops the run between two steps, checkpoints it and raises
    :class:`TrainingInterrupted` naming the checkpoint; resuming from it reaches the same
    parameters as a run that was never interrupted.

    **Arguments:**
    - `model`: the model (e.g. from :func:`liquidjax.models.build_model`). A model made of
      independently trained members declares it (:class:`liquidjax.models.AbstractEnsemble`).
    - `train_data`: an :class:`ArrayData` or a training :class:`liquidjax.data.Loader`
      (``drop_last=True``, batch size ``config.batch_size``).
    - `val_data`: optional validation data (an :class:`ArrayData` or an evaluation loader),
      evaluated after every epoch.
    - `config`: a :class:`TrainConfig`.
    - `optimizer`: any ``optax.GradientTransformation`` (default :func:`make_optimizer`; a
      model with state-space parameters, :func:`liquidjax.models.has_ssm_params`, gets their
      own rate, ``config.ssm_learning_rate``).
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
    :class:`CheckpointError` for an unusable checkpoint, :class:`TrainingInterrupted` on an
    interrupt, :class:`RunWriteError` when an output cannot be written (e.g. a full disk: the
    partial file is removed, the last good checkpoint named), and, before training starts,
    :class:`RunDirError` if `out_dir` cannot hold the outputs (:func:`check_run_dir`).

    **Example:**
    ```python
    result = fit(model, train, TrainConfig(epochs=2), val_data=val, out_dir="runs/demo",
                 extra_transforms=constraint_transforms(model))
    ```
    """
    started = time.perf_counter()
    dp = DataParallel.create() if parallel is None else parallel
    B = config.batch_size
    dp.check_batch_size(B)
    dp.check_batch_size(config.eval_batch_size or B, "eval_batch_size")
    if config.keep_best and val_data is None:
        raise ValueError("keep_best=True selects the model by its validation figures: pass "
                         "val_data, or leave keep_best off")
    n = len(train_data) if isinstance(train_data, ArrayData) else train_data.num_examples
    if n < B:
        raise ValueError(f"batch_size={B} is larger than the training set ({n} examples)")
    loader = as_loader(train_data, B, config.seed, train=True)
    check_data_labels(model, loader, {"training data": train_data, "validation data": val_data})
    total_steps = config.epochs * loader.num_batches
    schedule = None
    if optimizer is None:
        optimizer = make_optimizer(config, total_steps,
                                   members=isinstance(model, AbstractEnsemble),
                                   ssm=has_ssm_params(model),
                                   fixed=has_fixed_params(model))
        schedule = make_schedule(config, total_steps)
    optimizer = _chained(optimizer, tuple(extra_transforms))

    if not resume and not getattr(model, "fitted_to_data", True):
        raise ValueError(f"{type(model).__name__} fits part of itself from the training inputs "
                         "(e.g. MiniRocket features) and has not been: call "
                         "liquidjax.train.init_from_data(model, train_data, key=...) before fit")
    run_dir = None if out_dir is None else check_run_dir(out_dir)  # before any work is done
    ckpt_dir = None if run_dir is None else run_dir / "checkpoints"
    logger = RunLogger(run_dir, progress=progress)
    train_key = jax.random.fold_in(jax.random.key(config.seed), 0x7EA1)
    state = TrainState.create(model, optimizer, train_key, ema=config.ema is not None)
    epoch0, batch0, last_ckpt, best = 0, 0, None, None

    ckpt = resolve_resume(resume, ckpt_dir)
    if ckpt is not None:
        fresh = state
        resumed = resume_run(ckpt, fresh, config, seed=loader.seed, num_examples=n,
                             model_config=model_config)
        state, epoch0, batch0, last_ckpt = resumed.state, resumed.epoch, resumed.batch, ckpt
        if config.keep_best and ckpt_dir is not None:
            best = load_best(ckpt_dir / f"{BEST}.ljx", resumed.header, fresh)
        logger.message(f"resumed from {ckpt} (step {resumed.header['step']}, epoch "
                       f"{epoch0 + 1}, batch {batch0})")
    elif resume and ckpt_dir is not None:
        logger.message(f"no checkpoint in {ckpt_dir}; starting from scratch")
    state = dp.replicate(state)

    header_base = {
        "model_config": model_config,
        "train_config": config.to_dict(),
        "num_devices": dp.num_devices,
        **(extra_header or {}),
    }
    run = _Run(config=config, dp=dp, loader=loader, optimizer=optimizer, schedule=schedule,
               logger=logger, ckpt_dir=ckpt_dir, header=header_base, num_examples=n,
               val_data=val_data, state=state, last_ckpt=last_ckpt, best=best, started=started)
    try:
        run.record("start", step=run.step, resumed_from=None if ckpt is None else str(ckpt),
                   devices=[str(d) for d in dp.mesh.devices.flat],
                   steps_per_epoch=loader.num_batches,
                   **{k: v for k, v in header_base.items() if k != "num_devices"})
        with dp.context():  # the compiled kernels then run per device on its rows
            run.train(epoch0, batch0)
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        raise run.interrupted() from e
    except (NonFiniteLossError, CheckpointError, RunDirError):
        raise
    except Exception as e:
        if jax.process_count() > 1 and is_runtime_failure(e):
            raise PeerFailureError(run.step, run.last_ckpt, e) from e
        raise

    result_state, best_epoch, best_path = run.state, None, None
    if run.best is not None:
        _, best_epoch, result_state, best_path = run.best
        logger.message(f"best validation epoch: {best_epoch}; its model is returned"
                       + (f" and saved as {best_path}" if best_path is not None else ""))
    run.record("end", step=run.step, stop_reason=run.stop_reason, best_epoch=best_epoch,
               checkpoint=None if run.last_ckpt is None else str(run.last_ckpt))
    return FitResult(model=evaluated(result_state), state=run.state, history=run.history,
                     checkpoint=run.last_ckpt, out_dir=run_dir, metrics=logger.path,
                     best_epoch=best_epoch, best_checkpoint=best_path,
                     stop_reason=run.stop_reason)
