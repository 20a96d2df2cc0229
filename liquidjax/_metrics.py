"""Losses and metrics for sequence- and step-level targets, as pure JAX functions (below both
the models, whose ensembles combine predicted variances, and the trainer; re-exported by
:mod:`liquidjax.train`).

Every function takes an optional boolean (or 0/1 float) ``mask`` that says which targets count:
for labels it has the labels' shape (``(B,)`` per sequence, ``(B, L)`` per step); for real
targets it covers their leading axes (``(B,)`` or ``(B, L)``) and every target dimension of a
counted entry counts. Means are taken over the counted entries only; with nothing counted the
result is NaN (0/0), never a silent 0.

Classification: :func:`cross_entropy`, :func:`accuracy`, :func:`confusion_matrix`,
:func:`macro_f1`, :func:`binary_auc`. Regression: :func:`mse`, :func:`mae`,
:func:`gaussian_nll` (a mean and a variance per target).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int


def _weights(mask: ArrayLike | None, shape: tuple[int, ...]) -> Array:
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != shape[: mask.ndim]:
        raise ValueError(f"mask of shape {mask.shape} does not cover the leading axes of "
                         f"targets of shape {shape}")
    w = mask.astype(jnp.float32)
    return jnp.broadcast_to(w.reshape(w.shape + (1,) * (len(shape) - w.ndim)), shape)


def _check_labels(logits: Array, labels: Array) -> None:
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} must be labels {labels.shape} plus a class axis")


def _mean(values: Array, w: Array) -> Array:
    return jnp.sum(w * values) / jnp.sum(w)


def cross_entropy_terms(logits: Float[Array, "*b k"], labels: Int[Array, "*b"]) -> Array:
    """``-log softmax(logits)[label]`` per entry (float32)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def cross_entropy(logits, labels, mask=None) -> Float[Array, ""]:
    r"""Mean softmax cross-entropy ``-\log \mathrm{softmax}(z)_y`` over the counted entries.

    **Arguments:** `logits` ``(*b, K)``, integer `labels` ``(*b)``, optional `mask` ``(*b)``.

    **Returns:** a float32 scalar.

    Example:
        >>> cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))  # log 4
        Array(1.3862944, dtype=float32)
    """
    terms = cross_entropy_terms(logits, labels)
    return _mean(terms, _weights(mask, terms.shape))


def accuracy(logits, labels, mask=None) -> Float[Array, ""]:
    """Share of counted entries whose ``argmax(logits)`` equals the label."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels)
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return _mean(hit, _weights(mask, hit.shape))


def confusion_matrix(predictions, labels, num_classes: int, mask=None) -> Float[Array, "k k"]:
    """Counts ``C[i, j]`` of counted entries with true class ``i`` and predicted class ``j``.

    **Arguments:** integer `predictions` and `labels` of one shape, `num_classes`, optional
    `mask` (or float weights) of that shape.
    """
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ")
    w = _weights(mask, labels.shape).reshape(-1)
    true = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32) * w[:, None]
    pred = jax.nn.one_hot(predictions.reshape(-1), num_classes, dtype=jnp.float32)
    return true.T @ pred


def f1_from_confusion(confusion: Float[Array, "k k"]) -> Float[Array, ""]:
    """Macro-F1 of a confusion matrix: the mean over classes of ``2TP / (2TP + FP + FN)``,
    over the classes that occur as a label or a prediction (others have no defined F1)."""
    tp = jnp.diag(confusion)
    denom = 2 * tp + (confusion.sum(0) - tp) + (confusion.sum(1) - tp)
    present = denom > 0
    f1 = jnp.where(present, 2 * tp / jnp.where(present, denom, 1.0), 0.0)
    return jnp.sum(f1) / jnp.sum(present)


def macro_f1(logits, labels, mask=None) -> Float[Array, ""]:
    """Macro-averaged F1 of ``argmax(logits)`` (see :func:`f1_from_confusion`)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels)
    cm = confusion_matrix(jnp.argmax(logits, -1), labels, logits.shape[-1], mask)
    return f1_from_confusion(cm)


