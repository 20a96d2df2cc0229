"""Time-series data held in memory: irregular times, missing values, variable lengths, targets.

One container, :class:`TimeSeriesData`, for everything a sequence task needs on the host:

* ``x`` ``float32 (n, L, C)`` observations; **NaN in a channel means "not observed"** (a missing
  value), not an error. Steps past an example's length are padding.
* ``timespans`` ``float32 (n, L)``: the elapsed time since the previous observation (ncps
  "timespans"; give absolute ``times`` to :meth:`TimeSeriesData.from_arrays` instead if you
  have them).
* ``lengths`` ``int (n,)``: valid steps per example (a prefix of each row).
* ``y``: class labels (``int``) or real targets (``float``), per sequence (``(n,)`` / ``(n, D)``)
  or per step (``(n, L)`` labels / ``(n, L, D)`` targets), with an optional per-step target mask
  ``y_mask`` ``bool (n, L)``.

Missing values reach a model as **GRU-D-style input features** (:func:`missing_value_features`):
for each channel the last observation carried forward (LOCF, 0 — the training mean after
normalisation — before the first observation), the observation mask, and the time since the
channel was last observed (Che et al. 2018, "Recurrent Neural Networks for Multivariate Time
Series with Missing Values", Sci. Rep. 8:6085; their "GRU-Simple" input ``[x, m, δ]``). Every cell
can then read the data with no change to its contract; a GRU-D cell reads the same three blocks.
Or, with ``missing="path"`` (:func:`missing_value_path`), each channel is linearly interpolated
through its observed points and read with the observation mask.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import numpy as np

from .._checks import check_choice, literal_choices
from ._batching import Loader
from ._errors import DatasetFormatError

TaskKind = Literal["classification", "regression"]
MissingMode = Literal["features", "path", "zero"]
MISSING_MODES: tuple[str, ...] = literal_choices(MissingMode)


@dataclasses.dataclass(frozen=True, eq=False)
class TimeSeriesData:
    """A split of (possibly irregular, padded, partly missing) multivariate time series.

    Build it with :meth:`from_arrays` (absolute times or gaps, lengths inferred or given),
    :meth:`load_npz` or :func:`read_ts`; the constructor itself checks shapes and values.

    **Arguments:**
    - `x`: ``float32 (n, L, C)``; NaN marks a value that was not observed. Padding steps
      (``t >= lengths``) are stored as NaN.
    - `timespans`: ``float32 (n, L)``, positive on valid steps (padding holds 1.0).
    - `lengths`: ``int64 (n,)`` in ``[1, L]``.
    - `y`: targets; ``int64`` class labels of shape ``(n,)`` or ``(n, L)``, or ``float32``
      regression targets of shape ``(n,)``, ``(n, D)`` or ``(n, L, D)``.
    - `task`: ``"classification"`` or ``"regression"``.
    - `num_classes`: classes of a classification task (``0`` for regression).
    - `y_mask`: optional ``bool (n, L)`` for per-step targets: which steps carry a target
      (default: every valid step).
    - `class_names`: the original label of each class index (from a ``.ts`` header, say).
    - `name`, `split`, `source`: descriptive.

    Example:
        >>> d = TimeSeriesData.from_arrays(np.zeros((4, 10, 2)), np.array([0, 1, 0, 1]))
        >>> d.x.shape, d.num_classes, d.per_step
        ((4, 10, 2), 2, False)
    """

    x: np.ndarray
    timespans: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    task: str
    num_classes: int = 0
    y_mask: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    name: str = ""
    split: str = ""
    source: str = ""

    def __post_init__(self):
        x = np.asarray(self.x, np.float32)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (n, length, channels), got {x.shape}")
        n, length, _ = x.shape
        ts = np.asarray(self.timespans, np.float32)
        if ts.shape != (n, length):
            raise ValueError(f"timespans must have shape {(n, length)} like x, got {ts.shape}")
        lengths = np.asarray(self.lengths)
        if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths must be integers of shape ({n},), got "
                             f"{lengths.dtype} {lengths.shape}")
        if n and (lengths.min() < 1 or lengths.max() > length):
            raise ValueError(f"lengths must lie in [1, {length}], got range "
                             f"[{lengths.min()}, {lengths.max()}]")
        valid = np.arange(length)[None, :] < lengths[:, None]
        bad = valid & ~(ts > 0)
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise ValueError(f"timespans must be positive on valid steps; example {i} step {k} "
                             f"has {ts[i, k]} (repeated or decreasing times?)")
        if np.isinf(x).any():
            i, k, c = np.argwhere(np.isinf(x))[0]
            raise ValueError(f"x is infinite at example {i}, step {k}, channel {c}; only NaN "
                             "(missing) is allowed besides finite values")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        y = np.asarray(self.y)
        if y.shape[:1] != (n,):
            raise ValueError(f"y must have {n} rows like x, got shape {y.shape}")
        if self.task == "classification":
            if y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"classification targets must be integer labels of shape ({n},) "
                                 f"or ({n}, {length}), got {y.dtype} {y.shape}")
            if y.ndim == 2 and y.shape[1] != length:
                raise ValueError(f"per-step labels must have shape {(n, length)}, got {y.shape}")
            if self.num_classes < 2:
                raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
            lab = y if y.ndim == 1 else y[valid]
            if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got range "
                                 f"[{lab.min()}, {lab.max()}]")
            y = y.astype(np.int64, copy=False)
        else:
            if y.ndim not in (1, 2, 3) or not np.issubdtype(y.dtype, np.number):
                raise ValueError(f"regression targets must be numbers of shape ({n},), ({n}, D) "
                                 f"or ({n}, {length}, D), got {y.dtype} {y.shape}")
            if y.ndim == 3 and y.shape[1] != length:
                raise ValueError(f"per-step targets must have shape ({n}, {length}, D), got "
                                 f"{y.shape}")
            y = y.astype(np.float32, copy=False)
            if self.num_classes != 0:
                raise ValueError("num_classes must be 0 for a regression task")
        per_step = (y.ndim == 2 and self.task == "classification") or y.ndim == 3
        y_mask = self.y_mask
        if y_mask is not None:
            if not per_step:
                raise ValueError("y_mask applies to per-step targets only")
            y_mask = np.asarray(y_mask)
            if y_mask.shape != (n, length) or y_mask.dtype != np.bool_:
                raise ValueError(f"y_mask must be boolean of shape {(n, length)}, got "
                                 f"{y_mask.dtype} {y_mask.shape}")
            y_mask = y_mask & valid
        elif per_step:
            y_mask = valid
        if per_step and self.task == "regression":
            hit = y_mask[..., None] & ~np.isfinite(y)
            if hit.any():
                raise ValueError("per-step regression targets must be finite where y_mask is "
                                 "True; mark missing targets False in y_mask")
        elif self.task == "regression" and not np.isfinite(y).all():
            raise ValueError("regression targets must be finite")
        x = np.where(valid[..., None], x, np.nan).astype(np.float32)
        ts = np.where(valid, ts, 1.0).astype(np.float32)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "timespans", ts)
        object.__setattr__(self, "lengths", lengths.astype(np.int64, copy=False))
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "y_mask", y_mask)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_arrays(
        cls,
        x,
        y,
        *,
        times=None,
        timespans=None,
        lengths=None,
        task: TaskKind | None = None,
        num_classes: int | None = None,
        y_mask=None,
        first_timespan: float | None = None,
        class_names=(),
        name: str = "",
        split: str = "",
        source: str = "arrays",
    ) -> TimeSeriesData:
        """Build a split from plain arrays.

        **Arguments:**
        - `x`: ``(n, L, C)`` (or ``(n, L)`` for one channel); NaN = not observed.
        - `y`: integer labels (classification) or floats (regression); see the class docs.
        - `times`: absolute observation times ``(n, L)`` (strictly increasing on valid steps);
          converted to gaps. Nothing precedes the first observation: its timespan is
          `first_timespan` if given, else the example's median gap (1.0 for an example of one
          observation) — the rule of :func:`read_ts`, so both loaders give the same timespans
          for the same data, whatever the unit of the times.
        - `timespans`: or the gaps themselves ``(n, L)``; neither: every gap is 1.0.
        - `lengths`: valid steps per example; default: up to the last step where any channel
          (or, with `times`, the time) is not NaN.
        - `task`: default ``"classification"`` for integer `y`, else ``"regression"``.
        - `num_classes`: default ``max(label) + 1``.
        - `y_mask`, `class_names`, `name`, `split`, `source`: see the class docs.

        **Returns:** a :class:`TimeSeriesData`.
        """
        x = np.asarray(x, np.float32)
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3:
            raise ValueError(f"x must have shape (n, length, channels), got {x.shape}")
        n, length, _ = x.shape
        if times is not None and timespans is not None:
            raise ValueError("give either times (absolute) or timespans (gaps), not both")
        if lengths is None:
            seen = ~np.all(np.isnan(x), axis=2)
            if times is not None:
                seen |= np.isfinite(np.asarray(times, np.float64).reshape(n, -1)[:, :length])
            lengths = np.where(seen.any(1), length - np.argmax(seen[:, ::-1], axis=1), 1)
        lengths = np.asarray(lengths)
        if times is not None:
            times = np.asarray(times, np.float64)
            if times.shape != (n, length):
                raise ValueError(f"times must have shape {(n, length)} like x, got {times.shape}")
            valid = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
            if not np.isfinite(times[valid]).all():
                raise ValueError("times must be finite on valid steps")
            gaps = np.diff(times, axis=1, prepend=np.nan)
            if first_timespan is None:
                later = valid.copy()
                later[:, 0] = False
                med = [np.median(g[m]) if m.any() else 1.0 for g, m in zip(gaps, later)]
                # (bad times get 1.0 here, so the error below names the step that is wrong)
                gaps[:, 0] = [v if v > 0 else 1.0 for v in med]
            else:
                gaps[:, 0] = first_timespan
            timespans = np.where(valid, gaps, 1.0)
        elif timespans is None:
            timespans = np.ones((n, length), np.float32)
        y = np.asarray(y)
        if task is None:
            task = "classification" if np.issubdtype(y.dtype, np.integer) else "regression"
        if num_classes is None:
            num_classes = int(y.max()) + 1 if task == "classification" and y.size else 0
        return cls(x, timespans, lengths, y, task, num_classes, y_mask, tuple(class_names),
                   name, split, source)

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write the split to an ``.npz`` file (read back with :meth:`load_npz`)."""
        path = Path(path)
        extra = {} if self.y_mask is None else {"y_mask": self.y_mask}
        np.savez(path, x=self.x, timespans=self.timespans, lengths=self.lengths, y=self.y,
                 task=np.array(self.task), num_classes=np.array(self.num_classes),
                 class_names=np.array(self.class_names, dtype=str), name=np.array(self.name),
                 **extra)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load_npz(cls, path: str | os.PathLike, *, split: str = "") -> TimeSeriesData:
        """Read an ``.npz`` with ``x`` and ``y`` and optionally ``times`` or ``timespans``,
        ``lengths``, ``y_mask``, ``task``, ``num_classes``, ``class_names`` (see
        :meth:`from_arrays`). Raises :class:`~liquidjax.data.DatasetFormatError` naming the file
        if ``x`` or ``y`` is missing or the arrays do not fit together."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DatasetFormatError(str(path), f"not a readable .npz file ({e})") from None
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise DatasetFormatError(str(path), f"missing array(s) {missing}; found "
                                                f"{sorted(arrays)}")
        kw = {k: arrays[k] for k in ("times", "timespans", "lengths", "y_mask") if k in arrays}
        if "task" in arrays:
            kw["task"] = str(arrays["task"])
        elif _whole_floats(arrays["y"]):  # 0.0/1.0: class labels or real targets? Not a guess.
            raise DatasetFormatError(str(path), "y holds floats that are all whole numbers "
                                                f"({np.unique(arrays['y'])[:4].tolist()}...): "
                                                "store class labels as integers, or add an array "
                                                "task='regression' to the file")
        if "num_classes" in arrays and int(arrays["num_classes"]) > 0:
            kw["num_classes"] = int(arrays["num_classes"])
        try:
            return cls.from_arrays(
                arrays["x"], arrays["y"], class_names=tuple(arrays.get("class_names", ())),
                name=str(arrays.get("name", path.stem)), split=split, source=f"npz:{path}", **kw)
        except ValueError as e:
            raise DatasetFormatError(str(path), str(e)) from None

    # ----------------------------------------------------------------------- views
    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def mask(self) -> np.ndarray:
        """``bool (n, L)``: the valid (non-padding) steps."""
        return np.arange(self.x.shape[1])[None, :] < self.lengths[:, None]

    @property
    def observed(self) -> np.ndarray:
        """``bool (n, L, C)``: which values were observed (not NaN, not padding)."""
        return ~np.isnan(self.x)

    @property
    def times(self) -> np.ndarray:
        """``float64 (n, L)``: cumulative time of each step (first step at its timespan)."""
        return np.cumsum(np.where(self.mask, self.timespans, 0.0), axis=1)

    @property
    def num_channels(self) -> int:
        return int(self.x.shape[2])

    @property
    def per_step(self) -> bool:
        """Whether the targets are per step (``y`` has a time axis)."""
        return self.y_mask is not None

    @property
    def target_size(self) -> int:
        """Classes (classification) or target dimensions (regression)."""
        if self.task == "classification":
            return self.num_classes
        return 1 if self.y.ndim == (2 if self.per_step else 1) else int(self.y.shape[-1])

    def take(self, indices, split: str | None = None) -> TimeSeriesData:
        """The examples at `indices` (a copy), optionally renamed to `split`."""
        return dataclasses.replace(
            self, x=self.x[indices], timespans=self.timespans[indices],
            lengths=self.lengths[indices], y=self.y[indices],
            y_mask=None if self.y_mask is None else self.y_mask[indices],
            split=self.split if split is None else split)

    def with_x(self, x: np.ndarray) -> TimeSeriesData:
        """The same split with new inputs ``x`` (same ``n`` and ``L``; any channels)."""
        return dataclasses.replace(self, x=x)


# ------------------------------------------------------------------------------ splitting
def split_time_series(
    data: TimeSeriesData, fraction: float, *, seed: int = 0, stratify: bool = True
) -> tuple[TimeSeriesData, TimeSeriesData]:
    """Hold a seeded `fraction` of `data` out as a validation split.

    For sequence-level classification the hold-out is stratified by class (each class gives
    ``round(fraction * count)`` examples, at least one if it has two or more), so small archives
    keep every class in both parts; otherwise it is a plain seeded random subset. Both parts
    keep the original order.

    **Arguments:**
    - `data`: the training split.
    - `fraction`: in ``[0, 1)``.
    - `seed`: integer seed.
    - `stratify`: stratify classification labels by class.

    **Returns:** ``(train, val)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(data)
    rng = np.random.default_rng((seed, 0x7153))
    held = np.zeros(n, bool)
    if fraction > 0:
        if stratify and data.task == "classification" and not data.per_step:
            for c in np.unique(data.y):
                idx = np.flatnonzero(data.y == c)
                k = round(fraction * len(idx))
                k = max(k, 1) if len(idx) >= 2 else 0
                held[rng.permutation(idx)[:k]] = True
        else:
            held[rng.permutation(n)[: round(fraction * n)]] = True
    if held.all():
        raise ValueError(f"a validation fraction of {fraction} leaves no training examples")
    return data.take(np.flatnonzero(~held), "train"), data.take(np.flatnonzero(held), "val")


