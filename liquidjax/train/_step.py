"""The training state, the one jitted training step, and the jitted evaluation step."""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree, UInt32

from .._checks import literal_choices
from .._metrics import confusion_matrix, gaussian_nll_terms, split_gaussian
from ..models import AbstractEnsemble
from ._config import RegressionLoss


class TrainState(eqx.Module):
    """Everything that evolves during training, as one pytree (checkpointed as is).

    **Arguments:**
    - `model`: the model being trained.
    - `ema_model`: ``None``, or the same model whose inexact arrays are an exponential moving
      average of `model`'s over the steps taken (:func:`train_step` with ``ema=``); it is
      what :func:`~liquidjax.train.fit` evaluates and returns. Second, so that a checkpoint's
      payload begins with the model and then this average
      (:func:`~liquidjax.train.restore_model`).
    - `opt_state`: the optax state.
    - `step`: number of steps taken so far (``int32`` scalar).
    - `key`: the run's base PRNG key as raw ``uint32`` key data; step ``k`` uses
      ``fold_in(key, k)``, so the randomness of a step depends only on the run and ``k``.
    - `loss_sum`, `correct`, `count`: running sums of the current epoch (on device).
    - `bad_step`: ``-1``, or the 1-based step at which the loss or gradient first became
      non-finite; from then on every update is skipped, so the parameters stay those of the last
      good step until the host notices (at its next metrics read) and stops.
    """

    model: Any
    ema_model: Any
    opt_state: PyTree
    step: Int[Array, ""]
    key: UInt32[Array, " k"]
    loss_sum: Float[Array, ""]
    correct: Int[Array, ""]
    count: Int[Array, ""]
    bad_step: Int[Array, ""]

    @classmethod
    def create(cls, model, optimizer: optax.GradientTransformation, key, *,
               ema: bool = False) -> TrainState:
        """A fresh state: ``optimizer.init`` on the model's inexact arrays, step 0; with
        `ema`, a moving average of the parameters that starts at the model itself."""
        params = eqx.filter(model, eqx.is_inexact_array)
        return cls(
            model=model,
            ema_model=model if ema else None,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(key).astype(jnp.uint32),
            loss_sum=jnp.zeros((), jnp.float32),
            correct=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            bad_step=jnp.full((), -1, jnp.int32),
        )

    def reset_epoch_metrics(self) -> TrainState:
        zero_f, zero_i = jnp.zeros_like(self.loss_sum), jnp.zeros_like(self.count)
        return eqx.tree_at(
            lambda s: (s.loss_sum, s.correct, s.count), self, (zero_f, zero_i, zero_i)
        )


def _forward(model, batch: dict[str, Array], key) -> Array:
    """The model's outputs for a batch (``jax.vmap`` over its examples); for a model made of
    members (:class:`~liquidjax.models.AbstractEnsemble`), their combined prediction."""
    if isinstance(model, AbstractEnsemble):
        return model.combine(_member_forward(model, batch, key), batch.get("mask"))
    x = batch["x"]
    ts = batch.get("timespans")
    mask = batch.get("mask")
    keys = None if key is None else jax.random.split(key, x.shape[0])

    def one(x, ts, mask, k):
        return model(x, ts, mask, key=k)

    return jax.vmap(one)(x, ts, mask, keys)


def _member_forward(model, batch: dict[str, Array], key) -> Array:
    """An ensemble's members' outputs ``(members, batch, ...)``: the members are mapped outside
    the batch, so each member's batch goes through the cells' batched fast paths."""
    keys = None if key is None else jax.random.split(key, model.size)
    return eqx.filter_vmap(lambda member, k: _forward(member, batch, k))(model.members, keys)


def _losses(logits: Array, labels: Array, label_smoothing: float) -> Array:
    logits = logits.astype(jnp.float32)
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


REGRESSION_LOSSES: tuple[str, ...] = literal_choices(RegressionLoss)