def binary_auc(scores, labels, mask=None) -> Float[Array, ""]:
    r"""Area under the ROC curve of a binary problem (the Mann–Whitney U statistic).

    ``AUC = (Σ_{i ∈ pos} r_i − P(P+1)/2) / (P·N)`` with ``r_i`` the 1-based rank of score ``i``
    among the counted scores, ties getting their average rank — i.e. the probability that a
    random positive scores above a random negative, ties counting one half. NaN if a class is
    absent.

    **Arguments:**
    - `scores`: higher = more positive, ``(n,)``; for 2-class logits pass
      ``logits[:, 1] - logits[:, 0]``.
    - `labels`: ``(n,)`` in {0, 1}.
    - `mask`: optional ``(n,)``.
    """
    scores = jnp.asarray(scores, jnp.float32).reshape(-1)
    labels = jnp.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ")
    valid = jnp.ones(scores.shape, bool) if mask is None else jnp.asarray(mask).reshape(-1) > 0
    # Uncounted entries sort after every counted one, so they never shift a counted rank.
    keyed = jnp.where(valid, scores, jnp.inf)
    ordered = jnp.sort(keyed)
    lo = jnp.searchsorted(ordered, keyed, side="left")
    hi = jnp.searchsorted(ordered, keyed, side="right")
    rank = (lo + 1 + hi) / 2.0
    pos = valid & (labels == 1)
    p = jnp.sum(pos).astype(jnp.float32)
    neg = jnp.sum(valid & (labels == 0)).astype(jnp.float32)
    return (jnp.sum(jnp.where(pos, rank, 0.0)) - p * (p + 1) / 2) / (p * neg)


def _real(pred, target) -> tuple[Array, Array]:
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} differ")
    return pred, target


def mse(pred, target, mask=None) -> Float[Array, ""]:
    """Mean squared error over the counted entries (and all their target dimensions)."""
    pred, target = _real(pred, target)
    w = _weights(mask, target.shape)
    return _mean(jnp.where(w > 0, (pred - target) ** 2, 0.0), w)


def mae(pred, target, mask=None) -> Float[Array, ""]:
    """Mean absolute error over the counted entries."""
    pred, target = _real(pred, target)
    w = _weights(mask, target.shape)
    return _mean(jnp.where(w > 0, jnp.abs(pred - target), 0.0), w)


VARIANCE_FLOOR = 1e-6
"""The smallest variance :func:`split_gaussian` gives."""


def split_gaussian(outputs: Float[Array, "*b two_d"]) -> tuple[Array, Array]:
    """A model output ``[μ | v]`` of ``2D`` features as ``(mean μ, variance softplus(v) + 1e-6)``
    (the positive variance of a regression head that predicts its own uncertainty)."""
    outputs = jnp.asarray(outputs)
    d = outputs.shape[-1]
    if d % 2:
        raise ValueError(f"a mean-and-variance output needs an even feature count, got {d}")
    return outputs[..., : d // 2], jax.nn.softplus(outputs[..., d // 2 :]) + VARIANCE_FLOOR


def gaussian_nll_terms(mean, var, target) -> Array:
    r"""``½ (log 2π σ² + (y − μ)² / σ²)`` per entry."""
    mean, target = _real(mean, target)
    var = jnp.asarray(var, jnp.float32)
    if var.shape != mean.shape:
        raise ValueError(f"var {var.shape} must match the mean {mean.shape}")
    return 0.5 * (jnp.log(2 * jnp.pi * var) + (target - mean) ** 2 / var)


def gaussian_nll(mean, var, target, mask=None) -> Float[Array, ""]:
    r"""Mean Gaussian negative log-likelihood ``½ (log 2π σ² + (y − μ)² / σ²)``.

    **Arguments:** predicted `mean` and variance `var` (> 0; e.g. a softplus of a second head
    output), `target`, optional `mask` over the leading axes.
    """
    terms = gaussian_nll_terms(mean, var, target)
    w = _weights(mask, terms.shape)
    return _mean(jnp.where(w > 0, terms, 0.0), w)
