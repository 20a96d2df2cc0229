"""Data adapters of the trainer: host arrays (:class:`ArrayData`) or a loader in, the batch dicts
the jitted steps read out, and the label checks made once on the host before any step."""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..data import Loader
from ..models import AbstractClassifier
from ._step import _forward

_OPTIONAL = ("timespans", "mask", "y_mask")


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayData:
    """A split held in host memory: what :func:`fit` and :func:`evaluate` read.

    **Arguments:**
    - `x`: inputs, shape ``(n, ...)`` (e.g. ``(n, L, C)`` sequences or ``(n, H, W, C)`` images),
      in the dtype the model takes.
    - `y`: integer labels ``(n,)`` (per sequence) or ``(n, L)`` (per step), or real targets
      ``(n,)``, ``(n, D)`` (per sequence) or ``(n, L, D)`` (per step).
    - `timespans`: optional ``(n, L)`` elapsed times per step.
    - `mask`: optional boolean ``(n, L)``, ``True`` on valid steps.
    - `y_mask`: optional boolean ``(n, L)`` for per-step targets: the steps that carry one
      (default: `mask`).

    **Example:**
    ```python
    data = ArrayData(x=np.zeros((64, 10, 3), np.float32), y=np.zeros(64, np.int32))
    ```
    """

    x: np.ndarray
    y: np.ndarray
    timespans: np.ndarray | None = None
    mask: np.ndarray | None = None
    y_mask: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.x)
        y = np.asarray(self.y)
        if np.issubdtype(y.dtype, np.integer):
            big = np.abs(y.astype(np.int64, copy=False)) > np.iinfo(np.int32).max
            if big.any():  # checked before the int32 cast, under which they would wrap around
                i = int(np.flatnonzero(big.reshape(-1))[0])
                raise ValueError(f"y: label {int(y.reshape(-1)[i])} at index {i} is not a "
                                 "class index (labels must be 0..num_classes-1)")
        object.__setattr__(self, "y", _targets(y, n))
        for name in _OPTIONAL:
            v = getattr(self, name)
            if v is not None and np.shape(v)[:1] != (n,):
                raise ValueError(f"{name} must have {n} rows like x, got shape {np.shape(v)}")

    def __len__(self) -> int:
        return int(len(self.x))

    def arrays(self) -> dict[str, np.ndarray]:
        """``x``, ``y`` and the optional arrays present, as a dict."""
        out = {"x": self.x, "y": self.y}
        for name in _OPTIONAL:
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out

    def loader(self, batch_size: int, *, seed: int = 0, train: bool = True) -> Loader:
        """A :class:`liquidjax.data.Loader` over these arrays: shuffled full batches for training,
        or the stored order with a padded, masked last batch for evaluation."""
        return Loader(self.arrays(), batch_size, seed=seed, shuffle=train, drop_last=train)


DataLike = Union[Loader, ArrayData]


