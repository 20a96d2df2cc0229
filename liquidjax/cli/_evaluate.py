"""``liquidjax evaluate``: a checkpoint's model on a split of the data its run trained on, rebuilt
from the :class:`~liquidjax.data.DataConfig` in its header."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from .. import data as ld, train as lt
from ..models import ModelConfig, build_model
from ._data import build_data
from ._devices import run_time_errors_as_nan
from ._errors import CliError, UsageError


def _header_configs(path: Path) -> tuple[dict, ModelConfig, ld.DataConfig, tuple | None]:
    """The header's model and data configs (and an image run's normalisation), each checked
    before any work: a bad value is a :class:`~liquidjax.train.CheckpointError`."""
    header = lt.read_header(path)
    try:
        mconfig = ModelConfig.from_dict(header["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise lt.CheckpointError(path, f"no usable model config in its header ({e})") from None
    info = header.get("data_config") or {}
    if not isinstance(info, dict):
        raise lt.CheckpointError(path, f"data_config in its header is {info!r}, not an object")
    try:
        dconfig = ld.DataConfig.from_dict(info)
        stats = None
        if dconfig.family == "images":
            stats = (np.asarray(info["mean"], np.float32), np.asarray(info["std"], np.float32))
    except (KeyError, TypeError, ValueError) as e:
        raise lt.CheckpointError(path, f"unusable data settings in its header ({e})") from None
    return header, mconfig, dconfig, stats


def evaluate_command(args) -> int:
    """Run ``liquidjax evaluate``; returns the exit code."""
    path = Path(args.checkpoint)
    if path.is_dir():
        found = lt.latest_checkpoint(path / "checkpoints") or lt.latest_checkpoint(path)
        if found is None:
            raise CliError(f"no checkpoint found in {path} or {path / 'checkpoints'}")
        path = found
    header, mconfig, dconfig, stats = _header_configs(path)
    if args.data_dir is not None:  # another copy of the same data
        dconfig = ld.DataConfig.from_dict({**dconfig.to_dict(), "data_dir": args.data_dir})
    parallel = lt.DataParallel.create()
    try:
        parallel.check_batch_size(args.batch_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    model, _ = lt.restore_model(path, build_model(mconfig, key=jax.random.key(0)),
                                model_config=mconfig, ema=False if args.no_ema else None)
    data = build_data(dconfig, download=not args.no_download, image_stats=stats)
    if data.sizes[args.split] == 0:
        raise CliError(f"the {args.split} split of "
                       f"{dconfig.name or dconfig.dataset} is empty")
    loader = data.eval_loader(args.split, args.batch_size, args.limit_examples)
    t0 = time.perf_counter()
    with run_time_errors_as_nan(parallel.num_devices > 1):  # a failing check must not hang
        ev = lt.evaluate(model, loader, parallel=parallel)
    dt = time.perf_counter() - t0
    if not np.isfinite(ev["loss"]):
        raise CliError(
            f"{path}: the loss on the {args.split} split is not finite"
            + (" (with several devices a failing run-time check inside the model, such as a "
               "solver's max_steps, also shows up this way: rerun on one device, with "
               "XLA_FLAGS=--xla_force_host_platform_device_count=1, to see its own message)"
               if parallel.num_devices > 1 else ""))
    shown = (f"accuracy {ev['accuracy']:.4f}" if mconfig.task == "classification"
             else f"rmse {ev['rmse']:.4f}, mae {ev['mae']:.4f}")
    print(f"{path}: {dconfig.dataset} {args.split}: {shown}, loss {ev['loss']:.4f} "
          f"({ev['count']} examples, step {header.get('step')}, {dt:.1f} s)", flush=True)
    return 0
