"""Named, versioned training recipes: data, not prose.

A recipe is a set of ``liquidjax train`` settings (argument names as the parser stores them,
the config fields: ``units``, ``mixed_memory``, ``learning_rate``, ...) with a name, a version
and the figure it was measured to reach. The command line applies one with ``--recipe NAME``
(explicit flags still win), and ``benchmarks/fashion_mnist.py`` runs the same objects, so the
documented figures are what a user
gets. Change a recipe's settings only together with its version.

With no ``--recipe``, an image dataset read as sequences gets :data:`DEFAULT_IMAGE_RECIPE` (the
best row-wise recipe measured), ``--dataset ts`` gets the recipe of :data:`DEFAULT_TS_RECIPES`
for its cell (the CfC and LTC measured on the UEA/UCR archives; other cells get the plain
defaults); other datasets get the plain defaults (``--recipe none``). The data-dependent
``--dataset ts`` settings (patch length, batch, epochs) are not part of a recipe: the command
line derives them from the training file and prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One named training recipe.

    **Fields:**
    - `name`, `version`: ``name@version`` is recorded in every run that used it.
    - `summary`: one line for ``--help``.
    - `settings`: ``liquidjax train`` argument destinations -> values.
    - `measured`: what it reached, where (see BENCHMARKS.md).
    - `data`: what it is for: ``"images"`` (read as sequences, or by a conv stem) or ``"ts"``
      (``--dataset ts`` archives).
    """

    name: str
    version: int
    summary: str
    settings: Mapping[str, Any]
    measured: str
    data: Literal["images", "ts"] = "images"

    def __post_init__(self):
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


