"""The training state, the one jitted training step, and the jitted evaluation step."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree, UInt32

from ..cells._ltc import project_nonnegative


class TrainState(eqx.Module):
    """Everything that evolves during training, as one pytree (checkpointed as is).

    **Arguments:**
    - `model`: the model being trained.
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
    opt_state: PyTree
    step: Int[Array, ""]
    key: UInt32[Array, " k"]
    loss_sum: Float[Array, ""]
    correct: Int[Array, ""]
    count: Int[Array, ""]
    bad_step: Int[Array, ""]

    @classmethod
    def create(cls, model, optimizer: optax.GradientTransformation, key) -> TrainState:
        """A fresh state: ``optimizer.init`` on the model's inexact arrays, step 0."""
        params = eqx.filter(model, eqx.is_inexact_array)
        return cls(
            model=model,
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
    x = batch["x"]
    ts = batch.get("timespans")
    mask = batch.get("mask")
    keys = None if key is None else jax.random.split(key, x.shape[0])

    def one(x, ts, mask, k):
        return model(x, ts, mask, key=k)

    return jax.vmap(one)(x, ts, mask, keys)


def _losses(logits: Array, labels: Array, label_smoothing: float) -> Array:
    logits = logits.astype(jnp.float32)
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def _loss_fn(params, static, batch, key, label_smoothing):
    model = eqx.combine(params, static)
    logits = _forward(model, batch, key)
    losses = _losses(logits, batch["y"], label_smoothing)
    correct = jnp.sum(jnp.argmax(logits, -1) == batch["y"])
    return jnp.mean(losses), (jnp.sum(losses), correct)


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
    use_key: bool = False,
    label_smoothing: float = 0.0,
    replicated: jax.sharding.Sharding | None = None,
) -> TrainState:
    """One optimisation step: loss, gradients, optax update, non-negativity projection.

    The mean cross-entropy over the batch is differentiated with respect to the model's inexact
    arrays; ``optimizer.update`` + ``optax.apply_updates`` give the new parameters, then LTC
    parameters with explicit constraints are clipped at zero
    (:func:`liquidjax.cells.project_nonnegative`; a no-op for every other model). A non-finite
    loss or gradient norm leaves the state's parameters untouched and records the step in
    ``bad_step`` (no host sync here).

    **Arguments:**
    - `state`: the :class:`TrainState`.
    - `optimizer`: any ``optax.GradientTransformation`` (static: hashed by identity).
    - `batch`: ``{"x": (B, ...), "y": (B,), optional "timespans": (B, L), "mask": (B, L)}``.
    - `use_key`: pass a per-example PRNG key to the model (dropout).
    - `label_smoothing`: optional label smoothing.
    - `replicated`: sharding the new parameters are constrained to (data parallelism).

    **Returns:** the new :class:`TrainState`.

    **Example:**
    ```python
    state = train_step(state, optimizer, {"x": x, "y": y})
    ```
    """
    params, static = eqx.partition(state.model, eqx.is_inexact_array)
    step1 = state.step + 1
    key = None
    if use_key:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    (loss, (loss_sum, correct)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
        params, static, batch, key, label_smoothing
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    model = project_nonnegative(eqx.combine(new_params, static))
    # A non-finite update (e.g. from a custom optax transformation) is caught as well as a
    # non-finite loss or gradient; the norms are a cheap reduction next to the forward pass.
    ok = (jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
          & jnp.isfinite(optax.tree.norm(updates)) & (state.bad_step < 0))
    model = _select(ok, model, state.model)
    opt_state = _select(ok, opt_state, state.opt_state)
    if replicated is not None:
        model = eqx.filter_shard(model, replicated)
        opt_state = eqx.filter_shard(opt_state, replicated)
    n = jnp.asarray(batch["y"].shape[0], jnp.int32)
    return TrainState(
        model=model,
        opt_state=opt_state,
        step=step1,
        key=state.key,
        loss_sum=jnp.where(ok, state.loss_sum + loss_sum, state.loss_sum),
        correct=jnp.where(ok, state.correct + correct.astype(jnp.int32), state.correct),
        count=jnp.where(ok, state.count + n, state.count),
        bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, step1),
    )


@eqx.filter_jit
def eval_step(model, batch: dict[str, Array], sums: Array) -> Array:
    """Add one batch's ``[loss_sum, correct, count]`` (weighted by ``batch["weight"]``, 0 on
    padding rows) to `sums` (float32, on device)."""
    logits = _forward(model, batch, None)
    w = batch["weight"].astype(jnp.float32)
    losses = _losses(logits, batch["y"], 0.0)
    correct = (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)
    return sums + jnp.stack([jnp.sum(w * losses), jnp.sum(w * correct), jnp.sum(w)])


def model_uses_dropout(model: Any) -> bool:
    """Whether any dropout in `model` has a positive rate (then training passes keys)."""

    def walk(x) -> bool:
        if isinstance(x, eqx.nn.Dropout):
            return float(x.p) > 0
        if isinstance(x, (tuple, list)):
            return any(walk(y) for y in x)
        if isinstance(x, dict):
            return any(walk(y) for y in x.values())
        if isinstance(x, eqx.Module):
            rate = getattr(x, "dropout", None)
            if isinstance(rate, float) and rate > 0:
                return True
            return any(walk(getattr(x, f.name, None)) for f in dataclasses.fields(x))
        return False

    return walk(model)
