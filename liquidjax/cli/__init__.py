"""The ``liquidjax`` command line: ``liquidjax train`` and ``liquidjax evaluate``.

parse (:mod:`._parser`: every flag derived from :class:`~liquidjax.data.DataConfig`,
:class:`~liquidjax.models.ModelConfig`, :class:`~liquidjax.train.TrainConfig`) → data
(:mod:`._data`, shared by train and evaluate) → :func:`liquidjax.train.fit` (:mod:`._train`) or
:func:`liquidjax.train.evaluate` (:mod:`._evaluate`); devices, processes and signals in
:mod:`._devices`. Strings become objects only here and in :func:`liquidjax.models.build_model`.

```
liquidjax train                                   # CfC on CIFAR-10 rows (tfds)
liquidjax train --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist
liquidjax train --dataset irregular_sine --cell ltc --wiring ncp --units 16 --epochs 3
liquidjax train --dataset ts --data-dir ~/UEA --name BasicMotions     # NAME_TRAIN.ts, NAME_TEST.ts
liquidjax train --resume --out-dir runs/fashion_mnist-cfc      # continue a run
liquidjax evaluate runs/fashion_mnist-cfc --split test
```

Exit codes: 0 success; 1 a run-time failure (data unavailable or corrupt, unusable checkpoint,
non-finite loss), with a one-line message and no traceback; 2 bad command-line usage; 130
interrupted (Ctrl-C or SIGTERM; the message names the checkpoint to resume from).
"""

from __future__ import annotations

import os
import sys

from .._platform import use_cpu_cores
from ..cells._registry import missing_mode_error
from ..data import DatasetFormatError, DatasetUnavailableError
from ..train import CheckpointError, NonFiniteLossError, PeerFailureError, RunDirError
from ._data import TS_DEFAULT_STEPS, TS_MAX_BATCH, TS_STEM_STEPS, TS_TARGET_STEPS, ts_front_end
from ._devices import join_processes, max_cpu_devices, sigterm_as_interrupt
from ._errors import CliError, RunInterrupted, UsageError, one_line
from ._evaluate import evaluate_command
from ._parser import build_parser, build_parsers, ts_only_flags, with_recipe
from ._train import train_command

# The data-dependent --dataset ts defaults are read by the time-series notebook too.
__all__ = ["TS_DEFAULT_STEPS", "TS_MAX_BATCH", "TS_STEM_STEPS", "TS_TARGET_STEPS",
           "build_parser", "main", "ts_front_end", "with_recipe"]


def _check_flags(parsers, args, argv: list[str]) -> None:
    """Flag combinations argparse cannot see: reported as usage errors (exit 2)."""
    train = parsers.train
    stray = ts_only_flags(argv)
    if stray and args.dataset != "ts":
        train.error(
            f"{', '.join(stray)} appl{'ies' if len(stray) == 1 else 'y'} to --dataset ts "
            f"only, not --dataset {args.dataset}: drop {'it' if len(stray) == 1 else 'them'}")
    if args.dataset == "ts" and (why := missing_mode_error(args.cell, args.missing)):
        train.error(why)


def _report(command: str, text: str) -> None:
    print(f"liquidjax {command}: error: {one_line(text)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``liquidjax`` console script (and ``python -m liquidjax``).

    **Arguments:** `argv` — the arguments (default ``sys.argv[1:]``).

    **Returns:** the exit code (0 success, 1 run-time failure, 2 usage error, 130 interrupted).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parsers = build_parsers()
    args = parsers.top.parse_args(argv)  # exits with code 2 and the valid choices on bad usage
    if args.command == "train":
        _check_flags(parsers, args, argv)
        args = with_recipe(args, argv)
    # Before any JAX backend exists: one CPU device per core, so data parallelism uses them all.
    if args.cpu_devices is not None and args.cpu_devices > max_cpu_devices():
        parsers.of(args.command).error(
            f"--cpu-devices {args.cpu_devices} is beyond the limit of {max_cpu_devices()} for "
            "this machine (4 per core; more devices than cores gives no speed)")
    use_cpu_cores(args.cpu_devices)
    if args.command == "train":
        multi = (args.coordinator, args.num_processes, args.process_id)
        if any(v is not None for v in multi):
            if None in multi or not 0 <= args.process_id < args.num_processes:
                parsers.train.error(
                    "a multi-host run needs --coordinator HOST:PORT, --num-processes N and "
                    "--process-id I (0 <= I < N), the same coordinator on every host")
            err = join_processes(*multi)
            if err is not None:
                _report("train", err)
                return 1
    try:
        with sigterm_as_interrupt():
            return (train_command if args.command == "train" else evaluate_command)(args)
    except UsageError as e:
        parsers.of(args.command).print_usage(sys.stderr)
        _report(args.command, str(e))
        return 2
    except (DatasetUnavailableError, DatasetFormatError, CheckpointError, NonFiniteLossError,
            RunDirError, CliError) as e:
        _report(args.command, str(e))
        return 1
    except PeerFailureError as e:
        _report(args.command, str(e))
        sys.stdout.flush()
        # Skip JAX's distributed shutdown barrier: the dead process cannot join it, and it would
        # end this one with an abort and a C++ stack dump instead of this message.
        os._exit(1)
    except RunInterrupted as e:  # what was saved and how to resume
        print(f"liquidjax {args.command}: {e}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        print(f"liquidjax {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("LIQUIDJAX_TRACEBACK"):
            raise
        text = str(e).strip()
        marker = "equinox.EquinoxRuntimeError: "
        if marker in text:  # a run-time check inside the model (solver, inputs): its message
            _report(args.command, text.split(marker, 1)[1].split("\n\n")[0][:800])
            return 1
        first = text.splitlines()[0] if text else ""
        _report(args.command, f"{type(e).__name__}: {first[:500]} (unexpected; set "
                "LIQUIDJAX_TRACEBACK=1 to see where)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
