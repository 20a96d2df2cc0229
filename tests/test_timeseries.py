"""Time-series data (arrays, .npz, the UEA/UCR .ts format), normalisation, missing-value features,
the event-based tasks, and losses/metrics against independent NumPy/SciPy references. Offline;
every archive file is written by the test."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

import liquidjax.data as D
import liquidjax.train as T
from liquidjax.models import ModelConfig, build_model

# ------------------------------------------------------------------------------ .ts files

EQUAL = """# a comment
% another comment style
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength true
@seriesLength 3
@classLabel true up down flat
@data
1.0,2.0,3.0:4,5,6:up
3,?,1:0.5,0.5,0.5:down

7,8,9:1,2,3:flat
"""

UNEQUAL = """@problemName Var
@timeStamps false
@missing false
@univariate true
@equalLength false
@classLabel true a b
@data
1,2,3,4,5:a
6,7:b
8:a
"""

REGRESSION = """@problemName Reg
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 2
@targetLabel true
@data
1,2:0.5
3,4:-1.25e1
"""

STAMPED = """@problemName Stamped
@timeStamps true
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true 0 1
@data
(0,1.0),(2,3.0),(3,4.0):(2,-1.0),(5,-2.0):1
(2007-01-01 00:00:00,5.0),(2007-01-01 00:01:00,6.0):(2007-01-01 00:01:00,7.0):0
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_ts_equal_length_multivariate_with_missing(tmp_path):
    d = D.read_ts(_write(tmp_path, "Toy_TRAIN.ts", EQUAL))
    assert d.name == "Toy" and d.task == "classification"
    assert d.class_names == ("up", "down", "flat") and d.num_classes == 3
    np.testing.assert_array_equal(d.y, [0, 1, 2])
    assert d.x.shape == (3, 3, 2)
    np.testing.assert_array_equal(d.x[0], [[1, 4], [2, 5], [3, 6]])
    assert np.isnan(d.x[1, 1, 0]) and np.isnan(d.x).sum() == 1
    np.testing.assert_array_equal(d.lengths, [3, 3, 3])
    np.testing.assert_array_equal(d.timespans, np.ones((3, 3)))


def test_read_ts_unequal_lengths_pad_with_nan(tmp_path):
    d = D.read_ts(_write(tmp_path, "Var_TRAIN.ts", UNEQUAL))
    assert d.x.shape == (3, 5, 1)
    np.testing.assert_array_equal(d.lengths, [5, 2, 1])
    np.testing.assert_array_equal(d.mask.sum(1), [5, 2, 1])
    assert np.isnan(d.x[1, 2:]).all() and not np.isnan(d.x[1, :2]).any()
    np.testing.assert_array_equal(d.y, [0, 1, 0])


def test_read_ts_regression(tmp_path):
    d = D.read_ts(_write(tmp_path, "Reg_TRAIN.ts", REGRESSION))
    assert d.task == "regression" and d.num_classes == 0 and d.y.dtype == np.float32
    np.testing.assert_allclose(d.y, [0.5, -12.5])
    assert d.target_size == 1 and not d.per_step


def test_read_ts_time_stamps_union_of_channels(tmp_path):
    d = D.read_ts(_write(tmp_path, "Stamped_TRAIN.ts", STAMPED))
    # Example 0: times {0, 2, 3, 5}; channel 1 seen at 2 and 5 only.
    np.testing.assert_array_equal(d.lengths, [4, 2])
    # Gaps after the first: 2, 1, 2; the first observation gets their median, 2.
    np.testing.assert_allclose(d.timespans[0], [2, 2, 1, 2])
    np.testing.assert_allclose(d.times[0], [2, 4, 5, 7])
    np.testing.assert_array_equal(np.isnan(d.x[0, :, 1]), [True, False, True, False])
    np.testing.assert_allclose(d.x[0, :, 0][:3], [1, 3, 4])
    # Example 1: ISO times, one minute apart, in seconds.
    np.testing.assert_allclose(d.timespans[1, :2], [60, 60])
    np.testing.assert_allclose(d.x[1, :2], [[5, np.nan], [6, 7]])


@pytest.mark.parametrize(
    "text, line, words",
    [
        (EQUAL.replace("4,5,6:up", "4,5,6:sideways"), 12, "'sideways' is not among"),
        (EQUAL.replace("4,5,6:up", "4,5,6"), 12, "expected 2 channel(s) and a label"),
        (EQUAL.replace("3,?,1", "3,x,1"), 13, "not a number: 'x'"),
        (EQUAL.replace("@univariate false", "@univariat false"), 6, "unknown header @univariat"),
        (EQUAL.replace("@timeStamps false", "@timeStamps maybe"), 4, "needs true or false"),
        (REGRESSION.replace("3,4:-1.25e1", "3,4:big"), 10, "'big' is not a number"),
        (EQUAL.replace("@data\n", ""), 11, "expected an @ header line or @data"),
    ],
)
def test_read_ts_malformed_names_file_and_line(tmp_path, text, line, words):
    path = _write(tmp_path, "Bad_TRAIN.ts", text)
    with pytest.raises(D.DatasetFormatError) as e:
        D.read_ts(path)
    msg = str(e.value)
    assert f"{path}:{line}:" in msg and words in msg


def test_read_ts_without_data_or_labels(tmp_path):
    with pytest.raises(D.DatasetFormatError, match="no @data"):
        D.read_ts(_write(tmp_path, "A_TRAIN.ts", "@problemName A\n@classLabel true a b\n"))
    with pytest.raises(D.DatasetFormatError, match="no labels"):
        D.read_ts(_write(tmp_path, "B_TRAIN.ts", "@classLabel false\n@data\n1,2\n"))
    with pytest.raises(D.DatasetFormatError, match="cannot read"):
        D.read_ts(tmp_path / "absent.ts")


def test_load_ts_task_maps_test_labels_with_train_classes(tmp_path):
    (tmp_path / "Toy").mkdir()
    _write(tmp_path / "Toy", "Toy_TRAIN.ts", EQUAL * 1)
    test = EQUAL.replace("@classLabel true up down flat", "@classLabel true flat down up")
    _write(tmp_path / "Toy", "Toy_TEST.ts", test)
    task = D.load_ts_task(tmp_path, "Toy", val_fraction=0.0)
    np.testing.assert_array_equal(task.test.y, [0, 1, 2])  # by name, not by header position
    assert task.input_size == 6  # [x̃ | m | δ] for 2 channels
    with pytest.raises(D.DatasetUnavailableError, match="Nope_TRAIN.ts"):
        D.load_ts_task(tmp_path, "Nope")