# ------------------------------------------------------------------------------ patches
def patch_time_series(data: TimeSeriesData, length: int) -> TimeSeriesData:
    r"""Join every `length` consecutive observations into one step of ``length · C`` channels.

    Step ``k`` of the result holds observations ``k·P … k·P + P − 1`` (``P = length``) side by
    side, channel-major within each observation: channel ``j·C + c`` is channel ``c`` of the
    ``j``-th observation of the patch. Its timespan is the time elapsed over the patch (the sum
    of its observations' timespans), so absolute times are kept at the patches' last
    observations. An example of ``n`` observations gets ``⌈n / P⌉`` steps; the missing tail of
    its last patch is NaN (missing values, see :func:`missing_value_features`).

    Why: a recurrent network read at its last state must carry information over every step; on
    long, short-archive series (hundreds of observations, tens of training examples) it neither
    fits nor generalises (``docs/time_series.md``), as image rows beat pixels for images. With
    patches it reads a few dozen steps, each a short piece of the curve.

    **Arguments:**
    - `data`: a :class:`TimeSeriesData` with sequence-level targets.
    - `length`: observations per step (``1``: `data` unchanged).

    **Returns:** a :class:`TimeSeriesData` of shape ``(n, ⌈L / P⌉, P · C)``.

    Example:
        >>> d = TimeSeriesData.from_arrays(np.arange(5.0)[None, :, None], np.array([0]),
        ...                                num_classes=2)
        >>> p = patch_time_series(d, 2)
        >>> p.x[0].tolist(), p.timespans[0].tolist()
        ([[0.0, 1.0], [2.0, 3.0], [4.0, nan]], [2.0, 2.0, 1.0])
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"patch length must be a positive integer, got {length!r}")
    length = int(length)
    if length == 1:
        return data
    if data.per_step:
        raise ValueError("patches need sequence-level targets: per-step targets would have to "
                         "be joined too; use patch length 1")
    n, steps, c = data.x.shape
    padded = -(-steps // length) * length
    x = np.full((n, padded, c), np.nan, np.float32)
    x[:, :steps] = data.x
    valid = np.arange(padded)[None, :] < data.lengths[:, None]
    ts = np.zeros((n, padded), np.float32)
    ts[:, :steps] = data.timespans
    ts = np.where(valid, ts, 0.0).reshape(n, padded // length, length).sum(-1)
    lengths = -(-data.lengths // length)
    ts = np.where(np.arange(padded // length)[None, :] < lengths[:, None], ts, 1.0)
    return dataclasses.replace(data, x=x.reshape(n, padded // length, length * c),
                               timespans=ts, lengths=lengths)


# ------------------------------------------------------------------------------ normalisation
CLIP = 100.0
"""The largest magnitude a normalised value keeps (:class:`ChannelNormalizer`)."""
OUTLIER = 1000.0
"""How many times farther from the median than 99 % of the values a value must lie for
:func:`robust_scale` to leave it out."""


def robust_scale(values: np.ndarray) -> tuple[float, float]:
    """``(mean, std)`` of a 1-D array of finite values, leaving out gross outliers.

    A value is left out when its distance to the median exceeds :data:`OUTLIER` (1000) times
    the 99th percentile of those distances (if that is 0 — a channel that is one value but for
    under 1 % of its values — every value off the median). On ordinary data — heavy tails
    included — nothing is left out and these are the plain mean and (population) standard
    deviation; one value of 1e30 among the others moves neither. A constant array (after the
    exclusion) gets std 1; an empty one ``(0, 1)``.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if not v.size:
        return 0.0, 1.0
    dist = np.abs(v - np.median(v))
    kept = v[dist <= OUTLIER * np.quantile(dist, 0.99)]
    mean, std = float(np.mean(kept)), float(np.std(kept))
    if not np.isfinite(std) or std <= 1e-8 * max(abs(mean), 1.0):
        std = 1.0
    return mean, std


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelNormalizer:
    """Per-channel standardisation ``clip((x - mean[c]) / std[c], ±CLIP)``, from training data.

    :meth:`fit` computes, per channel, over the **observed** values of the training split only
    (NaN and padding ignored), the mean and the population standard deviation — by default
    (``robust=True``) leaving out gross outliers (:func:`robust_scale`: a value 1000 times
    farther from the median than 99 % of the values), else of all of them. A channel never
    observed gets mean 0 and std 1; a constant channel gets std 1. Normalised values are clipped to
    ``±clip`` (default :data:`CLIP` = 100), so a single extreme value (1e30 in a file) neither
    moves the other values (the statistics ignore it) nor reaches the model as an overflow.
    NaN stays NaN.

    **Arguments:**
    - `mean`, `std`: ``float32 (C,)``.
    - `clip`: the largest magnitude of a normalised value (``None``: no clipping).

    Example:
        >>> norm = ChannelNormalizer.fit(train)  # doctest: +SKIP
        >>> train, test = norm(train), norm(test)
    """

    mean: np.ndarray
    std: np.ndarray
    clip: float | None = CLIP

    def __post_init__(self):
        mean = np.asarray(self.mean, np.float32).reshape(-1)
        std = np.asarray(self.std, np.float32).reshape(-1)
        if mean.shape != std.shape or not np.all(std > 0) or not np.all(np.isfinite(mean)) \
                or not np.all(np.isfinite(std)):
            raise ValueError(f"need finite mean and positive finite std of one shape (C,), got "
                             f"{mean} and {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(cls, train: TimeSeriesData, *, robust: bool = True,
            clip: float | None = CLIP) -> ChannelNormalizer:
        """Statistics from the observed values of `train` (see the class docs)."""
        x = train.x.astype(np.float64)
        seen = ~np.isnan(x)
        if robust:
            stats = [robust_scale(x[..., c][seen[..., c]]) for c in range(x.shape[2])]
            mean = np.array([m for m, _ in stats]).reshape(-1)
            std = np.array([s for _, s in stats]).reshape(-1)
            return cls(mean, std, clip)
        count = seen.sum(axis=(0, 1))
        total = np.where(seen, x, 0.0).sum(axis=(0, 1))
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        var = np.where(seen, (x - mean) ** 2, 0.0).sum(axis=(0, 1)) / np.maximum(count, 1)
        std = np.sqrt(var)
        std = np.where((count > 0) & (std > 1e-8 * np.maximum(np.abs(mean), 1.0)), std, 1.0)
        return cls(mean, std, clip)

    def __call__(self, data: TimeSeriesData) -> TimeSeriesData:
        if data.num_channels != self.mean.shape[0]:
            raise ValueError(f"data has {data.num_channels} channels, the statistics "
                             f"{self.mean.shape[0]}")
        z = (data.x.astype(np.float64) - self.mean) / self.std
        if self.clip is not None:
            z = np.clip(z, -self.clip, self.clip)  # NaN stays NaN
        return data.with_x(z.astype(np.float32))


