"""The UEA/UCR time-series archive's ``.ts`` file format, read from a local folder.

A ``.ts`` file (the format of timeseriesclassification.com, sktime and aeon) is a header of
``@`` lines followed by ``@data`` and one example per line::

    # comments start with '#' (or '%')
    @problemName BasicMotions
    @timeStamps false
    @missing false
    @univariate false
    @dimensions 6
    @equalLength true
    @seriesLength 100
    @classLabel true Standing Running Walking Badminton
    @data
    0.1,0.2,...:0.3,0.1,...:...:Standing

Channels are separated by ``:``, values by ``,``; ``?`` (or ``NaN``) is a missing value; the last
field is the class label (``@classLabel true ...``) or the real target (``@targetLabel true``,
regression). With ``@timeStamps true`` each value is written ``(time,value)`` (a number, or an ISO
date/time read in seconds); the union of every channel's times becomes the example's time axis, NaN
where a channel has no value at a time, and the first observation's timespan is the example's median
gap. Unequal lengths are padded with NaN after each example's end.

What the reader refuses, naming the file and line: a value, time stamp or regression target whose
magnitude exceeds :data:`MAX_ABS_VALUE` (``1e20``; ``inf`` included) — the arrays are float32,
whose range ends at 3.4e38 and whose squares (a variance) overflow above 1.8e19, so such a number
is a sentinel or a corrupt field, never a measurement (write ``?`` for a missing value); and a
header that contradicts itself or the data: ``@classLabel true`` with ``@targetLabel true``, a
tag declared twice (but ``@problemName``: the first name stands), a class listed twice,
``@univariate true`` with ``@dimensions`` above 1,
``@equalLength true`` (or ``@seriesLength N``) with an example or a channel of another length,
``@missing false`` with a missing value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ._errors import DatasetFormatError, DatasetUnavailableError
from ._timeseries import MissingMode, TimeSeriesData, TimeSeriesTask, make_time_series_task

_BOOL = {"true": True, "false": False}
_STAMP = re.compile(r"\(\s*([^,()]+?)\s*,\s*([^()]*?)\s*\)")
MAX_ABS_VALUE = 1e20
"""The largest magnitude a ``.ts`` value, time stamp or regression target may have."""
_KNOWN_TAGS = ("problemname", "timestamps", "missing", "univariate", "dimensions",
               "dimension", "equallength", "serieslength", "classlabel", "targetlabel", "data")


def _bool(path, lineno, tag, words) -> bool:
    if not words or words[0].lower() not in _BOOL:
        raise DatasetFormatError(f"{path}:{lineno}", f"@{tag} needs true or false, got "
                                                     f"{' '.join(words)!r}")
    return _BOOL[words[0].lower()]


def _values(text: str, where: str) -> np.ndarray:
    text = text.strip()
    if not text:
        return np.zeros(0)
    tokens = [t.strip() for t in text.split(",")]
    try:
        values = np.array([np.nan if t in ("?", "", "NaN", "nan") else float(t) for t in tokens])
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise DatasetFormatError(where, f"not a number: {bad!r}") from None
    _check_magnitude(values, tokens, where, "value")
    return values


def _check_magnitude(values: np.ndarray, tokens, where: str, what: str) -> None:
    """Refuse a number beyond :data:`MAX_ABS_VALUE` (before any cast to float32)."""
    big = np.abs(values) > MAX_ABS_VALUE  # NaN compares False: missing values pass
    if big.any():
        k = int(np.argmax(big))
        raise DatasetFormatError(
            where, f"{what} {tokens[k]!r} has a magnitude above {MAX_ABS_VALUE:g}, the largest "
                   "read (float32 data and its squares overflow near it): a sentinel or a corrupt "
                   "field? Write ? for a missing value")


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return t in ("?", "", "NaN", "nan")


def _time(text: str) -> float:
    """A time stamp as a number: a float as is, an ISO date/time in seconds since 1970."""
    try:
        return float(text)
    except ValueError:
        stamp = np.datetime64(text.strip().replace(" ", "T"), "s")  # ValueError if not a date
        return float(stamp.astype(np.int64))


def _stamped(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = _STAMP.findall(text)
    if text.strip() and not pairs:
        raise DatasetFormatError(where, "with @timeStamps true each value must be written "
                                        f"(time,value), got {text.strip()[:40]!r}")
    try:
        t = np.array([_time(a) for a, _ in pairs], np.float64)
    except ValueError:
        raise DatasetFormatError(where, "time stamps must be numbers or ISO dates "
                                        f"(YYYY-MM-DD[ hh:mm:ss]), got {pairs[0][0]!r}") from None
    _check_magnitude(t, [a for a, _ in pairs], where, "time stamp")
    v = _values(",".join(b for _, b in pairs), where)
    return t, v


def _split_fields(line: str) -> list[str]:
    """Split on ':' outside parentheses (time stamps such as 00:01:00 contain colons)."""
    fields, depth, start = [], 0, 0
    for i, ch in enumerate(line):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ":" and depth == 0:
            fields.append(line[start:i])
            start = i + 1
    fields.append(line[start:])
    return fields


def _check_header(where, labels, regression, univariate, dims, seen) -> None:
    """Refuse a header that contradicts itself (at its ``@data`` line)."""
    if labels is not None and regression:
        raise DatasetFormatError(where, f"the header declares both @classLabel true (line "
                                        f"{seen['classlabel']}) and @targetLabel true (line "
                                        f"{seen['targetlabel']}): a file is classification or "
                                        "regression; set the other false")
    if univariate and dims is not None and dims != 1:
        raise DatasetFormatError(where, f"the header declares @univariate true (line "
                                        f"{seen['univariate']}) and @dimensions {dims} (line "
                                        f"{seen['dimensions']}): write @univariate false")


def read_ts(
    path: str | os.PathLike,
    *,
    class_names: tuple[str, ...] | None = None,
    split: str = "",
) -> TimeSeriesData:
    """Read one ``.ts`` file into a :class:`TimeSeriesData`.

    **Arguments:**
    - `path`: the file (e.g. ``BasicMotions_TRAIN.ts``).
    - `class_names`: the class list to map labels with (pass the training file's
      ``class_names`` when reading its test file); default: the ``@classLabel`` list.
    - `split`: name for the split.

    **Returns:** a :class:`TimeSeriesData` with ``x (n, L, C)`` (NaN for missing values and
    after each example's end), ``timespans`` (1.0, or the gaps between time stamps),
    ``lengths`` and ``y`` (class indices in header order, or float targets).

    **Raises:** :class:`~liquidjax.data.DatasetFormatError` naming the file and line of the
    first problem (unknown or malformed header, wrong number of channels, a label that the
    header does not declare, a value that is not a number or whose magnitude exceeds
    :data:`MAX_ABS_VALUE`, a header that contradicts itself or the data — see the module's
    docs —, a file without ``@data``).

    Example:
        >>> train = read_ts("data/BasicMotions/BasicMotions_TRAIN.ts")  # doctest: +SKIP
        >>> train.x.shape, train.class_names
        ((40, 100, 6), ('Standing', 'Running', 'Walking', 'Badminton'))
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DatasetFormatError(str(path), f"cannot read: {e.strerror or e}") from None
    name = path.stem.rsplit("_", 1)[0]
    timestamps = False
    dims: int | None = None
    labels: list[str] | None = None  # classification
    regression = False
    label_declared = False
    in_data = False
    seen: dict[str, int] = {}  # header tag -> its line
    univariate: bool | None = None
    missing: bool | None = None
    equal_length: bool | None = None
    series_length: int | None = None
    rows: list[tuple[list, str, int]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "%")):
            continue
        where = f"{path}:{lineno}"
        if not in_data:
            if not line.startswith("@"):
                raise DatasetFormatError(where, f"expected an @ header line or @data before the "
                                                f"data, got {line[:40]!r}")
            tag, *words = line[1:].split()
            low = tag.lower()
            if low not in _KNOWN_TAGS:
                raise DatasetFormatError(where, f"unknown header @{tag}; expected one of "
                                                "@problemName, @timeStamps, @missing, "
                                                "@univariate, @dimensions, @equalLength, "
                                                "@seriesLength, @classLabel, @targetLabel, @data")
            key = "dimensions" if low == "dimension" else low
            if key == "problemname" and key in seen:
                # A name only labels the data (aeon's own UnitTest_TEST.ts names two): the first
                # one stands; every tag that shapes the data must be declared once.
                continue
            if key in seen:
                raise DatasetFormatError(where, f"@{tag} is declared twice (first on line "
                                                f"{seen[key]}): keep one")
            seen[key] = lineno
            if low == "problemname" and words:
                name = words[0]
            elif low == "timestamps":
                timestamps = _bool(where, lineno, tag, words)
            elif key == "dimensions":
                if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
                    raise DatasetFormatError(where, f"@{tag} needs a positive integer, got "
                                                    f"{' '.join(words)!r}")
                dims = int(words[0])
            elif low == "serieslength":
                if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
                    raise DatasetFormatError(where, f"@{tag} needs a positive integer, got "
                                                    f"{' '.join(words)!r}")
                series_length = int(words[0])
            elif low == "univariate":
                univariate = _bool(where, lineno, tag, words)
            elif low == "missing":
                missing = _bool(where, lineno, tag, words)
            elif low == "equallength":
                equal_length = _bool(where, lineno, tag, words)
            elif low == "classlabel":
                if _bool(where, lineno, tag, words):
                    if len(words) < 3:
                        raise DatasetFormatError(where, "@classLabel true needs the class labels "
                                                        "(at least two) after it")
                    labels = words[1:]
                    twice = sorted({c for c in labels if labels.count(c) > 1})
                    if twice:
                        raise DatasetFormatError(where, f"@classLabel lists {twice} more than "
                                                        "once: each class once")
                label_declared = True
            elif low == "targetlabel":
                regression = _bool(where, lineno, tag, words)
                label_declared = True
            elif low == "data":
                in_data = True
                _check_header(where, labels, regression, univariate, dims, seen)
                if univariate and dims is None:
                    dims = 1
            continue
        fields = _split_fields(line) if timestamps else line.split(":")
        if line.endswith(":") and (labels or regression):
            raise DatasetFormatError(where, "the line ends with ':' but a label/target must "
                                            "follow the last channel")
        if fields and not fields[-1].strip():
            fields = fields[:-1]
        has_label = labels is not None or regression
        label = fields[-1].strip() if has_label else ""
        chans = fields[:-1] if has_label else fields
        if dims is None:
            dims = len(chans)
        if len(chans) != dims:
            raise DatasetFormatError(where, f"expected {dims} channel(s)"
                                            + (" and a label" if has_label else "")
                                            + f" separated by ':', got {len(chans)} channel(s)")
        if timestamps:
            parsed = [_stamped(c, where) for c in chans]
        else:
            parsed = [_values(c, where) for c in chans]
        values = [v for _, v in parsed] if timestamps else parsed
        if missing is False and any(np.isnan(v).any() for v in values):
            raise DatasetFormatError(where, f"a missing value (? or NaN) but the header says "
                                            f"@missing false (line {seen['missing']}): write "
                                            "@missing true")
        if equal_length and not timestamps:
            want = series_length if series_length is not None else (
                len(rows[0][0][0]) if rows else len(values[0]))
            odd = [len(v) for v in values if len(v) != want]
            if odd:
                said = (f"@seriesLength {series_length} (line {seen['serieslength']})"
                        if series_length is not None else "the first example's length")
                raise DatasetFormatError(where, f"a channel of {odd[0]} value(s), but "
                                                f"@equalLength true (line {seen['equallength']})"
                                                f" and {said} say {want}: write @equalLength "
                                                "false, or fix the row")
        rows.append((parsed, label, lineno))
    if not in_data:
        raise DatasetFormatError(str(path), "no @data line: not a .ts file")
    if not rows:
        raise DatasetFormatError(str(path), "no examples after @data")
    if not label_declared:
        raise DatasetFormatError(str(path), "the header declares neither @classLabel nor "
                                            "@targetLabel")
    if labels is None and not regression:
        raise DatasetFormatError(str(path), "the file has no labels (@classLabel false and no "
                                            "@targetLabel true): nothing to learn")

    n = len(rows)
    assert dims is not None
    if timestamps:
        axes = [np.unique(np.concatenate([t for t, _ in parsed])) for parsed, _, _ in rows]
        length = max(max(len(a) for a in axes), 1)
        x = np.full((n, length, dims), np.nan, np.float32)
        times = np.full((n, length), np.nan)
        lengths = np.ones(n, np.int64)
        for i, ((parsed, _, _), axis) in enumerate(zip(rows, axes)):
            lengths[i] = max(len(axis), 1)
            times[i, : len(axis)] = axis
            for c, (t, v) in enumerate(parsed):
                x[i, np.searchsorted(axis, t), c] = v
        gaps = np.diff(times, axis=1, prepend=np.nan)
        valid = np.arange(length)[None] < lengths[:, None]
        later = valid & (np.arange(length)[None] > 0)
        # Nothing precedes the first observation: it gets the example's median gap.
        med = np.array([np.median(g[m]) if m.any() else 1.0 for g, m in zip(gaps, later)])
        gaps[:, 0] = med
        if np.any(valid & ~(gaps > 0)):
            raise DatasetFormatError(str(path), "time stamps must increase within each channel")
        timespans = np.where(valid, gaps, 1.0)
    else:
        per = [max(len(v) for v in parsed) for parsed, _, _ in rows]
        length = max(max(per), 1)
        x = np.full((n, length, dims), np.nan, np.float32)
        for i, (parsed, _, lineno) in enumerate(rows):
            if per[i] == 0:
                raise DatasetFormatError(f"{path}:{lineno}", "an example with no values")
            for c, v in enumerate(parsed):
                x[i, : len(v), c] = v
        lengths = np.asarray(per, np.int64)
        timespans = np.ones((n, length), np.float32)
    if regression:
        try:
            y64 = np.array([float(lab) for _, lab, _ in rows], np.float64)
        except ValueError:
            i = next(i for i, (_, lab, _) in enumerate(rows) if not _is_float(lab))
            raise DatasetFormatError(f"{path}:{rows[i][2]}", f"regression target "
                                                             f"{rows[i][1]!r} is not a number")
        for _, lab, lineno in rows:  # before the cast to float32
            _check_magnitude(np.array([float(lab)]), [lab], f"{path}:{lineno}",
                             "regression target")
        y = y64.astype(np.float32)
        bad = ~np.isfinite(y)
        if bad.any():
            raise DatasetFormatError(f"{path}:{rows[int(np.argmax(bad))][2]}",
                                     "missing regression target")
        return TimeSeriesData(x, timespans, lengths, y, "regression", 0, name=name, split=split,
                              source=f"ts:{path}")
    classes = tuple(labels) if class_names is None else tuple(class_names)
    index = {c: k for k, c in enumerate(classes)}
    y = np.empty(n, np.int64)
    for i, (_, lab, lineno) in enumerate(rows):
        if lab not in index:
            raise DatasetFormatError(f"{path}:{lineno}", f"class label {lab!r} is not among the "
                                                         f"declared classes {list(classes)}")
        y[i] = index[lab]
    return TimeSeriesData(x, timespans, lengths, y, "classification", len(classes),
                          class_names=classes, name=name, split=split, source=f"ts:{path}")