def target_terms(
    outputs: Array,
    batch: dict[str, Array],
    *,
    label_smoothing: float = 0.0,
    regression_loss: str = "mse",
) -> tuple[Array, Array, Array]:
    """Per-target loss terms, their weights, and per-target hits (classification).

    The kind of target is read from the batch and the model's output shape:

    * integer ``y`` ``(B,)`` with outputs ``(B, K)``: one label per sequence; integer ``y``
      ``(B, L)`` with outputs ``(B, L, K)``: one label per step — softmax cross-entropy;
    * real ``y`` ``(B,)``/``(B, D)`` with outputs ``(B, D)``, or ``(B, L, D)`` with outputs
      ``(B, L, D)``: squared (``"mse"``) or absolute (``"mae"``) error averaged over ``D``;
      outputs with ``2D`` features instead are a mean and a variance
      (:func:`~liquidjax.train.split_gaussian`), trained by the Gaussian negative
      log-likelihood.

    Weights are ``batch["weight"]`` (0 on padding rows of an evaluation batch) times, for
    per-step targets, ``batch["y_mask"]`` (or ``batch["mask"]``).

    **Returns:** ``(terms, weights, hits)`` of shape ``(B,)`` or ``(B, L)``; ``hits`` is 0 for
    regression.
    """
    y = batch["y"]
    per_step = outputs.ndim == 3
    lead = outputs.shape[:-1]
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.shape != lead:
            raise ValueError(
                f"integer labels of shape {y.shape} do not fit model outputs {outputs.shape}: "
                "expected labels (batch,) for per-sequence logits (batch, classes), or "
                "(batch, time) for per-step logits (batch, time, classes)"
            )
        terms = _losses(outputs, y, label_smoothing)
        hits = (jnp.argmax(outputs, -1) == y).astype(jnp.float32)
    else:
        target = y[..., None] if y.shape == lead else y
        d = outputs.shape[-1]
        if target.shape[:-1] != lead or d not in (target.shape[-1], 2 * target.shape[-1]):
            raise ValueError(
                f"real targets of shape {y.shape} do not fit model outputs {outputs.shape}: "
                "expected outputs with the targets' dimension D (or 2D for a mean and a "
                "variance), per sequence (batch, D) or per step (batch, time, D)"
            )
        out = outputs.astype(jnp.float32)
        target = target.astype(jnp.float32)
        if d == target.shape[-1]:
            err = out - target
            terms = jnp.mean(err * err if regression_loss == "mse" else jnp.abs(err), axis=-1)
        else:
            mean, var = split_gaussian(out)
            terms = jnp.mean(gaussian_nll_terms(mean, var, target), axis=-1)
        hits = jnp.zeros(lead, jnp.float32)
    w = batch["weight"].astype(jnp.float32) if "weight" in batch else jnp.ones(lead[:1])
    if per_step:
        step_mask = batch.get("y_mask", batch.get("mask"))
        w = w[:, None] * (1.0 if step_mask is None else step_mask.astype(jnp.float32))
        w = jnp.broadcast_to(w, lead)
    # A target that does not count may hold anything (NaN included): keep it out of the sums
    # and of the gradient.
    terms = jnp.where(w > 0, terms, 0.0)
    return terms, w, hits


def _loss_fn(params, static, batch, key, label_smoothing, regression_loss):
    model = eqx.combine(params, static)
    terms_of = functools.partial(target_terms, batch=batch, label_smoothing=label_smoothing,
                                 regression_loss=regression_loss)
    if isinstance(model, AbstractEnsemble):
        # Each member learns from its own loss: the objective is the sum of the members' losses
        # (each member's gradient is the one it would get alone), not the loss of the averaged
        # prediction, which would train them jointly. The loss recorded is the members' mean;
        # the hits are the ensemble's.
        members = _member_forward(model, batch, key)
        terms, w, _ = jax.vmap(terms_of)(members)
        w = w[0]
        count = jnp.sum(w)
        member_sums = jnp.sum(w * terms, axis=tuple(range(1, terms.ndim)))
        hits = terms_of(model.combine(members, batch.get("mask")))[2]
        return (jnp.sum(member_sums) / jnp.maximum(count, 1.0),
                (jnp.mean(member_sums), jnp.sum(w * hits), count))
    terms, w, hits = terms_of(_forward(model, batch, key))
    count = jnp.sum(w)
    loss_sum = jnp.sum(w * terms)
    return loss_sum / jnp.maximum(count, 1.0), (loss_sum, jnp.sum(w * hits), count)


def _select(pred, new, old):
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(pred, a, b) if eqx.is_array(a) else a, new, old
    )


