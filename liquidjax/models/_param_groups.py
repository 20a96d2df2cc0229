"""Parameter-group learning rates: the SSM's own parameters at a small rate without weight decay.

S4 and Liquid-S4 train the state matrix ``A``, the input matrix ``B`` and the step ``log Δ`` at a
small learning rate without weight decay (larger steps destabilise the discretised recurrence),
and everything else (``C``, ``D``, the encoder, mixing and norms) with AdamW. Each
:class:`~liquidjax.cells.AbstractCell` declares those fields (``ssm_fields``, empty but for
:class:`~liquidjax.cells.LiquidS4`); :func:`ssm_labels` finds them anywhere in a model, for any
cell that declares some (a user's state-space cell included).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import optax

from ..cells._base import AbstractCell

__all__ = ["fixed_mask", "freeze_fixed", "has_fixed_params", "has_ssm_params", "ssm_labels",
           "ssm_param_groups"]


def ssm_labels(params: Any) -> Any:
    """The same pytree as `params` (a model, or ``eqx.filter(model, eqx.is_inexact_array)``) with
    every array replaced by ``"ssm"`` (a field named in its cell's ``ssm_fields``) or
    ``"default"``."""

    def label(node):
        if not isinstance(node, AbstractCell):
            return "default"
        fields = node.ssm_fields
        if not fields:  # a cell without SSM fields: its inner cells may have some
            return jax.tree_util.tree_map(
                label, node, is_leaf=lambda n: n is not node and isinstance(n, AbstractCell))
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "ssm" if getattr(path[0], "name", None) in fields else "default", node
        )

    return jax.tree_util.tree_map(label, params, is_leaf=lambda n: isinstance(n, AbstractCell))


def fixed_mask(params: Any) -> Any:
    """The same pytree as `params` with ``True`` on every array that a module lists in its
    ``fixed_fields`` class variable (values fitted from data, never trained — e.g.
    :class:`~liquidjax.models.RocketFeatures`) and ``False`` elsewhere."""

    def mark(node):
        fields = getattr(type(node), "fixed_fields", ())
        if not isinstance(node, eqx.Module) or not fields:
            return jax.tree_util.tree_map(lambda _: False, node)
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[0], "name", None) in fields, node)

    return jax.tree_util.tree_map(
        mark, params, is_leaf=lambda n: bool(getattr(type(n), "fixed_fields", ())))


def has_fixed_params(model: Any) -> bool:
    """Whether any array of `model` is fixed (:func:`fixed_mask`)."""
    return any(jax.tree_util.tree_leaves(fixed_mask(eqx.filter(model, eqx.is_inexact_array))))


def freeze_fixed() -> optax.GradientTransformation:
    """Zero the updates of the fixed arrays (:func:`fixed_mask`): chained after the optimiser,
    it keeps weight decay (and anything else) from moving them."""
    return optax.masked(optax.set_to_zero(), fixed_mask)


def has_ssm_params(model: Any) -> bool:
    """Whether any parameter of `model` is labelled ``"ssm"`` by :func:`ssm_labels` (the
    trainer then gives them their own rate: :func:`liquidjax.train.make_optimizer`)."""
    return "ssm" in jax.tree_util.tree_leaves(ssm_labels(eqx.filter(model, eqx.is_inexact_array)))


def ssm_param_groups(
    learning_rate: float | optax.Schedule,
    *,
    ssm_learning_rate: float | optax.Schedule = 1e-3,
    weight_decay: float = 0.01,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """``optax.multi_transform``: Adam at `ssm_learning_rate` without weight decay on the SSM
    parameters (``A``, ``B``, ``log Δ``), AdamW at `learning_rate` with `weight_decay` elsewhere;
    optionally preceded by global-norm clipping.

    **Arguments:**
    - `learning_rate`: the rate (or optax schedule) of every other parameter.
    - `ssm_learning_rate`: the SSM parameters' rate or schedule.
    - `weight_decay`: AdamW's decoupled weight decay, not applied to the SSM parameters.
    - `clip_norm`: clip the whole gradient's norm first (``None``: no clipping).

    **Returns:** an ``optax.GradientTransformation`` for the params
    ``eqx.filter(model, eqx.is_inexact_array)``.

    **Example:**
    ```python
    optimizer = ssm_param_groups(optax.warmup_cosine_decay_schedule(0, 4e-3, 100, 10_000),
                                 ssm_learning_rate=1e-3, weight_decay=0.05, clip_norm=1.0)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    ```
    """
    groups = optax.multi_transform(
        {"ssm": optax.adam(ssm_learning_rate),
         "default": optax.adamw(learning_rate, weight_decay=weight_decay)},
        ssm_labels,
    )
    return groups if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm),
                                                        groups)