_RECIPES = (
    Recipe(
        "cfc_rows", 1,
        "CfC-128 + mixed memory on image rows, dropout 0.2, AdamW (wd 0.05), 15 epochs",
        dict(kind="sequence", cell="cfc", units=128, mixed_memory=True, epochs=15,
             learning_rate=2e-3, dropout=0.2, weight_decay=0.05, batch_size=128),
        "Fashion-MNIST rows: 90.87 % test in 339 s of training (2 CPU cores)",
    ),
    Recipe(
        "cfc_rows_fast", 3,
        "CfC-80 + mixed memory on image rows, dropout 0.2, label smoothing 0.1, AdamW "
        "(lr 3e-3, wd 0.05), 14 epochs on one CPU device (short budget: ncps's 90.2 % in "
        "<= 139 s is the aim; this small model trains 1.65x faster on one device than "
        "data-parallel over two)",
        dict(kind="sequence", cell="cfc", units=80, mixed_memory=True, epochs=14,
             learning_rate=3e-3, dropout=0.2, weight_decay=0.05, label_smoothing=0.1,
             batch_size=128, cpu_devices=1),
        "Fashion-MNIST rows: 90.41 % test in 110 s of training (seed 0; seed 1: 90.56 % in "
        "117 s), quiet machine, 2 CPU cores",
    ),
    Recipe(
        "cfc_rows_best", 2,
        "CfC-128 + mixed memory on image rows, 1-px crops and flips, label smoothing 0.1, "
        "dropout 0.2, a moving average of the weights (0.999), AdamW (wd 0.05), 40 epochs on "
        "one CPU device (the row-wise record)",
        dict(kind="sequence", cell="cfc", units=128, mixed_memory=True, epochs=40,
             learning_rate=2e-3, dropout=0.2, weight_decay=0.05, label_smoothing=0.1,
             augment=True, augment_padding=1, ema=0.999, batch_size=128, cpu_devices=1),
        "Fashion-MNIST rows: 91.79 / 91.91 / 91.70 % test with seeds 0 / 1 / 2 (mean 91.80 %), "
        "621-637 s of training each (2 CPU cores, quiet); version 1 (28 epochs): 91.20-91.53 %",
    ),
    Recipe(
        "ltc_rows", 1,
        "LTC-64 (fully connected, ncps initialisation) on image rows, lr 5e-3, 3 epochs",
        dict(kind="sequence", cell="ltc", units=64, ltc_init="ncps", epochs=3, learning_rate=5e-3,
             batch_size=128),
        "Fashion-MNIST rows: 66.6 % test after 3 epochs (76 s/epoch)",
    ),
    Recipe(
        "ltc_mm_rows", 1,
        "LTC-64 (slow initialisation) + mixed memory on image rows, dropout 0.2, AdamW "
        "(lr 5e-3, wd 0.05), 18 epochs",
        dict(kind="sequence", cell="ltc", units=64, ltc_init="slow", mixed_memory=True,
             epochs=18, learning_rate=5e-3, dropout=0.2, weight_decay=0.05, batch_size=128),
        "Fashion-MNIST rows: 90.11 % test in 1044 s of training (2 CPU cores)",
    ),
    Recipe(
        "conv_cfc", 1,
        "strided conv stem (32, 64, 128) whose feature-map rows feed a CfC-64, 12 epochs",
        dict(kind="conv", cell="cfc", units=64, conv_channels=(32, 64, 128), epochs=12,
             learning_rate=2e-3, dropout=0.2, weight_decay=0.05, batch_size=128),
        "Fashion-MNIST: 92.02 % test",
    ),
    Recipe(
        "conv_pooled_cfc", 1,
        "VGG-style pooled conv stem (32, 64) + CfC-64, 1-px crops and flips, 34 epochs",
        dict(kind="conv", conv_stem="pooled", conv_channels=(32, 64), cell="cfc", units=64,
             epochs=34, learning_rate=2e-3, augment=True, augment_padding=1, dropout=0.2,
             weight_decay=0.05, label_smoothing=0.1, batch_size=128),
        "Fashion-MNIST: 93.96 % test in 2998 s of training",
    ),
    Recipe(
        "liquid_s4_pixels", 1,
        "Liquid-S4 on pixel sequences (CIFAR-10: 1024 x 3, Fashion-MNIST: 784 x 1): 4 residual "
        "blocks of width 128, SSM size 64, liquid order 2 (pb kernel), GLU, dropout 0.1, mean "
        "pooling; AdamW lr 4e-3 (wd 0.05), the SSM's A, B, dt at 1e-3 without weight decay, "
        "cosine, batch 64, 20 epochs (trained in convolution mode: a GPU run)",
        dict(kind="sequence", sequence="pixels", cell="liquid_s4", units=128, layers=4,
             ssm_size=64, liquid_order=2, liquid_kernel="pb", discretisation="zoh", glu=True,
             ssm_dropout=0.1, readout="mean", learning_rate=4e-3, ssm_learning_rate=1e-3,
             weight_decay=0.05, warmup_fraction=0.02, batch_size=64, epochs=20),
        "not yet measured",
    ),

    Recipe(
        "ts_cfc", 5,
        "UEA/UCR archives: a temporal convolution stem (32, 64, 32) over every observation, "
        "read in windows by an ensemble of 5 CfC-64 (backbone 128) + mixed memory at their last "
        "state, the stem's global average and 2000 MiniRocket features per member beside; "
        "lr 2e-3",
        dict(kind="sequence", cell="cfc", units=64, mixed_memory=True, readout="last",
             stem_channels=(32, 64, 32), rocket_features=2000, learning_rate=2e-3, ensemble=5),
        "ArrowHead (DEV), seed 0: 0.846 (ts_cfc@4: 0.749, MiniRocket 0.863); TEST (seed 0, "
        "loaded): 13.7 points under MiniRocket on accuracy, RMSE 1.14x MiniRocket's "
        "(BENCHMARKS.md, issue 22 third round)",
        data="ts",
    ),
    Recipe(
        "ts_ltc", 4,
        "UEA/UCR archives: a temporal convolution stem (32, 64, 32) over every observation, "
        "read in windows by an ensemble of 5 LTC-64 (slow initialisation) + mixed memory at "
        "their last state, the stem's global average and 2000 MiniRocket features per member "
        "beside; lr 1e-2",
        dict(kind="sequence", cell="ltc", units=64, ltc_init="slow", mixed_memory=True,
             readout="last", stem_channels=(32, 64, 32), rocket_features=2000,
             learning_rate=1e-2, ensemble=5),
        "not run on DEV; TEST (seed 0, loaded): BENCHMARKS.md, issue 22 third round "
        "(ts_ltc@3 on GunPoint, DEV: 0.980)",
        data="ts",
    ),
)

RECIPES: Mapping[str, Recipe] = MappingProxyType({r.name: r for r in _RECIPES})
"""Every recipe by name."""

DEFAULT_IMAGE_RECIPE = "cfc_rows"
"""What ``liquidjax train`` runs on an image dataset when no ``--recipe`` is given."""

DEFAULT_TS_RECIPES: Mapping[str, str] = MappingProxyType({"cfc": "ts_cfc", "ltc": "ts_ltc"})
"""What ``liquidjax train --dataset ts`` runs, by ``--cell``, when no ``--recipe`` is given."""


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; ``ValueError`` listing the valid names otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"unknown recipe {name!r}; expected one of: {', '.join(RECIPES)} (or 'none')"
        ) from None
