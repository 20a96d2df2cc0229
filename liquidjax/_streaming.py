"""The streaming contract: a model run one observation at a time.

What :func:`liquidjax.export.stepper`, :func:`~liquidjax.export.to_c`,
:func:`~liquidjax.export.to_onnx` and :func:`~liquidjax.export.to_stablehlo` step. A cell, a
:class:`~liquidjax.LiquidRNN` and a :class:`~liquidjax.models.SequenceClassifier` implement it;
a model that has no single state to step (an ensemble, a convolutional stem over whole images)
says why in :meth:`AbstractStreaming.stream_spec`. The exporters know only these three methods.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
from jaxtyping import Array, PyTree


class StreamSpec(NamedTuple):
    """What a stepper needs to know of a model besides its step: the size of one observation,
    of one output, and the cells it steps (named in errors; checked for portability)."""

    input_size: int
    output_size: int
    cells: tuple[Any, ...]


class AbstractStreaming(eqx.Module):
    """A model that can be run one observation at a time, on one example.

    Implement :meth:`stream_spec`, :meth:`stream_init` and :meth:`stream_step`; the defaults
    refuse, naming the model, so that a model class that cannot stream says so in one line.
    """

    def stream_spec(self) -> StreamSpec:
        """The sizes and cells of the stream; raises ``ValueError`` (one line: why, and what to
        do instead) when the model cannot be run one observation at a time."""
        raise ValueError(f"{type(self).__name__} cannot be run one observation at a time")

    def stream_init(self) -> PyTree[Array]:
        """The state before the first observation."""
        raise ValueError(f"{type(self).__name__} cannot be run one observation at a time")

    def stream_step(self, state: PyTree[Array], x: Array, dt: Array
                    ) -> tuple[Array, PyTree[Array]]:
        """``(output, new_state)`` after the observation `x` (shape ``(input_size,)``), which
        came `dt` (a scalar) after the previous one."""
        raise ValueError(f"{type(self).__name__} cannot be run one observation at a time")
