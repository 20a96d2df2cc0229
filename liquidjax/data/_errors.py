"""The two ways loading a dataset can fail: it is not there, or it is damaged."""

from __future__ import annotations


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be found locally and could not be downloaded/prepared.

    Raised instead of letting tfds retry a dead network for minutes. The message names the
    dataset, every place that was searched and the ways to make the data available.

    **Attributes:**
    - `name`: the dataset name (``"cifar10"``, ...).
    - `split`: the requested split.
    - `looked`: human-readable descriptions of the places searched, in order.
    - `reason`: why the last resort (download + preparation) was not possible.
    - `options`: the ways to make the data available, one line each (default: those of the
      image datasets: download, a data dir, a local archive).

    Example:
        >>> try:
        ...     load_dataset("cifar10", "train", data_dir="/nonexistent")
        ... except DatasetUnavailableError as e:
        ...     print(e.looked)
    """

    def __init__(self, name: str, split: str, looked: list[str], reason: str,
                 options: list[str] | None = None):
        self.name = name
        self.split = split
        self.looked = list(looked)
        self.reason = reason
        self.options = _image_options(name) if options is None else list(options)
        super().__init__(_format_unavailable(name, split, self.looked, reason, self.options))


def _format_unavailable(name: str, split: str, looked: list[str], reason: str,
                        options: list[str]) -> str:
    lines = [f"dataset {name!r} (split {split!r}) is not available: {reason}", "Looked in:"]
    lines += [f"  - {where}" for where in looked] or ["  - (nowhere)"]
    lines += ["Options:"] + [f"  {i}. {o}" for i, o in enumerate(options, 1)]
    return "\n".join(lines)


def _image_options(name: str) -> list[str]:
    return [
        (
            f"connect to the internet once: tfds downloads and prepares {name!r} into its "
            "data dir (preparation needs TensorFlow: pip install 'liquidjax[prepare]'); later runs "
            "are offline;"
        ),
        (
            f"--data-dir (data_dir=) pointing at a tfds data dir where {name!r} is already "
            "prepared in array_record format, or at a folder with the original files "
            "(MNIST/Fashion-MNIST: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-...; CIFAR-10: cifar-10-batches-py/ or cifar-10-batches-bin/);"
        ),
        "a local archive (cifar-10-python.tar.gz or cifar-10-binary.tar.gz) in that folder;",
        (
            "for Fashion-MNIST offline: apt-get install dataset-fashion-mnist, then "
            "--data-dir /usr/share/datasets/fashion-mnist."
        ),
    ]


class DatasetFormatError(ValueError):
    """A dataset file exists but is truncated, corrupt or not in the expected layout.

    The message names the file and what was expected (magic number, sizes, record counts). A
    damaged file always raises; it never yields fewer examples silently.

    **Attributes:**
    - `path`: the offending file (or archive member, as ``archive.tar.gz:member``).

    Example:
        >>> read_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
        DatasetFormatError: train-images-idx3-ubyte.gz: truncated: expected 47040000 data bytes ...
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")
