"""Images as sequences: per-channel normalisation, rows / pixels / patches, augmentation."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from .._checks import check_choice, check_int, literal_choices

SequenceMode = Literal["rows", "pixels", "patches"]
SEQUENCE_MODES: tuple[str, ...] = literal_choices(SequenceMode)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and standard deviation of uint8 `images`, on the [0, 1] scale.

    Computed from a 256-bin histogram per channel, so it is exact and needs no float copy of
    the data. Pass the **training** images only.

    **Arguments:**
    - `images`: ``uint8`` array ``(n, H, W, C)``.

    **Returns:** ``(mean, std)``, each ``float32`` of shape ``(C,)``.

    Example:
        >>> mean, std = channel_stats(train.images)  # doctest: +SKIP
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"expected non-empty uint8 images (n, H, W, C), got {images.dtype} {images.shape}"
        )
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        m = float(p @ values)
        mean.append(m)
        std.append(float(np.sqrt(max(p @ (values - m) ** 2, 0.0))))
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSequencer:
    """Turns a batch of uint8 images into normalised float32 sequences.

    ``x = (image / 255 - mean[c]) / std[c]`` per channel, then one of

    - ``"rows"``: one step per image row, features = that row's pixels × channels
      (CIFAR-10: 32 steps × 96; MNIST: 28 × 28);
    - ``"pixels"``: one step per pixel in raster order (CIFAR-10: 1024 × 3; MNIST: 784 × 1);
    - ``"patches"``: non-overlapping ``p × p`` patches in raster order, each flattened in
      (row, column, channel) order (CIFAR-10, p = 4: 64 × 48).

    **Arguments:**
    - `mean`, `std`: per-channel statistics on the [0, 1] scale, shape ``(C,)``; compute them
      from the training split (:meth:`fit`).
    - `mode`: ``"rows"``, ``"pixels"`` or ``"patches"``.
    - `patch_size`: ``p`` for ``"patches"``; must divide height and width.

    **Returns** (when called): ``float32`` ``(n, steps, features)``.

    Example:
        >>> seq = ImageSequencer.fit(train.images, mode="rows")  # doctest: +SKIP
        >>> seq(train.images[:8]).shape
        (8, 32, 96)
    """

    mean: np.ndarray
    std: np.ndarray
    mode: SequenceMode = "rows"
    patch_size: int = 4

    def __post_init__(self):
        mean = np.asarray(self.mean, np.float32).reshape(-1)
        std = np.asarray(self.std, np.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"mean {mean.shape} and std {std.shape} must have the same shape (C,)")
        if np.any(std <= 0):
            raise ValueError(f"std must be positive, got {std}")
        check_choice("mode", self.mode, SEQUENCE_MODES)
        check_int("patch_size", self.patch_size, minimum=1)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(
        cls, train_images: np.ndarray, mode: SequenceMode = "rows", patch_size: int = 4
    ) -> ImageSequencer:
        """A sequencer whose statistics come from `train_images` (see :func:`channel_stats`)."""
        mean, std = channel_stats(train_images)
        if np.any(std == 0):
            flat = np.flatnonzero(std == 0).tolist()
            raise ValueError(
                f"the training images are constant in channel(s) {flat}"
                f" (every pixel {np.round(mean * 255).astype(int).tolist()} of 255; standard "
                "deviation 0): they cannot be normalised and carry nothing to learn; check the data"
            )
        return cls(mean, std, mode, patch_size)

    def sequence_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int]:
        """``(steps, features)`` produced for images of shape ``(H, W, C)``."""
        h, w, c = image_shape
        if c != self.mean.shape[0]:
            raise ValueError(f"images have {c} channels, statistics have {self.mean.shape[0]}")
        if self.mode == "rows":
            return h, w * c
        if self.mode == "pixels":
            return h * w, c
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"patch_size {p} must divide the image size {h}×{w}")
        return (h // p) * (w // p), p * p * c

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4:
            raise ValueError(f"expected images (n, H, W, C), got shape {images.shape}")
        steps, features = self.sequence_shape(images.shape[1:])
        scale = 1.0 / (255.0 * self.std)
        x = images.astype(np.float32) * scale - self.mean / self.std
        n, h, w, c = images.shape
        if self.mode == "patches":
            p = self.patch_size
            x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(x).reshape(n, steps, features)


def augment_crop_flip(
    images: np.ndarray, rng: np.random.Generator, *, padding: int = 4, flip: bool = True
) -> np.ndarray:
    """Random crop after zero padding, and random horizontal flip, for a whole batch at once.

    Each image is padded by `padding` pixels of zeros on every side, a window of the original
    size is cut at a uniformly random offset, and with probability 1/2 it is mirrored left-right
    (the standard CIFAR-10 augmentation). One fancy-indexing gather; no per-image loop.

    **Arguments:**
    - `images`: ``(n, H, W, C)`` array (any dtype).
    - `rng`: NumPy generator; seed it per (epoch, step) for reproducible batches.
    - `padding`: crop padding in pixels.
    - `flip`: whether to flip horizontally at random.

    **Returns:** an array of the same shape and dtype.

    Example:
        >>> aug = augment_crop_flip(batch, np.random.default_rng((0, 3, 17)))  # doctest: +SKIP
    """
    check_int("padding", padding, minimum=0, expected="a non-negative integer")
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy = rng.integers(0, 2 * padding + 1, n)
    dx = rng.integers(0, 2 * padding + 1, n)
    mirror = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    rows = dy[:, None] + np.arange(h)
    cols_fwd = np.arange(w)
    cols = dx[:, None] + np.where(mirror[:, None], cols_fwd[::-1], cols_fwd)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
