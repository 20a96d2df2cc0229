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

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._jaxpr import CALL_PARAMS as _CALL_PARAMS, bind as _bind
from .cells._base import AbstractCell
from .layers import LiquidRNN

if TYPE_CHECKING:
    from . import _cgen

FORMAT_VERSION = 1
"""Version of the exported artifacts' layout (the files and the manifest's fields)."""


# ---------------------------------------------------------------------------------- the step
@dataclasses.dataclass(frozen=True)
class _StepPlan:
    """A model reduced to one example's pure step on a flat state vector."""

    model_name: str
    fn: Callable[[Array, Array, Array], tuple[Array, Array]]  # (S,), (I,), () -> (O,), (S,)
    init: np.ndarray  # (S,)
    unravel: Callable[[Array], PyTree[Array]]
    input_size: int
    output_size: int
    dtype: np.dtype
    cells: tuple[AbstractCell, ...]


def _cell_step(cell: AbstractCell):
    def advance(state, x, dt):
        return cell.advance(state, x, jnp.zeros((), dt.dtype), dt)

    return advance


def _layer_readout(layer: LiquidRNN, state):
    # LiquidRNN's per-step output (its ``return_sequences`` outputs).
    if layer.readout_states:
        return state[0] if isinstance(state, tuple) else state
    y = layer.cell.output(state)
    return y if layer.proj is None else layer.proj(y)


def _check_layer(layer: LiquidRNN, where: str) -> None:
    if layer.interpolation != "hold":
        raise ValueError(
            f"{where}: cannot stream a LiquidRNN with interpolation={layer.interpolation!r} "
            f"({type(layer.cell).__name__} cell): a continuous input path between observations "
            "needs the future observation; rebuild the layer with interpolation='hold'"
        )


def _plan(model: Any) -> _StepPlan:
    """The per-example step of a cell, a ``LiquidRNN`` or a ``SequenceClassifier``."""
    from .cells._ltc import portable_kernels
    from .models import SequenceClassifier

    # Plain JAX ops only: no compiled-kernel custom call (jax.export refuses those) and no custom
    # primitive (jax2onnx converts standard ones).
    model = portable_kernels(model)

    if isinstance(model, AbstractCell):
        cell = model
        advance = _cell_step(cell)

        def step_tree(state, x, dt):
            new = advance(state, x, dt)
            return cell.output(new), new

        state0 = cell.init_state()
        cells, in_size, out_size = (cell,), cell.input_size, cell.output_size
    elif isinstance(model, LiquidRNN):
        _check_layer(model, "stepper")
        layer = model
        advance = _cell_step(layer.cell)

        def step_tree(state, x, dt):
            new = advance(state, x, dt)
            return _layer_readout(layer, new), new

        state0 = layer.cell.init_state()
        cells = (layer.cell,)
        in_size, out_size = layer.cell.input_size, layer.output_size
    elif isinstance(model, SequenceClassifier):
        for i, layer in enumerate(model.layers):
            _check_layer(layer, f"stepper (SequenceClassifier layer {i})")
        clf = model
        layers = clf.layers
        *inner, last = layers

        def feats_of(layer, state):
            # SequenceClassifier's "last" readout: the last layer's output for its final state.
            if layer.return_sequences:
                y = layer.cell.output(state)
                return y if layer.proj is None else layer.proj(y)
            return _layer_readout(layer, state)

        def step_tree(state, x, dt):
            states, acc = state
            new_states = []
            h = x
            for layer, s in zip(inner, states[:-1]):
                s = _cell_step(layer.cell)(s, h, dt)
                new_states.append(s)
                h = _layer_readout(layer, s)
            s = _cell_step(last.cell)(states[-1], h, dt)
            new_states.append(s)
            if clf.per_step:  # a prediction per step: the head reads each step's output
                feats, new_acc = _layer_readout(last, s), acc
            elif clf.readout == "last":
                feats, new_acc = feats_of(last, s), acc
            else:  # "mean": running mean of the last layer's outputs
                total, count = acc
                total = total + _layer_readout(last, s)
                count = count + 1
                feats, new_acc = total / count, (total, count)
            return clf.head(feats), (tuple(new_states), new_acc)

        states0 = tuple(layer.cell.init_state() for layer in layers)
        dtype0 = jax.tree_util.tree_leaves(states0)[0].dtype
        if clf.readout == "mean" and not clf.per_step:
            acc0 = (jnp.zeros((last.output_size,), dtype0), jnp.zeros((), dtype0))
        else:
            acc0 = ()
        state0 = (states0, acc0)
        cells = tuple(layer.cell for layer in layers)
        in_size, out_size = clf.input_size, clf.num_classes
    else:
        raise ValueError(  # noqa: TRY004 - the library's one error type for bad arguments
            f"cannot build a stepper for {type(model).__name__}: expected a liquid cell "
            "(liquidjax.cells.AbstractCell), a liquidjax.LiquidRNN or a "
            "liquidjax.models.SequenceClassifier"
        )
    leaves = jax.tree_util.tree_leaves(state0)
    dtypes = {leaf.dtype for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError(
            f"{type(model).__name__}: the state mixes dtypes {sorted(map(str, dtypes))}; "
            "a stepper keeps the state as one flat array of one dtype"
        )
    flat0, unravel = ravel_pytree(state0)

    def fn(flat, x, dt):
        out, new = step_tree(unravel(flat), x, dt)
        return out, ravel_pytree(new)[0]

    return _StepPlan(
        model_name=type(model).__name__, fn=fn, init=np.asarray(flat0), unravel=unravel,
        input_size=int(in_size), output_size=int(out_size), dtype=np.dtype(flat0.dtype),
        cells=cells,
    )


def _batched(fn: Callable, batch_shape: tuple[int, ...]) -> Callable:
    for _ in batch_shape:
        fn = jax.vmap(fn)
    return fn


def _sequence_fn(fn: Callable) -> Callable:
    """One example's whole sequence: the step scanned over ``T`` observations."""

    def sequence(flat, xs, dts):
        def body(s, x_dt):
            out, s = fn(s, *x_dt)
            return s, out

        new, outs = jax.lax.scan(body, flat, (xs, dts))
        return outs, new

    return sequence


def _check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in batch_shape)
    except TypeError:
        raise ValueError(f"batch_shape must be a tuple of ints, got {batch_shape!r}") from None
    if any(d < 1 for d in shape) or any(isinstance(d, bool) for d in batch_shape):
        raise ValueError(f"batch_shape must hold positive ints, got {batch_shape!r}")
    return shape


