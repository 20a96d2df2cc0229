"""A Liquid-S4 sequence classifier: the residual stack as one cell, pooled, then a linear head."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from ..cells._liquid_s4_stack import LiquidS4Stack
from ..layers import LiquidRNN
from ._classifier import SequenceClassifier

__all__ = ["liquid_s4_classifier"]


def liquid_s4_classifier(
    input_size: int,
    num_classes: int,
    *,
    hidden_size: int = 128,
    depth: int = 4,
    ssm_size: int = 64,
    readout: str = "mean",
    key: PRNGKeyArray,
    **stack_kwargs,
) -> SequenceClassifier:
    """``Linear(input→H)``, `depth` residual Liquid-S4 blocks (:class:`LiquidS4Stack`, one cell
    in one :class:`~liquidjax.LiquidRNN`), the mean (``readout="mean"``) or last output, and
    ``Linear(H→classes)``.

    **Arguments:** the sizes; `readout`; `key`; the remaining keywords go to
    :class:`~liquidjax.cells.LiquidS4Stack` (``glu``, ``dropout``, ``liquid_order``,
    ``liquid_kernel``, ``discretisation``, ``init``, ``dt_min``, ``dt_max``, ``dtype``).

    **Returns:** a :class:`SequenceClassifier` (train it with
    :func:`~liquidjax.models.ssm_param_groups` as the optimizer).
    """
    k1, k2 = jax.random.split(key)
    stack = LiquidS4Stack(input_size, hidden_size, depth=depth, ssm_size=ssm_size, key=k1,
                          **stack_kwargs)
    dtype = stack.encoder.weight.dtype
    head = eqx.nn.Linear(hidden_size, num_classes, key=k2, dtype=dtype)
    return SequenceClassifier([LiquidRNN(stack)], head, readout=readout)