# ------------------------------------------------------------------------------ arrays, npz


def test_from_arrays_times_become_timespans_and_lengths_are_inferred():
    x = np.array([[[1.0], [2.0], [np.nan]], [[1.0], [np.nan], [3.0]]])
    times = np.array([[0.5, 1.0, np.nan], [0.0, 2.0, 2.5]])
    d = D.TimeSeriesData.from_arrays(x, np.array([0, 1]), times=times, first_timespan=0.25)
    np.testing.assert_array_equal(d.lengths, [2, 3])
    np.testing.assert_allclose(d.timespans, [[0.25, 0.5, 1.0], [0.25, 2.0, 0.5]])
    with pytest.raises(ValueError, match="example 0 step 1"):
        D.TimeSeriesData.from_arrays(x, np.array([0, 1]), times=[[0, 0, 0], [0, 1, 2]])
    with pytest.raises(ValueError, match="either times"):
        D.TimeSeriesData.from_arrays(x, np.array([0, 1]), times=times, timespans=times)


def test_npz_round_trip_and_errors(tmp_path):
    d = D.irregular_oscillators(5, seed=3, max_length=7, min_length=4)
    back = D.TimeSeriesData.load_npz(d.save_npz(tmp_path / "osc.npz"))
    for name in ("x", "timespans", "lengths", "y", "y_mask"):
        np.testing.assert_array_equal(getattr(back, name), getattr(d, name))
    assert back.task == "regression" and back.per_step
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3, 1)))
    with pytest.raises(D.DatasetFormatError, match=r"bad.npz: missing array\(s\) \['y'\]"):
        D.TimeSeriesData.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", x=np.zeros((2, 3, 1)), y=np.zeros(3, int))
    with pytest.raises(D.DatasetFormatError, match="bad2.npz: y must have 2 rows"):
        D.TimeSeriesData.load_npz(tmp_path / "bad2.npz")


# ------------------------------------------------------------------------------ normalisation


def test_normalizer_uses_observed_training_values_only():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (6, 5, 3))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:, :, 2] = np.nan  # a channel never observed
    lengths = np.array([5, 4, 3, 5, 2, 1])
    train = D.TimeSeriesData.from_arrays(x, np.arange(6) % 2, lengths=lengths)
    norm = D.ChannelNormalizer.fit(train, robust=False)
    valid = np.arange(5)[None] < lengths[:, None]
    ref = np.where(valid[..., None], x, np.nan)  # padding must not count
    np.testing.assert_allclose(norm.mean[:2], np.nanmean(ref[..., :2], axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(norm.std[:2], np.nanstd(ref[..., :2], axis=(0, 1)), rtol=1e-5)
    assert norm.mean[2] == 0 and norm.std[2] == 1
    z = norm(train)
    seen = ~np.isnan(z.x[..., :2])
    np.testing.assert_allclose(np.nanmean(z.x[..., :2], axis=(0, 1)), 0, atol=1e-6)
    assert np.array_equal(seen, ~np.isnan(train.x[..., :2]))
    other = D.TimeSeriesData.from_arrays(x + 100, np.arange(6) % 2, lengths=lengths)
    assert np.nanmean(norm(other).x[..., 0]) > 10  # test data does not change the statistics
    robust = D.ChannelNormalizer.fit(train)  # the default: no gross outlier, the same
    np.testing.assert_allclose(robust.mean, norm.mean, rtol=1e-6)
    np.testing.assert_allclose(robust.std, norm.std, rtol=1e-6)
    assert robust.mean[2] == 0 and robust.std[2] == 1


def test_task_split_is_stratified_and_normalised_from_train_part():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [10, 5, 2])
    d = D.TimeSeriesData.from_arrays(rng.normal(size=(17, 4, 2)), y)
    tr, va = D.split_time_series(d, 0.2, seed=0)
    assert sorted(np.unique(va.y)) == [0, 1, 2] and len(tr) + len(va) == 17
    task = D.make_time_series_task(d, d, val_fraction=0.2, seed=0)
    fit_x = tr.x
    ref = [D.robust_scale(fit_x[..., c][~np.isnan(fit_x[..., c])])[0] for c in range(2)]
    np.testing.assert_allclose(task.normalizer.mean, ref, rtol=1e-5)


def test_patches_match_a_loop_reference_on_irregular_unequal_series():
    rng = np.random.default_rng(5)
    n, length, c, p = 4, 11, 2, 3
    lengths = np.array([11, 7, 1, 9])
    x = rng.normal(size=(n, length, c))
    x[rng.random(x.shape) < 0.2] = np.nan
    dts = rng.uniform(0.2, 2.0, size=(n, length))
    d = D.TimeSeriesData.from_arrays(x, np.array([0, 1, 0, 1]), timespans=dts, lengths=lengths)
    out = D.patch_time_series(d, p)
    steps = -(-length // p)
    assert out.x.shape == (n, steps, p * c)
    np.testing.assert_array_equal(out.lengths, [4, 3, 1, 3])
    for i in range(n):
        t = np.cumsum(dts[i, : lengths[i]])  # absolute times of the valid observations
        ends = []
        for k in range(out.lengths[i]):
            for j in range(p):
                src = k * p + j
                want = x[i, src] if src < lengths[i] else np.full(c, np.nan)
                np.testing.assert_array_equal(out.x[i, k, j * c:(j + 1) * c],
                                              want.astype(np.float32))
            ends.append(t[min(k * p + p, lengths[i]) - 1])
        gaps = np.diff(np.concatenate([[0.0], ends]))  # time between the patches' ends
        np.testing.assert_allclose(out.timespans[i, : out.lengths[i]], gaps, rtol=1e-5)
    assert D.patch_time_series(d, 1) is d
    # the task patches after the channel statistics and before the time unit
    task = D.make_time_series_task(d, d, val_fraction=0.0, patch_length=p)
    assert task.patch_length == p and task.input_size == 3 * p * c
    ref = [D.robust_scale(v[~np.isnan(v)])[0] for v in d.x[d.mask].T]
    np.testing.assert_allclose(task.normalizer.mean, ref, rtol=1e-5)
    patched = out.timespans[out.mask]
    np.testing.assert_allclose(task.time_scale, np.median(patched), rtol=1e-6)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="patch length must be a positive integer"):
            D.patch_time_series(d, bad)
    per_step = D.TimeSeriesData.from_arrays(x[:, :, :1], np.zeros((n, length), np.int64),
                                            num_classes=2, lengths=lengths)
    with pytest.raises(ValueError, match="sequence-level targets"):
        D.patch_time_series(per_step, 2)


# ------------------------------------------------------------------------------ missing values


def _features_reference(x, dts, valid):
    """Che et al. (2018) eqs. (2)-(3), one step at a time."""
    n, length, c = x.shape
    out = np.zeros((n, length, 3 * c))
    for i in range(n):
        s = np.cumsum(np.where(valid[i], dts[i], 0.0))
        for d in range(c):
            last, delta, prev_m = 0.0, 0.0, True
            for t in range(length):
                if not valid[i, t]:
                    continue
                m = not np.isnan(x[i, t, d])
                if t > 0:
                    delta = s[t] - s[t - 1] + (delta if not prev_m else 0.0)
                if m:
                    last = x[i, t, d]
                out[i, t, d], out[i, t, c + d], out[i, t, 2 * c + d] = last, m, delta
                prev_m = m
    return out


def test_missing_value_features_match_the_grud_definition():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 7, 3))
    x[rng.random(x.shape) < 0.5] = np.nan
    x[1, :, 2] = np.nan  # fully missing channel
    x[2, :, :] = np.nan
    x[2, 3, 1] = 1.5  # a sequence with one observation
    dts = rng.uniform(0.1, 2.0, (4, 7))
    valid = np.arange(7)[None] < np.array([7, 5, 7, 1])[:, None]
    got = D.missing_value_features(x, dts, valid)
    np.testing.assert_allclose(got, _features_reference(x, dts, valid), rtol=1e-5, atol=1e-6)
    assert not np.isnan(got).any()
    # The fully missing channel: value 0, mask 0, delta = time since the first step.
    np.testing.assert_allclose(got[1, :5, 2], 0)
    np.testing.assert_allclose(got[1, :5, 8], np.cumsum(dts[1, :5]) - dts[1, 0], rtol=1e-5)
    np.testing.assert_allclose(got[2, 3:, 1], 1.5)  # carried forward after its one observation
    np.testing.assert_allclose(got[2, :3, 1], 0)


