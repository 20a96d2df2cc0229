"""Tests for liquidjax.data: sources (tfds, IDX, CIFAR-10 archives), errors, sequences, batching,
augmentation and synthetic tasks. Offline; every file is written by the test into tmp_path."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

import liquidjax.data as D
from liquidjax.data import _tfds

FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------- fixtures


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _write_idx_dir(root: Path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    root.mkdir(parents=True, exist_ok=True)
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write(root / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(root / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)
        out[split] = (images, labels)
    return out


_CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_arrays(per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        n: (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch))
        for n in _CIFAR_NAMES
    }


def _write_cifar(root: Path, kind: str, arrays, archive: bool) -> Path:
    """Write a CIFAR-10 python ('py') or binary ('bin') layout; return folder or .tar.gz."""
    folder = root / ("cifar-10-batches-py" if kind == "py" else "cifar-10-batches-bin")
    folder.mkdir(parents=True)
    for name, (data, labels) in arrays.items():
        if kind == "py":
            batch = {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in labels],
                b"data": data,
                b"filenames": [b"x.png"] * len(labels),
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            rec = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
            (folder / f"{name}.bin").write_bytes(rec.tobytes())
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    if kind == "bin":
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    else:
        meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 4}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    if not archive:
        return folder
    tar_path = root / ("cifar-10-python.tar.gz" if kind == "py" else "cifar-10-binary.tar.gz")
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return tar_path


def _expected_cifar(arrays, split):
    names = _CIFAR_NAMES[:5] if split == "train" else ["test_batch"]
    data = np.concatenate([arrays[n][0] for n in names])
    labels = np.concatenate([arrays[n][1] for n in names])
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


@pytest.fixture
def offline(monkeypatch):
    """No network: every TCP connect fails as it does without DNS (the probe code runs as is)."""

    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def tfds_mock(monkeypatch):
    """tfds.testing.mock_data with its ``__getitems__`` fixed, and preparation allowed.

    tfds 4.9.10 installs the mocked ``__getitems__`` as a plain instance attribute, so it is
    called without ``self`` and fails; the wrapper supplies it (``self`` is only used to
    serialise, which this path does not do). Preparation is mocked by mock_data itself.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import mocking

    original = mocking._getitems
    monkeypatch.setattr(
        mocking,
        "_getitems",
        lambda keys, generator, serialized=False: original(None, keys, generator, serialized),
    )
    monkeypatch.setattr(_tfds, "_preparation_blocker", lambda name, timeout: None)
    return tfds


# ------------------------------------------------------------------------------ IDX sources


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    written = _write_idx_dir(tmp_path, gz=gz)
    for split in ("train", "test"):
        ds = D.load_dataset("fashion_mnist", split, tmp_path)
        images, labels = written[split]
        np.testing.assert_array_equal(ds.images[..., 0], images)
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.images.shape == (len(labels), 28, 28, 1) and ds.images.dtype == np.uint8
        assert ds.source == f"idx:{tmp_path}" and ds.split == split


def test_explicit_data_dir_is_never_replaced(tmp_path, offline, monkeypatch):
    """An explicit data dir is used or the load fails naming it, even when a system copy
    exists (issue 13: a wrong --data-dir silently trained on /usr/share/datasets)."""
    import dataclasses

    from liquidjax.data import _dataset

    system = tmp_path / "system-copy"
    _write_idx_dir(system, gz=False)
    spec = dataclasses.replace(_dataset.KNOWN_DATASETS["fashion_mnist"], system_dirs=(str(system),))
    monkeypatch.setitem(_dataset.KNOWN_DATASETS, "fashion_mnist", spec)
    given = tmp_path / "given"
    _write_idx_dir(given / "my-copy", gz=False)  # not a recognised folder name
    for download in (True, False):
        with pytest.raises(D.DatasetUnavailableError) as info:
            D.load_dataset("fashion_mnist", "test", given, download=download)
        assert str(given) in str(info.value) and str(system) not in str(info.value)
    missing = tmp_path / "nonexistent" / "x"
    with pytest.raises(D.DatasetUnavailableError, match=f"data dir given \\({missing}\\) does "
                       "not exist"):
        D.load_image_task("fashion_mnist", data_dir=missing)
    with pytest.raises(D.DatasetUnavailableError, match=str(given / "my-copy")):
        D.load_dataset("fashion_mnist", "test", given / "my-copy" / "t10k-labels-idx1-ubyte",
                       download=False)
    with pytest.raises(D.DatasetUnavailableError, match="no local files"):
        D.load_dataset("fashion_mnist", "test", given, source="local")
    # without a data dir, the system copy is a fallback
    assert D.load_dataset("fashion_mnist", "test", download=False).source == f"idx:{system}"


