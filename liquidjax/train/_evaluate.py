"""``evaluate``: a model's loss and metrics on a split, sums kept on device."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._metrics import binary_auc, f1_from_confusion
from ..data import Loader
from ._data import DataLike, as_loader, batch_dict, check_data_labels, rows_of
from ._sharding import DataParallel
from ._step import _forward, eval_step, eval_sums, target_terms


def evaluate(
    model: Any,
    data: DataLike,
    *,
    batch_size: int = 256,
    parallel: DataParallel | None = None,
    regression_loss: str = "mse",
) -> dict[str, float]:
    """Loss and metrics of `model` on `data` (inference mode: no dropout).

    The last partial batch is padded with zero-weight rows, so every batch has one shape (one
    compile). Sums stay on device; the host reads them once. Targets count as in training
    (:func:`~liquidjax.train.target_terms`): per sequence, or per step where a step mask allows.

    **Arguments:**
    - `model`: ``model(x, timespans, mask, *, key) -> outputs`` (logits, or real predictions;
      per sequence or per step).
    - `data`: an :class:`ArrayData`, or an evaluation :class:`liquidjax.data.Loader`
      (unshuffled, padded last batch; its batch size wins).
    - `batch_size`: evaluation batch size for an :class:`ArrayData` (divisible by the device
      count).
    - `parallel`: the :class:`DataParallel` to shard over (default: all devices).
    - `regression_loss`: ``"mse"`` or ``"mae"``: the `loss` reported for real targets.

    **Returns:** ``{"loss", "accuracy", "count"}`` and, for labels, ``"macro_f1"`` and (two
    classes) ``"auc"`` (of ``logit_1 − logit_0``); for real targets ``"mse"``, ``"mae"``,
    ``"rmse"`` (of the predicted mean) with ``accuracy`` NaN. ``count`` is the number of
    counted targets (examples, or steps).

    **Example:**
    ```python
    evaluate(model, test_data, batch_size=512)["accuracy"]
    ```
    """
    dp = DataParallel.create() if parallel is None else parallel
    if isinstance(data, Loader):
        batch_size = data.batch_size
    loader = as_loader(data, batch_size, 0, train=False)
    dp.check_batch_size(batch_size, "eval batch size")
    if loader.num_examples == 0:
        raise ValueError("cannot evaluate on an empty split")
    check_data_labels(model, loader, {"evaluation data": data})
    model = dp.replicate(model)
    rows = dp.local_rows(batch_size)
    sums = None
    labels = binary = False
    scores: list[Any] = []
    for b in loader.epoch(0):
        batch = batch_dict(b.data)
        batch["weight"] = b.mask.astype(np.float32)
        if sums is None:
            labels = np.issubdtype(batch["y"].dtype, np.integer)
            shape = _output_shape(model, batch)
            binary = labels and shape[-1] == 2
            sums = jax.device_put(eval_sums(shape[-1] if labels else None), dp.replicated)
        sharded = dp.shard_batch(rows_of(batch, rows), batch_size)
        with dp.context():  # the compiled kernels run per device on its rows
            sums, outputs = eval_step(model, sharded, sums, regression_loss)
        if binary:
            scores.append((outputs, sharded))
    host = jax.device_get(sums)
    count = float(host["count"])
    out: dict[str, Any] = {"loss": float(host["loss"]) / count, "count": round(count)}
    if labels:
        out["accuracy"] = float(host["correct"]) / count
        out["macro_f1"] = float(f1_from_confusion(jnp.asarray(host["confusion"])))
        if binary:
            out["auc"] = _binary_auc(scores, regression_loss)
    else:
        out["accuracy"] = float("nan")
        out["mse"] = float(host["sq_err"]) / count
        out["mae"] = float(host["abs_err"]) / count
        out["rmse"] = out["mse"] ** 0.5
    return out


_SHAPES: dict[Any, tuple[int, ...]] = {}


def _output_shape(model: Any, batch: dict[str, Any]) -> tuple[int, ...]:
    """The shape of the model's outputs on `batch`, traced once per model structure and batch
    shapes (a trace of a large model costs more than evaluating a small validation split, and
    the trainer validates after every epoch)."""
    key = (jax.tree_util.tree_structure(model),
           tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in sorted(batch.items())))
    if key not in _SHAPES:
        if len(_SHAPES) >= 32:
            _SHAPES.clear()
        _SHAPES[key] = tuple(eqx.filter_eval_shape(_forward, model, batch, None).shape)
    return _SHAPES[key]


def _binary_auc(scores: list[Any], regression_loss: str) -> float:
    s, y, w = [], [], []
    for outputs, batch in scores:
        _, weight, _ = target_terms(outputs, batch, regression_loss=regression_loss)
        s.append((outputs[..., 1] - outputs[..., 0]).reshape(-1))
        y.append(batch["y"].reshape(-1))
        w.append(weight.reshape(-1))
    return float(binary_auc(jnp.concatenate(s), jnp.concatenate(y), jnp.concatenate(w)))