def _path_reference(times, x, lengths):
    """``np.interp`` per example and channel over the observed points; 0 if none; 0 padding."""
    n, length, c = x.shape
    out = np.zeros((n, length, 2 * c))
    for i in range(n):
        k = lengths[i]
        for d in range(c):
            seen = ~np.isnan(x[i, :k, d])
            if seen.any():
                out[i, :k, d] = np.interp(times[i, :k], times[i, :k][seen], x[i, :k, d][seen])
            out[i, :k, c + d] = seen
    return out


def test_missing_value_path_matches_np_interp_per_channel():
    rng = np.random.default_rng(3)
    n, length, c = 5, 9, 3
    x = rng.normal(size=(n, length, c))
    x[rng.random(x.shape) < 0.5] = np.nan
    x[0, :, 1] = np.nan  # a channel never observed
    x[1] = np.nan
    x[1, 4, 2] = -0.7  # a sequence with a single observation (in one channel)
    lengths = np.array([9, 6, 9, 3, 7])  # unequal lengths
    times = np.cumsum(rng.uniform(0.1, 3.0, (n, length)), axis=1) + 10.0
    valid = np.arange(length)[None] < lengths[:, None]
    ref = _path_reference(times, x, lengths)
    # Absolute times and the equivalent gaps give the same path (only differences matter).
    by_times = D.TimeSeriesData.from_arrays(x, np.zeros(n, int), times=np.where(valid, times,
                                            np.nan), lengths=lengths, num_classes=2)
    gaps = np.diff(times, axis=1, prepend=0.0)
    by_gaps = D.TimeSeriesData.from_arrays(x, np.zeros(n, int), timespans=gaps,
                                           lengths=lengths, num_classes=2)
    for d in (by_times, by_gaps):
        got = D.model_inputs(d, "path")
        assert got.shape == (n, length, 2 * c) and not np.isnan(got).any()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0, :, 1], 0)  # never observed: 0
    np.testing.assert_allclose(got[1, :6, 2], -0.7)  # one observation: constant
    np.testing.assert_array_equal(got[1, :6, :2], 0)
    np.testing.assert_array_equal(got[~valid], 0)  # padding
    # Not vacuous: on some missing values the path differs from the last observation carried
    # forward (it interpolates towards the next one).
    locf = D.model_inputs(by_gaps, "features")[..., :c]
    assert np.sum(np.abs(got[..., :c] - locf) > 1e-3) > 5
    assert D.input_channels(c, "path") == 2 * c


# ------------------------------------------------------------------------------ tasks


def _paper_xor_encode(bits, pad):
    """The ODE-LSTM paper's per-sample loop (XORData.create_event_based_sample) on given bits,
    rewritten here as a reference."""
    events, elapsed, mask = np.zeros(pad), np.zeros(pad), np.zeros(pad, bool)
    last, w, counter, label = -1, 0, 0, 0
    for ch in bits.astype(int):
        counter += 1
        label += ch
        if ch != last:
            events[w], elapsed[w], mask[w] = ch, counter, True
            w += 1
            counter = 0
            if w >= pad - 1:
                break
        last = ch
    if counter > 0:
        events[w], elapsed[w], mask[w] = ch, counter, True
    return events, elapsed / pad, mask, label % 2


def test_event_xor_labels_are_the_parity_of_the_decoded_stream():
    d = D.event_xor(300, seed=4, max_length=16)
    assert d.x.shape == (300, 16, 1) and set(np.unique(d.y)) == {0, 1}
    counts = np.rint(d.timespans * 16).astype(int)
    for i in range(300):
        k = d.lengths[i]
        pos = np.cumsum(counts[i, :k]) - 1  # dense position of each event
        bits = np.zeros(pos[-1] + 1)
        for j in range(k):
            end = pos[j + 1] if j + 1 < k else pos[j] + 1
            bits[pos[j] : end] = d.x[i, j, 0]
        assert 2 <= len(bits) <= 15
        assert int(bits.sum()) % 2 == d.y[i]
        ev, el, m, label = _paper_xor_encode(bits, 16)  # the paper's encoding of these bits
        assert m.sum() == k and label == d.y[i]
        np.testing.assert_array_equal(d.x[i, :k, 0], ev[:k])
        np.testing.assert_allclose(d.timespans[i, :k], el[:k])
        # An event at every change (the final one may repeat the last bit).
        assert np.all(d.x[i, 1 : k - 1, 0] != d.x[i, : k - 2, 0])
    assert 0.35 < d.y.mean() < 0.65