def test_idx_found_in_named_subfolder(tmp_path):
    written = _write_idx_dir(tmp_path / "fashion-mnist", gz=False)
    ds = D.load_dataset("fashion_mnist", "test", tmp_path, source="local")
    np.testing.assert_array_equal(ds.labels, written["test"][1])
    assert ds.source == f"idx:{tmp_path / 'fashion-mnist'}"


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_names_file_and_sizes(tmp_path, gz):
    _write_idx_dir(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = _idx_bytes(np.zeros((12, 28, 28), np.uint8))[:-100]
    _write(tmp_path / "train-images-idx3-ubyte", raw, gz)
    with pytest.raises(
        D.DatasetFormatError,
        match=rf"{name}: truncated: header shape \(12, 28, 28\) needs 9408 data bytes, found 9308",
    ):
        D.load_dataset("mnist", "train", tmp_path)


def test_idx_bad_magic_and_broken_gzip(tmp_path):
    _write_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x05" + bytes(5))
    )
    with pytest.raises(
        D.DatasetFormatError, match=r"t10k-labels-idx1-ubyte.gz: unsupported IDX element type 0x0d"
    ):
        D.load_dataset("mnist", "test", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"PK\x03\x04 not an idx")
    with pytest.raises(D.DatasetFormatError, match=r"t10k-labels-idx1-ubyte.gz: cannot read gzip"):
        D.load_dataset("mnist", "test", tmp_path)
    full = gzip.compress(_idx_bytes(np.zeros(5, np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(D.DatasetFormatError, match=r"t10k-labels-idx1-ubyte.gz"):
        D.load_dataset("mnist", "test", tmp_path)


def test_idx_count_mismatch(tmp_path):
    _write_idx_dir(tmp_path, gz=False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(4, np.uint8)), False)
    with pytest.raises(
        D.DatasetFormatError, match="4 labels but t10k-images-idx3-ubyte holds 5 images"
    ):
        D.load_dataset("mnist", "test", tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = D.load_dataset("fashion_mnist", "train", FASHION)
    test = D.load_dataset("fashion_mnist", "test", FASHION)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert np.bincount(train.labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert 0 < train.images.mean() < 255


# ---------------------------------------------------------------------------- CIFAR sources


@pytest.mark.parametrize("kind", ["py", "bin"])
@pytest.mark.parametrize("archive", [False, True])
def test_cifar_local_roundtrip(tmp_path, kind, archive):
    arrays = _cifar_arrays()
    path = _write_cifar(tmp_path, kind, arrays, archive)
    for split, n in (("train", 20), ("test", 4)):
        for where in (tmp_path, path):  # the parent folder or the folder/archive itself
            ds = D.load_dataset("cifar10", split, where)
            images, labels = _expected_cifar(arrays, split)
            assert ds.images.shape == (n, 32, 32, 3)
            np.testing.assert_array_equal(ds.images, images)
            np.testing.assert_array_equal(ds.labels, labels)
    # HWC from the CHW rows: pixel (0, 1) of the first test image = bytes 1, 1025, 2049
    data0 = arrays["test_batch"][0][0]
    assert tuple(ds.images[0, 0, 1]) == (data0[1], data0[1025], data0[2049])


def test_cifar_bin_truncated_mid_record(tmp_path):
    folder = _write_cifar(tmp_path, "bin", _cifar_arrays(), archive=False)
    f = folder / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(
        D.DatasetFormatError,
        match=r"data_batch_3.bin: size 12282 bytes is not a positive multiple of the "
              r"3073-byte record",
    ):
        D.load_dataset("cifar10", "train", tmp_path)


def test_cifar_bin_truncated_on_record_boundary(tmp_path):
    folder = _write_cifar(tmp_path, "bin", _cifar_arrays(), archive=False)
    f = folder / "test_batch.bin"
    f.write_bytes(f.read_bytes()[: 3 * 3073])
    with pytest.raises(
        D.DatasetFormatError,
        match=r"test_batch.bin: CIFAR-10 batch files must all hold the same number of records "
              r".* test_batch.bin: 3",
    ):
        D.load_dataset("cifar10", "train", tmp_path)  # caught even when reading the other split


def test_cifar_py_corrupt_and_missing(tmp_path):
    folder = _write_cifar(tmp_path, "py", _cifar_arrays(), archive=False)
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00(garbage")
    with pytest.raises(
        D.DatasetFormatError, match=r"data_batch_2: not a readable CIFAR-10 python batch"
    ):
        D.load_dataset("cifar10", "train", tmp_path)
    (folder / "data_batch_2").unlink()
    with pytest.raises(D.DatasetFormatError, match=r"data_batch_2: missing CIFAR-10 batch file"):
        D.load_dataset("cifar10", "train", tmp_path)


def test_cifar_py_refuses_code_in_pickle(tmp_path):
    folder = _write_cifar(tmp_path, "py", _cifar_arrays(), archive=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(D.DatasetFormatError, match=r"test_batch: .*forbidden global"):
        D.load_dataset("cifar10", "test", tmp_path)


def test_cifar_truncated_archive(tmp_path):
    path = _write_cifar(tmp_path, "bin", _cifar_arrays(), archive=True)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(
        D.DatasetFormatError, match=r"cifar-10-binary.tar.gz: unreadable tar.gz archive"
    ):
        D.load_dataset("cifar10", "test", tmp_path)


# ------------------------------------------------------------------ unavailable / offline


def test_offline_without_data_raises_fast(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(D.DatasetUnavailableError) as info:
        D.load_dataset("cifar10", "train", tmp_path)
    assert time.monotonic() - start < 5
    err = info.value
    assert isinstance(err, RuntimeError) and err.name == "cifar10" and err.split == "train"
    msg = str(err)
    assert "offline: cannot reach www.cs.toronto.edu:443" in msg
    assert str(tmp_path) in msg and f"tfds data dir {tmp_path / 'cifar10'}" in msg
    for option in (
        "connect to the internet once",
        "--data-dir",
        "cifar-10-python.tar.gz",
        "apt-get install dataset-fashion-mnist",
    ):
        assert option in msg


def test_probe_is_bounded_when_connect_hangs(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    start = time.monotonic()
    reason = D.network_reason("mnist", timeout=0.2)
    assert time.monotonic() - start < 2
    assert reason == "offline: cannot reach storage.googleapis.com:443 (no answer within 0.2 s)"


def test_download_false_and_local_only(tmp_path):
    with pytest.raises(D.DatasetUnavailableError, match="not found and download=False"):
        D.load_dataset("mnist", "test", tmp_path, download=False)
    with pytest.raises(D.DatasetUnavailableError, match="no local files of a known layout"):
        D.load_dataset("mnist", "test", tmp_path, source="local")


# --------------------------------------------------------------------------------- tfds


def test_tfds_mock_reads_without_tensorflow(tfds_mock):
    with tfds_mock.testing.mock_data(num_examples=7):
        for name, shape in (
            ("cifar10", (32, 32, 3)),
            ("mnist", (28, 28, 1)),
            ("fashion_mnist", (28, 28, 1)),
        ):
            ds = D.load_tfds(name, "train", fast_decode=False)
            assert ds.images.shape == (7, *shape) and ds.images.dtype == np.uint8
            assert ds.labels.shape == (7,) and ds.labels.max() < 10 and ds.num_classes == 10
            direct = tfds_mock.data_source(
                name, split="train", builder_kwargs={"file_format": "array_record"}
            )
            np.testing.assert_array_equal(
                ds.images[3], np.asarray(direct[3]["image"]).reshape(shape)
            )
    if importlib.util.find_spec("tensorflow") is None:
        assert "tensorflow" not in sys.modules


# Runs in a fresh interpreter where TensorFlow looks uninstalled: find_spec says None (etils
# chooses its file backend that way) and importing it raises ModuleNotFoundError.
_CIFAR_READER = """
import importlib.abc, importlib.util, sys
def _is_tf(name):
    return name == "tensorflow" or name.startswith("tensorflow.")
class NoTF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if _is_tf(name):
            raise ModuleNotFoundError("No module named 'tensorflow' (blocked)", name=name)
sys.meta_path.insert(0, NoTF())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if _is_tf(name) else _find_spec(name, package))
import numpy as np, liquidjax.data as D
ds = D.load_dataset("cifar10", sys.argv[2], sys.argv[1], download=False)
np.savez(sys.argv[3], images=ds.images, labels=ds.labels)
assert not any(_is_tf(m) for m in sys.modules)
print(ds.source)
"""


@pytest.mark.slow
def test_tfds_cifar10_builder_offline_then_read_without_tf(tmp_path, monkeypatch):
    """The real tfds CIFAR-10 builder prepares a fake cifar-10-batches-bin offline (needs
    TensorFlow); a fresh process with TensorFlow blocked reads it back via data_source."""
    pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    arrays = _cifar_arrays(per_batch=3)
    extracted = tmp_path / "extracted"
    _write_cifar(extracted, "bin", arrays, archive=False)
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(extracted)
    )
    monkeypatch.setattr(_tfds, "network_reason", lambda name, timeout=3.0: None)
    data_dir = tmp_path / "tfds"
    D.load_tfds("cifar10", "test", data_dir=data_dir)  # prepares both splits
    for split in ("train", "test"):
        out = tmp_path / f"{split}.npz"
        proc = subprocess.run(
            [sys.executable, "-c", _CIFAR_READER, str(data_dir), split, str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().startswith(f"tfds:{data_dir}")
        got = np.load(out)
        images, labels = _expected_cifar(arrays, split)
        # tfds shuffles records when writing: compare as multisets of (image, label)
        key = lambda im, lab: sorted(zip((i.tobytes() for i in im), lab.tolist()))
        assert key(got["images"], got["labels"]) == key(images, labels)


# ----------------------------------------------------------------------- sequences / stats


def _toy_task(n_train=40, seed=0):
    rng = np.random.default_rng(seed)
    train = D.ImageDataset(
        rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8),
        rng.integers(0, 10, n_train),
        10,
        "toy",
        "train",
    )
    test = D.ImageDataset(np.full((6, 8, 8, 3), 255, np.uint8), np.arange(6), 10, "toy", "test")
    return train, test


def test_channel_stats_exact():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 5, 4, 3), dtype=np.uint8)
    mean, std = D.channel_stats(images)
    x = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5)


@pytest.mark.parametrize(
    "mode,shape", [("rows", (32, 96)), ("pixels", (1024, 3)), ("patches", (64, 48))]
)
def test_sequencer_layouts(mode, shape):
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    seq = D.ImageSequencer(np.zeros(3), np.full(3, 1 / 255), mode, patch_size=4)  # x = pixel value
    x = seq(images)
    assert x.shape == (2, *shape) and x.dtype == np.float32
    if mode == "rows":
        np.testing.assert_array_equal(x[1, 5], images[1, 5].reshape(-1))
    elif mode == "pixels":
        np.testing.assert_array_equal(x[1, 5 * 32 + 7], images[1, 5, 7])
    else:  # patch (1, 2) in raster order = patch index 1 * 8 + 2
        np.testing.assert_array_equal(x[1, 10], images[1, 4:8, 8:12].reshape(-1))


def test_normalisation_uses_train_statistics_only(tmp_path):
    written = _write_idx_dir(tmp_path, n_train=30, n_test=10, gz=False)
    task = D.load_image_task("mnist", data_dir=tmp_path, val_fraction=0.2, seed=3)
    assert (len(task.train), len(task.val), len(task.test)) == (24, 6, 10)
    mean, std = D.channel_stats(task.train.images)
    np.testing.assert_array_equal(task.sequencer.mean, mean)
    np.testing.assert_array_equal(task.sequencer.std, std)
    all_train = written["train"][0]
    assert not np.isclose(mean[0], all_train.mean() / 255) or len(task.val) == 0
    # train + val partition the original training split
    both = np.concatenate([task.train.images, task.val.images])[..., 0]
    assert sorted(map(bytes, both)) == sorted(map(bytes, all_train))
    x = next(task.train_loader(8, seed=0).epoch(0)).data[0]
    assert x.shape == (8, 28, 28) and x.dtype == np.float32
    loader = task.train_loader(
        24, seed=0
    )  # the whole train split in one batch: zero mean, unit std
    x = next(loader.epoch(0)).data[0]
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-5)


def test_split_validation_deterministic():
    train, _ = _toy_task(n_train=50)
    a_tr, a_val = D.split_validation(train, 0.2, seed=1)
    _b_tr, b_val = D.split_validation(train, 0.2, seed=1)
    _, c_val = D.split_validation(train, 0.2, seed=2)
    assert len(a_val) == 10 and len(a_tr) == 40
    np.testing.assert_array_equal(a_val.images, b_val.images)
    assert not np.array_equal(a_val.images, c_val.images)


# -------------------------------------------------------------------------------- batching


def test_loader_epoch_permutation_and_drop_last():
    x = np.arange(103)
    loader = D.Loader((x, x * 2), batch_size=10, seed=5)
    assert loader.num_batches == 10
    batches = list(loader.epoch(3))
    seen = np.concatenate([b.data[0] for b in batches])
    np.testing.assert_array_equal(seen, np.random.default_rng((5, 3)).permutation(103)[:100])
    assert all(np.array_equal(b.data[1], b.data[0] * 2) and b.mask.all() for b in batches)
    other = np.concatenate([b.data[0] for b in loader.epoch(4)])
    assert not np.array_equal(seen, other)


def test_loader_resume_is_identical():
    train, _ = _toy_task(n_train=64)
    seq = D.ImageSequencer.fit(train.images)
    make = lambda: D.Loader(
        (train.images, train.labels), 8, seed=11, transform=D.ImageTransform(seq, augment=True)
    )
    full = [b for e in range(2) for b in make().epoch(e)]
    # "killed" after epoch 1 step 2; a fresh loader resumes at step 3
    resumed = (
        list(make().epoch(0)) + list(make().epoch(1))[:3] + list(make().epoch(1, start_step=3))
    )
    assert [(b.epoch, b.step) for b in resumed] == [(b.epoch, b.step) for b in full]
    for a, b in zip(full, resumed):
        np.testing.assert_array_equal(a.data[0], b.data[0])
        np.testing.assert_array_equal(a.data[1], b.data[1])
    np.testing.assert_array_equal(make().batch(1, 5).data[0], full[8 + 5].data[0])


def test_eval_loader_pads_and_masks_last_batch():
    _, test = _toy_task()
    test = D.ImageDataset(np.arange(6 * 192, dtype=np.uint8).reshape(6, 8, 8, 3), np.arange(6), 10)
    loader = D.Loader((test.images, test.labels), 4, shuffle=False, drop_last=False)
    batches = list(loader.epoch(0))
    assert loader.num_batches == 2 and [b.mask.tolist() for b in batches] == [
        [True] * 4,
        [True, True, False, False],
    ]
    assert batches[1].data[0].shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(batches[1].data[1][:2], [4, 5])
    labels = np.concatenate([b.data[1][b.mask] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(6))


def test_augmentation_shape_determinism_and_content():
    images = np.random.default_rng(0).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
    a = D.augment_crop_flip(images, np.random.default_rng((0, 1, 2)))
    b = D.augment_crop_flip(images, np.random.default_rng((0, 1, 2)))
    c = D.augment_crop_flip(images, np.random.default_rng((0, 1, 3)))
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # every output is a (possibly mirrored) shifted window of the zero-padded input
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(8):
        windows = [padded[i, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(np.array_equal(a[i], w) or np.array_equal(a[i], w[:, ::-1]) for w in windows)


def test_augmentation_padding():
    images = np.random.default_rng(1).integers(1, 256, (32, 6, 5, 1), dtype=np.uint8)
    flips = D.augment_crop_flip(images, np.random.default_rng(2), padding=0)
    mirrored = np.array([not np.array_equal(f, im) for f, im in zip(flips, images)])
    np.testing.assert_array_equal(flips[mirrored], images[mirrored][:, :, ::-1])
    assert 0 < mirrored.sum() < 32  # some flipped, some not
    small = D.augment_crop_flip(images, np.random.default_rng(3), padding=1, flip=False)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(32):
        assert any(np.array_equal(small[i], padded[i, dy:dy + 6, dx:dx + 5])
                   for dy in range(3) for dx in range(3))
    with pytest.raises(ValueError, match="padding must be a non-negative integer, got -1"):
        D.augment_crop_flip(images, np.random.default_rng(0), padding=-1)


def test_batch_assembly_cifar_shaped():
    # Speed is measured in benchmarks/batch_assembly.py (a timing assertion here would be flaky
    # on a loaded machine); here: a CIFAR-shaped batch is the normalised images, row by row,
    # computed independently per example in float64.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 300)
    seq = D.ImageSequencer.fit(images[:200])
    loader = D.Loader((images, labels), 128, seed=0, transform=D.ImageTransform(seq))
    x, y = loader.batch(0, 1).data
    assert x.shape == (128, 32, 96) and x.dtype == np.float32 and y.dtype == np.int32
    mean = images[:200].reshape(-1, 3).astype(np.float64).mean(0) / 255
    std = (images[:200].reshape(-1, 3).astype(np.float64) / 255).std(0)
    for row, idx in enumerate(loader.order(0)[128:133]):
        want = ((images[idx] / 255.0 - mean) / std).reshape(32, 96)
        np.testing.assert_allclose(x[row], want, rtol=1e-5, atol=1e-5)
        assert y[row] == labels[idx]


# ------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize(
    "make,channels,regression",
    [(D.irregular_sine, 1, False), (D.two_spirals, 2, False), (D.noisy_oscillator, 1, True)],
)
def test_synthetic_tasks(make, channels, regression):
    data = make(50, seed=4)
    again, other = make(50, seed=4), make(50, seed=5)
    x, dts, mask, y = data
    _n, length = mask.shape
    assert x.shape == (50, length, channels) and x.dtype == np.float32
    assert dts.shape == (50, length) and dts.dtype == np.float32 and (dts > 0).all()
    assert mask.dtype == bool
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()  # variable lengths
    np.testing.assert_array_equal(mask, np.arange(length) < lengths[:, None])  # prefix masks
    assert (x[~mask] == 0).all() and (dts[~mask] == 1).all()
    assert np.std(dts[mask]) > 0.01  # irregular sampling
    for a, b in zip(data, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(x, other.x)
    if regression:
        assert y.shape == x.shape and y.dtype == np.float32
        resid = (x - y)[mask]
        assert 0.1 < resid.std() < 0.3  # noise level 0.2 around the clean signal
    else:
        assert y.shape == (50,) and y.dtype == np.int32 and len(np.unique(y)) > 1


def test_irregular_sine_frequency_is_recoverable():
    # With no noise, demodulating at the class frequencies picks out the label.
    x, dts, _mask, y = D.irregular_sine(30, seed=0, min_length=400, max_length=400, noise=0.0)
    t = np.cumsum(dts, axis=1)
    freqs = 0.5 + np.arange(3)
    power = np.abs(np.einsum("nl,nlk->nk", x[..., 0], np.exp(-2j * np.pi * t[..., None] * freqs)))
    np.testing.assert_array_equal(power.argmax(1), y)