def _step_specs(plan: _StepPlan, batch_shape: tuple[int, ...]):
    s = jax.ShapeDtypeStruct
    return (s(batch_shape + (plan.init.size,), plan.dtype),
            s(batch_shape + (plan.input_size,), plan.dtype),
            s(batch_shape, plan.dtype))


def _sequence_specs(plan: _StepPlan, batch_shape: tuple[int, ...], length: int):
    s = jax.ShapeDtypeStruct
    return (s(batch_shape + (plan.init.size,), plan.dtype),
            s(batch_shape + (length, plan.input_size), plan.dtype),
            s(batch_shape + (length,), plan.dtype))


_SYNC_CPU_CLIENT: Any = None


def _stepper_device() -> Any:
    """The device a stepper runs on: the default device, except on a CPU with asynchronous
    dispatch (JAX's default), where it is the device of a CPU client of the stepper's own that
    runs each executable on the calling thread.

    Why: XLA:CPU's default client hands every executable to a worker thread and the caller then
    waits for it. For a step of a few microseconds that hand-off costs more than the step (two
    to three times the whole call on a loaded machine); the global switch
    ``jax_cpu_enable_async_dispatch=False`` fixes it only if set before JAX's first
    computation, and for the whole program. A second client, synchronous, gives the stepper the
    inline call without touching the rest of the program."""
    default = jax.devices()[0]
    if default.platform != "cpu" or not jax.config.read("jax_cpu_enable_async_dispatch"):
        return default
    global _SYNC_CPU_CLIENT
    if _SYNC_CPU_CLIENT is None:
        try:  # JAX has no public constructor for a second client
            from jax._src.lib import xla_client

            _SYNC_CPU_CLIENT = xla_client.make_cpu_client(asynchronous=False)
        except (ImportError, AttributeError, TypeError):  # a JAX without it: the default device
            _SYNC_CPU_CLIENT = False
    return default if _SYNC_CPU_CLIENT is False else _SYNC_CPU_CLIENT.devices()[0]


class _StepperBase:
    """What every stepper shares: sizes, the initial state, the state's pytree, argument checks."""

    device: Any = None  # the JAX device it runs on (None: not JAX, the C backend)

    def __init__(self, plan: _StepPlan, batch_shape: tuple[int, ...]):
        self._plan = plan
        self.batch_shape = batch_shape
        self.input_size = plan.input_size
        self.output_size = plan.output_size
        self.state_size = int(plan.init.size)
        self.dtype = plan.dtype
        self._x_shape = batch_shape + (plan.input_size,)

    def _checked(self, state: Any, x: Any, dt: Any, error: Exception) -> list[np.ndarray]:
        """``[state, x, dt]`` as NumPy arrays of the stepper's dtype and shapes (``dt``
        broadcast); our ``ValueError`` when a shape or a dtype does not fit."""
        bs = self.batch_shape
        arrays = []
        wanted = ((state, bs + (self.state_size,), "f", False),
                  (x, self._x_shape, "biuf", False), (dt, bs, "biuf", True))
        for a, shape, kinds, broadcasts in wanted:
            a = None if isinstance(a, jax.core.Tracer) else np.asarray(a)
            if broadcasts and a is not None and a.ndim <= len(shape):
                with contextlib.suppress(ValueError):  # as the fast path's assignment does
                    a = np.broadcast_to(a, shape)
            if a is None or a.shape != shape or a.dtype.kind not in kinds:
                raise ValueError(
                    f"{self!r} takes state {bs + (self.state_size,)}, x {self._x_shape} and "
                    f"dt {bs} ({self.dtype}; x and dt may be any real numbers); got state "
                    f"{np.shape(state)}, x {np.shape(x)}, dt {np.shape(dt)}"
                ) from error
            arrays.append(a.astype(self.dtype, copy=False))
        return arrays

    def initial_state(self) -> Float[Array, "*batch state"]:
        """The model's initial (zero) state, flat, of shape ``batch_shape + (state_size,)``."""
        return self._init

    def unflatten_state(self, state: Float[Array, "*batch state"]) -> PyTree[Array]:
        """The state pytree of the model (e.g. ``(h, c)`` with mixed memory; for a
        ``SequenceClassifier`` ``(layer_states, running_mean)``) from the flat state, as
        arrays on the default device (ready for the model itself, e.g. ``LiquidRNN(state=...)``)."""
        if (isinstance(state, jax.Array) and not isinstance(state, jax.core.Tracer)
                and self.device in state.devices() and self.device is not jax.devices()[0]):
            state = np.asarray(state)  # off the stepper's own client
        state = jnp.asarray(state)
        if state.shape != self.batch_shape + (self.state_size,):
            raise ValueError(
                f"expected a flat state of shape {self.batch_shape + (self.state_size,)}, "
                f"got {state.shape}"
            )
        return _batched(self._plan.unravel, self.batch_shape)(state)

    def flatten_state(self, state: PyTree[Array]) -> Float[Array, "*batch state"]:
        """The flat state of a state pytree (e.g. the final state of ``LiquidRNN``), the inverse
        of :meth:`unflatten_state`; batched leaves carry ``batch_shape`` in front."""
        def ravel(tree):
            return ravel_pytree(tree)[0]

        flat = _batched(ravel, self.batch_shape)(state)
        if flat.shape != self.batch_shape + (self.state_size,):
            raise ValueError(
                f"the state flattens to shape {flat.shape}, expected "
                f"{self.batch_shape + (self.state_size,)}"
            )
        return flat.astype(self.dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._plan.model_name}, input_size={self.input_size}, "
                f"output_size={self.output_size}, state_size={self.state_size}, "
                f"batch_shape={self.batch_shape}, dtype={self.dtype})")


