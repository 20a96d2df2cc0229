"""Training configuration (plain data, stored in checkpoints) and the default optax chain."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from .._checks import check_fields, config_field
from ..models import freeze_fixed, ssm_param_groups

# Fields that change the sequence of parameter updates: a resumed run must agree on them, or it
# would silently continue a different run.
TRAJECTORY_FIELDS: tuple[str, ...] = (
    "epochs", "batch_size", "learning_rate", "weight_decay", "warmup_fraction", "clip_norm",
    "seed", "label_smoothing", "ssm_learning_rate",
)


RegressionLoss = Literal["mse", "mae"]
_POSITIVE = dict(minimum=1)
_FRACTION = dict(minimum=0.0, maximum=1.0, max_open=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    **Arguments:**
    - `epochs`: passes over the training data.
    - `batch_size`: global batch size (split over all devices; must be divisible by their number).
    - `learning_rate`: peak learning rate of the default AdamW schedule.
    - `weight_decay`: AdamW decoupled weight decay.
    - `ssm_learning_rate`: peak rate (same warm-up + cosine shape) of the parameters a model
      labels ``"ssm"`` (:func:`liquidjax.models.ssm_labels`: a Liquid-S4 layer's ``A``, ``B`` and
      ``log Δ``), trained by Adam without weight decay as S4 trains them
      (:func:`liquidjax.models.ssm_param_groups`); ``None``: ``min(learning_rate, 1e-3)``. A
      model without such parameters is trained by plain AdamW and ignores it.
    - `warmup_fraction`: fraction of all steps spent in the linear warm-up (then cosine decay to
      zero).
    - `clip_norm`: global-norm gradient clipping threshold (``None``: no clipping).
    - `label_smoothing`: in ``[0, 1)``.
    - `ema`: ``None``, or the decay in ``(0, 1)`` (e.g. ``0.999``) of an exponential moving
      average of the parameters, kept in the training state and checkpointed; the average is
      what is evaluated after each epoch and returned (:func:`~liquidjax.train.train_step`
      gives the update). Training itself is unchanged.
    - `regression_loss`: ``"mse"`` or ``"mae"`` for real targets (a model that predicts a mean
      and a variance is trained by the Gaussian NLL instead).
    - `seed`: seeds the training RNG (dropout) and the data order.
    - `log_every`: read the on-device metrics (one host sync) every this many steps.
    - `checkpoint_every`: also checkpoint every this many steps (``None``: at the end of each
      epoch only).
    - `keep_checkpoints`: how many of the newest checkpoints to keep (older ones are deleted only
      after a newer one is complete).
    - `max_steps`: stop after this many steps in total (quick runs; the schedule still spans
      `epochs`).
    - `eval_batch_size`: batch size for evaluation (default `batch_size`).
    - `time_budget`: seconds (``None``: no limit); training stops at the first epoch end past
      it and says so. The learning-rate schedule still spans `epochs`.
    - `keep_best`: return (and write as ``checkpoints/best.ljx``) the model of the epoch with
      the best validation figures — accuracy, then loss, for labels; the loss for real targets
      — instead of the last one; needs validation data.

    **Example:**
    ```python
    TrainConfig(epochs=2, batch_size=64, learning_rate=1e-3)
    ```
    """

    epochs: int = config_field(10, **_POSITIVE)
    batch_size: int = config_field(128, **_POSITIVE)
    learning_rate: float = config_field(2e-3, minimum=0.0, min_open=True)
    weight_decay: float = config_field(1e-4, minimum=0.0)
    ssm_learning_rate: float | None = config_field(None, minimum=0.0, min_open=True,
                                                   cli_default="min(lr, 1e-3)")
    warmup_fraction: float = config_field(0.05, **_FRACTION)
    clip_norm: float | None = config_field(1.0, minimum=0.0, min_open=True)
    label_smoothing: float = config_field(0.0, **_FRACTION)
    ema: float | None = config_field(None, minimum=0.0, maximum=1.0, min_open=True,
                                     max_open=True)
    regression_loss: RegressionLoss = "mse"
    seed: int = config_field(0, minimum=0)
    log_every: int = config_field(50, **_POSITIVE)
    checkpoint_every: int | None = config_field(None, **_POSITIVE)
    keep_checkpoints: int = config_field(3, **_POSITIVE)
    max_steps: int | None = config_field(None, **_POSITIVE)
    eval_batch_size: int | None = config_field(None, **_POSITIVE)
    time_budget: float | None = config_field(None, minimum=0.0, min_open=True)
    keep_best: bool = False

    def __post_init__(self):
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# S4's rate for the state-space parameters (A, B, log Δ) when TrainConfig names none.
DEFAULT_SSM_LEARNING_RATE = 1e-3


