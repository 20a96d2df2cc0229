"""One entry point for image datasets, and the image-classification task built on it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import numpy as np

from .._checks import check_choice, literal_choices
from ._batching import Loader
from ._dataset import KNOWN_DATASETS, ImageDataset, split_validation
from ._errors import DatasetUnavailableError
from ._local import find_local, load_local
from ._sequences import ImageSequencer, SequenceMode, augment_crop_flip
from ._tfds import load_tfds

Source = Literal["auto", "local", "tfds"]


def _tfds_prepared(name: str, data_dir: str | os.PathLike | None) -> tuple[bool, str]:
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    return builder.is_prepared(), str(builder.data_path)


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: Source = "auto",
    *,
    download: bool = True,
    probe_timeout: float = 3.0,
) -> ImageDataset:
    """Load a split of ``cifar10``, ``mnist`` or ``fashion_mnist`` as uint8 NumPy arrays.

    With ``source="auto"`` the first of these that holds the data wins:

    1. original files under `data_dir` (IDX for the MNISTs; CIFAR-10 python/binary folder or
       ``.tar.gz``), searched in `data_dir`, ``data_dir/<name>``, ``data_dir/<name-with-dashes>``;
    2. a prepared tfds ``array_record`` copy in `data_dir` (or tfds's default data dir);
    3. only when no `data_dir` is given: known system copies
       (``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``);
    4. tfds download + preparation (needs network and TensorFlow), if `download`.

    An explicit `data_dir` is never silently replaced by another copy: the data come from it
    (original files, or a tfds data dir, prepared or downloaded into), or the load fails naming
    it. A `data_dir` that does not exist fails at once.

    If none works, :class:`DatasetUnavailableError` lists the places searched and the options;
    offline, this takes at most `probe_timeout` seconds instead of minutes of tfds retries.

    **Arguments:**
    - `name`: ``"cifar10"``, ``"mnist"`` or ``"fashion_mnist"``.
    - `split`: ``"train"`` or ``"test"`` (tfds slices such as ``"train[:10%]"`` work with tfds).
    - `data_dir`: folder with local files or a tfds data dir; ``None``: tfds's default.
    - `source`: ``"auto"``, ``"local"`` (original files only) or ``"tfds"`` (tfds only).
    - `download`: allow tfds to download and prepare.
    - `probe_timeout`: seconds to wait for the download host.

    **Returns:** an :class:`ImageDataset`.

    **Raises:** :class:`DatasetUnavailableError` (nothing found), :class:`DatasetFormatError`
    (a file found but damaged).

    Example:
        >>> test = load_dataset("fashion_mnist", "test", "/usr/share/datasets/fashion-mnist")
        >>> test.images.shape, test.source
        ((10000, 28, 28, 1), 'idx:/usr/share/datasets/fashion-mnist')
    """
    check_choice("dataset", name, tuple(KNOWN_DATASETS))
    check_choice("source", source, literal_choices(Source))
    spec = KNOWN_DATASETS[name]
    looked: list[str] = []
    layout = "IDX files" if spec.layout == "idx" else "CIFAR-10 python/binary folder or archive"

    if data_dir is not None and not Path(data_dir).expanduser().exists():
        # An explicit data dir is used or the load fails naming it; never another copy instead.
        raise DatasetUnavailableError(
            name, split, [f"{Path(data_dir)}: does not exist"],
            f"the data dir given ({data_dir}) does not exist; fix the path, or create the folder "
            "to let tfds download into it",
        )
    if source in ("auto", "local") and data_dir is not None:
        if (path := find_local(name, data_dir)) is not None:
            try:
                return load_local(name, split, path)
            except FileNotFoundError as e:  # e.g. a folder with only the test split
                raise DatasetUnavailableError(
                    name, split, [f"{path}: {e}"],
                    f"{path} holds {name} files, but not its {split!r} split",
                ) from None
        looked.append(f"{Path(data_dir)} (and /{name}, /{name.replace('_', '-')}): no {layout}")
    if source == "local" and data_dir is None:
        raise ValueError("source='local' needs data_dir")

    if source in ("auto", "tfds"):
        prepared, path = _tfds_prepared(name, data_dir)
        if prepared:
            return load_tfds(name, split, data_dir=data_dir, download=False)
        looked.append(f"tfds data dir {path}: {name} not prepared (array_record)")

    if source == "auto" and data_dir is None:  # an explicit data_dir is never replaced
        for system_dir in spec.system_dirs:
            if (path := find_local(name, system_dir)) is not None:
                return load_local(name, split, path)
            looked.append(f"{system_dir}: absent")

    if source == "local":
        raise DatasetUnavailableError(name, split, looked, "no local files of a known layout")
    if not download:
        raise DatasetUnavailableError(name, split, looked, "not found and download=False")
    try:
        return load_tfds(name, split, data_dir=data_dir, probe_timeout=probe_timeout)
    except DatasetUnavailableError as e:
        raise DatasetUnavailableError(name, split, looked, e.reason) from None


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTransform:
    """Batch transform for image classification: optional crop/flip, then image → sequence.

    Used as a :class:`Loader` ``transform``: maps ``(images uint8, labels)`` to
    ``(x float32 (b, steps, features), labels int32)``.

    **Arguments:**
    - `sequencer`: the :class:`ImageSequencer` (statistics from the training split).
    - `augment`: apply :func:`augment_crop_flip` (horizontal flip, crop after `padding`) first.
    - `padding`: crop padding of the augmentation (0: flips only).

    Example:
        >>> loader = Loader((ds.images, ds.labels), 128, transform=ImageTransform(seq, True))
        ... # doctest: +SKIP
    """

    sequencer: ImageSequencer
    augment: bool = False
    padding: int = 4

    def __call__(self, data: tuple[np.ndarray, np.ndarray], rng: np.random.Generator):
        images, labels = data
        if self.augment:
            images = augment_crop_flip(images, rng, padding=self.padding)
        return self.sequencer(images), labels.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTask:
    """An image-classification task: train/val/test splits and how to turn them into sequences.

    **Fields:**
    - `train`, `val`, `test`: :class:`ImageDataset` (uint8); `val` is held out of the tfds/local
      training split and may be empty.
    - `sequencer`: :class:`ImageSequencer` whose mean/std come from `train` only.

    Example:
        >>> task = load_image_task("fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist")
        >>> task.sequence_shape, task.num_classes
        ((28, 28), 10)
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    sequencer: ImageSequencer

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.train.num_classes

    @property
    def sequence_shape(self) -> tuple[int, int]:
        """``(steps, features)`` of one example."""
        return self.sequencer.sequence_shape(self.train.image_shape)

    def train_loader(
        self, batch_size: int, *, seed: int = 0, augment: bool = False, augment_padding: int = 4
    ) -> Loader:
        """Shuffled training batches (``drop_last``) of ``(x, labels)``; see :class:`Loader`."""
        return Loader(
            (self.train.images, self.train.labels),
            batch_size,
            seed=seed,
            shuffle=True,
            drop_last=True,
            transform=ImageTransform(self.sequencer, augment, augment_padding),
        )

    def eval_loader(self, split: Literal["val", "test", "train"], batch_size: int) -> Loader:
        """Unshuffled batches of `split`, the last one padded with ``mask`` ``False`` rows."""
        dataset = {"train": self.train, "val": self.val, "test": self.test}[split]
        return Loader(
            (dataset.images, dataset.labels),
            batch_size,
            shuffle=False,
            drop_last=False,
            transform=ImageTransform(self.sequencer, False),
        )


def load_image_task(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: Source = "auto",
    download: bool = True,
    mode: SequenceMode = "rows",
    patch_size: int = 4,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageTask:
    """Load `name`, hold out a validation split and fit the sequence normalisation.

    **Arguments:**
    - `name`, `data_dir`, `source`, `download`: as in :func:`load_dataset`.
    - `mode`, `patch_size`: how images become sequences (:class:`ImageSequencer`).
    - `val_fraction`: share of the training split held out (seeded, not stratified).
    - `seed`: seed of the held-out selection.

    **Returns:** an :class:`ImageTask`; its per-channel mean/std are computed from the training
    part only (after the validation hold-out).

    Example:
        >>> task = load_image_task("cifar10", mode="rows")  # doctest: +SKIP
        >>> batch = next(task.train_loader(128, seed=0, augment=True).epoch(0))
        >>> batch.data[0].shape
        (128, 32, 96)
    """
    full_train = load_dataset(name, "train", data_dir, source, download=download)
    test = load_dataset(name, "test", data_dir, source, download=download)
    train, val = split_validation(full_train, val_fraction, seed=seed)
    return ImageTask(train, val, test, ImageSequencer.fit(train.images, mode, patch_size))