class Stepper(_StepperBase):
    """A model compiled for streaming: ``step(state, x, dt) -> (output, new_state)``.

    Built by :func:`stepper`. The state is one flat array of shape ``batch_shape + (state_size,)``;
    the parameters are constants of the compiled executable. Calling it runs the executable
    directly (no tracing, no pytree flattening, no cache look-up) on the calling thread.

    On a CPU the stepper runs on a synchronous XLA:CPU client of its own (``device``), so its
    outputs are arrays on that device: NumPy reads them without a copy, ``jax.numpy`` works on
    them as on any array, and ``jax.device_put(y, jax.devices()[0])`` moves one to the default
    device where an operation mixes it with arrays placed there explicitly.

    **Attributes:** `input_size`, `output_size`, `state_size`, `batch_shape`, `dtype`, `device`.
    """

    def __init__(self, plan: _StepPlan, batch_shape: tuple[int, ...]):
        super().__init__(plan, batch_shape)
        self.device = _stepper_device()
        self._fn = _batched(plan.fn, batch_shape)
        specs = _step_specs(plan, batch_shape)
        on_device = jax.sharding.SingleDeviceSharding(self.device)
        self._specs = tuple(jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_device)
                            for s in specs)
        folded = _folded(self._fn, specs, distinct=False, merge_dots=True)
        n_in = plan.input_size
        same = []

        def step(state, xdt):
            out, new = folded(state, xdt[..., :n_in], xdt[..., n_in])
            # When the output is the new state itself (a cell without readout: CfC), the
            # executable returns it once: a second result would cost a copy and a buffer.
            same.append(out is new)
            return (new,) if same[-1] else (out, new)

        # x and dt travel to the device as one array: one host-to-device transfer per call
        # instead of two (each costs about a microsecond, as much as a CfC's arithmetic).
        xdt = jax.ShapeDtypeStruct(batch_shape + (n_in + 1,), self.dtype, sharding=on_device)
        self._compiled = jax.jit(step).lower(self._specs[0], xdt).compile()
        self._output_is_state = same[0]
        self._xdt_shape = xdt.shape
        self._x_at = (..., slice(0, n_in)) if batch_shape else slice(0, n_in)
        self._dt_at = (..., n_in) if batch_shape else n_in  # batch (): a scalar, not a sequence
        self._init = jax.device_put(
            np.broadcast_to(plan.init, batch_shape + plan.init.shape), self.device)

    def __call__(
        self, state: Float[Array, "*batch state"], x: Float[Array, "*batch input"],
        dt: Float[Array, "*batch"] | float = 1.0,
    ) -> tuple[Float[Array, "*batch output"], Float[Array, "*batch state"]]:
        """Advance ``state`` across the elapsed time ``dt`` with the observation ``x`` held.

        **Arguments:**
        - `state`: ``batch_shape + (state_size,)``, from :meth:`initial_state` or a previous step.
        - `x`: ``batch_shape + (input_size,)``, any real array (NumPy, JAX; cast to `dtype`).
        - `dt`: elapsed time since the previous observation, shape ``batch_shape`` or one that
          broadcasts to it (a Python float: the same for every example); must be positive (not
          checked: a stepper does no host syncs).

        **Returns:** ``(output, new_state)``.
        """
        xdt = np.empty(self._xdt_shape, self.dtype)  # a new one each call: the device may alias it
        try:
            if x.shape != self._x_shape:
                raise ValueError("x has the wrong shape")  # (NumPy would broadcast it)
            xdt[self._x_at] = x
            xdt[self._dt_at] = dt
            results = self._compiled(state, xdt)
        except (AttributeError, TypeError, ValueError) as e:  # ours, NumPy's, the executable's
            results = self._compiled(*self._placed(state, x, dt, e))
        return (results[0], results[0]) if self._output_is_state else results

    def _placed(self, state: Any, x: Any, dt: Any, error: Exception) -> tuple[Array, np.ndarray]:
        """``(state, xdt)`` for the executable, with the state on the stepper's device (the fast
        path refuses arrays committed to another device, e.g. by ``jax.device_put``); our
        ``ValueError`` when a shape or a dtype does not fit."""
        state, x, dt = self._checked(state, x, dt, error)
        return (jax.device_put(state, self.device),
                np.concatenate([x, dt[..., None]], axis=-1))


