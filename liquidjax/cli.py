"""The ``liquidjax`` command line: ``liquidjax train`` and ``liquidjax evaluate``.

Thin by design: parse → configs (:class:`~liquidjax.models.ModelConfig`,
:class:`~liquidjax.train.TrainConfig`) → data (:mod:`liquidjax.data`) → :func:`liquidjax.train.fit`.
Strings become objects only here and in :func:`liquidjax.models.build_model`.

```
liquidjax train                                   # CfC on CIFAR-10 rows (tfds)
liquidjax train --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist
liquidjax train --dataset irregular_sine --cell ltc --wiring ncp --units 16 --epochs 3
liquidjax train --dataset ts --data-dir ~/UEA --name BasicMotions     # NAME_TRAIN.ts, NAME_TEST.ts
liquidjax train --resume --out-dir runs/fashion_mnist-cfc      # continue a run
liquidjax evaluate runs/fashion_mnist-cfc --split test
```

Exit codes: 0 success; 1 a run-time failure (data unavailable or corrupt, unusable checkpoint,
non-finite loss), with a clear message and no traceback; 2 bad command-line usage; 130
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import choice_arg, float_arg, int_arg
from ._config_args import add_config_arguments, config_values, from_data_fields
from .data._dataset import KNOWN_DATASETS
from .data._sequences import SEQUENCE_MODES
from .data._timeseries import MISSING_MODES
from .models import ModelConfig

IMAGE_DATASETS: tuple[str, ...] = tuple(KNOWN_DATASETS)
SYNTHETIC_DATASETS: tuple[str, ...] = ("irregular_sine", "two_spirals")
TS_DATASETS: tuple[str, ...] = ("ts",)
DATASETS: tuple[str, ...] = IMAGE_DATASETS + SYNTHETIC_DATASETS + TS_DATASETS
# --dataset ts defaults: archives are often tiny (tens of training series), so the batch is
# capped, the epochs are chosen for a fixed number of optimisation steps, the whole training
# file trains (a hold-out of 3-4 series neither selects a model nor measures one) and long
# series are read in patches of consecutive observations, about TS_TARGET_STEPS per series
# (docs/time_series.md: read one observation per step, 150-251 of them, the CfC fell to a third
# of 1-NN-DTW's accuracy on ArrowHead and the LTC did not fit its training set).
TS_DEFAULT_STEPS = 500
TS_MAX_BATCH = 32
TS_TARGET_STEPS = 32
SPLITS: tuple[str, ...] = ("test", "val", "train")
# Synthetic tasks: examples generated per split (each split from its own seed).
SYNTHETIC_SIZES = {"train": 2048, "val": 512, "test": 512}
SYNTHETIC_CLASSES = {"irregular_sine": 3, "two_spirals": 2}
_VAL_SEED = 0  # the validation hold-out does not move with --seed


class _CliError(Exception):
    """A run-time failure reported as one message and exit code 1."""


class _UsageError(Exception):
    """A bad combination of flags (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``liquidjax`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="liquidjax",
        description="Train and evaluate liquid neural networks (LTC, CfC, NCP) in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate}")
    sub.required = True
    pos = int_arg(1)

    t = sub.add_parser("train", help="train a model", usage="liquidjax train [options]",
                       description=(
        "Train a liquid model. With no flags: CIFAR-10 (tfds) read row by row, with the best "
        "row-wise recipe measured (--recipe cfc_rows: CfC-128 + mixed memory)."))
    from .recipes import DEFAULT_IMAGE_RECIPE, DEFAULT_TS_RECIPES, RECIPES

    t.add_argument(
        "--recipe", type=choice_arg(tuple(RECIPES) + ("none", "auto")), default="auto",
        help="a named, versioned recipe of settings (explicit flags override it): "
        # argparse %-formats help texts: a summary's "%" must be doubled
        + "; ".join(f"{r.name}: {r.summary}".replace("%", "%%") for r in RECIPES.values())
        + f". Default 'auto': {DEFAULT_IMAGE_RECIPE} for image datasets; for --dataset ts "
        + ", ".join(f"{v} with --cell {k}" for k, v in DEFAULT_TS_RECIPES.items())
        + "; none otherwise")
    g = t.add_argument_group("data")
    g.add_argument("--dataset", type=choice_arg(DATASETS, {"fashion": "fashion_mnist",
                                                        "fmnist": "fashion_mnist"}),
                   default="cifar10", help=f"one of: {', '.join(DATASETS)} (default cifar10)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the original files or a tfds data dir (default: tfds's); "
                        "--dataset ts: the folder holding NAME_TRAIN.ts and NAME_TEST.ts")
    g.add_argument("--name", default=None,
                   help="--dataset ts: the UEA/UCR problem name (reads NAME_TRAIN.ts and "
                        "NAME_TEST.ts from --data-dir or --data-dir/NAME)")
    g.add_argument("--missing", type=choice_arg(MISSING_MODES), default="features",
                   help="--dataset ts: how missing values (NaN, '?') reach the model: features "
                        "(last observation carried forward + observation mask + time since the "
                        "last observation, GRU-D style; causal; default), path (each channel "
                        "linearly interpolated through its observations + observation mask; "
                        "reads ahead to the next observation) or zero")
    g.add_argument("--sequence", type=choice_arg(SEQUENCE_MODES), default="rows",
                   help="how images become sequences: rows, pixels or patches (default rows)")
    g.add_argument("--patch-size", type=pos, default=4, help="patch size for --sequence patches")
    g.add_argument("--val-fraction", type=float_arg(0.0, 1.0, max_open=True), default=None,
                   help="share of the training split held out for validation (default 0.1; "
                        "--dataset ts: 0, the whole training file trains)")
    g.add_argument("--patch-length", type=_patch_length_arg, default="auto",
                   help="--dataset ts: consecutive observations joined into one model step "
                        "(default auto: the longest training series in about "
                        f"{TS_TARGET_STEPS} steps, 1 for series up to {TS_TARGET_STEPS} long)")
    g.add_argument("--augment", action="store_true",
                   help="random crop (after zero padding) + horizontal flip of training images")
    g.add_argument("--augment-padding", type=int_arg(0), default=4,
                   help="--augment: crop padding in pixels (default 4; 0 = flips only)")
    g.add_argument("--limit-examples", type=pos, default=None,
                   help="use only the first N examples of each split (quick runs)")
    g.add_argument("--no-download", action="store_true",
                   help="never try to download; fail at once if the data is not local")

    g = t.add_argument_group(
        "model", "every field of liquidjax.models.ModelConfig (the data fixes input-size, "
        "num-classes, image-shape, task and target-size; given, they must agree with it)")
    add_config_arguments(g, ModelConfig)

    g = t.add_argument_group("training")
    g.add_argument("--epochs", type=pos, default=None,
                   help="passes over the training data (default 10; --dataset ts: enough for "
                        f"about {TS_DEFAULT_STEPS} steps)")
    g.add_argument("--batch-size", type=pos, default=None,
                   help="global batch size (default 128; --dataset ts: at most 32 and no more "
                        "than the training examples)")
    g.add_argument("--lr", type=float_arg(0.0, min_open=True), default=2e-3,
                   help="peak learning rate (AdamW, warm-up + cosine; default 2e-3)")
    g.add_argument("--weight-decay", type=float_arg(0.0), default=1e-4)
    g.add_argument("--clip-norm", type=float_arg(0.0, min_open=True), default=1.0)
    g.add_argument("--label-smoothing", type=float_arg(0.0, 1.0, max_open=True), default=0.0)
    g.add_argument("--ema", type=float_arg(0.0, 1.0, min_open=True, max_open=True),
                   default=None, metavar="DECAY",
                   help="keep an exponential moving average of the parameters with this decay "
                        "(e.g. 0.999), checkpointed; it is what is validated, tested and "
                        "evaluated (default: none)")
    g.add_argument("--seed", type=int_arg(0), default=0)
    g.add_argument("--cpu-devices", type=int_arg(1), default=None,
                   help="CPU only: XLA host devices to shard the batch over (default: one per "
                        "core, as XLA:CPU runs each of its loops on one thread; one for an LTC "
                        "with the fused solver or a CfC with one backbone layer, whose compiled "
                        "kernels use every core)")
    g.add_argument("--max-steps", type=pos, default=None,
                   help="stop after N steps in total (quick runs)")
    g.add_argument("--checkpoint-every", type=pos, default=None,
                   help="also checkpoint every N steps (default: every epoch)")
    g.add_argument("--log-every", type=pos, default=50,
                   help="read metrics from the device every N steps (default 50)")

    g = t.add_argument_group("output")
    g.add_argument("--out-dir", default=None,
                   help="run directory (default runs/<dataset>-<model>-<cell>-<wiring>)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out-dir, or from CHECKPOINT")
    g.add_argument("--progress", type=choice_arg(("auto", "bar", "plain", "none")),
                   default="auto",
                   help="progress display: auto (bar on a terminal), bar, plain, none")

    g = t.add_argument_group("multi-host (one `liquidjax train` per host, same flags)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0 (jax.distributed.initialize); every process "
                        "passes the same one")
    g.add_argument("--num-processes", type=pos, default=None, help="processes in the run")
    g.add_argument("--process-id", type=int_arg(0), default=None,
                   help="this process's index, 0 .. num-processes - 1 (0 writes the outputs)")

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a split",
                       usage="liquidjax evaluate CHECKPOINT [--split SPLIT] [options]",
                       description="Report the loss and accuracy of a checkpoint on a split.")
    e.add_argument("checkpoint", help="a checkpoint file, or a run directory (newest checkpoint)")
    e.add_argument("--split", type=choice_arg(SPLITS), default="test",
                   help="test, val or train (default test)")
    e.add_argument("--data-dir", default=None, help="where the data is (default: as trained)")
    e.add_argument("--batch-size", type=pos, default=256)
    e.add_argument("--limit-examples", type=pos, default=None,
                   help="evaluate only the first N examples of the split")
    e.add_argument("--no-download", action="store_true")
    e.add_argument("--no-ema", action="store_true",
                   help="for a run trained with --ema: evaluate its last iterate, not the "
                        "moving average of its parameters")
    e.set_defaults(cpu_devices=None)
    return parser


# ------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class _Data:
    train: Any  # a liquidjax.data.Loader
    val: Any
    test_split: Any  # () -> eval Loader, built lazily
    input_size: int
    num_classes: int
    image_shape: tuple[int, int, int] | None
    info: dict[str, Any]
    task: str = "classification"
    target_size: int = 1
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None


def _limit_image(ds, limit: int | None):
    if limit is None or limit >= len(ds):
        return ds
    return ds.take(np.arange(limit))


def _synthetic(name: str, split: str, seed: int, limit: int | None):
    from . import data as ld

    fn = {"irregular_sine": ld.irregular_sine, "two_spirals": ld.two_spirals}[name]
    n = SYNTHETIC_SIZES[split]
    if limit is not None:
        n = min(n, limit)
    offset = {"train": 0, "val": 1, "test": 2}[split]
    return fn(n, seed=1000 * seed + offset)


def _patch_length_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int_arg(1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or an integer >= 1, got {text!r}") from None


def _ts_task(data_dir, name, val_fraction, missing, limit, patch_length):
    from . import data as ld

    task = ld.load_ts_task(data_dir, name, val_fraction=val_fraction, seed=_VAL_SEED,
                           missing=missing, patch_length=patch_length)
    if limit is not None:
        task = dataclasses.replace(task, **{
            k: getattr(task, k).take(np.arange(min(limit, len(getattr(task, k)))))
            for k in ("train", "val", "test")})
    return task


def _check_batch_fits(batch_size: int, n: int, what: str) -> None:
    if batch_size > n:
        raise _UsageError(f"--batch-size {batch_size} is larger than {what} ({n} examples); "
                          f"pass --batch-size {n} or less")


# Sanity limits for sizes that would otherwise exhaust memory or run for hours before failing.
MAX_LAYERS = 64
MAX_ODE_UNFOLDS = 1000
_MEMORY_SHARE = 0.5  # of the physical memory, for the parameters and optimiser state


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _runs_compiled_kernel(args) -> bool:
    """Whether the model's recurrence runs one of liquidjax's compiled CPU kernels (the LTC's
    fused step; a CfC's sequence, with or without mixed memory). Each uses every core of its
    device, and XLA's SPMD partitioner does not split it: over several CPU devices each device
    ran the whole batch's kernel (the row-wise LTC-64 train step: 147 ms over 2 devices, 70 ms on
    one; the CfC-64's 9.9 against 3.5 ms)."""
    if getattr(args, "kind", "sequence") not in ("sequence", "conv"):
        return False
    if args.cell == "ltc":
        return getattr(args, "solver", None) in (None, "fused")
    if args.cell == "cfc":
        return (getattr(args, "wiring", "fc") == "fc"
                and getattr(args, "cfc_mode", "default") in ("default", "no_gate")
                and getattr(args, "backbone_layers", 1) == 1)
    return False


def _max_cpu_devices() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(8, 4 * (cores or 1))


def _check_sizes(args) -> None:
    """Refuse sizes this machine cannot hold (or would take hours to start) before anything is
    built: the limit and the value are named."""
    if args.layers > MAX_LAYERS:
        raise _UsageError(f"--layers {args.layers} is beyond the limit of {MAX_LAYERS} stacked "
                          "liquid layers")
    if args.cell == "ltc" and args.ode_unfolds > MAX_ODE_UNFOLDS:
        raise _UsageError(
            f"--ode-unfolds {args.ode_unfolds} is beyond the limit of {MAX_ODE_UNFOLDS} steps per "
            "observation (each costs a full step; for accuracy use an adaptive solver)")
    u, b = args.units, args.backbone_units
    # Parameters per layer, dominated by the recurrent part: LTC ~5 U^2 (w, sigma, mu, erev,
    # mask), CfC ~ (U + B) B + (layers - 1) B^2 + 4 B U; x4 for gradients and Adam's moments.
    per_layer = 5 * u * u if args.cell == "ltc" else (
        (u + b) * b + max(args.backbone_layers - 1, 0) * b * b + 4 * b * u)
    need = 4 * 4 * per_layer * args.layers * args.ensemble
    mem = _physical_memory()
    if mem is not None and need > _MEMORY_SHARE * mem:
        gib = 2.0 ** 30
        raise _UsageError(
            f"--units {u} --layers {args.layers}"
            + (f" --backbone-units {b}" if args.cell == "cfc" else "")
            + (f" --ensemble {args.ensemble}" if args.ensemble > 1 else "")
            + f" needs about {need / gib:.1f} GiB for the parameters and optimiser state alone; "
            f"this machine has {mem / gib:.1f} GiB (limit {_MEMORY_SHARE * mem / gib:.1f} GiB): "
            "use fewer units or layers")


def _load_data(args, batch_size: int, eval_batch: int) -> _Data:
    from . import data as ld

    if args.dataset == "ts":
        if args.data_dir is None or args.name is None:
            raise _UsageError("--dataset ts needs --data-dir FOLDER and --name NAME (the files "
                              "FOLDER/NAME_TRAIN.ts and FOLDER/NAME_TEST.ts)")
        task = _ts_task(args.data_dir, args.name, args.val_fraction, args.missing,
                        args.limit_examples, args.patch_length)
        if len(task.train) < batch_size:
            raise _UsageError(f"--batch-size {batch_size} is larger than the training part of "
                              f"{args.name} ({len(task.train)} examples after the validation "
                              "hold-out); pass a smaller --batch-size")
        norm = task.normalizer
        return _Data(
            train=task.train_loader(batch_size, seed=args.seed),
            val=task.eval_loader("val", eval_batch) if len(task.val) else None,
            test_split=lambda: task.eval_loader("test", eval_batch),
            input_size=task.input_size,
            num_classes=task.train.num_classes,
            image_shape=None,
            info={"dataset": "ts", "name": args.name,
                  "data_dir": str(Path(args.data_dir).resolve()),
                  "val_fraction": args.val_fraction, "val_seed": _VAL_SEED,
                  "missing": args.missing, "limit_examples": args.limit_examples,
                  "patch_length": args.patch_length,
                  "task": task.task, "time_scale": task.time_scale,
                  "normalization": task.normalization,
                  "mean": None if norm is None else norm.mean.tolist(),
                  "std": None if norm is None else norm.std.tolist(),
                  "source": task.train.source},
            task=task.task,
            target_size=task.train.target_size if task.task == "regression" else 1,
            target_mean=task.target_mean,
            target_std=task.target_std,
        )
    if args.dataset in SYNTHETIC_DATASETS:
        train = _synthetic(args.dataset, "train", args.seed, args.limit_examples)
        val = _synthetic(args.dataset, "val", args.seed, args.limit_examples)
        num_classes = SYNTHETIC_CLASSES[args.dataset]
        _check_batch_fits(batch_size, len(train.x), f"the {args.dataset} training split")
        return _Data(
            train=ld.Loader(train, batch_size, seed=args.seed, shuffle=True, drop_last=True),
            val=ld.Loader(val, eval_batch, shuffle=False, drop_last=False),
            test_split=None,
            input_size=int(train.x.shape[-1]),
            num_classes=num_classes,
            image_shape=None,
            info={"dataset": args.dataset, "synthetic_seed": args.seed,
                  "limit_examples": args.limit_examples},
        )
    if args.kind == "conv" and args.sequence == "patches":
        raise _UsageError("--model conv reads whole images: use --sequence rows or pixels")
    try:
        task = ld.load_image_task(
            args.dataset, data_dir=args.data_dir, download=not args.no_download,
            mode=args.sequence, patch_size=args.patch_size, val_fraction=args.val_fraction,
            seed=_VAL_SEED,
        )
    except ld.DatasetFormatError:
        raise
    except ValueError as e:  # the data cannot be used as asked (e.g. constant images)
        raise _CliError(f"{args.dataset}: {e}") from None
    task = dataclasses.replace(task, train=_limit_image(task.train, args.limit_examples),
                               val=_limit_image(task.val, args.limit_examples),
                               test=_limit_image(task.test, args.limit_examples))
    seq = task.sequencer
    try:
        seq.sequence_shape(task.train.image_shape)
    except ValueError as e:
        raise _UsageError(f"--sequence {args.sequence} --patch-size {args.patch_size}: {e}; "
                          "choose a patch size that divides it") from None
    _check_batch_fits(batch_size, len(task.train),
                      f"the {args.dataset} training split after the validation hold-out"
                      + (" and --limit-examples" if args.limit_examples else ""))
    val = task.eval_loader("val", eval_batch) if len(task.val) else None
    return _Data(
        train=task.train_loader(batch_size, seed=args.seed, augment=args.augment,
                                augment_padding=args.augment_padding),
        val=val,
        test_split=lambda: task.eval_loader("test", eval_batch),
        input_size=int(task.sequence_shape[1]),
        num_classes=task.num_classes,
        image_shape=tuple(task.train.image_shape),
        info={"dataset": args.dataset, "data_dir": None if args.data_dir is None else str(
            Path(args.data_dir).resolve()), "sequence": args.sequence,
            "patch_size": args.patch_size, "val_fraction": args.val_fraction,
            "val_seed": _VAL_SEED, "limit_examples": args.limit_examples,
            "augment": args.augment, "augment_padding": args.augment_padding,
            "mean": seq.mean.tolist(), "std": seq.std.tolist(), "source": task.train.source},
    )


# ----------------------------------------------------------------------------------------- train
# Data settings that change the training trajectory, with the value a checkpoint written before
# the setting existed implies.
_DATA_TRAJECTORY = {"dataset": None, "sequence": None, "patch_size": None, "val_fraction": None,
                    "limit_examples": None, "augment": False, "augment_padding": 4,
                    "name": None, "missing": None, "patch_length": 1}


def _check_resumable(ckpt: Path, mconfig, data_info: dict[str, Any]) -> dict[str, Any]:
    """Refuse to resume `ckpt` with other model or data settings; return the model config dict
    to record (the checkpoint's own, so that one written before a newer config field existed,
    whose defaults reproduce it, still resumes)."""
    from . import train as lt
    from .models import ModelConfig

    header = lt.read_header(ckpt)
    saved = header.get("model_config") or {}
    try:
        same_model = ModelConfig.from_dict(saved) == mconfig
    except (TypeError, ValueError):
        same_model = False
    saved_data = header.get("data_config") or {}
    if not isinstance(saved, dict) or not isinstance(saved_data, dict):
        raise lt.CheckpointError(ckpt, "model_config and data_config in its header must be "
                                 "objects")
    compared = dict(_DATA_TRAJECTORY)
    if not (data_info.get("augment") or saved_data.get("augment")):
        del compared["augment_padding"]  # the crop padding matters only with --augment
    diff = [
        f"{k}: checkpoint has {saved_data.get(k, d)!r}, requested {data_info.get(k, d)!r}"
        for k, d in compared.items()
        if k in data_info and saved_data.get(k, d) != data_info.get(k, d)
    ]
    if diff:
        raise lt.CheckpointError(
            ckpt, "it belongs to a run with different data settings:\n  " + "\n  ".join(diff)
        )
    return saved if same_model else mconfig.to_dict()


def _default_sizes(args) -> None:
    """Fill in the data-dependent defaults that were not given: --val-fraction, --epochs and
    --batch-size, and for --dataset ts --patch-length (see TS_DEFAULT_STEPS, TS_TARGET_STEPS);
    print the --dataset ts ones."""
    import jax

    from . import data as ld

    if args.val_fraction is None:
        args.val_fraction = 0.0 if args.dataset == "ts" else 0.1
    if args.dataset != "ts":
        args.epochs = 10 if args.epochs is None else args.epochs
        args.batch_size = 128 if args.batch_size is None else args.batch_size
        return
    if args.data_dir is None or args.name is None:
        raise _UsageError("--dataset ts needs --data-dir FOLDER and --name NAME (the files "
                          "FOLDER/NAME_TRAIN.ts and FOLDER/NAME_TEST.ts)")
    train = ld.read_ts(ld.find_ts_files(args.data_dir, args.name)[0])
    n = len(train)
    if args.limit_examples is not None:
        n = min(n, args.limit_examples)
    longest = int(train.lengths[:n].max())
    chosen = []
    if args.patch_length == "auto":
        args.patch_length = -(-longest // TS_TARGET_STEPS)
        chosen.append(f"patch length {args.patch_length} (the longest training series, "
                      f"{longest} observations, in {-(-longest // args.patch_length)} steps)")
    n_fit = max(n - round(args.val_fraction * n), 1)
    if args.batch_size is None:
        ndev = jax.device_count()
        args.batch_size = max(ndev, min(TS_MAX_BATCH, n_fit) // ndev * ndev)
        chosen.append(f"batch {args.batch_size}")
    if args.epochs is None:
        steps = max(n_fit // args.batch_size, 1)
        args.epochs = int(min(max(-(-TS_DEFAULT_STEPS // steps), 10), 1000))
        chosen.append(f"{args.epochs} epochs of {steps} step{'s' if steps > 1 else ''}")
    chosen.append("no validation hold-out" if args.val_fraction == 0 else
                  f"validation hold-out {args.val_fraction}")
    print(f"liquidjax: --dataset ts defaults for {args.name} ({n} training series): "
          + ", ".join(chosen), file=sys.stderr, flush=True)


def _run_time_errors_as_nan() -> None:
    """Make failing run-time checks (``eqx.error_if``: a solver's max_steps, a NaN input) return
    NaN instead of raising, for a data-parallel run over several devices.

    Raised inside a sharded step, such an error stops one device while the others wait in the
    next all-reduce: XLA:CPU aborts ~40 s later with a C++ stack dump (exit 134). As NaN, the
    failure reaches the trainer's non-finite-loss guard, which stops cleanly, naming the step and
    the last good checkpoint. (Equinox reads this setting when a check is traced; its public
    switch, the ``EQX_ON_ERROR`` environment variable, is read only when equinox is imported.)
    """
    import equinox._errors as eqx_errors

    eqx_errors.EQX_ON_ERROR = "nan"


@contextlib.contextmanager
def _run_time_error_mode_restored():
    """Leave equinox's run-time error mode as it was found when ``main`` returns.

    ``main`` also runs in-process (notebooks, tests): :func:`_run_time_errors_as_nan` on several
    devices must not turn every later ``eqx.error_if`` in the process (a solver's max_steps)
    into a silent NaN.
    """
    import equinox._errors as eqx_errors

    before = eqx_errors.EQX_ON_ERROR
    try:
        yield
    finally:
        eqx_errors.EQX_ON_ERROR = before


def _train(args) -> int:
    import equinox as eqx
    import jax

    from . import data as ld, train as lt
    from .models import build_model, constraint_transforms

    _default_sizes(args)
    try:
        tconfig = lt.TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
            weight_decay=args.weight_decay, clip_norm=args.clip_norm, seed=args.seed,
            log_every=args.log_every, checkpoint_every=args.checkpoint_every,
            max_steps=args.max_steps, label_smoothing=args.label_smoothing, ema=args.ema,
        )
        parallel = lt.DataParallel.create()
        parallel.check_batch_size(args.batch_size)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    eval_batch = args.batch_size

    out_dir = Path(args.out_dir or f"runs/{args.dataset}-{args.kind}-{args.cell}-{args.wiring}")
    lt.check_run_dir(out_dir)  # a bad out dir fails now, not after an epoch of training
    existing = lt.list_checkpoints(out_dir / "checkpoints")
    if existing and args.resume is None:
        raise _CliError(
            f"{out_dir} already holds checkpoints (newest: {existing[-1].name}); pass --resume to "
            "continue that run, or choose another --out-dir (nothing was overwritten)"
        )

    def model_config(data: _Data | None) -> ModelConfig:
        values = config_values(args, ModelConfig)
        try:
            if args.kind == "conv" and args.dataset not in IMAGE_DATASETS:
                raise ValueError(
                    f"--model conv needs an image dataset ({', '.join(IMAGE_DATASETS)})")
            # The data fixes these; given on the command line, they must agree with it. Before
            # the data is read, placeholders let every other field be checked.
            if data is None:
                found = {"input_size": 1, "num_classes": 10, "image_shape": (256, 256, 1),
                         "task": "regression" if values["predict_variance"] else "classification",
                         "target_size": 1, "target_mean": None, "target_std": None}
                values.update({k: v for k, v in found.items() if values[k] is None})
            else:
                found = {"input_size": data.input_size, "num_classes": data.num_classes,
                         "image_shape": data.image_shape if args.kind == "conv" else None,
                         "task": data.task, "target_size": data.target_size,
                         "target_mean": data.target_mean, "target_std": data.target_std}
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
            raise _UsageError(str(e)) from None

    # Check the flags before spending time on the data; the data then fixes the sizes.
    _check_sizes(args)
    model_config(None)
    data = _load_data(args, args.batch_size, eval_batch)
    mconfig = model_config(data)
    model = build_model(mconfig, key=jax.random.key(args.seed))
    nparams = sum(x.size for x in jax.tree_util.tree_leaves(
        eqx.filter(model, eqx.is_inexact_array)))
    print(f"liquidjax: {args.dataset} ({data.info.get('source', 'synthetic')}), {data.task}, "
          f"{args.kind}/{args.cell}/{args.wiring}, {args.units} units"
          + (f", an ensemble of {args.ensemble}" if args.ensemble > 1 else "")
          + f", {nparams} parameters, "
          f"recipe {args.recipe}, "
          f"{parallel.num_devices} device(s) [{jax.devices()[0].platform}], out dir {out_dir}",
          file=sys.stderr, flush=True)
    resume: Any = None if args.resume is None else (
        "latest" if args.resume == "latest" else Path(args.resume))
    saved_config = mconfig.to_dict()
    if resume is not None:
        ckpt = lt.latest_checkpoint(out_dir / "checkpoints") if resume == "latest" else resume
        if ckpt is not None and Path(ckpt).is_file():
            saved_config = _check_resumable(Path(ckpt), mconfig, data.info)
    multi_device = parallel.num_devices > 1
    if multi_device:
        _run_time_errors_as_nan()
    try:
        result = lt.fit(
            model, data.train, tconfig, val_data=data.val, out_dir=out_dir, resume=resume,
            model_config=saved_config,
            extra_header={"data_config": data.info, "recipe": args.recipe},
            progress=args.progress, parallel=parallel,
            extra_transforms=constraint_transforms(model),
        )
    except lt.NonFiniteLossError as e:
        if not multi_device:
            raise
        raise _CliError(
            f"{e} With several devices, a run-time check inside the model (an ODE solver's "
            "max_steps or Newton failure, a NaN input) also shows up as a non-finite loss: rerun "
            "with --cpu-devices 1 to see its own message") from None
    summary: dict[str, Any] = {}
    if data.test_split is not None or args.dataset in SYNTHETIC_DATASETS:
        loader = data.test_split() if data.test_split is not None else ld.Loader(
            _synthetic(args.dataset, "test", args.seed, args.limit_examples), eval_batch,
            shuffle=False,
            drop_last=False)
        t0 = time.perf_counter()
        ev = lt.evaluate(result.model, loader, parallel=parallel)
        summary = {f"test_{k}": v for k, v in ev.items() if k != "count"}
        summary.update(test_examples=ev["count"], eval_time_s=round(time.perf_counter() - t0, 2))
        lt.RunLogger(out_dir, progress="none").record("test", **summary)
    if jax.process_index() == 0:
        from .plot import save_training_curves

        curves = save_training_curves(result.metrics, out_dir / "curves.png")
        last = result.history[-1] if result.history else {}
        lines = [f"done: {out_dir}"]
        if last:
            if data.task == "classification":
                lines.append(
                    f"  last epoch {last['epoch']}: train acc {last['train_accuracy']:.4f}"
                    + (f", val acc {last['val_accuracy']:.4f}" if "val_accuracy" in last
                       else "") + f", {last['train_time_s']:.1f} s/epoch")
            else:
                lines.append(
                    f"  last epoch {last['epoch']}: train loss {last['train_loss']:.4f}"
                    + (f", val rmse {last['val_rmse']:.4f}" if "val_rmse" in last else "")
                    + f", {last['train_time_s']:.1f} s/epoch")
        if summary and data.task == "classification":
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
    return 0


# -------------------------------------------------------------------------------------- evaluate
def _evaluate(args) -> int:
    import jax

    from . import data as ld, train as lt
    from .models import build_model

    path = Path(args.checkpoint)
    if path.is_dir():
        found = lt.latest_checkpoint(path / "checkpoints") or lt.latest_checkpoint(path)
        if found is None:
            raise _CliError(f"no checkpoint found in {path} or {path / 'checkpoints'}")
        path = found
    header = lt.read_header(path)
    try:
        mconfig = ModelConfig.from_dict(header["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise lt.CheckpointError(path, f"no usable model config in its header ({e})") from None
    info = header.get("data_config") or {}
    if not isinstance(info, dict):
        raise lt.CheckpointError(path, f"data_config in its header is {info!r}, not an object")
    name = info.get("dataset")
    if not isinstance(name, str) or name not in DATASETS:
        raise lt.CheckpointError(path, f"unknown dataset {name!r} in its header")
    try:  # every header value used below, checked before any work
        val_fraction = float(info.get("val_fraction", 0.1))
        patch_length = int(info.get("patch_length", 1))
        if patch_length < 1:
            raise ValueError(f"patch_length {patch_length}")
        val_seed = int(info.get("val_seed", _VAL_SEED))
        synthetic_seed = int(info.get("synthetic_seed", 0))
        seq = None if name == "ts" or name in SYNTHETIC_DATASETS else ld.ImageSequencer(
            np.asarray(info["mean"], np.float32), np.asarray(info["std"], np.float32),
            info.get("sequence", "rows"), int(info.get("patch_size", 4)))
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction {val_fraction}")
    except (KeyError, TypeError, ValueError) as e:
        raise lt.CheckpointError(path, f"unusable data settings in its header ({e})") from None
    parallel = lt.DataParallel.create()
    try:
        parallel.check_batch_size(args.batch_size)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    model, _ = lt.restore_model(path, build_model(mconfig, key=jax.random.key(0)),
                                ema=False if args.no_ema else None)

    if name == "ts":
        data_dir = args.data_dir if args.data_dir is not None else info.get("data_dir")
        task = _ts_task(data_dir, info["name"], val_fraction,
                        info.get("missing", "features"), args.limit_examples, patch_length)
        if len(getattr(task, args.split)) == 0:
            raise _CliError(f"the {args.split} split of {info['name']} is empty")
        loader = task.eval_loader(args.split, args.batch_size)
    elif name in SYNTHETIC_DATASETS:
        split = _synthetic(name, args.split, synthetic_seed, args.limit_examples)
        loader = ld.Loader(split, args.batch_size, shuffle=False, drop_last=False)
    else:
        data_dir = args.data_dir if args.data_dir is not None else info.get("data_dir")
        assert seq is not None
        if args.split == "test":
            ds = ld.load_dataset(name, "test", data_dir, download=not args.no_download)
        else:
            full = ld.load_dataset(name, "train", data_dir, download=not args.no_download)
            train, val = ld.split_validation(full, val_fraction, seed=val_seed)
            ds = val if args.split == "val" else train
        ds = _limit_image(ds, args.limit_examples)
        if len(ds) == 0:
            raise _CliError(f"the {args.split} split of {name} is empty")
        loader = ld.Loader((ds.images, ds.labels), args.batch_size, shuffle=False,
                           drop_last=False, transform=ld.ImageTransform(seq, False))
    t0 = time.perf_counter()
    if parallel.num_devices > 1:
        _run_time_errors_as_nan()  # a failing check must not hang the other devices
    ev = lt.evaluate(model, loader, parallel=parallel)
    dt = time.perf_counter() - t0
    if not np.isfinite(ev["loss"]):
        raise _CliError(
            f"{path}: the loss on the {args.split} split is not finite"
            + (" (with several devices a failing run-time check inside the model, such as a "
               "solver's max_steps, also shows up this way: rerun on one device, with "
               "XLA_FLAGS=--xla_force_host_platform_device_count=1, to see its own message)"
               if parallel.num_devices > 1 else ""))
    shown = (f"accuracy {ev['accuracy']:.4f}" if mconfig.task == "classification"
             else f"rmse {ev['rmse']:.4f}, mae {ev['mae']:.4f}")
    print(f"{path}: {name} {args.split}: {shown}, loss {ev['loss']:.4f} "
          f"({ev['count']} examples, step {header.get('step')}, {dt:.1f} s)", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ main
def _join_processes(coordinator: str, num_processes: int, process_id: int) -> str | None:
    """``jax.distributed.initialize`` for a multi-host run; returns an error message or None."""
    import jax

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


_TS_ONLY = ("--name", "--missing", "--patch-length")


def _ts_only_flags(argv) -> list[str]:
    """The --dataset ts options given on the command line (which other datasets would ignore)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return [f for f in _TS_ONLY if f in given]


def _with_recipe(args, argv):
    """Parse again with the recipe's settings as defaults, so explicit flags still win."""
    from .recipes import DEFAULT_IMAGE_RECIPE, DEFAULT_TS_RECIPES, get_recipe

    name = args.recipe
    if name == "auto":
        name = (DEFAULT_IMAGE_RECIPE if args.dataset in IMAGE_DATASETS
                else DEFAULT_TS_RECIPES.get(args.cell, "none") if args.dataset == "ts"
                else "none")
    if name == "none":
        args.recipe = "none"
        return args
    recipe = get_recipe(name)
    fresh = build_parser()  # defaults set on a parser of its own
    train = fresh._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    train.set_defaults(**recipe.settings)
    args = fresh.parse_args(argv)
    args.recipe = recipe.tag
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``liquidjax`` console script (and ``python -m liquidjax``).

    **Arguments:** `argv` — the arguments (default ``sys.argv[1:]``).

    **Returns:** the exit code (0 success, 1 run-time failure, 2 usage error, 130 interrupted).
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with code 2 and the valid choices on bad usage
    if args.command == "train":
        stray = _ts_only_flags(sys.argv[1:] if argv is None else argv)
        if stray and args.dataset != "ts":
            parser._subparsers._group_actions[0].choices["train"].error(  # type: ignore
                f"{', '.join(stray)} appl{'ies' if len(stray) == 1 else 'y'} to --dataset ts "
                f"only, not --dataset {args.dataset}: drop {'it' if len(stray) == 1 else 'them'}")
        need = {"grud": ("features", "the GRU-D inputs [x~ | m | delta]"),
                "gruode_bayes": ("path", "values and observation mask [x | m]")}
        if args.dataset == "ts" and args.cell in need and args.missing != need[args.cell][0]:
            parser._subparsers._group_actions[0].choices["train"].error(  # type: ignore
                f"--cell {args.cell} reads {need[args.cell][1]}: use --missing "
                f"{need[args.cell][0]} (got --missing {args.missing})")
        args = _with_recipe(args, argv)
    from ._platform import use_cpu_cores

    # Before any JAX backend exists: one CPU device per core, so data parallelism uses them all.
    cpu_devices = args.cpu_devices
    if cpu_devices is not None and cpu_devices > _max_cpu_devices():
        parser._subparsers._group_actions[0].choices[args.command].error(  # type: ignore
            f"--cpu-devices {cpu_devices} is beyond the limit of {_max_cpu_devices()} for this "
            "machine (4 per core; more devices than cores gives no speed)")
    kernel_alone = (cpu_devices is None and args.command == "train"
                    and "device_count" not in os.environ.get("XLA_FLAGS", "")
                    and _runs_compiled_kernel(args))
    if kernel_alone:
        from . import _native

        kernel_alone = _native.available()
    if (use_cpu_cores(1 if kernel_alone else cpu_devices) == 1 and kernel_alone
            and (os.cpu_count() or 1) > 1):
        name = {"ltc": "LTC", "cfc": "CfC"}[args.cell]
        print(f"liquidjax: one CPU device: the {name}'s compiled kernel uses every core "
              "(--cpu-devices N splits the batch over N devices)", file=sys.stderr, flush=True)
    if args.command == "train":
        multi = (args.coordinator, args.num_processes, args.process_id)
        if any(v is not None for v in multi):
            if None in multi or not 0 <= args.process_id < args.num_processes:
                parser._subparsers._group_actions[0].choices["train"].error(  # type: ignore
                    "a multi-host run needs --coordinator HOST:PORT, --num-processes N and "
                    "--process-id I (0 <= I < N), the same coordinator on every host")
            err = _join_processes(*multi)
            if err is not None:
                print(f"liquidjax train: error: {err}", file=sys.stderr)
                return 1
    from .data import DatasetFormatError, DatasetUnavailableError
    from .train import CheckpointError, NonFiniteLossError, PeerFailureError, RunDirError

    try:
        with _run_time_error_mode_restored():
            return _train(args) if args.command == "train" else _evaluate(args)
    except _UsageError as e:
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        sub.print_usage(sys.stderr)
        print(f"liquidjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (DatasetUnavailableError, DatasetFormatError, CheckpointError, NonFiniteLossError,
            RunDirError, _CliError) as e:
        print(f"liquidjax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except PeerFailureError as e:
        print(f"liquidjax {args.command}: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Skip JAX's distributed shutdown barrier: the dead process cannot join it, and it would
        # end this one with an abort and a C++ stack dump instead of this message.
        os._exit(1)
    except KeyboardInterrupt:
        print(f"liquidjax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("LIQUIDJAX_TRACEBACK"):
            raise
        text = str(e).strip()
        marker = "equinox.EquinoxRuntimeError: "
        if marker in text:  # a run-time check inside the model (solver, inputs): its message
            msg = " ".join(text.split(marker, 1)[1].split("\n\n")[0].split())
            print(f"liquidjax {args.command}: error: {msg[:800]}", file=sys.stderr)
            return 1
        first = text.splitlines()[0] if text else ""
        print(f"liquidjax {args.command}: error: {type(e).__name__}: {first[:500]} (unexpected; "
              "set LIQUIDJAX_TRACEBACK=1 to see where)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