@eqx.filter_jit
def train_step(
    state: TrainState,
    optimizer: optax.GradientTransformation,
    batch: dict[str, Array],
    *,
    label_smoothing: float = 0.0,
    regression_loss: str = "mse",
    ema: float | None = None,
    replicated: jax.sharding.Sharding | None = None,
) -> TrainState:
    """One optimisation step: loss, gradients, optax update (and the parameters' moving
    average).

    The mean loss over the batch's counted targets (:func:`target_terms`: cross-entropy for
    labels, MSE/MAE or Gaussian NLL for real targets, per sequence or per step) is
    differentiated with respect to the model's inexact arrays; ``optimizer.update`` +
    ``optax.apply_updates`` give the new parameters. The model is called with a per-example PRNG
    key (training mode: dropout, if the model has any; a model treats ``key=None`` as
    inference). Parameter constraints are the optimiser's business (e.g.
    :func:`liquidjax.nonnegative_projection` last in the chain), not this step's. A non-finite
    loss or gradient norm leaves the state's parameters untouched and records the step in
    ``bad_step`` (no host sync here).

    **Arguments:**
    - `state`: the :class:`TrainState`.
    - `optimizer`: any ``optax.GradientTransformation`` (static: hashed by identity).
    - `batch`: ``{"x": (B, ...), "y": (B,) / (B, D) / (B, L) / (B, L, D), optional
      "timespans": (B, L), "mask": (B, L), "y_mask": (B, L)}``.
    - `label_smoothing`: optional label smoothing.
    - `regression_loss`: ``"mse"`` or ``"mae"`` for real targets (a model that predicts a
      variance is always trained by the Gaussian NLL).
    - `ema`: the decay ``d`` of the exponential moving average kept in ``state.ema_model``
      (a state made with ``TrainState.create(..., ema=True)``; ``None`` for one without).
      After step ``k`` (0-based) the average ``a`` of the parameters ``p`` becomes
      ``a + (1 - d_k) (p - a)`` with ``d_k = min(d, (1 + k) / (10 + k))``: the warm-up of
      TensorFlow's ``ExponentialMovingAverage(num_updates=k)``, so that the average does not
      remember the initialisation for ~``1 / (1 - d)`` steps. It does not change the training
      trajectory.
    - `replicated`: sharding the new parameters are constrained to (data parallelism).

    **Returns:** the new :class:`TrainState`.

    **Example:**
    ```python
    state = train_step(state, optimizer, {"x": x, "y": y})
    ```
    """
    if (ema is None) != (state.ema_model is None):
        raise ValueError(
            f"train_step(ema={ema!r}) on a state "
            + ("without a moving average: create it with TrainState.create(..., ema=True)"
               if ema is not None else
               "that keeps a moving average: pass its decay, train_step(..., ema=DECAY)"))
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema must be a decay in (0, 1), e.g. 0.999; got {ema!r}")
    params, static = eqx.partition(state.model, eqx.is_inexact_array)
    step1 = state.step + 1
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    (loss, (loss_sum, correct, count)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
        params, static, batch, key, label_smoothing, regression_loss
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    model = eqx.combine(new_params, static)
    # A non-finite update (e.g. from a custom optax transformation) is caught as well as a
    # non-finite loss or gradient; the norms are a cheap reduction next to the forward pass.
    ok = (jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
          & jnp.isfinite(optax.tree.norm(updates)) & (state.bad_step < 0))
    model = _select(ok, model, state.model)
    opt_state = _select(ok, opt_state, state.opt_state)
    ema_model = None
    if ema is not None:
        k = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema, (1.0 + k) / (10.0 + k))
        averaged = jax.tree_util.tree_map(
            lambda a, p: (a + (1.0 - decay).astype(a.dtype) * (p - a)).astype(a.dtype),
            eqx.filter(state.ema_model, eqx.is_inexact_array), new_params)
        ema_model = _select(ok, eqx.combine(averaged, static), state.ema_model)
    if replicated is not None:
        model = eqx.filter_shard(model, replicated)
        opt_state = eqx.filter_shard(opt_state, replicated)
        if ema_model is not None:
            ema_model = eqx.filter_shard(ema_model, replicated)
    n = jnp.round(count).astype(jnp.int32)
    return TrainState(
        model=model,
        ema_model=ema_model,
        opt_state=opt_state,
        step=step1,
        key=state.key,
        loss_sum=jnp.where(ok, state.loss_sum + loss_sum, state.loss_sum),
        correct=jnp.where(ok, state.correct + jnp.round(correct).astype(jnp.int32),
                          state.correct),
        count=jnp.where(ok, state.count + n, state.count),
        bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, step1),
    )


@eqx.filter_jit
def eval_step(model, batch: dict[str, Array], sums: dict[str, Array],
              regression_loss: str = "mse") -> tuple[dict[str, Array], Array]:
    """Add one batch's sums to `sums` (float32, on device), weighted by ``batch["weight"]`` (0 on
    padding rows): ``loss``, ``correct``, ``count`` and, for real targets, ``sq_err`` and
    ``abs_err`` of the predicted mean; for labels the ``confusion`` matrix. Start from
    :func:`eval_sums`. Returns ``(sums, outputs)``."""
    outputs = _forward(model, batch, None)
    terms, w, hits = target_terms(outputs, batch, regression_loss=regression_loss)
    new = dict(sums)
    new["loss"] = sums["loss"] + jnp.sum(w * terms)
    new["correct"] = sums["correct"] + jnp.sum(w * hits)
    new["count"] = sums["count"] + jnp.sum(w)
    y = batch["y"]
    if jnp.issubdtype(y.dtype, jnp.integer):
        new["confusion"] = sums["confusion"] + confusion_matrix(
            jnp.argmax(outputs, -1), y, outputs.shape[-1], w)
    else:
        lead = outputs.shape[:-1]
        target = (y[..., None] if y.shape == lead else y).astype(jnp.float32)
        mean = outputs.astype(jnp.float32)
        if mean.shape[-1] != target.shape[-1]:
            mean = split_gaussian(mean)[0]
        err = jnp.where(w[..., None] > 0, mean - target, 0.0)
        new["sq_err"] = sums["sq_err"] + jnp.sum(w * jnp.mean(err * err, -1))
        new["abs_err"] = sums["abs_err"] + jnp.sum(w * jnp.mean(jnp.abs(err), -1))
    return new, outputs


def eval_sums(num_classes: int | None) -> dict[str, Array]:
    """Zero sums for :func:`eval_step`: with a confusion matrix of `num_classes` (labels) or
    the error sums (real targets, ``None``)."""
    z = jnp.zeros((), jnp.float32)
    sums = {"loss": z, "correct": z, "count": z}
    if num_classes is None:
        sums.update(sq_err=z, abs_err=z)
    else:
        sums["confusion"] = jnp.zeros((num_classes, num_classes), jnp.float32)
    return sums
