"""The ``liquidjax`` argument parser: every model, training and data flag derived from its config
dataclass (:class:`~liquidjax.models.ModelConfig`, :class:`~liquidjax.train.TrainConfig`,
:class:`~liquidjax.data.DataConfig`), and the recipes applied as parser defaults."""

from __future__ import annotations

import argparse
import dataclasses
from typing import NamedTuple

from .._checks import choice_arg, int_arg
from .._config_args import add_config_arguments, flag_names
from ..data import DataConfig
from ..models import ModelConfig
from ..recipes import DEFAULT_IMAGE_RECIPE, DEFAULT_TS_RECIPES, RECIPES, get_recipe
from ..train import TrainConfig
from ._data import (
    IMAGE_DATASETS,
    SPLITS,
    TS_DEFAULT_STEPS,
    TS_MAX_BATCH,
    TS_TARGET_STEPS,
    TS_TIME_BUDGET,
    TS_VAL_FRACTION,
)

# Fields the command line fills in from other flags: the synthetic data's seed is --seed.
DATA_SKIP: tuple[str, ...] = ("seed",)


class Parsers(NamedTuple):
    """The top-level parser and its subcommands' (their ``error`` reports a usage error)."""

    top: argparse.ArgumentParser
    train: argparse.ArgumentParser
    evaluate: argparse.ArgumentParser

    def of(self, command: str) -> argparse.ArgumentParser:
        return self.train if command == "train" else self.evaluate


def _patch_length_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int_arg(1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or an integer >= 1, got {text!r}") from None


def build_parsers() -> Parsers:
    """The ``liquidjax`` parser and its ``train`` and ``evaluate`` subparsers."""
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
    t.add_argument(
        "--recipe", type=choice_arg(tuple(RECIPES) + ("none", "auto")), default="auto",
        help="a named, versioned recipe of settings (explicit flags override it): "
        # argparse %-formats help texts: a summary's "%" must be doubled
        + "; ".join(f"{r.name}: {r.summary}".replace("%", "%%") for r in RECIPES.values())
        + f". Default 'auto': {DEFAULT_IMAGE_RECIPE} for image datasets; for --dataset ts "
        + ", ".join(f"{v} with --cell {k}" for k, v in DEFAULT_TS_RECIPES.items())
        + "; none otherwise")

    g = t.add_argument_group("data", "every field of liquidjax.data.DataConfig (saved in each "
                             "checkpoint; evaluate rebuilds the same data from it)")
    add_config_arguments(g, DataConfig, skip=DATA_SKIP, overrides={
        "val_fraction": dict(default=None, shown_default=(
            f"0.1; --dataset ts: {TS_VAL_FRACTION:g}, the whole training file trains (a share "
            "held out there is stratified and selects the best validation epoch)")),
        "patch_length": dict(type=_patch_length_arg, default="auto", shown_default=(
            f"auto: the longest training series in about {TS_TARGET_STEPS} steps, 1 for series "
            f"up to {TS_TARGET_STEPS} long")),
    })
    g.add_argument("--no-download", action="store_true",
                   help="never try to download; fail at once if the data is not local")

    g = t.add_argument_group(
        "model", "every field of liquidjax.models.ModelConfig (the data fixes input-size, "
        "num-classes, image-shape, task and target-size; given, they must agree with it)")
    add_config_arguments(g, ModelConfig, overrides={
        "stem_pool": dict(shown_default=(
            f"1; --dataset ts: the longest training series in about {TS_TARGET_STEPS} liquid "
            "steps")),
    })

    g = t.add_argument_group("training", "every field of liquidjax.train.TrainConfig")
    add_config_arguments(g, TrainConfig, overrides={
        "learning_rate": dict(flags=("--lr", "--learning-rate")),
        "epochs": dict(default=None, shown_default=(
            f"10; --dataset ts: enough for about {TS_DEFAULT_STEPS} steps")),
        "keep_best": dict(default=None, shown_default=(
            "off; --dataset ts: on when --val-fraction holds out a validation split")),
        "time_budget": dict(default=None, shown_default=(
            f"none; --dataset ts: {TS_TIME_BUDGET:g} s")),
        "batch_size": dict(default=None, shown_default=(
            f"128; --dataset ts: at most {TS_MAX_BATCH} and no more than the training "
            "examples")),
    })
    g.add_argument("--cpu-devices", type=int_arg(1), default=None,
                   help="CPU only: XLA host devices to shard the batch over (default: one per "
                        "core, as XLA:CPU runs each of its loops on one thread)")

    g = t.add_argument_group("output")
    g.add_argument("--out-dir", default=None,
                   help="run directory (default runs/<dataset>-<model>-<cell>-<wiring>)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out-dir (which must hold "
                        "one), or from CHECKPOINT")
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
                       description="Report the loss and accuracy of a checkpoint on a split, "
                       "rebuilt from the data settings saved in the checkpoint.")
    e.add_argument("checkpoint", help="a checkpoint file, or a run directory (newest checkpoint)")
    e.add_argument("--split", type=choice_arg(SPLITS), default="test",
                   help="test, val or train (default test)")
    e.add_argument("--data-dir", default=None, help="where the data is (default: as trained)")
    e.add_argument("--batch-size", type=pos, default=256)
    e.add_argument("--limit-examples", type=pos, default=None,
                   help="evaluate only the first N examples of the split (after the run's own "
                        "limit, if it had one)")
    e.add_argument("--no-download", action="store_true")
    e.add_argument("--no-ema", action="store_true",
                   help="for a run trained with --ema: evaluate its last iterate, not the "
                        "moving average of its parameters")
    e.set_defaults(cpu_devices=None)
    return Parsers(parser, t, e)


def build_parser() -> argparse.ArgumentParser:
    """The ``liquidjax`` argument parser."""
    return build_parsers().top


def given_flags(argv: list[str]) -> set[str]:
    """The long options written on a command line (``--flag`` or ``--flag=value``)."""
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def ts_only_flags(argv: list[str]) -> list[str]:
    """The --dataset ts options given on the command line (which other datasets would ignore)."""
    given = given_flags(argv)
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    return [flag for name in DataConfig.ts_only for flag in flag_names(fields[name])
            if flag in given]


def with_recipe(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Parse again with the recipe's settings as defaults, so explicit flags still win."""
    name = args.recipe
    if name == "auto":
        name = (DEFAULT_IMAGE_RECIPE if args.dataset in IMAGE_DATASETS
                else DEFAULT_TS_RECIPES.get(args.cell, "none") if args.dataset == "ts"
                else "none")
    if name == "none":
        args.recipe = "none"
        return args
    recipe = get_recipe(name)
    fresh = build_parsers()  # defaults set on parsers of their own
    fresh.train.set_defaults(**recipe.settings)
    args = fresh.top.parse_args(argv)
    args.recipe = recipe.tag
    return args
