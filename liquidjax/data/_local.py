"""Readers for the datasets' original file formats, for offline use without tfds.

* IDX (MNIST / Fashion-MNIST): ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``; big-endian header
  ``0x00 0x00 <type=0x08> <ndim>`` then ``ndim`` int32 dimensions, then the bytes.
* CIFAR-10 python (``cifar-10-batches-py/``: pickled dicts ``{b"data": (n, 3072) uint8 in CHW
  order, b"labels": [...]}``) and binary (``cifar-10-batches-bin/``: records of one label byte and
  3072 pixel bytes), each as an extracted folder or as the original ``.tar.gz``.

Every reader checks sizes against headers and record counts across files and raises
:class:`DatasetFormatError` naming the file; nothing is ever silently shortened.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._dataset import KNOWN_DATASETS, ImageDataset
from ._errors import DatasetFormatError

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_CIFAR_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
_CIFAR_ARCHIVES = {"py": "cifar-10-python.tar.gz", "bin": "cifar-10-binary.tar.gz"}
_CIFAR_FOLDERS = {"py": "cifar-10-batches-py", "bin": "cifar-10-batches-bin"}
_CIFAR_RECORD = 1 + 32 * 32 * 3


# ----------------------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetFormatError(str(path), f"cannot read gzip stream ({e})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (as used by MNIST and Fashion-MNIST), gzipped or not.

    **Arguments:**
    - `path`: the file; a name ending in ``.gz`` is decompressed.

    **Returns:** a ``uint8`` array with the shape stored in the header.

    **Raises:** :class:`DatasetFormatError` on a wrong magic number, an unsupported element
    type, or a data size that differs from the header's dimensions (truncated or padded file).

    Example:
        >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape
        (10000,)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetFormatError(
            str(path), f"not an IDX file: expected magic 0x0000 then type and rank, got {raw[:4]!r}"
        )
    if raw[2] != 0x08:
        raise DatasetFormatError(
            str(path), f"unsupported IDX element type 0x{raw[2]:02x} (expected 0x08, unsigned byte)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(
            str(path), f"truncated header: rank {ndim} needs {header} bytes, file has {len(raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing data"
        raise DatasetFormatError(
            str(path), f"{what}: header shape {shape} needs {expected} data bytes, found {got}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _idx_file(directory: Path, prefix: str, kind: str, rank: int) -> Path | None:
    for name in (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    prefix = _IDX_PREFIX[split]
    images = _idx_file(directory, prefix, "images", 3)
    labels = _idx_file(directory, prefix, "labels", 1)
    return (images, labels) if images and labels else None


def load_idx(directory: str | os.PathLike, split: str, *, name: str = "mnist") -> ImageDataset:
    """Load an MNIST-layout split (IDX files) from `directory`.

    **Arguments:**
    - `directory`: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
    - `split`: ``"train"`` or ``"test"`` (the ``t10k`` files).
    - `name`: dataset name recorded on the result (``"mnist"`` or ``"fashion_mnist"``: the
      layouts are identical, so the files cannot tell them apart).

    **Returns:** an :class:`ImageDataset` with images ``(n, 28, 28, 1)``.

    Example:
        >>> ds = load_idx("/usr/share/datasets/fashion-mnist", "test", name="fashion_mnist")
        >>> ds.images.shape
        (10000, 28, 28, 1)
    """
    directory = Path(directory)
    if split not in _IDX_PREFIX:
        raise ValueError(f"IDX datasets have splits 'train' and 'test', got {split!r}")
    pair = _idx_pair(directory, split)
    if pair is None:
        raise FileNotFoundError(
            f"no {_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] / "
            f"{_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz] in {directory}"
        )
    images_path, labels_path = pair
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DatasetFormatError(
            str(images_path), f"expected rank-3 images (n, rows, cols), got {images.shape}"
        )
    if labels.ndim != 1:
        raise DatasetFormatError(str(labels_path), f"expected rank-1 labels, got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            str(labels_path),
            f"{labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images",
        )
    num_classes = KNOWN_DATASETS[name].num_classes if name in KNOWN_DATASETS else 10
    if labels.size and labels.max() >= num_classes:
        raise DatasetFormatError(
            str(labels_path), f"label {labels.max()} out of range [0, {num_classes})"
        )
    return ImageDataset(images[..., None], labels, num_classes, name, split, f"idx:{directory}")


# ------------------------------------------------------------------------------------- CIFAR-10

_NUMPY_GLOBALS = {
    ("_codecs", "encode"),  # Python 3 protocol-2 pickles store bytes as latin-1 text
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds NumPy arrays and plain containers and nothing else.

    The CIFAR-10 python batches are pickles; a pickle can run arbitrary code, so only the few
    NumPy globals needed to rebuild an array are allowed.
    """

    def find_class(self, module: str, name: str):
        module = module.replace("numpy.core", "numpy._core", 1)  # numpy 1 pickles, numpy 2 names
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _cifar_py_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage: normalise them
        raise DatasetFormatError(where, f"not a readable CIFAR-10 python batch ({e!r})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetFormatError(where, "expected a dict with keys b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(
            where, f"b'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(
            where, f"{labels.shape} labels for {data.shape[0]} images (expected equal counts)"
        )
    return data, labels


def _cifar_bin_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DatasetFormatError(
            where,
            f"size {len(raw)} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte "
            "record (1 label byte + 3072 pixel bytes): truncated or not a CIFAR-10 binary batch",
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    return records[:, 1:], records[:, 0]


class _CifarFiles:
    """Reads the batch files of one CIFAR-10 layout from a folder or a ``.tar.gz``."""

    def __init__(self, kind: str, folder: Path | None = None, archive: Path | None = None):
        self.kind, self.folder, self.archive = kind, folder, archive

    @property
    def where(self) -> str:
        return str(self.folder if self.folder is not None else self.archive)

    def read_all(self, names: list[str]) -> dict[str, tuple[bytes, str]]:
        suffix = ".bin" if self.kind == "bin" else ""
        wanted = [n + suffix for n in names]
        if self.folder is not None:
            out = {}
            for n in wanted:
                path = self.folder / n
                if not path.is_file():
                    raise DatasetFormatError(str(path), "missing CIFAR-10 batch file")
                out[n] = (path.read_bytes(), str(path))
            return out
        assert self.archive is not None
        prefix = _CIFAR_FOLDERS[self.kind] + "/"
        out = {}
        try:
            with tarfile.open(self.archive, "r:gz") as tar:
                for member in tar:
                    base = member.name.removeprefix("./")
                    if member.isfile() and base.removeprefix(prefix) in wanted:
                        f = tar.extractfile(member)
                        assert f is not None
                        out[base.removeprefix(prefix)] = (f.read(), f"{self.archive}:{base}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DatasetFormatError(str(self.archive), f"unreadable tar.gz archive ({e})") from e
        missing = [n for n in wanted if n not in out]
        if missing:
            raise DatasetFormatError(
                str(self.archive), f"archive lacks {', '.join(prefix + m for m in missing)}"
            )
        return out


def _find_cifar(path: Path) -> _CifarFiles | None:
    """The CIFAR-10 layout at `path` (a folder, its parent, or an archive), or ``None``."""
    if path.is_file():
        for kind, archive in _CIFAR_ARCHIVES.items():
            if path.name == archive:
                return _CifarFiles(kind, archive=path)
        return None
    if not path.is_dir():
        return None
    for kind, folder in _CIFAR_FOLDERS.items():
        if path.name == folder:
            return _CifarFiles(kind, folder=path)
    for kind, folder in _CIFAR_FOLDERS.items():
        if (path / folder).is_dir():
            return _CifarFiles(kind, folder=path / folder)
    for kind, archive in _CIFAR_ARCHIVES.items():
        if (path / archive).is_file():
            return _CifarFiles(kind, archive=path / archive)
    return None


def load_cifar10_local(path: str | os.PathLike, split: str) -> ImageDataset:
    """Load a CIFAR-10 split from the original python or binary distribution.

    **Arguments:**
    - `path`: one of ``cifar-10-batches-py/``, ``cifar-10-batches-bin/``,
      ``cifar-10-python.tar.gz``, ``cifar-10-binary.tar.gz``, or a folder containing one of them
      (searched in that order). Archives are read in memory, never extracted.
    - `split`: ``"train"`` (``data_batch_1..5``) or ``"test"`` (``test_batch``).

    **Returns:** an :class:`ImageDataset` with images ``(n, 32, 32, 3)`` (HWC).

    **Raises:** :class:`DatasetFormatError` if a batch file is missing, truncated or corrupt, or
    if the six batch files do not all hold the same number of records (the official files hold
    10000 each), so a file truncated on a record boundary is still caught.

    Example:
        >>> ds = load_cifar10_local("~/data/cifar-10-python.tar.gz", "train")  # doctest: +SKIP
        >>> ds.images.shape
        (50000, 32, 32, 3)
    """
    if split not in _CIFAR_FILES:
        raise ValueError(f"CIFAR-10 has splits 'train' and 'test', got {split!r}")
    source = _find_cifar(Path(path).expanduser())
    if source is None:
        raise FileNotFoundError(f"no CIFAR-10 python/binary folder or archive at {path}")
    names = _CIFAR_FILES["train"] + _CIFAR_FILES["test"]  # all six: their counts cross-check
    files = source.read_all(names)
    parse: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]
    parse = _cifar_bin_batch if source.kind == "bin" else _cifar_py_batch
    suffix = ".bin" if source.kind == "bin" else ""
    counts = {}
    chunks = []
    for n in names:
        raw, where = files[n + suffix]
        if n in _CIFAR_FILES[split]:
            data, labels = parse(raw, where)
            chunks.append((data, labels))
            counts[where] = data.shape[0]
        elif source.kind == "bin":
            counts[where] = len(raw) / _CIFAR_RECORD
        else:
            counts[where] = parse(raw, where)[0].shape[0]
    if len(set(counts.values())) != 1:
        listing = ", ".join(f"{Path(w).name}: {c:g}" for w, c in counts.items())
        odd = min(counts, key=counts.get)  # type: ignore[arg-type]
        raise DatasetFormatError(
            odd,
            f"CIFAR-10 batch files must all hold the same number of records (10000 in the "
            f"official archive); found {listing}",
        )
    data = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    if labels.size and labels.max() >= 10:
        raise DatasetFormatError(source.where, f"label {labels.max()} out of range [0, 10)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ImageDataset(
        np.ascontiguousarray(images),
        labels,
        10,
        "cifar10",
        split,
        f"cifar-{source.kind}:{source.where}",
    )


# ------------------------------------------------------------------------------------ detection


def find_local(name: str, data_dir: str | os.PathLike) -> Path | None:
    """Where under `data_dir` the original files of dataset `name` are, or ``None``.

    Searches `data_dir` itself, then ``data_dir/<name>`` and ``data_dir/<name with '-'>``
    (``fashion-mnist``), for the layout of `name` (IDX for MNISTs, python/binary for CIFAR-10).

    **Returns:** the path to pass to :func:`load_idx` / :func:`load_cifar10_local`.

    Example:
        >>> find_local("fashion_mnist", "/usr/share/datasets")
        PosixPath('/usr/share/datasets/fashion-mnist')
    """
    spec = KNOWN_DATASETS[name]
    root = Path(data_dir).expanduser()
    for candidate in (root, root / name, root / name.replace("_", "-")):
        if spec.layout == "idx":
            if candidate.is_dir() and (
                _idx_pair(candidate, "train") or _idx_pair(candidate, "test")
            ):
                return candidate
        elif _find_cifar(candidate) is not None:
            return candidate
    return None


def load_local(name: str, split: str, path: str | os.PathLike) -> ImageDataset:
    """Load `split` of dataset `name` from its original files at `path` (see :func:`find_local`)."""
    if KNOWN_DATASETS[name].layout == "idx":
        return load_idx(path, split, name=name)
    return load_cifar10_local(path, split)