def _paper_event_transform(img, pad, threshold):
    """The ODE-LSTM paper's per-image loop (transform_sample), rewritten here as a reference."""
    events, elapsed, mask = np.zeros(pad), np.zeros(pad), np.zeros(pad, bool)
    last, w, counter = -1, 0, 0
    for v in img.reshape(-1):
        counter += 1
        ch = int(v > threshold)
        if ch != last:
            events[w], elapsed[w], mask[w] = ch, counter, True
            w += 1
            counter = 0
            if w >= pad:
                break
        last = ch
    return events, elapsed, mask


def test_event_sequential_mnist_matches_the_paper_encoding():
    rng = np.random.default_rng(5)
    images = (rng.random((6, 8, 8)) < 0.3).astype(np.uint8) * 255
    images[0] = 0  # one event only
    images[1] = rng.integers(0, 256, (8, 8))  # many events: truncated at max_length
    d = D.event_sequential_mnist(images, np.arange(6) % 3, max_length=20, num_classes=3)
    for i in range(6):
        ev, el, m = _paper_event_transform(images[i], 20, 128)
        assert d.lengths[i] == m.sum()
        np.testing.assert_array_equal(d.x[i, m, 0], ev[m])
        np.testing.assert_allclose(d.timespans[i, m], el[m] / 20)
    assert d.lengths[0] == 1 and d.lengths[1] == 20


def test_irregular_oscillators_missing_channels_and_targets():
    d = D.irregular_oscillators(50, seed=1, channels=3, missing=0.6)
    obs = d.observed[d.mask]
    assert obs.any(axis=1).all()  # every valid step has at least one channel
    assert 0.3 < 1 - obs.mean() < 0.6
    assert d.per_step and d.y.shape == (50, 48, 3) and d.target_size == 3
    assert np.isfinite(d.y).all()
    f = D.irregular_oscillators(10, seed=1, target="frequency")
    assert f.y.shape == (10,) and not f.per_step and 1 <= f.y.min() and f.y.max() <= 4


# ------------------------------------------------------------------------------ losses, metrics


def _masked_mean(v, m):
    return float((v * m).sum() / m.sum())


def test_classification_losses_and_metrics_per_sequence_and_per_step():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (5, 4))
    mask = rng.random((5, 4)) < 0.7
    mask[0, 0] = True
    ce = -(logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True))
    ce = np.take_along_axis(ce, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(T.cross_entropy(logits, labels, mask), _masked_mean(ce, mask),
                               rtol=1e-5)
    np.testing.assert_allclose(T.cross_entropy(logits[:, 0], labels[:, 0]), ce[:, 0].mean(),
                               rtol=1e-5)
    hit = logits.argmax(-1) == labels
    np.testing.assert_allclose(T.accuracy(logits, labels, mask), _masked_mean(hit, mask),
                               rtol=1e-6)
    # Macro-F1 with a plain loop over classes present as a label or a prediction.
    pred, lab = logits.argmax(-1)[mask], labels[mask]
    f1s = []
    for c in range(3):
        tp = np.sum((pred == c) & (lab == c))
        fp = np.sum((pred == c) & (lab != c))
        fn = np.sum((pred != c) & (lab == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    np.testing.assert_allclose(T.macro_f1(logits, labels, mask), np.mean(f1s), rtol=1e-6)
    with pytest.raises(ValueError, match="class axis"):
        T.accuracy(logits, labels[:, :2])


def test_binary_auc_against_pairwise_counting():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=40), 1)  # rounded: ties
    labels = rng.integers(0, 2, 40)
    mask = rng.random(40) < 0.8
    s, y = scores[mask], labels[mask]
    pos, neg = s[y == 1], s[y == 0]
    ref = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    np.testing.assert_allclose(T.binary_auc(scores, labels, mask), ref, rtol=1e-6)
    np.testing.assert_allclose(T.binary_auc(np.arange(4.0), np.array([0, 0, 1, 1])), 1.0)
    assert math.isnan(float(T.binary_auc(np.arange(3.0), np.zeros(3, int))))


def test_regression_losses_with_per_step_masks():
    rng = np.random.default_rng(8)
    pred = rng.normal(size=(3, 6, 2))
    target = rng.normal(size=(3, 6, 2))
    target[0, 5] = np.nan  # masked out: must not poison the mean
    mask = np.ones((3, 6), bool)
    mask[0, 5] = False
    mask[2, 3:] = False
    m = np.broadcast_to(mask[..., None], pred.shape)
    diff = np.where(m, pred - target, 0.0)
    np.testing.assert_allclose(T.mse(pred, target, mask), (diff**2).sum() / m.sum(), rtol=1e-5)
    np.testing.assert_allclose(T.mae(pred, target, mask), np.abs(diff).sum() / m.sum(),
                               rtol=1e-5)
    var = rng.uniform(0.2, 3.0, pred.shape)
    nll = -scipy.stats.norm.logpdf(np.nan_to_num(target), pred, np.sqrt(var))
    np.testing.assert_allclose(T.gaussian_nll(pred, var, target, mask), _masked_mean(nll, m),
                               rtol=1e-5)
    assert bool(jnp.isnan(T.mse(pred, target, np.zeros((3, 6), bool))))
    with pytest.raises(ValueError, match="leading axes"):
        T.mse(pred, target, mask[:, :2])


# ------------------------------------------------------------------------------ trainer, models


class _Linear(eqx.Module):
    """A stand-in model with no recurrence: cheap to compile, outputs known in closed form."""

    w: jax.Array
    per_step: bool = eqx.field(static=True, default=False)

    def __call__(self, x, timespans=None, mask=None, *, key=None):
        ys = x @ self.w
        return ys if self.per_step else ys[0]


def test_target_terms_per_step_labels_and_gaussian_regression():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
    y = rng.integers(0, 4, (3, 5)).astype(np.int32)
    y_mask = rng.random((3, 5)) < 0.6
    weight = np.array([1.0, 1.0, 0.0], np.float32)  # an evaluation padding row
    batch = {"y": jnp.asarray(y), "y_mask": jnp.asarray(y_mask), "weight": jnp.asarray(weight)}
    terms, w, hits = T.target_terms(jnp.asarray(logits), batch)
    ce = -(logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True))
    ce = np.take_along_axis(ce, y[..., None], -1)[..., 0]
    ref_w = y_mask * weight[:, None]
    np.testing.assert_allclose(w, ref_w)
    np.testing.assert_allclose(np.sum(w * terms), np.sum(ref_w * ce), rtol=1e-5)
    np.testing.assert_allclose(np.sum(w * hits), np.sum(ref_w * (logits.argmax(-1) == y)))

    out = rng.normal(size=(3, 5, 4)).astype(np.float32)  # mean and raw variance of D = 2
    target = rng.normal(size=(3, 5, 2)).astype(np.float32)
    terms, w, _ = T.target_terms(jnp.asarray(out), {"y": jnp.asarray(target),
                                                   "y_mask": jnp.asarray(y_mask)})
    var = np.log1p(np.exp(out[..., 2:])) + 1e-6
    nll = -scipy.stats.norm.logpdf(target, out[..., :2], np.sqrt(var)).mean(-1)
    np.testing.assert_allclose(np.where(y_mask, terms, 0), np.where(y_mask, nll, 0), rtol=1e-4)
    with pytest.raises(ValueError, match="do not fit model outputs"):
        T.target_terms(jnp.zeros((3, 5, 3)), {"y": jnp.asarray(target)})
    with pytest.raises(ValueError, match="do not fit model outputs"):
        T.target_terms(jnp.zeros((3, 4)), {"y": jnp.asarray(y)})


