"""The in-memory image dataset every source returns, and what we know about each dataset."""

from __future__ import annotations

import dataclasses

import numpy as np

from .._checks import check_real


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
    """Static facts about a supported dataset (shape, classes, where tfds downloads it from)."""

    image_shape: tuple[int, int, int]
    num_classes: int
    sizes: dict[str, int]
    download_hosts: tuple[tuple[str, int], ...]
    layout: str  # "idx" or "cifar10"
    system_dirs: tuple[str, ...] = ()


KNOWN_DATASETS: dict[str, _DatasetSpec] = {
    "cifar10": _DatasetSpec(
        (32, 32, 3), 10, {"train": 50000, "test": 10000}, (("www.cs.toronto.edu", 443),), "cifar10"
    ),
    "mnist": _DatasetSpec(
        (28, 28, 1), 10, {"train": 60000, "test": 10000}, (("storage.googleapis.com", 443),), "idx"
    ),
    "fashion_mnist": _DatasetSpec(
        (28, 28, 1),
        10,
        {"train": 60000, "test": 10000},
        (("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),),
        "idx",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image split held in memory as uint8 NumPy arrays.

    **Arguments:**
    - `images`: ``uint8`` array of shape ``(n, height, width, channels)``.
    - `labels`: integer array of shape ``(n,)`` (stored as ``int64``), values in
      ``[0, num_classes)``.
    - `num_classes`: number of classes.
    - `name`: dataset name, e.g. ``"cifar10"``.
    - `split`: split name, e.g. ``"train"``, ``"val"``, ``"test"``.
    - `source`: where the examples came from (``"tfds:<dir>"``, ``"idx:<dir>"``, ...).

    Example:
        >>> ds = ImageDataset(np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 1]), 10)
        >>> len(ds), ds.image_shape
        (2, (28, 28, 1))
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str = ""
    split: str = ""
    source: str = ""

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 of shape (n, height, width, channels), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) to match images {images.shape}, "
                f"got {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got range "
                f"[{labels.min()}, {labels.max()}]"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def take(self, indices: np.ndarray, split: str | None = None) -> ImageDataset:
        """The examples at `indices` (fancy indexing; a copy), optionally renamed to `split`."""
        return dataclasses.replace(
            self,
            images=self.images[indices],
            labels=self.labels[indices],
            split=self.split if split is None else split,
        )


def split_validation(
    dataset: ImageDataset, fraction: float, *, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Hold a seeded random `fraction` of `dataset` out as a validation split.

    Not stratified. Both parts keep the original example order (the held-out indices come from
    ``np.random.default_rng((seed, 0x5A11D))``), so the result depends only on `seed` and `n`.

    **Arguments:**
    - `dataset`: usually the tfds/local ``"train"`` split.
    - `fraction`: in ``[0, 1)``; ``round(fraction * n)`` examples are held out.
    - `seed`: integer seed.

    **Returns:** ``(train, val)``, with splits named ``"train"`` and ``"val"``.

    Example:
        >>> train, val = split_validation(full_train, 0.1, seed=0)  # doctest: +SKIP
    """
    check_real("validation fraction", fraction, minimum=0.0, maximum=1.0, max_open=True)
    n = len(dataset)
    n_val = round(fraction * n)
    held = np.zeros(n, bool)
    held[np.random.default_rng((seed, 0x5A11D)).permutation(n)[:n_val]] = True
    return dataset.take(np.flatnonzero(~held), "train"), dataset.take(np.flatnonzero(held), "val")