Normalization = Literal["auto", "channel", "series", "none"]
NORMALIZATIONS: tuple[str, ...] = literal_choices(Normalization)


def series_statistics(data: TimeSeriesData) -> tuple[np.ndarray, np.ndarray]:
    """Each series' mean and standard deviation over its observed values, per channel:
    ``float64 (n, C)`` each (NaN for a channel a series never observes)."""
    x = data.x.astype(np.float64)
    seen = ~np.isnan(x)
    count = seen.sum(axis=1)
    mean = np.where(seen, x, 0.0).sum(axis=1) / np.maximum(count, 1)
    var = np.where(seen, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count, 1)
    none = count == 0
    return np.where(none, np.nan, mean), np.where(none, np.nan, np.sqrt(var))


def normalize_series(data: TimeSeriesData) -> TimeSeriesData:
    """Per-series z-normalisation: every series (and channel) minus its own mean, divided by its
    own standard deviation (the UCR archive's convention). A constant series becomes zeros
    (divided by 1, not by 0); missing values stay NaN. Uses nothing but the series itself, so
    it is applied to the training and the test split alike."""
    mean, std = series_statistics(data)
    std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return data.with_x(((data.x - mean[:, None]) / std[:, None]).astype(np.float32))


# ------------------------------------------------------------------------------ missing values
def _observations(
    x: np.ndarray, timespans: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, timespans, valid steps, observed values)`` as float64/bool arrays, shapes checked."""
    x = np.asarray(x, np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (n, length, channels), got {x.shape}")
    n, length, _ = x.shape
    ts = np.asarray(timespans, np.float64)
    if ts.shape != (n, length):
        raise ValueError(f"timespans must have shape {(n, length)}, got {ts.shape}")
    valid = np.ones((n, length), bool) if mask is None else np.asarray(mask, bool)
    return x, ts, valid, ~np.isnan(x) & valid[..., None]


def missing_value_features(
    x: np.ndarray, timespans: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    r"""GRU-D-style inputs for values that may be missing (NaN): ``[x̃, m, δ]`` per step.

    For channel ``d`` at step ``t`` with observation mask ``m_t^d`` (1 if ``x_t^d`` is not NaN)
    and time ``s_t`` (cumulative timespans), following Che et al. (2018), eqs. (2)–(3):

    * ``x̃_t^d = x_t^d`` if observed, else the last observed value of the channel (LOCF),
      or ``0`` before its first observation (the training mean once normalised);
    * ``m_t^d``;
    * ``δ_t^d = s_t − s_{t−1} + δ_{t−1}^d`` if ``m_{t−1}^d = 0``, else ``s_t − s_{t−1}``, with
      ``δ_1^d = 0``: the time since the channel was last observed *before* step ``t``.

    Padding steps (``mask`` False) give zeros.

    **Arguments:**
    - `x`: ``(n, L, C)`` with NaN for missing values.
    - `timespans`: ``(n, L)`` gaps ``s_t − s_{t−1}``.
    - `mask`: optional ``bool (n, L)`` valid steps.

    **Returns:** ``float32 (n, L, 3C)``: the blocks ``[x̃ | m | δ]`` along the last axis.

    Example:
        >>> f = missing_value_features(np.array([[[1.0], [np.nan], [3.0]]]), np.ones((1, 3)))
        >>> f[0].tolist()
        [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [3.0, 1.0, 2.0]]
    """
    x, ts, valid, seen = _observations(x, timespans, mask)
    n, length, c = x.shape
    steps = np.arange(length)[None, :, None]
    # Index of the last observation at or before t (-1: none yet): a running maximum.
    last = np.maximum.accumulate(np.where(seen, steps, -1), axis=1)
    filled = np.take_along_axis(np.where(seen, x, 0.0), np.maximum(last, 0), axis=1)
    filled = np.where(last >= 0, filled, 0.0)
    s = np.cumsum(np.where(valid, ts, 0.0), axis=1)[..., None]
    # δ_t: the time since the last observation strictly before t, or since the first step.
    prev = np.concatenate([np.full((n, 1, c), -1), last[:, :-1]], axis=1)
    s_prev = np.take_along_axis(np.broadcast_to(s, (n, length, c)), np.maximum(prev, 0), axis=1)
    delta = np.where(prev >= 0, s - s_prev, s - s[:, :1])
    out = np.concatenate([filled, seen.astype(np.float64), delta], axis=2)
    return np.where(valid[..., None], out, 0.0).astype(np.float32)


def missing_value_path(
    x: np.ndarray, timespans: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    r"""A continuous path through each channel's observed points, with the observation mask.

    For channel ``d`` observed at times ``τ_1 < … < τ_J`` (cumulative timespans of the steps
    where ``x^d`` is not NaN) the path is the linear interpolation of those points,

    $$X^d(t) = x^d(τ_j) + \frac{t − τ_j}{τ_{j+1} − τ_j}\,\bigl(x^d(τ_{j+1}) − x^d(τ_j)\bigr)
      \quad (τ_j \le t \le τ_{j+1}),$$

    constant before ``τ_1`` and after ``τ_J`` (``np.interp``), and ``0`` — the training mean
    once normalised — for a channel never observed in the example. It is evaluated at every
    step's time ``s_t``, so the model reads ``[X(s_t) | m_t]``: the path and the mask ``m`` (1
    where the value was observed, 0 where it was interpolated). Between the steps the path is
    linear in every channel at once, so ``LiquidRNN(interpolation="linear")`` over these inputs
    integrates the cell along exactly this path (the path of Kidger et al. 2020, "Neural
    controlled differential equations for irregular time series", channel by channel).

    Unlike :func:`missing_value_features` it is **not causal**: a gap is filled from the next
    observation too, so the value at step ``t`` depends on later steps. Use it for
    sequence-level targets (and offline per-step targets); for forecasting or online per-step
    prediction, where step ``t`` must not see the future, use the GRU-D features.

    **Arguments:**
    - `x`: ``(n, L, C)`` with NaN for missing values.
    - `timespans`: ``(n, L)`` gaps ``s_t − s_{t−1}``.
    - `mask`: optional ``bool (n, L)`` valid steps (padding gives zeros and is never read).

    **Returns:** ``float32 (n, L, 2C)``: the blocks ``[X | m]`` along the last axis.

    Example:
        >>> f = missing_value_path(np.array([[[1.0], [np.nan], [4.0]]]), np.array([[1.0, 1, 2]]))
        >>> f[0].tolist()
        [[1.0, 1.0], [2.0, 0.0], [4.0, 1.0]]
    """
    x, ts, valid, seen = _observations(x, timespans, mask)
    n, length, c = x.shape
    steps = np.broadcast_to(np.arange(length)[None, :, None], x.shape)
    # The observations at or before (prev) and at or after (next) each step: running extrema.
    prev = np.maximum.accumulate(np.where(seen, steps, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(seen, steps, length)[:, ::-1], axis=1)[:, ::-1]
    has_prev, has_next = prev >= 0, nxt < length
    prev, nxt = np.where(has_prev, prev, nxt), np.where(has_next, nxt, prev)  # hold at the ends
    s = np.broadcast_to(np.cumsum(np.where(valid, ts, 0.0), axis=1)[..., None], x.shape)
    values = np.where(seen, x, 0.0)
    idx = np.clip(prev, 0, length - 1), np.clip(nxt, 0, length - 1)
    x0, x1 = (np.take_along_axis(values, i, axis=1) for i in idx)
    s0, s1 = (np.take_along_axis(s, i, axis=1) for i in idx)
    w = np.where(s1 > s0, (s - s0) / np.where(s1 > s0, s1 - s0, 1.0), 0.0)
    path = np.where(has_prev | has_next, x0 + w * (x1 - x0), 0.0)
    out = np.concatenate([path, seen.astype(np.float64)], axis=2)
    return np.where(valid[..., None], out, 0.0).astype(np.float32)


def model_inputs(data: TimeSeriesData, missing: MissingMode = "features") -> np.ndarray:
    """What a model reads from `data`: ``float32 (n, L, C')`` with no NaN.

    * ``"features"``: :func:`missing_value_features` (``C' = 3C``) — causal, always safe;
    * ``"path"``: :func:`missing_value_path` (``C' = 2C``) — each channel interpolated through
      its observations (uses later observations: not for online prediction);
    * ``"zero"``: NaN replaced by 0 (``C' = C``); fine when nothing is missing.
    """
    check_choice("missing", missing, MISSING_MODES)
    if missing == "zero":
        return np.nan_to_num(data.x, nan=0.0).astype(np.float32)
    encode = missing_value_features if missing == "features" else missing_value_path
    return encode(data.x, data.timespans, data.mask)


def input_channels(num_channels: int, missing: MissingMode = "features") -> int:
    """Channels of :func:`model_inputs` for data with `num_channels` channels."""
    check_choice("missing", missing, MISSING_MODES)
    return {"features": 3, "path": 2, "zero": 1}[missing] * num_channels


# ------------------------------------------------------------------------------ task
@dataclasses.dataclass(frozen=True, eq=False)
class TimeSeriesTask:
    """Train/validation/test splits of a time-series task, normalised and ready for batching.

    **Fields:**
    - `train`, `val`, `test`: :class:`TimeSeriesData`, already normalised by `normalizer`
      (`val` may be empty).
    - `normalizer`: :class:`ChannelNormalizer` fitted on `train` only (or ``None``).
    - `missing`: how NaN reaches the model (see :func:`model_inputs`).
    - `time_scale`: the unit the timespans were divided by (see :func:`make_time_series_task`).
    - `patch_length`: observations joined into one step (see :func:`patch_time_series`).
    - `normalization`: what was applied to the values: ``"series"`` (per-series
      z-normalisation, then the channel statistics), ``"channel"`` or ``"none"``.
    - `target_mean`, `target_std`: regression: the training targets' mean and standard
      deviation per dimension (:func:`target_statistics`), for the model
      (``ModelConfig(target_mean=..., target_std=...)``); ``None`` for classification. The
      targets themselves stay in their units.
    - `delta_scale`: ``missing="features"``: the training root-mean-square of each channel's
      time since its last observation; the ``δ`` block is divided by it (``None``: not scaled).

    Example:
        >>> task = load_ts_task("data/", "BasicMotions")  # doctest: +SKIP
        >>> batch = next(task.train_loader(16).epoch(0)).data
        >>> sorted(batch)
        ['mask', 'timespans', 'x', 'y']
    """

    train: TimeSeriesData
    val: TimeSeriesData
    test: TimeSeriesData
    normalizer: ChannelNormalizer | None = None
    missing: MissingMode = "features"
    time_scale: float = 1.0
    patch_length: int = 1
    normalization: str = "channel"
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None
    delta_scale: np.ndarray | None = None

    @property
    def model_fields(self) -> dict:
        """The :class:`~liquidjax.models.ModelConfig` fields this task fixes: ``input_size``,
        ``num_classes``, ``task``, ``target_size``, ``target_mean``, ``target_std``."""
        reg = self.task == "regression"
        return {"input_size": self.input_size, "num_classes": self.train.num_classes,
                "task": self.task, "target_size": self.train.target_size if reg else 1,
                "target_mean": self.target_mean, "target_std": self.target_std}

    @property
    def input_size(self) -> int:
        return input_channels(self.train.num_channels, self.missing)

    @property
    def task(self) -> str:
        return self.train.task

    def arrays(self, split: Literal["train", "val", "test"]) -> dict[str, np.ndarray]:
        """The batch dict of a whole split: ``x`` (model inputs), ``y``, ``timespans``, ``mask``
        and, for per-step targets, ``y_mask``."""
        d = {"train": self.train, "val": self.val, "test": self.test}[split]
        x = model_inputs(d, self.missing)
        if self.missing == "features" and self.delta_scale is not None:
            c = d.num_channels
            x[..., 2 * c:] /= self.delta_scale.astype(np.float32)
        out = {"x": x, "y": d.y, "timespans": d.timespans, "mask": d.mask}
        if d.y.dtype == np.int64:
            out["y"] = d.y.astype(np.int32)
        if d.per_step:
            out["y_mask"] = d.y_mask
        return out

    def train_loader(self, batch_size: int, *, seed: int = 0) -> Loader:
        """Shuffled full batches of the training split (see :class:`Loader`)."""
        return Loader(self.arrays("train"), batch_size, seed=seed, shuffle=True, drop_last=True)

    def eval_loader(self, split: Literal["train", "val", "test"], batch_size: int) -> Loader:
        """Unshuffled batches of `split`, the last one padded with ``mask`` ``False`` rows."""
        return Loader(self.arrays(split), batch_size, shuffle=False, drop_last=False)


def make_time_series_task(
    train: TimeSeriesData,
    test: TimeSeriesData,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool | Normalization = True,
    normalize_time: bool = True,
    missing: MissingMode = "features",
    patch_length: int = 1,
) -> TimeSeriesTask:
    """Hold out a validation split, fit the normalisation on what is left, apply it everywhere.

    **Arguments:**
    - `train`, `test`: the splits (e.g. from :func:`read_ts`).
    - `val_fraction`: share of `train` held out (stratified for classification).
    - `seed`: seed of the hold-out.
    - `normalize`: ``"auto"`` (or ``True``): the choice measured best on the DEV archives —
      at present ``"channel"``; ``"channel"``: robust per-channel standardisation fitted on the
      training part only (:class:`ChannelNormalizer`);
      ``"series"``: each series z-normalised on its own, then the channel statistics;
      ``"none"`` (or ``False``): the values as they are.
    - `normalize_time`: divide every timespan by the median valid timespan of the training part
      (so a typical gap is 1, whatever the unit of the time stamps; regular data is unchanged).
    - `missing`: ``"features"``, ``"path"`` or ``"zero"`` (see :func:`model_inputs`).
    - `patch_length`: join this many consecutive observations into one step
      (:func:`patch_time_series`, after the channel normalisation and before the time
      normalisation; default 1: none).

    Regression targets are not changed: their training mean and standard deviation are
    recorded (`target_mean`, `target_std`) for the model to predict standardised targets and
    return them in the targets' units. With ``missing="features"`` the time since the last
    observation is divided by its training root-mean-square per channel (`delta_scale`).

    **Returns:** a :class:`TimeSeriesTask`.
    """
    if train.task != test.task or train.num_channels != test.num_channels:
        raise ValueError(f"train ({train.task}, {train.num_channels} channels) and test "
                         f"({test.task}, {test.num_channels} channels) do not match")
    if train.task == "classification" and train.num_classes != test.num_classes:
        raise ValueError(f"train has {train.num_classes} classes, test {test.num_classes}")
    check_choice("missing", missing, MISSING_MODES)
    mode = {True: "auto", False: "none"}.get(normalize, normalize)  # type: ignore[call-overload]
    check_choice("normalize", mode, NORMALIZATIONS)
    fit_part, val = split_time_series(train, val_fraction, seed=seed)
    if mode == "auto":
        # Per-series z-normalisation lost on both DEV archives whose series differ in level or
        # scale (Covid3Month_disc 0.557 against 0.672, PickupGestureWiimoteZ 0.580 against
        # 0.740-0.800, docs/time_series.md): their levels carry the class.
        mode = "channel"
    if mode == "series":
        fit_part, val, test = (normalize_series(d) for d in (fit_part, val, test))
    norm = ChannelNormalizer.fit(fit_part) if mode != "none" else None
    if norm is not None:
        fit_part, val, test = norm(fit_part), norm(val), norm(test)
    fit_part, val, test = (patch_time_series(d, patch_length) for d in (fit_part, val, test))
    scale = 1.0
    if normalize_time:
        scale = float(np.median(fit_part.timespans[fit_part.mask]))
        fit_part, val, test = (
            dataclasses.replace(d, timespans=d.timespans / scale) for d in (fit_part, val, test))
    delta = None
    if missing == "features":
        feats = missing_value_features(fit_part.x, fit_part.timespans, fit_part.mask)
        c = fit_part.num_channels
        d = feats[..., 2 * c:][fit_part.mask].astype(np.float64)
        rms = np.sqrt(np.mean(d ** 2, axis=0)) if d.size else np.ones(c)
        delta = np.where(rms > 0, rms, 1.0)
    stats = target_statistics(fit_part) if fit_part.task == "regression" else (None, None)
    return TimeSeriesTask(fit_part, val, test, norm, missing, scale, patch_length, mode,
                          stats[0], stats[1], delta)


def target_statistics(data: TimeSeriesData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and the (population) standard deviation of each target dimension of a
    regression split, over its sequences (or, per step, over the steps ``y_mask`` marks).
    A constant target gets standard deviation 1.

    **Returns:** ``(mean, std)``, tuples of ``target_size`` floats.

    Example:
        >>> d = TimeSeriesData.from_arrays(np.zeros((2, 2, 1)), np.array([2.0, 4.0]))
        >>> target_statistics(d)
        ((3.0,), (1.0,))
    """
    if data.task != "regression":
        raise ValueError("target statistics are for regression targets; this split is "
                         f"{data.task}")
    y = data.y.astype(np.float64)
    y = y[data.y_mask] if data.per_step else y
    y = y.reshape(len(y), -1)
    if not len(y):
        return (0.0,) * y.shape[1], (1.0,) * y.shape[1]
    mean, std = y.mean(axis=0), y.std(axis=0)
    std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _whole_floats(y: np.ndarray) -> bool:
    """Whether ``y`` is a float array of whole numbers only (the task it encodes is ambiguous)."""
    return (np.issubdtype(y.dtype, np.floating) and y.size > 0 and bool(np.isfinite(y).all())
            and bool((y == np.round(y)).all()))
