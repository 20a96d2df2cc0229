"""``liquidjax train``: flags → configs (:class:`~liquidjax.data.DataConfig`,
:class:`~liquidjax.models.ModelConfig`, :class:`~liquidjax.train.TrainConfig`) → data → size
checks → :func:`liquidjax.train.fit` → a test evaluation, curves and a summary."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from .. import data as ld, train as lt
from .._config_args import config_values, from_data_fields
from ..models import ModelConfig, build_model, constraint_transforms
from ..plot import save_training_curves
from ._data import IMAGE_DATASETS, RunData, build_data, data_config, resolve_defaults
from ._devices import run_time_errors_as_nan
from ._errors import CliError, RunInterrupted, UsageError
from ._parser import DATA_SKIP

# Sanity limits for sizes that would otherwise exhaust memory or run for hours before failing.
MAX_LAYERS = 64
MAX_ODE_UNFOLDS = 1000
MEMORY_SHARE = 0.5  # of the physical memory, for the parameters, optimiser state, activations
# A training step's compute is estimated as 6 x parameters x examples x sequence steps (a
# multiply-add per weight and step forward, twice that backward), a floor for cells that do
# more per weight (an LTC's unfolds). On CPUs it is timed at CPU_FLOPS_PER_CORE (the row-wise
# CfC-128 runs at about this rate on one core); above MAX_STEP_SECONDS per step a run is
# refused, above SLOW_STEP_SECONDS the estimate is printed before the first step.
CPU_FLOPS_PER_CORE = 25e9
MAX_STEP_SECONDS = 60.0
SLOW_STEP_SECONDS = 1.0


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _sizes_flags(args) -> str:
    return (f"--units {args.units} --layers {args.layers}"
            + (f" --backbone-units {args.backbone_units} --backbone-layers "
               f"{args.backbone_layers}" if args.cell == "cfc" else "")
            + (f" --ensemble {args.ensemble}" if args.ensemble > 1 else ""))


def check_sizes(args) -> None:
    """Refuse sizes this machine cannot hold (or would take hours to start) before anything is
    built: the limit and the value are named."""
    if args.layers > MAX_LAYERS:
        raise UsageError(f"--layers {args.layers} is beyond the limit of {MAX_LAYERS} stacked "
                         "liquid layers")
    if args.cell == "ltc" and args.ode_unfolds > MAX_ODE_UNFOLDS:
        raise UsageError(
            f"--ode-unfolds {args.ode_unfolds} is beyond the limit of {MAX_ODE_UNFOLDS} steps per "
            "observation (each costs a full step; for accuracy use an adaptive solver)")
    u, b = args.units, args.backbone_units
    # Before any model is built (a wiring of 10^9 units would not fit either): parameters per
    # layer, dominated by the recurrent part: LTC ~5 U^2 (w, sigma, mu, erev, mask), CfC
    # ~ (U + B) B + (layers - 1) B^2 + 4 B U; x4 for gradients and Adam's moments.
    per_layer = 5 * u * u if args.cell == "ltc" else (
        (u + b) * b + max(args.backbone_layers - 1, 0) * b * b + 4 * b * u)
    need = 4 * 4 * per_layer * args.layers * args.ensemble
    mem = _physical_memory()
    if mem is not None and need > MEMORY_SHARE * mem:
        gib = 2.0 ** 30
        raise UsageError(
            f"{_sizes_flags(args)} needs about {need / gib:.1f} GiB for the parameters and "
            f"optimiser state alone; this machine has {mem / gib:.1f} GiB (limit "
            f"{MEMORY_SHARE * mem / gib:.1f} GiB): use fewer units or layers")


def _fmt_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x / 1e6:.1f} MFLOP"


def _fmt_time(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def check_compute(args, nparams: int, batch: int, steps: int, total_steps: int,
                  platform: str) -> tuple[str, str | None]:
    """Estimate a training step's compute and memory from the model's parameter count and the
    data's shape; refuse (naming the limit) what cannot fit or would take minutes per step on
    this machine's CPUs. Returns the estimate for the summary line and, for a slow run, a line
    to print before the first step."""
    gib = 2.0 ** 30
    state = (4 + 1) * 4 * nparams  # parameters, gradients, two moments (+ an average), float32
    # Kept for the backward pass, at least: each layer's state and a few intermediates of the
    # same width per example and step.
    activations = 4 * 4 * batch * steps * args.units * args.layers * args.ensemble
    flops = 6.0 * nparams * batch * steps
    cores = _cores()
    seconds = flops / (CPU_FLOPS_PER_CORE * cores) if platform == "cpu" else None
    what = (f"{_sizes_flags(args)} on batches of {batch} x {steps} steps needs about "
            f"{_fmt_flops(flops)} per training step ({nparams} parameters) and "
            f"{(state + activations) / gib:.1f} GiB (parameters and optimiser state "
            f"{state / gib:.1f}, activations {activations / gib:.1f})")
    mem = _physical_memory()
    if mem is not None and state + activations > MEMORY_SHARE * mem:
        raise UsageError(f"{what}: beyond the memory limit of {MEMORY_SHARE * mem / gib:.1f} GiB "
                         f"({MEMORY_SHARE:.0%} of this machine's {mem / gib:.1f} GiB): use fewer "
                         "units or layers or a smaller --batch-size")
    if seconds is not None and seconds > MAX_STEP_SECONDS:
        raise UsageError(
            f"{what}: about {_fmt_time(seconds)} per step on {cores} CPU core(s) at "
            f"{CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s each, beyond the limit of "
            f"{MAX_STEP_SECONDS:.0f} s per step: use fewer units or layers or a smaller "
            "--batch-size")
    slow = None
    if seconds is not None and seconds > SLOW_STEP_SECONDS:
        slow = (f"liquidjax: {what}: about {_fmt_time(seconds)} per step on {cores} CPU "
                f"core(s), {_fmt_time(seconds * total_steps)} for {total_steps} steps "
                "(an estimate; the measured time follows after a few steps)")
    return f"{_fmt_flops(flops)} per step", slow


def _model_config(args, data: RunData | None) -> ModelConfig:
    values = config_values(args, ModelConfig)
    try:
        if args.kind == "conv" and args.dataset not in IMAGE_DATASETS:
            raise ValueError(
                f"--model conv needs an image dataset ({', '.join(IMAGE_DATASETS)})")
        if args.kind == "conv" and args.sequence == "patches":
            raise ValueError("--model conv reads whole images: use --sequence rows or pixels")
        # The data fixes these; given on the command line, they must agree with it. Before
        # the data is read, placeholders let every other field be checked.
        if data is None:
            found = {"input_size": 1, "num_classes": 10, "image_shape": (256, 256, 1),
                     "task": "regression" if values["predict_variance"] else "classification",
                     "target_size": 1, "target_mean": None, "target_std": None,
                     "rocket_length": 64 if values["rocket_features"] else None}
            values.update({k: v for k, v in found.items() if values[k] is None})
        else:
            found = {"input_size": data.input_size, "num_classes": data.num_classes,
                     "image_shape": data.image_shape if args.kind == "conv" else None,
                     "task": data.task, "target_size": data.target_size,
                     "target_mean": data.target_mean, "target_std": data.target_std,
                     "rocket_length": data.sequence_length if values["rocket_features"] else None}
            assert set(found) == set(from_data_fields(ModelConfig))
            for name, actual in found.items():
                given = values[name]
                if actual is None:
                    continue
                if given is not None and given != actual:
                    raise ValueError(f"--{name.replace('_', '-')} {given} does not match "
                                     f"the data ({actual})")
                values[name] = actual
        return ModelConfig(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_resumable(ckpt: Path, mconfig: ModelConfig, dconfig: ld.DataConfig) -> dict[str, Any]:
    """Refuse to resume `ckpt` with other model or data settings; return the model config dict
    to record (the checkpoint's own, so that one written before a newer config field existed,
    whose defaults reproduce it, still resumes)."""
    header = lt.read_header(ckpt)
    saved = header.get("model_config") or {}
    saved_data = header.get("data_config") or {}
    if not isinstance(saved, dict) or not isinstance(saved_data, dict):
        raise lt.CheckpointError(ckpt, "model_config and data_config in its header must be "
                                 "objects")
    try:
        same_model = ModelConfig.from_dict(saved) == mconfig
    except (TypeError, ValueError):
        same_model = False
    try:
        before = ld.DataConfig.from_dict(saved_data)
    except (TypeError, ValueError) as e:
        raise lt.CheckpointError(ckpt, f"unusable data settings in its header ({e})") from None
    diff = [f"{k}: checkpoint has {a!r}, requested {b!r}"
            for k, a, b in before.differences(dconfig)]
    if diff:
        raise lt.CheckpointError(
            ckpt, "it belongs to a run with different data settings: " + "; ".join(diff))
    return saved if same_model else mconfig.to_dict()


def _created_root(out_dir: Path) -> Path | None:
    """The outermost folder of `out_dir` that does not exist yet (what a run would create)."""
    root = None
    p = out_dir.absolute()
    while not p.exists():
        root, p = p, p.parent
    return root


def _checkpoints(out_dir: Path) -> list[Path]:
    d = out_dir / "checkpoints"
    return lt.list_checkpoints(d) if d.is_dir() else []


def _clean_up(created: Path | None, out_dir: Path) -> bool:
    """Remove the run folder this run created if no checkpoint was saved in it; True if so."""
    if created is None or jax.process_index() != 0 or not created.is_dir():
        return False
    if _checkpoints(out_dir):
        return False
    shutil.rmtree(created, ignore_errors=True)
    return True


def train_command(args) -> int:
    """Run ``liquidjax train`` with parsed (recipe-resolved) arguments; returns the exit code."""
    resolve_defaults(args)
    try:
        tconfig = lt.TrainConfig(**config_values(args, lt.TrainConfig))
        parallel = lt.DataParallel.create()
        parallel.check_batch_size(tconfig.batch_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    dconfig = data_config(args, config_values(args, ld.DataConfig, skip=DATA_SKIP))
    eval_batch = tconfig.eval_batch_size or tconfig.batch_size

    out_dir = Path(args.out_dir or f"runs/{args.dataset}-{args.kind}-{args.cell}-{args.wiring}")
    created = _created_root(out_dir)
    existing = _checkpoints(out_dir)
    if existing and args.resume is None:
        raise CliError(
            f"{out_dir} already holds checkpoints (newest: {existing[-1].name}); pass --resume to "
            "continue that run, or choose another --out-dir (nothing was overwritten)")
    resume: Path | None = None
    if args.resume == "latest":
        if not existing:
            raise CliError(f"--resume: {out_dir} holds no checkpoint to resume from (looked in "
                           f"{out_dir / 'checkpoints'}); drop --resume to start a new run there, "
                           "or pass --resume CHECKPOINT")
        resume = existing[-1]
    elif args.resume is not None:
        resume = Path(args.resume)
        if not resume.is_file():
            raise CliError(f"--resume {resume}: no such checkpoint file")

    # Check the flags before spending time on the data; the data then fixes the sizes.
    check_sizes(args)
    _model_config(args, None)
    try:
        lt.check_run_dir(out_dir)  # a bad out dir fails now, not after an epoch of training
        return _train(args, tconfig, parallel, dconfig, eval_batch, out_dir, resume)
    except lt.TrainingInterrupted as e:
        raise _interrupted(out_dir, created, e.checkpoint) from None
    except KeyboardInterrupt:
        raise _interrupted(out_dir, created, None) from None
    except BaseException:
        _clean_up(created, out_dir)
        raise


def _interrupted(out_dir: Path, created: Path | None, saved) -> RunInterrupted:
    if saved is not None:
        return RunInterrupted(f"interrupted: saved {saved}; resume with: liquidjax train "
                              f"--resume --out-dir {out_dir}")
    if _clean_up(created, out_dir):
        return RunInterrupted("interrupted before the first checkpoint: nothing was saved "
                              f"(removed {created})")
    found = _checkpoints(out_dir)
    if found:
        return RunInterrupted(f"interrupted: the newest checkpoint is {found[-1]}; resume with: "
                              f"liquidjax train --resume --out-dir {out_dir}")
    return RunInterrupted("interrupted before the first checkpoint: nothing was saved")


def _train(args, tconfig: lt.TrainConfig, parallel, dconfig: ld.DataConfig, eval_batch: int,
           out_dir: Path, resume: Path | None) -> int:
    data = build_data(dconfig, download=not args.no_download)
    n_train = data.sizes["train"]
    if tconfig.batch_size > n_train:
        what = (f"the {dconfig.dataset if dconfig.name is None else dconfig.name} training split"
                + (" after the validation hold-out" if dconfig.val_fraction else "")
                + (" and --limit-examples" if dconfig.limit_examples else ""))
        raise UsageError(f"--batch-size {tconfig.batch_size} is larger than {what} "
                         f"({n_train} examples); pass --batch-size {n_train} or less")
    mconfig = _model_config(args, data)
    train_loader = data.train_loader(tconfig.batch_size, tconfig.seed)
    first = lt.batch_dict(next(iter(train_loader.epoch(0))).data)
    steps = int(first["x"].shape[1]) if first["x"].ndim >= 3 else 1
    # The parameter count from the model's shapes alone: nothing is allocated yet.
    shapes = jax.eval_shape(lambda: build_model(mconfig, key=jax.random.key(0)))
    nparams = sum(x.size for x in jax.tree_util.tree_leaves(shapes)
                  if isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.inexact))
    total_steps = tconfig.epochs * train_loader.num_batches
    if tconfig.max_steps is not None:
        total_steps = min(total_steps, tconfig.max_steps)
    compute, slow = check_compute(args, nparams, tconfig.batch_size, steps, total_steps,
                                  jax.devices()[0].platform)
    model = build_model(mconfig, key=jax.random.key(tconfig.seed))
    if resume is None:  # a checkpoint holds what the model fitted from the data
        model = lt.init_from_data(model, data.eval_loader("train", eval_batch),
                                  key=jax.random.fold_in(jax.random.key(tconfig.seed), 7))
    print(f"liquidjax: {dconfig.dataset} ({data.stats.get('source', 'synthetic')}), {data.task}, "
          f"{args.kind}/{args.cell}/{args.wiring}, {args.units} units"
          + (f", an ensemble of {args.ensemble}" if args.ensemble > 1 else "")
          + f", {nparams} parameters, {compute}, recipe {args.recipe}, "
          f"{parallel.num_devices} device(s) [{jax.devices()[0].platform}], out dir {out_dir}",
          file=sys.stderr, flush=True)
    if slow is not None:
        print(slow, file=sys.stderr, flush=True)
    saved_config = mconfig.to_dict()
    if resume is not None:
        saved_config = _check_resumable(resume, mconfig, dconfig)
    multi_device = parallel.num_devices > 1
    val = data.eval_loader("val", eval_batch) if data.sizes["val"] else None
    try:
        with run_time_errors_as_nan(multi_device):
            result = lt.fit(
                model, train_loader, tconfig, val_data=val, out_dir=out_dir, resume=resume,
                model_config=saved_config,
                extra_header={"data_config": data.header(), "recipe": args.recipe},
                progress=args.progress, parallel=parallel,
                extra_transforms=constraint_transforms(model),
            )
            summary: dict[str, Any] = {}
            if data.sizes["test"]:
                t0 = time.perf_counter()
                ev = lt.evaluate(result.model, data.eval_loader("test", eval_batch),
                                 parallel=parallel)
                summary = {f"test_{k}": v for k, v in ev.items() if k != "count"}
                summary.update(test_examples=ev["count"],
                               eval_time_s=round(time.perf_counter() - t0, 2))
                lt.RunLogger(out_dir, progress="none").record("test", **summary)
    except lt.NonFiniteLossError as e:
        if not multi_device:
            raise
        raise CliError(
            f"{e} With several devices, a run-time check inside the model (an ODE solver's "
            "max_steps or Newton failure, a NaN input) also shows up as a non-finite loss: rerun "
            "with --cpu-devices 1 to see its own message") from None
    if jax.process_index() == 0:
        _print_summary(result, summary, data.task, out_dir)
    return 0


def _print_summary(result, summary: dict[str, Any], task: str, out_dir: Path) -> None:
    curves = save_training_curves(result.metrics, out_dir / "curves.png")
    last = result.history[-1] if result.history else {}
    lines = [f"done: {out_dir}"]
    if last:
        if task == "classification":
            lines.append(
                f"  last epoch {last['epoch']}: train acc {last['train_accuracy']:.4f}"
                + (f", val acc {last['val_accuracy']:.4f}" if "val_accuracy" in last
                   else "") + f", {last['train_time_s']:.1f} s/epoch")
        else:
            lines.append(
                f"  last epoch {last['epoch']}: train loss {last['train_loss']:.4f}"
                + (f", val rmse {last['val_rmse']:.4f}" if "val_rmse" in last else "")
                + f", {last['train_time_s']:.1f} s/epoch")
    if result.stop_reason == "time_budget" and last:
        lines.append(f"  stopped by the time budget after epoch {last['epoch']} "
                     f"(step {last['step']})")
    if result.best_epoch is not None:
        best = next((r for r in result.history if r.get("epoch") == result.best_epoch), {})
        score = (f"val acc {best['val_accuracy']:.4f}" if "val_accuracy" in best
                 and task == "classification" else
                 f"val loss {best['val_loss']:.4f}" if "val_loss" in best else "")
        lines.append(f"  tested: the best validation epoch, {result.best_epoch}"
                     + (f" ({score})" if score else "")
                     + (f", {result.best_checkpoint}" if result.best_checkpoint else ""))
    if summary and task == "classification":
        lines.append(f"  test accuracy {summary['test_accuracy']:.4f} "
                     f"(loss {summary['test_loss']:.4f}, {summary['test_examples']} examples)")
    elif summary:
        lines.append(f"  test rmse {summary['test_rmse']:.4f}, mae {summary['test_mae']:.4f} "
                     f"(loss {summary['test_loss']:.4f}, {summary['test_examples']} examples)")
    lines.append(f"  checkpoint {result.checkpoint}")
    if curves is not None:
        lines.append(f"  curves {curves}")
    lines.append(f"  metrics {out_dir / 'metrics.jsonl'}")
    print("\n".join(lines), flush=True)
