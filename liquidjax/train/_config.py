"""Training configuration (plain data, stored in checkpoints) and the default optax chain."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import optax

# Fields that change the sequence of parameter updates: a resumed run must agree on them, or it
# would silently continue a different run.
TRAJECTORY_FIELDS: tuple[str, ...] = (
    "epochs", "batch_size", "learning_rate", "weight_decay", "warmup_fraction", "clip_norm",
    "seed", "label_smoothing",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    **Arguments:**
    - `epochs`: passes over the training data.
    - `batch_size`: global batch size (split over all devices; must be divisible by their number).
    - `learning_rate`: peak learning rate of the default AdamW schedule.
    - `weight_decay`: AdamW decoupled weight decay.
    - `warmup_fraction`: fraction of all steps spent in the linear warm-up (then cosine decay to
      zero).
    - `clip_norm`: global-norm gradient clipping threshold (``None``: no clipping).
    - `label_smoothing`: in ``[0, 1)``.
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

    **Example:**
    ```python
    TrainConfig(epochs=2, batch_size=64, learning_rate=1e-3)
    ```
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    clip_norm: float | None = 1.0
    label_smoothing: float = 0.0
    regression_loss: str = "mse"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    max_steps: int | None = None
    eval_batch_size: int | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("checkpoint_every", "max_steps", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if not (self.learning_rate > 0 and self.learning_rate < float("inf")):
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.regression_loss not in ("mse", "mae"):
            raise ValueError(f"regression_loss must be 'mse' or 'mae', got "
                             f"{self.regression_loss!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_fraction·total_steps`` steps, then
    cosine decay to 0 at `total_steps`."""
    total = max(int(total_steps), 1)
    warmup = min(int(round(config.warmup_fraction * total)), total - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=total, end_value=0.0,
    )


@functools.lru_cache(maxsize=64)
def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The default optimiser: global-norm clipping, then AdamW on the warm-up + cosine schedule.

    Cached: the same arguments give the same object, so the jitted train step (which treats the
    optimiser as static) is not recompiled when training is restarted in the same process.

    **Arguments:**
    - `config`: the :class:`TrainConfig`.
    - `total_steps`: length of the schedule (usually ``epochs × steps_per_epoch``).

    **Returns:** an ``optax.GradientTransformation``.

    **Example:**
    ```python
    opt = make_optimizer(TrainConfig(learning_rate=1e-3), total_steps=1000)
    ```
    """
    adamw = optax.adamw(make_schedule(config, total_steps), weight_decay=config.weight_decay)
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