def make_schedule(config: TrainConfig, total_steps: int, *,
                  peak: float | None = None) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` (or `peak`) over
    ``warmup_fraction·total_steps`` steps, then cosine decay to 0 at `total_steps`."""
    total = max(int(total_steps), 1)
    warmup = min(int(round(config.warmup_fraction * total)), total - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate if peak is None else peak,
        warmup_steps=warmup, decay_steps=total, end_value=0.0,
    )


def ssm_learning_rate(config: TrainConfig) -> float:
    """The peak rate of the parameters labelled ``"ssm"``: ``config.ssm_learning_rate``, or
    ``min(learning_rate, 1e-3)``."""
    if config.ssm_learning_rate is not None:
        return config.ssm_learning_rate
    return min(config.learning_rate, DEFAULT_SSM_LEARNING_RATE)


def clip_by_member_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` applied to each member of an
    :class:`~liquidjax.models.Ensemble` on its own: every leaf's leading axis is the member, and
    a member's update is scaled by its own norm only (one member's large gradient does not
    shrink the others' steps)."""

    def update(updates, state, params=None):
        del params
        leaves = jax.tree_util.tree_leaves(updates)
        if not leaves:
            return updates, state
        sq = sum(jnp.sum(jnp.square(u).reshape(u.shape[0], -1), axis=1) for u in leaves)
        norm = jnp.sqrt(sq)

        def clip(u):
            n = norm.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)
            return jnp.where(n < max_norm, u, u / n * max_norm)

        return jax.tree_util.tree_map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@functools.lru_cache(maxsize=64)
def make_optimizer(config: TrainConfig, total_steps: int, *, members: bool = False,
                   ssm: bool = False, fixed: bool = False) -> optax.GradientTransformation:
    """The default optimiser: global-norm clipping, then AdamW on the warm-up + cosine schedule.
    With ``members`` (the parameters of an :class:`~liquidjax.models.Ensemble`) the clipping is
    per member (:func:`clip_by_member_norm`), so each member trains as it would alone. With
    ``ssm`` (a model with parameters labelled ``"ssm"``, :func:`liquidjax.models.has_ssm_params`)
    the AdamW is :func:`liquidjax.models.ssm_param_groups` instead: those parameters by Adam at
    :func:`ssm_learning_rate` on the same schedule's shape, without weight decay. With ``fixed``
    (a model with arrays fitted from data, :func:`liquidjax.models.has_fixed_params`) their
    updates are zeroed last (:func:`liquidjax.models.freeze_fixed`).

    Cached: the same arguments give the same object, so the jitted train step (which treats the
    optimiser as static) is not recompiled when training is restarted in the same process.

    **Arguments:**
    - `config`: the :class:`TrainConfig`.
    - `total_steps`: length of the schedule (usually ``epochs × steps_per_epoch``).
    - `members`: the parameters are an ensemble's (leading member axis).
    - `ssm`: the model labels some of its parameters ``"ssm"``.
    - `fixed`: the model has fixed arrays (never updated).

    **Returns:** an ``optax.GradientTransformation``.

    **Example:**
    ```python
    opt = make_optimizer(TrainConfig(learning_rate=1e-3), total_steps=1000)
    ```
    """
    if ssm:
        adamw = ssm_param_groups(
            make_schedule(config, total_steps),
            ssm_learning_rate=make_schedule(config, total_steps, peak=ssm_learning_rate(config)),
            weight_decay=config.weight_decay)
    else:
        adamw = optax.adamw(make_schedule(config, total_steps), weight_decay=config.weight_decay)
    if fixed:
        adamw = optax.chain(adamw, freeze_fixed())
    if config.clip_norm is None:
        return adamw
    clip = clip_by_member_norm if members else optax.clip_by_global_norm
    return optax.chain(clip(config.clip_norm), adamw)