def _targets(y: Any, n: int | None = None) -> np.ndarray:
    """Labels as int32, real targets as float32; anything else is refused."""
    y = np.asarray(y)
    if n is not None and y.shape[:1] != (n,):
        raise ValueError(f"y must have {n} rows like x, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.integer) and y.ndim in (1, 2):
        return y.astype(np.int32, copy=False)
    if np.issubdtype(y.dtype, np.floating) and y.ndim in (1, 2, 3):
        return y.astype(np.float32, copy=False)
    raise ValueError(
        f"y must be integer labels (batch,) or (batch, time), or real targets (batch,), "
        f"(batch, D) or (batch, time, D); got {y.dtype} {y.shape}"
    )


def batch_dict(data: Any) -> dict[str, np.ndarray]:
    """The ``{"x", "y", "timespans"?, "mask"?, "y_mask"?}`` dict of a loader batch's data
    pytree: a dict, an ``(x, y)`` tuple (image tasks), or a named tuple with ``x``, ``y`` and
    optionally ``timespans``/``mask`` (:class:`liquidjax.data.SequenceData`). Labels become
    int32, real targets float32."""
    if isinstance(data, dict):
        d = dict(data)
    elif hasattr(data, "_fields"):
        d = data._asdict()
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        d = {"x": data[0], "y": data[1]}
    else:
        raise ValueError(
            f"cannot read a batch from {type(data).__name__}: expected a dict, an (x, y) tuple, "
            "or a named tuple with fields x, y (and optionally timespans, mask)"
        )
    if "x" not in d or "y" not in d:
        raise ValueError(f"a batch needs 'x' and 'y', got fields {sorted(d)}")
    out = {"x": np.asarray(d["x"]), "y": _targets(d["y"])}
    for name in _OPTIONAL:
        if d.get(name) is not None:
            out[name] = np.asarray(d[name])
    return out


def check_labels(labels: np.ndarray, num_classes: int, what: str = "labels") -> None:
    """Raise ``ValueError`` naming the values of `labels` outside ``[0, num_classes)`` (how many
    of each, and the first index), so that none is silently trained as another class or turns
    the loss into NaN.

    **Example:**
    ```python
    check_labels(np.array([0, 3, -1]), 3)  # ValueError: ... -1 (1 example, index 2), 3 (...)
    ```
    """
    y = np.asarray(labels)
    bad = (y < 0) | (y >= num_classes)
    if not bad.any():
        return
    values, first, counts = np.unique(y[bad], return_index=True, return_counts=True)
    where = np.flatnonzero(bad)[first]
    shown = ", ".join(f"{int(v)} ({int(c)} example{'s' if c > 1 else ''}, first at index {int(i)})"
                      for v, c, i in list(zip(values, counts, where))[:8])
    more = f" and {len(values) - 8} more values" if len(values) > 8 else ""
    raise ValueError(
        f"{what}: {int(bad.sum())} of {y.size} labels are outside the valid range "
        f"[0, {num_classes - 1}] (num_classes={num_classes}): {shown}{more}. Labels must be "
        f"class indices 0..{num_classes - 1}; re-map them, or build the model with more classes"
    )


def _host_labels(data: DataLike) -> np.ndarray | None:
    """All labels of `data` as stored (before any batch transform), or ``None`` if the loader's
    data is not an ``(x, y)`` pair, a dict or a named tuple with ``y``."""
    raw = data.y if isinstance(data, ArrayData) else data.data
    if isinstance(raw, dict):
        raw = raw.get("y")
    elif hasattr(raw, "_fields"):
        raw = getattr(raw, "y", None)
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        raw = raw[1]
    elif not isinstance(data, ArrayData):
        raw = None
    if raw is None:
        return None
    y = np.asarray(raw)
    return y if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else None


def _num_classes(model: Any, loader: Loader) -> int:
    if isinstance(model, AbstractClassifier):
        return int(model.num_classes)
    batch = batch_dict(loader.batch(0, 0).data)
    return int(eqx.filter_eval_shape(_forward, model, batch, None).shape[-1])


def check_data_labels(model: Any, loader: Loader, splits: dict[str, DataLike | None]) -> None:
    """Check every split's labels once, on the host, against the model's number of classes
    (read from the model, or from its output shape on `loader`'s first batch)."""
    labels = {what: _host_labels(d) for what, d in splits.items() if d is not None}
    if any(y is not None for y in labels.values()):
        num_classes = _num_classes(model, loader)
        for what, y in labels.items():
            if y is not None:
                check_labels(y, num_classes, what)


def as_loader(data: DataLike, batch_size: int, seed: int, train: bool) -> Loader:
    if isinstance(data, ArrayData):
        return data.loader(batch_size, seed=seed, train=train)
    if data.batch_size != batch_size:
        raise ValueError(
            f"the {'training' if train else 'evaluation'} loader has batch_size "
            f"{data.batch_size}, but the config asks for {batch_size}"
        )
    if train and not data.drop_last:
        raise ValueError("the training loader must drop the last partial batch (drop_last=True)")
    return data


def rows_of(batch: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in batch.items()}


def init_from_data(model: Any, data: DataLike, *, key: Any, batch_size: int = 256) -> Any:
    """`model` with what it fits from the training inputs fitted
    (:meth:`~liquidjax.models.AbstractClassifier.init_from_data`, e.g. the biases and scales of
    :class:`~liquidjax.models.RocketFeatures`), from every input of `data` — an
    :class:`ArrayData` or a loader (one pass over its batches: a training loader that drops its
    last partial batch leaves those examples out). A model that fits nothing is returned as it
    is. Call it once before :func:`~liquidjax.train.fit`, which refuses an unfitted model.

    **Example:**
    ```python
    model = init_from_data(build_model(config, key=k1), task.train_loader(32, seed=0), key=k2)
    ```
    """
    if not model.fits_from_data:
        return model
    if isinstance(data, ArrayData):
        x = np.asarray(data.x)
        mask = None if data.mask is None else np.asarray(data.mask, bool)
    else:
        xs, masks = [], []
        for batch in data.epoch(0):
            d = batch_dict(batch.data)
            xs.append(np.asarray(d["x"]))
            masks.append(np.ones(d["x"].shape[:2], bool) if d.get("mask") is None
                         else np.asarray(d["mask"], bool))
        x, mask = np.concatenate(xs), np.concatenate(masks)
    return _init_from_data_jit(model, jnp.asarray(x),
                               None if mask is None else jnp.asarray(mask), key)


@eqx.filter_jit
def _init_from_data_jit(model, x, mask, key):
    # One compiled program (run eagerly, an ensemble's vmap dispatches op by op: ~5x slower).
    return model.init_from_data(x, mask, key=key)
