"""How a run's data is built: one frozen, validated record, saved in every checkpoint header.

``liquidjax train`` builds its data from a :class:`DataConfig`, and ``liquidjax evaluate`` reads
the same record back from the checkpoint and rebuilds exactly those splits (the same files, the
same validation hold-out, the same limits and inputs). The command line derives its data flags
from the fields below (:mod:`liquidjax._config_args`), as it does for the model and training
configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .._checks import check_fields, config_field
from ._dataset import KNOWN_DATASETS
from ._sequences import SequenceMode
from ._timeseries import MissingMode

IMAGE_DATASETS: tuple[str, ...] = tuple(KNOWN_DATASETS)
SYNTHETIC_DATASETS: tuple[str, ...] = ("irregular_sine", "two_spirals")
TS_DATASETS: tuple[str, ...] = ("ts",)
DATASETS: tuple[str, ...] = IMAGE_DATASETS + SYNTHETIC_DATASETS + TS_DATASETS

# Fields that change what is trained on: a resumed run must agree on them (the data dir may
# move: another copy of the same files is the same data).
_TRAJECTORY_FIELDS: tuple[str, ...] = (
    "dataset", "name", "sequence", "patch_size", "val_fraction", "val_seed", "limit_examples",
    "augment", "augment_padding", "missing", "patch_length",
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on and how it becomes model inputs.

    **Arguments:**
    - `dataset`: an image dataset (cifar10, mnist, fashion_mnist: read as sequences), a
      synthetic task (irregular_sine, two_spirals) or ``"ts"`` (a time-series archive).
    - `data_dir`: folder with the original files or a tfds data dir (``None``: tfds's);
      for ``"ts"`` the folder holding ``NAME_TRAIN.ts``/``NAME_TEST.ts`` (or ``NAME_TRAIN.npz``/
      ``NAME_TEST.npz`` written by ``TimeSeriesData.save_npz``), itself or in ``NAME/``.
    - `name`: ``"ts"`` only: the archive's problem name (its files' prefix).
    - `sequence`: images: how an image becomes a sequence (rows, pixels or patches).
    - `patch_size`: images: the patch size of ``sequence="patches"``.
    - `val_fraction`: share of the training split held out for validation, in ``[0, 1)``.
    - `val_seed`: seed of the validation hold-out (it does not move with the training seed).
    - `limit_examples`: use only the first N examples of each split (quick runs).
    - `augment`: images: random crop (after zero padding) and horizontal flip of training
      images.
    - `augment_padding`: images: the crop padding in pixels (0: flips only).
    - `missing`: ``"ts"`` only: how missing values reach the model: features (last
      observation carried forward, observation mask, time since the last observation; causal),
      path (each channel linearly interpolated, with the observation mask; reads ahead) or zero.
    - `patch_length`: ``"ts"`` only: consecutive observations joined into one model step.
    - `seed`: synthetic tasks: the seed their examples are drawn from (each split from its
      own offset).

    **Example:**
    ```python
    DataConfig(dataset="ts", data_dir="data/UEA", name="BasicMotions", val_fraction=0.0)
    ```
    """

    dataset: str = config_field("cifar10", choices=DATASETS,
                                aliases={"fashion": "fashion_mnist", "fmnist": "fashion_mnist"})
    data_dir: str | None = None
    name: str | None = None
    sequence: SequenceMode = "rows"
    patch_size: int = config_field(4, minimum=1)
    val_fraction: float = config_field(0.1, minimum=0.0, maximum=1.0, max_open=True)
    val_seed: int = config_field(0, minimum=0, maximum=2**32 - 1)
    limit_examples: int | None = config_field(None, minimum=1)
    augment: bool = False
    augment_padding: int = config_field(4, minimum=0)
    missing: MissingMode = "features"
    patch_length: int = config_field(1, minimum=1)
    seed: int = config_field(0, minimum=0, maximum=2**32 - 1)

    # The fields that apply to dataset "ts" only (elsewhere they keep their defaults).
    ts_only: ClassVar[tuple[str, ...]] = ("name", "missing", "patch_length")

    def __post_init__(self):
        check_fields(self)
        if self.dataset == "ts":
            if self.data_dir is None or self.name is None:
                raise ValueError("dataset 'ts' needs data_dir and name (the files "
                                 "DATA_DIR/NAME_TRAIN.ts and DATA_DIR/NAME_TEST.ts)")
        else:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            stray = [k for k in self.ts_only if getattr(self, k) != defaults[k]]
            if stray:
                raise ValueError(f"{', '.join(stray)} appl{'ies' if len(stray) == 1 else 'y'} "
                                 f"to dataset 'ts' only, not {self.dataset!r}")
        if self.dataset not in IMAGE_DATASETS and self.augment:
            raise ValueError(f"augment applies to image datasets only, not {self.dataset!r}")

    @property
    def family(self) -> str:
        """``"images"``, ``"synthetic"`` or ``"ts"``."""
        return ("images" if self.dataset in IMAGE_DATASETS
                else "synthetic" if self.dataset in SYNTHETIC_DATASETS else "ts")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """The config of a dict such as a checkpoint header's ``data_config``: keys that are not
        fields (statistics recorded beside it) are ignored, absent fields take their defaults (a
        checkpoint written before a field existed); bad values raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, got {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if "seed" not in d and "synthetic_seed" in d:  # its name in older checkpoints
            values["seed"] = d["synthetic_seed"]
        return cls(**values)

    def differences(self, other: DataConfig) -> list[tuple[str, Any, Any]]:
        """``(field, own value, other's value)`` for each setting that changes what is trained
        on (the crop padding only with `augment`); empty when `other` trains on the same
        data."""
        fields = [k for k in _TRAJECTORY_FIELDS
                  if k != "augment_padding" or self.augment or other.augment]
        if self.family == "synthetic" or other.family == "synthetic":
            fields.append("seed")
        return [(k, getattr(self, k), getattr(other, k)) for k in fields
                if getattr(self, k) != getattr(other, k)]
