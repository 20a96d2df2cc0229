"""Streaming and deployment: a compiled one-observation stepper; export to StableHLO, ONNX and C.

A liquid network deployed as a controller is stepped one observation at a time: read a sensor,
advance the state across the elapsed time ``Δt``, emit an action. Four ways to run that step:

* :func:`stepper` — in Python, as one ahead-of-time compiled XLA executable with the parameters
  baked in and the state kept as **one flat array** (a few microseconds of call overhead);
* :func:`to_stablehlo` — serialised with ``jax.export``: any process with JAX (and without
  liquidjax) deserialises and runs it;
* :func:`to_onnx` — an ONNX graph, for ONNX Runtime and the toolchains that read ONNX
  (microcontrollers, C++, the browser);
* :func:`to_c` — one dependency-free C99 function (a microcontroller, any C program), which
  ``stepper(..., backend="c")`` also compiles and calls from Python (about a microsecond of
  call overhead).

Every export has the same calling convention, per example (``batch_shape`` prefixes every
argument):

    step(state (S,), x (input_size,), dt ()) -> (output (output_size,), new_state (S,))

with ``state`` the model's state pytree flattened into one vector (``Stepper.unflatten_state``
gives it back), ``dt`` the elapsed time since the previous observation (ncps "timespans"), and
``output`` what the model outputs after the step: the cell's output, the ``LiquidRNN``'s output
(``proj`` applied), or a ``SequenceClassifier``'s logits for the sequence seen so far. The
whole-sequence function
``sequence(state, xs (T, input_size), dts (T,)) -> (outputs (T, output_size), new_state)`` is the
step scanned over ``T`` observations.
"""

from ._c._to_c import to_c as to_c
from ._onnx import to_onnx as to_onnx
from ._stablehlo import to_stablehlo as to_stablehlo
from ._step import FORMAT_VERSION as FORMAT_VERSION
from ._stepper import CStepper as CStepper, Stepper as Stepper, stepper as stepper