def test_evaluate_reports_f1_auc_and_regression_errors_over_a_padded_batch():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(11, 3, 4)).astype(np.float32)
    y = rng.integers(0, 2, 11).astype(np.int32)
    model = _Linear(jnp.asarray(rng.normal(size=(4, 2)), jnp.float32))
    ev = T.evaluate(model, T.ArrayData(x, y), batch_size=4)  # 3 batches, the last padded
    logits = x[:, 0] @ np.asarray(model.w)
    pred = logits.argmax(-1)
    assert ev["count"] == 11
    np.testing.assert_allclose(ev["accuracy"], np.mean(pred == y), rtol=1e-6)
    s = logits[:, 1] - logits[:, 0]
    auc = np.mean((s[y == 1][:, None] > s[y == 0][None]) + 0.5 * (s[y == 1][:, None]
                                                                  == s[y == 0][None]))
    np.testing.assert_allclose(ev["auc"], auc, rtol=1e-5)
    f1 = [2 * np.sum((pred == c) & (y == c)) / (np.sum(pred == c) + np.sum(y == c))
          for c in (0, 1)]
    np.testing.assert_allclose(ev["macro_f1"], np.mean(f1), rtol=1e-5)

    per = _Linear(model.w, per_step=True)
    target = rng.normal(size=(11, 3, 2)).astype(np.float32)
    y_mask = rng.random((11, 3)) < 0.7
    ev = T.evaluate(per, T.ArrayData(x, target, y_mask=y_mask), batch_size=4)
    err = (x @ np.asarray(model.w) - target)[y_mask]
    assert ev["count"] == y_mask.sum() and np.isnan(ev["accuracy"])
    np.testing.assert_allclose(ev["mse"], np.mean(err**2), rtol=1e-5)
    np.testing.assert_allclose(ev["mae"], np.mean(np.abs(err)), rtol=1e-5)
    np.testing.assert_allclose(ev["loss"], ev["mse"], rtol=1e-6)


def test_per_step_regression_model_trains_on_missing_data():
    train = D.irregular_oscillators(48, seed=0, channels=2, min_length=6, max_length=10)
    test = D.irregular_oscillators(16, seed=1, channels=2, min_length=6, max_length=10)
    task = D.make_time_series_task(train, test, val_fraction=0.0)
    cfg = ModelConfig(input_size=task.input_size, num_classes=0, task="regression",
                      per_step=True, target_size=2, units=8, backbone_units=8)
    model = build_model(cfg, key=jax.random.key(0))
    batch = task.arrays("test")
    ys = jax.vmap(model)(batch["x"], batch["timespans"], batch["mask"])
    assert ys.shape == (16, 10, 2)
    assert float(jnp.abs(jnp.where(batch["mask"][..., None], 0, ys)).max()) == 0
    before = T.evaluate(model, task.eval_loader("test", 8))["mse"]
    result = T.fit(model, task.train_loader(8), T.TrainConfig(epochs=4, batch_size=8,
                                                              learning_rate=1e-2),
                   progress="none")
    after = T.evaluate(result.model, task.eval_loader("test", 8))["mse"]
    assert after < 0.8 * before
    assert math.isnan(result.history[-1]["train_accuracy"])


def test_model_config_tasks():
    cfg = ModelConfig(input_size=3, num_classes=0, task="regression", target_size=2,
                      predict_variance=True, units=4, backbone_units=4)
    assert cfg.output_size == 4
    model = build_model(cfg, key=jax.random.key(0))
    assert model(jnp.ones((5, 3))).shape == (4,)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        ModelConfig(input_size=3, num_classes=1)
    with pytest.raises(ValueError, match="predict_variance applies"):
        ModelConfig(input_size=3, num_classes=2, predict_variance=True)
    with pytest.raises(ValueError, match="unknown task"):
        ModelConfig(input_size=3, num_classes=2, task="ranking")
    with pytest.raises(ValueError, match="per_step outputs need kind='sequence'"):
        ModelConfig(input_size=3, num_classes=2, per_step=True, kind="conv",
                    image_shape=(8, 8, 1))


# ------------------------------------------------------------------------------ CLI


