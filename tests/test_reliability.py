"""Issue 24: no silent wrong answer from a data file, the stepper or a solver set-up. Each class
of bad input gets a refusal (one clear line naming what was wrong) or a documented opt-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import liquidjax.data as D
from liquidjax.data._ts_format import MAX_ABS_VALUE

# ------------------------------------------------------------------------------ .ts files

BASE = """@problemName T
@univariate true
@missing false
@equalLength true
@classLabel true a b
@data
1,2,3:a
4,5,6:b
"""


def _read(tmp_path: Path, text: str):
    path = tmp_path / "T_TRAIN.ts"
    path.write_text(text)
    return path, lambda: D.read_ts(path)


@pytest.mark.parametrize("token", ["1e300", "-1e30", "2.5e20", "inf", "-Infinity"])
def test_ts_values_beyond_the_magnitude_limit_are_refused_with_file_line_and_value(
        tmp_path, token):
    assert abs(float(token)) > MAX_ABS_VALUE
    path, read = _read(tmp_path, BASE.replace("4,5,6", f"4,{token},6"))
    with pytest.raises(D.DatasetFormatError) as e:
        read()
    assert f"{path}:8:" in str(e.value) and repr(token) in str(e.value)
    # the largest accepted magnitude reads back exactly as float32 would hold it
    _, read = _read(tmp_path, BASE.replace("4,5,6", "4,-1e20,6"))
    assert read().x[1, 1, 0] == np.float32(-1e20)


def test_ts_regression_targets_and_time_stamps_beyond_the_limit_are_refused(tmp_path):
    reg = BASE.replace("@classLabel true a b", "@targetLabel true").replace(":b", ":3e38")
    path, read = _read(tmp_path, reg.replace(":a", ":1.5"))
    with pytest.raises(D.DatasetFormatError, match=rf"{path}:8: regression target '3e38'"):
        read()
    stamped = ("@timeStamps true\n@univariate true\n@classLabel true a b\n@data\n"
               "(0,1),(1e25,2):a\n")
    path, read = _read(tmp_path, stamped)
    with pytest.raises(D.DatasetFormatError, match=rf"{path}:5: time stamp '1e25'"):
        read()


@pytest.mark.parametrize(
    "change, line, words",
    [
        (("4,5,6", "4,5"), 8, "@equalLength true (line 4)"),
        (("@equalLength true", "@equalLength true\n@seriesLength 4"), 8,
         "@seriesLength 4 (line 5)"),
        (("4,5,6", "4,?,6"), 8, "@missing false (line 3)"),
        (("@data", "@targetLabel true\n@data"), 7, "both @classLabel true (line 5) and "
                                                  "@targetLabel true (line 6)"),
        (("@data", "@dimensions 2\n@data"), 7, "@univariate true (line 2) and @dimensions 2"),
        (("@data", "@missing true\n@data"), 6, "@missing is declared twice (first on line 3)"),
        (("true a b", "true a b a"), 5, "lists ['a'] more than once"),
        (("@equalLength true", "@seriesLength -3"), 4, "@seriesLength needs a positive integer"),
    ],
)
def test_ts_header_contradictions_are_refused_naming_file_and_line(tmp_path, change, line,
                                                                  words):
    path, read = _read(tmp_path, BASE.replace(*change))
    with pytest.raises(D.DatasetFormatError) as e:
        read()
    assert f"{path}:{line}:" in str(e.value) and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_ts_consistent_header_still_reads(tmp_path):
    text = BASE.replace("@equalLength true", "@equalLength true\n@seriesLength 3")
    d = _read(tmp_path, text)[1]()
    np.testing.assert_array_equal(d.x[:, :, 0], [[1, 2, 3], [4, 5, 6]])
    d = _read(tmp_path, BASE.replace("@missing false", "@missing true")
              .replace("4,5,6", "4,?,6"))[1]()
    assert np.isnan(d.x[1, 1, 0]) and d.lengths.tolist() == [3, 3]


def test_npz_with_whole_float_labels_is_refused_not_silently_regression(tmp_path):
    x = np.zeros((4, 3, 1), np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(D.DatasetFormatError, match="store class labels as integers, or add an "
                                                   "array task='regression'"):
        D.TimeSeriesData.load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "r.npz", x=x, y=np.array([0.0, 1.0, 1.0, 0.0]), task="regression")
    assert D.TimeSeriesData.load_npz(tmp_path / "r.npz").task == "regression"
    np.savez(tmp_path / "i.npz", x=x, y=np.array([0, 1, 1, 0]))
    assert D.TimeSeriesData.load_npz(tmp_path / "i.npz").task == "classification"
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0.5, 1.0, 1.0, 0.0]))
    assert D.TimeSeriesData.load_npz(tmp_path / "g.npz").task == "regression"