# The files of a time-series archive: the UEA/UCR text format, or what TimeSeriesData.save_npz
# writes (NAME_TRAIN.npz and NAME_TEST.npz).
_ARCHIVE_SUFFIXES = (".ts", ".npz")


def find_ts_files(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``(NAME_TRAIN.ts, NAME_TEST.ts)`` in `folder` or ``folder/NAME``, else the same pair as
    ``.npz`` files (written by :meth:`TimeSeriesData.save_npz`).

    Raises :class:`~liquidjax.data.DatasetUnavailableError` listing the places searched and the
    remedies for an archive (never an image dataset's).
    """
    looked = []
    for d in (Path(folder), Path(folder) / name):
        for suffix in _ARCHIVE_SUFFIXES:
            train, test = d / f"{name}_TRAIN{suffix}", d / f"{name}_TEST{suffix}"
            if train.is_file() and test.is_file():
                return train, test
            looked.append(f"{d}: no {train.name if not train.is_file() else test.name}")
    where = (f"the folder given ({folder}) does not exist" if not Path(folder).is_dir()
             else f"neither {name}_TRAIN.ts/{name}_TEST.ts nor {name}_TRAIN.npz/{name}_TEST.npz "
             "was found")
    raise DatasetUnavailableError(
        name, "train/test", looked, where, options=[
            f"point --data-dir (folder=) at the folder holding {name}_TRAIN.ts and "
            f"{name}_TEST.ts (or a folder {name}/ with them), as trained;",
            f"or save both splits with TimeSeriesData.save_npz as {name}_TRAIN.npz and "
            f"{name}_TEST.npz in that folder;",
            "check --name: it is the files' prefix, case-sensitive;",
            "UEA/UCR archives can be downloaded from timeseriesclassification.com.",
        ])


def read_ts_split(path: str | os.PathLike, *, split: str = "",
                  class_names: tuple[str, ...] | None = None) -> TimeSeriesData:
    """One split of an archive found by :func:`find_ts_files`: a ``.ts`` file
    (:func:`read_ts`) or an ``.npz`` (:meth:`TimeSeriesData.load_npz`)."""
    path = Path(path)
    if path.suffix == ".npz":
        return TimeSeriesData.load_npz(path, split=split)
    return read_ts(path, class_names=class_names, split=split)


def load_ts_task(
    folder: str | os.PathLike,
    name: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    normalize_time: bool = True,
    missing: MissingMode = "features",
    patch_length: int = 1,
) -> TimeSeriesTask:
    """Read ``NAME_TRAIN.ts`` and ``NAME_TEST.ts`` (or the ``.npz`` pair, see
    :func:`find_ts_files`) from `folder` (or ``folder/NAME``) and build a
    :class:`TimeSeriesTask` (validation hold-out from the training file, normalisation from the
    rest of it; see :func:`make_time_series_task`). Test labels are mapped with the training
    file's class list; test series may be longer or shorter than the training ones.

    Example:
        >>> task = load_ts_task("/data/UEA", "BasicMotions")  # doctest: +SKIP
        >>> task.input_size, task.train.num_classes
        (18, 4)
    """
    train_path, test_path = find_ts_files(folder, name)
    train = read_ts_split(train_path, split="train")
    test = read_ts_split(test_path, class_names=train.class_names or None, split="test")
    return make_time_series_task(train, test, val_fraction=val_fraction, seed=seed,
                                 normalize=normalize, normalize_time=normalize_time,
                                 missing=missing, patch_length=patch_length)