def test_cli_trains_and_evaluates_a_ts_archive(tmp_path, capsys):
    from liquidjax.cli import main

    rng = np.random.default_rng(11)
    lines = ["@problemName Wave", "@timeStamps false", "@missing true", "@univariate true",
             "@equalLength false", "@classLabel true lo hi", "@data"]
    for split, n in (("TRAIN", 24), ("TEST", 8)):
        rows = []
        for i in range(n):
            k = i % 2
            length = rng.integers(5, 9)
            v = np.sin(np.arange(length) * (0.5 + k)) + 0.1 * rng.normal(size=length)
            vals = ["?" if rng.random() < 0.1 else f"{a:.3f}" for a in v]
            rows.append(",".join(vals) + ":" + ("lo", "hi")[k])
        (tmp_path / f"Wave_{split}.ts").write_text("\n".join(lines + rows) + "\n")
    out = tmp_path / "run"
    args = ["train", "--dataset", "ts", "--data-dir", str(tmp_path), "--name", "Wave",
            "--epochs", "1", "--batch-size", "8", "--units", "4", "--backbone-units", "4",
            "--out-dir", str(out), "--progress", "none", "--cpu-devices", "1",
            "--missing", "path"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "(loss" in printed
    assert main(["evaluate", str(out), "--split", "test", "--batch-size", "8"]) == 0
    assert "Wave" not in capsys.readouterr().err
    header = T.read_header(T.list_checkpoints(out / "checkpoints")[-1])
    assert header["recipe"] == "ts_cfc@5"
    assert header["model_config"]["ensemble"] == 5
    assert header["model_config"]["stem_channels"] == [32, 64, 32]
    assert header["model_config"]["stem_pool"] == 1  # 8 observations at most: one per step
    assert header["data_config"]["patch_length"] == 1  # the stem reads every observation
    assert header["data_config"]["val_fraction"] == 0.0  # the whole training file trains
    assert not header["train_config"]["keep_best"]
    assert header["train_config"]["time_budget"] == 210
    assert header["data_config"]["missing"] == "path"  # evaluate rebuilt the same inputs
    assert main(["train", "--dataset", "ts", "--data-dir", str(tmp_path)]) == 2
    assert "--name NAME" in capsys.readouterr().err
    assert main(["train", "--dataset", "ts", "--data-dir", str(tmp_path), "--name", "Nope",
                 "--out-dir", str(tmp_path / "r2"), "--cpu-devices", "1"]) == 1
    assert "Nope_TRAIN.ts" in capsys.readouterr().err


def test_cli_ts_defaults_patch_long_series_and_pick_the_recipe_by_cell(tmp_path, capsys):
    from liquidjax.cli import build_parser, main, with_recipe
    from liquidjax.cli._data import resolve_defaults

    rng = np.random.default_rng(3)
    lines = ["@problemName Long", "@univariate true", "@equalLength false",
             "@classLabel true a b", "@data"]
    for split, n in (("TRAIN", 8), ("TEST", 4)):
        rows = [",".join(f"{v:.3f}" for v in rng.normal(size=70 - 3 * i)) + ":" + "ab"[i % 2]
                for i in range(n)]
        (tmp_path / f"Long_{split}.ts").write_text("\n".join(lines + rows) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ts", "--data-dir", str(tmp_path), "--name", "Long",
                 "--epochs", "1", "--units", "4", "--backbone-units", "4", "--out-dir", str(out),
                 "--progress", "none", "--cpu-devices", "1", "--val-fraction", "0.25"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    # a validation split selects: the run says which epoch it tested
    assert "tested: the best validation epoch, 1 (val acc" in captured.out
    # the stem reads every observation; the longest series (70) in ceil(70 / 3) = 24 windows
    assert ("every observation read by a convolution stem (the longest training series, 70 "
            "observations, in 70 stem steps), in windows of 3 (24 liquid steps)") in err
    assert "batch 6" in err and "recipe ts_cfc@5" in err
    assert "validation hold-out 0.25, the best validation epoch kept" in err
    assert "training stops after 210 s" in err
    header = T.read_header(T.list_checkpoints(out / "checkpoints")[-1])
    assert header["data_config"]["patch_length"] == 1
    assert header["model_config"]["stem_pool"] == 3
    assert header["model_config"]["input_size"] == 3  # [x, mask, delta]
    assert main(["evaluate", str(out), "--batch-size", "4"]) == 0  # the header's model
    assert "test: accuracy" in capsys.readouterr().out

    def resolved(*flags):
        argv = ["train", "--dataset", "ts", "--data-dir", str(tmp_path), "--name", "Long",
                *flags]
        return with_recipe(build_parser().parse_args(argv), argv)

    # without the stem (--stem-channels none), patches of 3 observations instead
    plain = resolved("--stem-channels", "none")
    resolve_defaults(plain)
    assert (plain.stem_channels, plain.stem_pool, plain.patch_length) == (None, 1, 3)
    assert ("patch length 3 (the longest training series, 70 observations, in 24 steps)"
            in capsys.readouterr().err)
    ltc = resolved("--cell", "ltc")
    assert (ltc.recipe, ltc.mixed_memory, ltc.learning_rate, ltc.ensemble,
            ltc.stem_channels, ltc.rocket_features) == ("ts_ltc@4", True, 1e-2, 5, (32, 64, 32),
                                                        2000)
    assert resolved("--cell", "ltc", "--lr", "3e-3").learning_rate == 3e-3  # flags still win
    assert resolved("--cell", "gruode").recipe == "none"
    assert resolved("--patch-length", "5").patch_length == 5
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--dataset", "ts", "--patch-length", "0"])
    assert exit_.value.code == 2
    assert "--patch-length: expected 'auto' or an integer >= 1, got '0'" in (
        capsys.readouterr().err)


def test_ts_front_end_bounds_the_stem_and_the_liquid_steps():
    from liquidjax.cli._data import TS_STEM_STEPS, TS_TARGET_STEPS, ts_front_end

    assert ts_front_end(24) == (1, 1) and ts_front_end(70) == (1, 3)
    assert ts_front_end(427) == (1, 14) and ts_front_end(2000) == (4, 16)
    assert ts_front_end(427, 3) == (3, 5)  # a given --patch-length: windows of its steps
    for longest in range(1, 3000, 7):
        patch, pool = ts_front_end(longest)
        stem_steps = -(-longest // patch)
        assert stem_steps <= TS_STEM_STEPS and -(-stem_steps // pool) <= TS_TARGET_STEPS
        assert patch == 1 or -(-longest // (patch - 1)) > TS_STEM_STEPS  # no longer than needed


def test_benchmark_dtw_baseline_matches_a_plain_dtw():
    """`benchmarks/ts_archives.py`'s vectorised 1-NN-DTW (the baseline the defaults are held
    to) against the textbook O(n·m) recursion, on unequal lengths and two channels: every
    training series its own class, each test series labelled with its reference nearest
    neighbour, so accuracy 1.0 means every nearest neighbour agrees."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ts_archives.py"
    spec = importlib.util.spec_from_file_location("ts_archives_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    rng = np.random.default_rng(12)

    def split(n, labels=None):
        lengths = rng.integers(4, 11, n)
        x = np.full((n, 10, 2), np.nan, np.float32)
        for i, k in enumerate(lengths):
            x[i, :k] = np.cumsum(rng.normal(size=(k, 2)), 0)
        y = np.arange(n) if labels is None else labels
        return x, lengths, y

    def dtw(a, b):
        d = np.full((len(a) + 1, len(b) + 1), np.inf)
        d[0, 0] = 0.0
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                cost = float(np.sum((a[i - 1] - b[j - 1]) ** 2))
                d[i, j] = cost + min(d[i - 1, j], d[i, j - 1], d[i - 1, j - 1])
        return d[-1, -1]

    xa, la, ya = split(9)
    xb, lb, _ = split(7, labels=np.zeros(7, int))
    nearest = np.array([np.argmin([dtw(xb[t, :lb[t]], xa[i, :la[i]]) for i in range(9)])
                        for t in range(7)])
    train = D.TimeSeriesData.from_arrays(xa, ya, lengths=la, num_classes=9)
    test = D.TimeSeriesData.from_arrays(xb, nearest, lengths=lb, num_classes=9)
    assert bench.dtw_1nn_accuracy(train, test, chunk=3) == 1.0
    wrong = D.TimeSeriesData.from_arrays(xb, (nearest + 1) % 9, lengths=lb, num_classes=9)
    assert bench.dtw_1nn_accuracy(train, wrong) == 0.0


# ------------------------------------------------------------------------------ issue 22


def test_regression_targets_standardised_and_metrics_in_original_units():
    """The task records the training targets' mean/std (the targets stay as they are); the
    model predicts standardised targets and returns them in the original units, so evaluate's
    RMSE/MAE (per sequence and per step) equal a NumPy recomputation from the model's outputs
    against the raw targets; a mean-and-variance head has its variance scaled by std²."""
    rng = np.random.default_rng(22)
    n, length = 10, 5
    x = rng.normal(size=(n, length, 1))
    y = 18.0 + 12.6 * rng.normal(size=(n, 2))
    d = D.TimeSeriesData.from_arrays(x, y)
    task = D.make_time_series_task(d, d, val_fraction=0.0)
    np.testing.assert_allclose(task.target_mean, y.mean(0), rtol=1e-6)
    np.testing.assert_allclose(task.target_std, y.std(0), rtol=1e-6)
    np.testing.assert_array_equal(task.train.y, y.astype(np.float32))  # not rescaled
    cfg = ModelConfig(**task.model_fields, units=4, backbone_units=8)
    model = build_model(cfg, key=jax.random.key(0))
    plain = build_model(dataclasses.replace(cfg, target_mean=None, target_std=None),
                        key=jax.random.key(0))  # the same network, no scaling
    arr = task.arrays("test")
    out = np.asarray(jax.vmap(model)(arr["x"], arr["timespans"], arr["mask"]))
    z = np.asarray(jax.vmap(plain)(arr["x"], arr["timespans"], arr["mask"]))
    np.testing.assert_allclose(out, y.mean(0) + y.std(0) * z, rtol=1e-5)
    ev = T.evaluate(model, task.eval_loader("test", 4))
    err = out - y
    np.testing.assert_allclose(ev["rmse"], np.sqrt(np.mean(err ** 2)), rtol=1e-5)
    np.testing.assert_allclose(ev["mae"], np.mean(np.abs(err)), rtol=1e-5)
    from liquidjax import export  # the streaming stepper returns the same units

    step = export.stepper(model)
    state = step.initial_state()
    for t in range(length):
        pred, state = step(state, arr["x"][0, t], arr["timespans"][0, t])
    np.testing.assert_allclose(pred, out[0], rtol=1e-4)
    # per-step targets with a target mask: statistics over the marked steps only
    ys = 5.0 + 3.0 * rng.normal(size=(n, length, 1))
    y_mask = rng.random((n, length)) < 0.7
    ps = D.TimeSeriesData.from_arrays(x, ys, y_mask=y_mask)
    mean, std = D.target_statistics(ps)
    np.testing.assert_allclose(mean, [ys[y_mask].mean()], rtol=1e-6)
    np.testing.assert_allclose(std, [ys[y_mask].std()], rtol=1e-6)
    cfg = ModelConfig(input_size=3, num_classes=0, task="regression", per_step=True,
                      target_mean=mean, target_std=std, units=4, backbone_units=8)
    m = build_model(cfg, key=jax.random.key(1))
    pt = D.make_time_series_task(ps, ps, val_fraction=0.0)
    arr = pt.arrays("test")
    out = np.asarray(jax.vmap(m)(arr["x"], arr["timespans"], arr["mask"]))
    ev = T.evaluate(m, pt.eval_loader("test", 4))
    err = (out - ys)[..., 0][y_mask]
    np.testing.assert_allclose(ev["rmse"], np.sqrt(np.mean(err ** 2)), rtol=1e-5)
    # a mean and a variance: μ' = m + s μ, σ'² = s² σ²
    from liquidjax.models._classifier import unstandardize

    raw = jnp.array([[0.3, -2.0], [-1.0, 4.0]])
    mu, var = T.split_gaussian(raw)
    mu2, var2 = T.split_gaussian(unstandardize(raw, (18.0,), (12.6,)))
    np.testing.assert_allclose(mu2, 18.0 + 12.6 * mu, rtol=1e-6)
    np.testing.assert_allclose(var2, 12.6 ** 2 * var, rtol=1e-4)
    with pytest.raises(ValueError, match="target_mean applies to task='regression'"):
        ModelConfig(input_size=3, num_classes=2, target_mean=(1.0,))
    with pytest.raises(ValueError, match="one value per target dimension"):
        ModelConfig(input_size=3, num_classes=0, task="regression", target_std=(1.0, 2.0))


def test_constant_series_and_one_extreme_value_do_not_flatten_the_data():
    """A constant series or channel is divided by 1, not 0 (per-series and per-channel); one
    training value of 1e30 moves neither the robust centre nor the scale, so the other series
    keep their spread; the value itself is clipped to ±CLIP instead of reaching the model."""
    rng = np.random.default_rng(3)
    x = rng.normal(50.0, 10.0, (12, 20, 1))
    x[3] = 7.0  # a constant series
    d = D.TimeSeriesData.from_arrays(x, np.arange(12) % 2)
    z = D.normalize_series(d).x
    assert np.isfinite(z).all() and np.all(z[3] == 0)
    np.testing.assert_allclose(z[0, :, 0].std(), 1.0, rtol=1e-5)
    const = D.TimeSeriesData.from_arrays(np.full((4, 6, 1), 3.0), np.arange(4) % 2)
    for robust in (True, False):
        norm = D.ChannelNormalizer.fit(const, robust=robust)
        assert norm.std[0] == 1.0 and np.all(norm(const).x == 0)
    clean = D.ChannelNormalizer.fit(d)
    bad = x.copy()
    bad[5, 7, 0] = 1e30
    poisoned = D.TimeSeriesData.from_arrays(bad, np.arange(12) % 2)
    robust = D.ChannelNormalizer.fit(poisoned)
    np.testing.assert_allclose(robust.mean, clean.mean, rtol=0.01)
    np.testing.assert_allclose(robust.std, clean.std, rtol=0.05)
    spikes = np.zeros((12, 20, 1))  # a channel that is 0 but for one 1e30: std 1, not 1e29
    spikes[2, 3] = 1e30
    norm0 = D.ChannelNormalizer.fit(D.TimeSeriesData.from_arrays(spikes, np.arange(12) % 2))
    assert norm0.mean[0] == 0 and norm0.std[0] == 1
    out = robust(poisoned).x
    assert out[5, 7, 0] == D.CLIP and np.isfinite(out).all()
    others = np.delete(out[..., 0], 3, axis=0)  # not the constant series
    assert np.all(others.std(axis=1) > 0.5)  # every series keeps its shape
    plain = D.ChannelNormalizer.fit(poisoned, robust=False)  # what the mean/std did
    assert np.all(plain(poisoned).x[0].std() < 1e-6)
    task = D.make_time_series_task(poisoned, poisoned, val_fraction=0.0)
    assert np.isfinite(task.arrays("train")["x"]).all()


def test_normalisation_choices():
    """`normalize="series"` z-normalises each series on its own (then the channel statistics,
    ≈ the identity); `"auto"` is the robust per-channel normalisation (measured best on DEV);
    `"none"` leaves the values; anything else is refused."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 30, 1)) * rng.uniform(0.1, 10, (20, 1, 1)) \
        + rng.uniform(0, 300, (20, 1, 1))
    raw = D.TimeSeriesData.from_arrays(x, np.arange(20) % 2)
    task = D.make_time_series_task(raw, raw, val_fraction=0.0, normalize="series")
    assert task.normalization == "series"
    ref = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    np.testing.assert_allclose(task.train.x * task.normalizer.std + task.normalizer.mean, ref,
                               atol=1e-4)
    auto = D.make_time_series_task(raw, raw, val_fraction=0.0)
    assert auto.normalization == "channel"
    mean, std = D.robust_scale(x.reshape(-1))
    np.testing.assert_allclose(auto.train.x, np.clip((x - mean) / std, -D.CLIP, D.CLIP),
                               rtol=1e-4, atol=1e-5)
    none = D.make_time_series_task(raw, raw, val_fraction=0.0, normalize=False)
    assert none.normalizer is None and none.normalization == "none"
    with pytest.raises(ValueError, match="normalize"):
        D.make_time_series_task(raw, raw, normalize="global")


def test_loaders_agree_on_the_first_timespan(tmp_path):
    """`read_ts` and `from_arrays(times=...)` give the same timespans for the same data: the
    first observation gets its example's median gap (1.0 for a single observation)."""
    text = """@problemName Gaps
@timeStamps true
@missing false
@univariate true
@equalLength false
@classLabel true 0 1
@data
(0,1.0),(3,2.0),(4,3.0),(7,4.0):0
(10,5.0),(11,6.0):1
(2,7.0):0
"""
    ts = D.read_ts(_write(tmp_path, "Gaps_TRAIN.ts", text))
    times = np.array([[0, 3, 4, 7], [10, 11, np.nan, np.nan], [2, np.nan, np.nan, np.nan]])
    x = np.array([[1, 2, 3, 4], [5, 6, np.nan, np.nan], [7, np.nan, np.nan, np.nan]])
    arr = D.TimeSeriesData.from_arrays(x, np.array([0, 1, 0]), times=times)
    np.testing.assert_array_equal(arr.timespans, ts.timespans)
    np.testing.assert_allclose(arr.timespans[:, 0], [3.0, 1.0, 1.0])  # median of 3, 1, 3


def test_missing_features_time_channel_is_normalised():
    """With `missing="features"` the δ block (time since the last observation) is divided by
    its training root-mean-square per channel: long gaps no longer dwarf the values."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 40, 2))
    x[rng.random(x.shape) < 0.8] = np.nan  # sparse channels: long runs without a value
    d = D.TimeSeriesData.from_arrays(x, np.arange(16) % 2)
    task = D.make_time_series_task(d, d, val_fraction=0.0)
    raw = D.missing_value_features(task.train.x, task.train.timespans, task.train.mask)
    scaled = task.arrays("train")["x"]
    mask = task.train.mask
    delta_raw, delta = raw[..., 4:][mask], scaled[..., 4:][mask]
    np.testing.assert_allclose(np.sqrt(np.mean(delta ** 2, axis=0)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(delta * task.delta_scale, delta_raw, rtol=1e-5)
    assert delta_raw.max() > 10 and delta.max() < delta_raw.max() / 3
    np.testing.assert_array_equal(scaled[..., :4], raw[..., :4])  # values and mask unchanged


def test_docs_fit_on_a_time_series_task_runs(monkeypatch):
    """The `fit` example of docs/time_series.md, executed as written (from the repository root,
    on the vendored ItalyPowerDemand files)."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "time_series.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    [block] = [b for b in blocks if "task.model_fields" in b and "T.fit(" in b]
    monkeypatch.chdir(root)
    scope: dict = {}
    exec(compile(block, "docs/time_series.md", "exec"), scope)
    assert 0.0 <= T.evaluate(scope["result"].model,
                             scope["task"].eval_loader("test", 256))["accuracy"] <= 1.0