class CStepper(_StepperBase):
    """A model's step translated to C and compiled: ``step(state, x, dt) -> (output,
    new_state)``, as :class:`Stepper` but on NumPy arrays.

    Built by ``stepper(model, backend="c")``. A call copies ``state``, ``x`` and ``dt`` into
    buffers whose addresses the library holds, runs the C step (:func:`to_c`'s code) in place
    and returns new NumPy arrays (a CfC's output is its state: the same array twice). Calls from
    several threads take turns (the step keeps its scratch in static memory, shared by the
    steppers of one model). The generated sources and the library are in the folder
    ``source_dir``.

    **Attributes:** `input_size`, `output_size`, `state_size`, `batch_shape`, `dtype`,
    `source_dir`.
    """

    # Steppers of one model share one library, hence its bound buffers and its scratch: per
    # library, the (weak reference to the) stepper whose buffers it holds, and a lock.
    _bound: dict[str, Any] = {}
    _locks: dict[str, Any] = {}

    def __init__(self, plan: _StepPlan, batch_shape: tuple[int, ...]):
        import ctypes
        import threading
        import weakref

        from . import _cbuild, _cgen

        super().__init__(plan, batch_shape)
        fn, self._output_is_state = _c_step(plan, batch_shape, "liquidjax")
        ct = _cgen.ctype(plan.dtype)
        header, source = _c_files(plan, batch_shape, fn, "liquidjax")
        path = _cbuild.build({"liquidjax.h": header,
                              "liquidjax.c": source + _cbuild.glue("liquidjax", ct)},
                             "liquidjax.c")
        self.source_dir = path.parent
        self._lib = str(path)
        lib = ctypes.PyDLL(self._lib)  # keeps the GIL: calls take turns
        self._bind_fn = getattr(lib, _cbuild.BINDER)
        self._bind_fn.restype = None
        self._call = getattr(lib, _cbuild.CALL)
        self._call.restype = None
        self._call.argtypes = ()
        self._state_shape = batch_shape + (self.state_size,)
        self._state = np.zeros(self._state_shape, self.dtype)
        self._x = np.zeros(self._x_shape, self.dtype)
        self._dt = np.zeros(batch_shape, self.dtype)
        self._out = np.zeros(batch_shape + (self.output_size,), self.dtype)
        self._pointers = [ctypes.c_void_p(a.ctypes.data)
                          for a in (self._state, self._x, self._dt, self._out)]
        self._me = weakref.ref(self)
        self._lock = self._locks.setdefault(self._lib, threading.Lock())
        init = np.broadcast_to(plan.init, self._state_shape).astype(self.dtype)
        init.setflags(write=False)
        self._init = init

    def __call__(
        self, state: Float[Array, "*batch state"], x: Float[Array, "*batch input"],
        dt: Float[Array, "*batch"] | float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Advance ``state`` across ``dt`` with ``x`` held; arguments as
        :meth:`Stepper.__call__`, results new NumPy arrays."""
        with self._lock:  # one call at a time per library (threads take turns)
            try:
                if x.shape != self._x_shape or state.shape != self._state_shape:
                    raise ValueError("wrong shape")  # (NumPy would broadcast it)
                self._state[...] = state
                self._x[...] = x
                self._dt[...] = dt
            except (AttributeError, TypeError, ValueError) as e:  # ours, NumPy's
                self._state[...], self._x[...], self._dt[...] = self._checked(state, x, dt, e)
            if self._bound.get(self._lib) is not self._me:  # another stepper of it ran
                self._bind_fn(*self._pointers)
                self._bound[self._lib] = self._me
            self._call()
            new = self._state.copy()
            return (new, new) if self._output_is_state else (self._out.copy(), new)


def stepper(
    model: Any, *, batch_shape: Sequence[int] = (), backend: str = "xla"
) -> Stepper | CStepper:
    """Compile a model for streaming, one observation at a time.

    The returned ``step(state, x, dt) -> (output, new_state)`` advances the model across the
    elapsed time ``dt`` with the observation ``x`` held (ncps semantics), exactly as
    :class:`~liquidjax.LiquidRNN` does for one step of a sequence; streaming a sequence step by
    step gives the sequence layer's outputs. With ``backend="xla"`` it is one XLA executable
    compiled ahead of time for concrete shapes, with the parameters closed over, called with
    flat arrays: the call overhead is a few microseconds. With ``backend="c"`` the step is
    translated to C (as :func:`to_c` writes it), compiled by the system's C compiler into a
    shared library (cached) and called through ``ctypes`` on buffers bound once: about a
    microsecond of overhead, outputs as NumPy arrays.

    **Arguments:**
    - `model`: a cell (``LTC`` with any solver, ``CfC``, ``WiredCfC``, ``MixedMemory``), a
      :class:`~liquidjax.LiquidRNN` with ``interpolation="hold"`` (its `proj` applied), or a
      :class:`~liquidjax.models.SequenceClassifier` (the output of each step is the logits of
      the sequence seen so far: for ``readout="mean"`` the state carries the running mean;
      with ``per_step=True`` the prediction for the current step).
      Inference only: no dropout.
    - `batch_shape`: leading batch dimensions of every argument (default: one example).
    - `backend`: ``"xla"`` (default; every model) or ``"c"`` (models whose step has a fixed
      size: not a diffrax solver's loop, see :func:`to_c`; needs a C compiler, ``$CC`` or
      ``cc``). The C stepper returns NumPy arrays (new ones each call) and runs one call at a
      time (its scratch memory is static; calls from several threads take turns).

    **Returns:** a :class:`Stepper` (``step(state, x, dt)``, ``step.initial_state()``,
    ``step.unflatten_state(state)`` to read the model's own state pytree); for ``backend="c"``
    a ``CStepper`` with the same methods.

    **Example:**
    ```python
    step = liquidjax.export.stepper(LiquidRNN(LTC(8, 32, key=key)))
    state = step.initial_state()
    for x, dt in sensor_stream:
        action, state = step(state, x, dt)
    ```
    """
    backends: dict[str, type[_StepperBase]] = {"xla": Stepper, "c": CStepper}
    if backend not in backends:
        raise ValueError(f"backend must be one of {sorted(backends)}, got {backend!r}")
    return backends[backend](_plan(model), _check_batch_shape(batch_shape))


# ------------------------------------------------------------------------------------------- C
def to_c(
    model: Any,
    path: str | Path,
    *,
    batch_shape: Sequence[int] = (),
    dtype: Any = None,
    name: str = "liquidjax",
) -> dict[str, Any]:
    """Write the model's step as dependency-free C99: for a microcontroller, or any C program.

    Writes the folder `path` with ``<name>.h``, ``<name>.c`` and ``manifest.json`` (as
    :func:`to_stablehlo`). The header declares

    ```c
    void <name>_init_state(float *state);
    void <name>_step(const float *state, const float *x, const float *dt,
                     float *output, float *new_state);
    ```

    (``double`` for a float64 model), with the calling convention of :func:`stepper`: ``dt``
    one per example, every array row-major with ``batch_shape`` first, ``new_state`` may be
    ``state`` itself. ``<NAME>_STATE_SIZE``, ``<NAME>_INPUT_SIZE``, ``<NAME>_OUTPUT_SIZE`` and
    ``<NAME>_BATCH`` give the sizes. The weights are ``static const`` arrays (in flash on a
    microcontroller); intermediate values live in static scratch arrays reused once dead (no
    ``malloc``; the header states both sizes), so the step is not reentrant. Only ``<math.h>``
    and ``<stdint.h>`` are included; link with ``-lm``.

    The code is generated from the step's jaxpr (the one :func:`stepper` compiles), equation by
    equation, after folding the computations on the parameters alone: loops for the
    elementwise operations, reductions and matrix products, a ``for`` loop for the LTC's
    ``ode_unfolds`` semi-implicit steps.

    **Arguments:**
    - `model`: as :func:`stepper`. Its step must have a fixed size: an LTC integrated by a
      diffrax solver (its ``diffeqsolve`` is a ``while`` loop with host callbacks) is refused
      with a ``ValueError`` naming the cell and what it contains (use the default
      ``FusedSemiImplicit`` solver, or :func:`to_stablehlo` / the XLA stepper).
    - `path`: the folder to write (created if needed; existing files are replaced).
    - `batch_shape`: leading batch dimensions of every argument (fixed sizes).
    - `dtype`: ``float32`` or ``float64`` to cast the parameters to first (default: the model's
      own dtype).
    - `name`: the prefix of the C names and the files (a C identifier).

    **Returns:** the manifest (a dict).

    **Example:**
    ```python
    liquidjax.export.to_c(model, "policy_c", name="policy")
    # cc -O2 -c policy_c/policy.c   and in the controller:
    #   policy_step(state, x, &dt, action, state);
    ```
    """
    from . import _cbuild

    name = _cbuild.check_name(name)
    bs = _check_batch_shape(batch_shape)
    if dtype is not None:
        model = _cast(model, dtype)
    plan = _plan(model)
    fn, _ = _c_step(plan, bs, name)
    header, source = _c_files(plan, bs, fn, name)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    files = {f"{name}.h": header, f"{name}.c": source}
    for fname, text in files.items():
        (out / fname).write_text(text)
    functions = {"step": {"files": list(files), "symbol": f"{name}_step",
                          "init_state_symbol": f"{name}_init_state",
                          "scratch_bytes": fn.scratch_bytes,
                          "constant_bytes": fn.constant_bytes, **_signature(plan, bs)}}
    manifest = _manifest(plan, "liquidjax.c", bs, functions)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _c_step(plan: _StepPlan, batch_shape: tuple[int, ...],
            name: str) -> tuple[_cgen.CFunction, bool]:
    """The step translated to C, ``<name>_step(state, x, dt, output, new_state)``, and whether
    its output is its new state (a cell without readout)."""
    from . import _cgen

    specs = _step_specs(plan, batch_shape)
    folded = _folded(_batched(plan.fn, batch_shape), specs, distinct=False, merge_dots=True)
    closed = jax.make_jaxpr(folded)(*specs)
    try:
        fn = _cgen.translate(closed, f"{name}_step", ("state", "x", "dt"),
                             ("output", "new_state"))
    except _cgen.Unsupported as e:
        cells = ", ".join(type(c).__name__ for c in plan.cells)
        what = "; ".join(f"{p} ({_NO_ONNX[p]})" if p in _NO_ONNX else p for p in e.primitives)
        raise ValueError(
            f"cannot generate C for {plan.model_name} ({cells}): its step contains {what}"
            f"{f' ({e.detail})' if e.detail else ''}, which has no C translation. Use a cell "
            "with a fixed-size step (CfC, WiredCfC, LTC with the default FusedSemiImplicit "
            "solver), or the XLA stepper (stepper(..., backend='xla')) / to_stablehlo"
        ) from None
    outvars = closed.jaxpr.outvars
    return fn, outvars[0] is outvars[1]


def _c_files(plan: _StepPlan, batch_shape: tuple[int, ...], fn: _cgen.CFunction,
             name: str) -> tuple[str, str]:
    from . import _cbuild

    cells = ", ".join(type(c).__name__ for c in plan.cells)
    return _cbuild.files(fn, name=name, model=f"{plan.model_name} ({cells})", dtype=plan.dtype,
                         batch_shape=batch_shape, input_size=plan.input_size,
                         output_size=plan.output_size, init=plan.init)


def _cast(model: Any, dtype: Any) -> Any:
    import equinox as eqx

    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError("dtype=float64 needs JAX's 64-bit mode: jax.config.update("
                         "'jax_enable_x64', True), or call inside `with jax.enable_x64(True)`")
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)


# ------------------------------------------------------------------------------ serialisation
def _describe(name: str, spec: Any) -> dict[str, Any]:
    return {"name": name, "shape": list(spec.shape), "dtype": str(np.dtype(spec.dtype))}


def _signature(plan, batch_shape, length=None) -> dict[str, Any]:
    bs = tuple(batch_shape)
    if length is None:
        ins = _step_specs(plan, bs)
        outs = (jax.ShapeDtypeStruct(bs + (plan.output_size,), plan.dtype), ins[0])
        return {"inputs": [_describe(n, s) for n, s in zip(("state", "x", "dt"), ins)],
                "outputs": [_describe(n, s) for n, s in zip(("output", "new_state"), outs)]}
    ins = _sequence_specs(plan, bs, length)
    outs = (jax.ShapeDtypeStruct(bs + (length, plan.output_size), plan.dtype), ins[0])
    return {"inputs": [_describe(n, s) for n, s in zip(("state", "xs", "dts"), ins)],
            "outputs": [_describe(n, s) for n, s in zip(("outputs", "new_state"), outs)]}


def _manifest(plan: _StepPlan, fmt: str, batch_shape, functions: dict) -> dict[str, Any]:
    from importlib import metadata

    from ._version import __version__

    return {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "liquidjax_version": __version__,
        "jax_version": metadata.version("jax"),
        "model": plan.model_name,
        "input_size": plan.input_size,
        "output_size": plan.output_size,
        "state_size": int(plan.init.size),
        "dtype": str(plan.dtype),
        "batch_shape": list(batch_shape),
        "initial_state": [float(v) for v in plan.init],
        "calling_convention": "step(state, x, dt) -> (output, new_state); "
                              "sequence(state, xs, dts) -> (outputs, new_state)",
        "functions": functions,
    }


def _check_length(seq_len: Any) -> int | None:
    if seq_len is None:
        return None
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int (or None: step only), got {seq_len!r}")
    return int(seq_len)


def to_stablehlo(
    model: Any,
    path: str | Path,
    *,
    seq_len: int | None = None,
    batch_shape: Sequence[int] = (),
    platforms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Serialise the model's step (and its whole-sequence function) with ``jax.export``.

    Writes the folder `path` with

    * ``step.jaxexport`` — ``step(state, x, dt) -> (output, new_state)`` (see :func:`stepper`);
    * ``sequence.jaxexport`` (when `seq_len` is given) —
      ``sequence(state, xs, dts) -> (outputs, new_state)`` over ``seq_len`` observations;
    * ``manifest.json`` — format version, versions of liquidjax and jax, every input's and
      output's name, shape and dtype, the initial state of one example (``initial_state``;
      broadcast it to ``batch_shape``).

    The files are ``jax.export`` serialisations (StableHLO with the parameters as constants):
    any process with a compatible JAX runs them without liquidjax —
    ``jax.export.deserialize(open(p, "rb").read()).call(state, x, dt)``.

    **Arguments:**
    - `model`: as :func:`stepper`.
    - `path`: the folder to write (created if needed; existing files are replaced).
    - `seq_len`: length ``T`` of the exported whole-sequence function (``None``: step only).
    - `batch_shape`: leading batch dimensions of every argument.
    - `platforms`: the platforms to lower for (default: this machine's backend), e.g.
      ``("cpu", "cuda")``.

    **Returns:** the manifest (a dict, also written as ``manifest.json``).
    """
    plan = _plan(model)
    bs = _check_batch_shape(batch_shape)
    length = _check_length(seq_len)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    kw = {} if platforms is None else {"platforms": tuple(platforms)}
    step_fn = _batched(plan.fn, bs)
    todo = [("step", step_fn, _step_specs(plan, bs), None)]
    if length is not None:
        seq_fn = _batched(_sequence_fn(plan.fn), bs)
        todo.append(("sequence", seq_fn, _sequence_specs(plan, bs, length), length))
    functions = {}
    for name, fn, specs, n in todo:
        try:
            exported = jax.export.export(jax.jit(_folded(fn, specs)), **kw)(*specs)
        except Exception as e:  # re-raised with the model named
            cells = ", ".join(type(c).__name__ for c in plan.cells)
            hint = ""
            if "callback" in str(e):
                hint = (". The step checks values at run time with host callbacks (eqx.error_if, "
                        "e.g. inside diffrax's diffeqsolve), which jax.export cannot serialise: "
                        "set the environment variable EQX_ON_ERROR=nan before importing "
                        "liquidjax to export it with NaN outputs on failure instead")
            raise ValueError(
                f"cannot export the {name} of {plan.model_name} ({cells}) to StableHLO: "
                f"{type(e).__name__}: {e}{hint}"
            ) from e
        fname = f"{name}.jaxexport"
        (out / fname).write_bytes(exported.serialize())
        functions[name] = {
            "file": fname,
            "platforms": list(exported.platforms),
            "calling_convention_version": exported.calling_convention_version,
            **_signature(plan, bs, n),
        }
    manifest = _manifest(plan, "liquidjax.stablehlo", bs, functions)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# ----------------------------------------------------------------------------------------- ONNX
class _NotExportable(Exception):
    """A primitive that has no fixed-size ONNX form."""


_NO_ONNX = {
    "while": "a data-dependent while loop (diffrax's diffeqsolve steps until t1: adaptive or "
             "not, its number of steps is not fixed)",
    "cond": "a data-dependent branch (lax.cond; diffrax's diffeqsolve steers its steps with "
            "them)",
    "debug_callback": "a host callback (jax.debug.callback, eqx.error_if)",
    "pure_callback": "a host callback (jax.pure_callback, eqx.error_if)",
    "io_callback": "a host callback (io_callback)",
}


def _eval_inlined(jaxpr, consts, args, *, onnx: bool):
    """Evaluate ``jaxpr`` binding plain primitives only: calls and custom-derivative wrappers are
    inlined (an exported forward pass needs no derivative rules). With ``onnx``, scans (fixed
    trip count: the ODE unfolds, the time loop) are unrolled too and what has no fixed-size
    graph raises :class:`_NotExportable`."""
    from jax.extend.core import ClosedJaxpr, Literal

    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CALL_PARAMS and _CALL_PARAMS[name] in eqn.params:
            inner = eqn.params[_CALL_PARAMS[name]]
            if isinstance(inner, ClosedJaxpr):
                outs = _eval_inlined(inner.jaxpr, inner.consts, invals, onnx=onnx)
            else:
                outs = _eval_inlined(inner, (), invals, onnx=onnx)
        elif onnx and name == "scan":
            outs = _unroll_scan(eqn.params, invals)
        elif onnx and name in _NO_ONNX:
            raise _NotExportable(_NO_ONNX[name])
        else:
            outs = _bind(eqn, invals)
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _unroll_scan(params, invals):
    body = params["jaxpr"]
    nc, ncarry, length = params["num_consts"], params["num_carry"], params["length"]
    consts, carry, xs = invals[:nc], list(invals[nc:nc + ncarry]), invals[nc + ncarry:]
    ys = []
    steps = range(length - 1, -1, -1) if params["reverse"] else range(length)
    for i in steps:
        outs = _eval_inlined(body.jaxpr, body.consts, [*consts, *carry, *(x[i] for x in xs)],
                             onnx=True)
        carry, y = outs[:ncarry], outs[ncarry:]
        ys.append(y)
    if params["reverse"]:
        ys.reverse()
    n_ys = len(body.jaxpr.outvars) - ncarry
    stacked = [jnp.stack([y[j] for y in ys]) for j in range(n_ys)]
    return [*carry, *stacked]


def _dots_sharing_an_operand(eqns, known) -> list[tuple[list, int, int]]:
    """Groups of ``dot_general`` equations that multiply one computed value by different folded
    constants (a CfC's four heads all read the backbone's output), as ``(equations, position of
    the constant, its free dimension)``. Each group can run as one product with the constants
    concatenated along that dimension: one matrix kernel call instead of several, which is what
    a batch-1 step pays for."""
    from jax.extend.core import Literal

    groups: dict[Any, list] = {}
    for eqn in eqns:
        if eqn.primitive.name != "dot_general" or any(isinstance(v, Literal) for v in eqn.invars):
            continue
        is_known = [v in known for v in eqn.invars]
        if sorted(is_known) != [False, True]:
            continue
        pos = is_known.index(True)
        contracting, batch = eqn.params["dimension_numbers"]
        const = eqn.invars[pos]
        free = [d for d in range(const.aval.ndim)
                if d not in contracting[pos] and d not in batch[pos]]
        if batch[pos] or len(free) != 1:
            continue
        params = tuple(sorted(eqn.params.items()))
        try:
            hash(params)
        except TypeError:
            continue
        rest = tuple(n for d, n in enumerate(const.aval.shape) if d != free[0])
        key = (eqn.invars[1 - pos], pos, free[0], rest, const.aval.dtype, params)
        groups.setdefault(key, []).append(eqn)
    return [(members, key[1], key[2]) for key, members in groups.items() if len(members) > 1]


def _folded(fn: Callable, specs, *, onnx: bool = False, distinct: bool = True,
            merge_dots: bool = False) -> Callable:
    """``fn`` with its calls inlined (see :func:`_eval_inlined`) and every computation that
    depends on the parameters only — positivity reparameterisations, masks, transposes, the
    LTC's per-neuron constants — done once, now: the returned function computes only what
    depends on its arguments, with the folded values as constants. With ``distinct`` an output
    that is another output or an input is a copy of its own (an exported graph names each
    value once); without, it is the same value. With ``merge_dots``, products of one computed
    value with several constants run as one (see :func:`_dots_sharing_an_operand`)."""
    from jax.extend.core import Literal

    closed = jax.make_jaxpr(fn)(*specs)
    inlined = jax.make_jaxpr(
        lambda *a: _eval_inlined(closed.jaxpr, closed.consts, a, onnx=onnx))(*specs)
    jaxpr = inlined.jaxpr
    known = set(jaxpr.constvars)
    now, later = [], []
    for eqn in jaxpr.eqns:
        if not eqn.effects and all(isinstance(v, Literal) or v in known for v in eqn.invars):
            now.append(eqn)
            known.update(eqn.outvars)
        else:
            later.append(eqn)
    needed: dict[Any, None] = {}  # known values the remaining computation reads, in order
    for v in [*(v for eqn in later for v in eqn.invars), *jaxpr.outvars]:
        if not isinstance(v, Literal) and v in known:
            needed[v] = None

    def run(eqns, env, merged=None):
        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for eqn in eqns:
            if merged and id(eqn) in merged:
                members, pos, constant = merged[id(eqn)]
                if members is None:  # computed with the group's first product
                    continue
                operand = read(eqn.invars[1 - pos])
                (product,) = _bind(eqn, [constant, operand] if pos == 0 else [operand, constant])
                axis = 0 if pos == 0 else product.ndim - 1  # where dot_general puts the free dim
                start = 0
                for m in members:
                    size = m.outvars[0].aval.shape[axis]
                    env[m.outvars[0]] = jax.lax.slice_in_dim(product, start, start + size,
                                                             axis=axis)
                    start += size
                continue
            for v, o in zip(eqn.outvars, _bind(eqn, [read(v) for v in eqn.invars]), strict=True):
                env[v] = o
        return read

    def constants(*consts):
        read = run(now, dict(zip(jaxpr.constvars, consts, strict=True)))
        return [read(v) for v in needed]

    values = jax.jit(constants)(*inlined.consts)
    merged: dict[int, tuple[Any, int, Any]] = {}
    if merge_dots:
        folded_values = dict(zip(needed, values, strict=True))
        for members, pos, free in _dots_sharing_an_operand(later, known):
            constant = jnp.concatenate([folded_values[m.invars[pos]] for m in members], free)
            merged[id(members[0])] = (members, pos, constant)
            merged.update((id(m), (None, pos, None)) for m in members[1:])

    def folded(*args):
        env = dict(zip(needed, values, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        read = run(later, env, merged)
        outs = [read(v) for v in jaxpr.outvars]
        if not distinct:
            return tuple(outs)
        # An ONNX value has one name: an output that is another output (a CfC's output is its
        # state) or an input gets a copy of its own.
        seen: set[int] = {id(a) for a in args}
        for i, o in enumerate(outs):
            if id(o) in seen:
                outs[i] = jnp.copy(o)
            seen.add(id(outs[i]))
        return tuple(outs)

    return folded


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    # The converter logs a line per intermediate value whose type it does not record.
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _time_loop(step_fn: Callable, batch_dims: int) -> Callable:
    """``sequence(state, xs, dts)`` as a ``lax.scan`` of an already batched, folded step (the
    time axis follows the batch axes)."""

    def sequence(state, xs, dts):
        def body(s, x_dt):
            out, s = step_fn(s, *x_dt)
            return s, out

        xs_t, dts_t = jnp.moveaxis(xs, batch_dims, 0), jnp.moveaxis(dts, batch_dims, 0)
        new, outs = jax.lax.scan(body, state, (xs_t, dts_t))
        return jnp.moveaxis(outs, 0, batch_dims), new

    return sequence


def _drop_unused_initializers(path: Path) -> None:
    """Remove initializers that no node reads (the converter leaves copies of the loop body's
    constants in the outer graph; ONNX Runtime would warn about each)."""
    import onnx

    model = onnx.load(str(path))

    def used_names(graph) -> set[str]:
        names = {o.name for o in graph.output}
        for node in graph.node:
            names.update(node.input)
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    names |= used_names(sub)
        return names

    def prune(graph) -> None:
        used = used_names(graph)
        keep = [t for t in graph.initializer if t.name in used]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    prune(sub)

    prune(model.graph)
    onnx.save(model, str(path))


def _require_onnx():
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"to_onnx needs the optional packages onnx and jax2onnx ({e}): "
            "pip install 'liquidjax[export]'"
        ) from e


def to_onnx(
    model: Any,
    path: str | Path,
    *,
    seq_len: int | None = None,
    batch_shape: Sequence[int] = (),
    opset: int = 21,
) -> dict[str, Any]:
    """Export the model's step (and its whole-sequence function) as ONNX graphs.

    Writes the folder `path` with ``step.onnx`` (inputs ``state``, ``x``, ``dt``; outputs
    ``output``, ``new_state``), ``sequence.onnx`` when `seq_len` is given (inputs ``state``,
    ``xs``, ``dts``; outputs ``outputs``, ``new_state``) and ``manifest.json`` (as
    :func:`to_stablehlo`). The calling convention is that of :func:`stepper`; the initial state
    is in the manifest (zeros for every liquidjax cell).

    The graphs are converted by ``jax2onnx`` from the step's jaxpr after inlining the custom
    derivative wrappers (the fused LTC kernel's hand-written VJP), unrolling the LTC's
    ``ode_unfolds`` semi-implicit steps and folding the parameter-only computations; the
    sequence graph is an ONNX ``Loop`` over ``seq_len`` observations around the same step.
    Parameters become ONNX initializers.

    **Arguments:**
    - `model`: as :func:`stepper`. Cells whose step has no fixed-size graph are refused with a
      ``ValueError`` naming the cell: an LTC integrated by a diffrax solver (its
      ``diffeqsolve`` is a ``while`` loop, adaptive or not; use the default
      ``FusedSemiImplicit`` solver, or export to StableHLO).
    - `path`: the folder to write (created if needed).
    - `seq_len`: observations ``T`` of the sequence graph (``None``: step only).
    - `batch_shape`: leading batch dimensions (fixed sizes).
    - `opset`: ONNX opset version.

    **Returns:** the manifest (a dict).

    **Example:**
    ```python
    liquidjax.export.to_onnx(model, "policy_onnx")
    sess = onnxruntime.InferenceSession("policy_onnx/step.onnx")
    y, state = sess.run(None, {"state": state, "x": x, "dt": np.float32(0.1)})
    ```
    """
    _require_onnx()
    from jax2onnx import to_onnx as j2o

    plan = _plan(model)
    bs = _check_batch_shape(batch_shape)
    length = _check_length(seq_len)
    if plan.dtype != np.float32:
        raise ValueError(
            f"to_onnx exports float32 models; {plan.model_name} has {plan.dtype} parameters "
            "(cast them with jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), model))"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    step_specs = _step_specs(plan, bs)
    try:
        step_fn = _folded(_batched(plan.fn, bs), step_specs, onnx=True)
    except _NotExportable as e:
        cells = ", ".join(type(c).__name__ for c in plan.cells)
        raise ValueError(
            f"cannot export {plan.model_name} ({cells}) to ONNX: its step contains {e}. "
            "Use a cell with a fixed-size step (CfC, WiredCfC, LTC with the default "
            "FusedSemiImplicit solver and constant steps), or to_stablehlo"
        ) from None
    todo = [("step", step_fn, step_specs, None, ("state", "x", "dt"), ("output", "new_state"))]
    if length is not None:
        # The time loop stays a loop (an ONNX Loop around the step's graph): the graph's size
        # does not grow with seq_len.
        todo.append(("sequence", _time_loop(step_fn, len(bs)), _sequence_specs(plan, bs, length),
                     length, ("state", "xs", "dts"), ("outputs", "new_state")))
    functions = {}
    for name, fn, specs, n, in_names, out_names in todo:
        fname = f"{name}.onnx"
        with _quiet_loggers("onnx_ir", "jax2onnx"):
            j2o(fn, list(specs), model_name=f"liquidjax_{plan.model_name}_{name}",
                opset=opset, input_names=list(in_names), output_names=list(out_names),
                return_mode="file", output_path=str(out / fname))
        _drop_unused_initializers(out / fname)
        functions[name] = {"file": fname, "opset": opset, **_signature(plan, bs, n)}
    manifest = _manifest(plan, "liquidjax.onnx", bs, functions)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
