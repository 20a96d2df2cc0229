"""The streaming steppers: :func:`stepper`, its XLA :class:`Stepper` and its C :class:`CStepper`."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._c import _cbuild, _cgen
from ._c._to_c import _c_files, _c_step
from ._fold import _folded
from ._step import _batched, _check_batch_shape, _plan, _step_specs, _StepPlan

try:  # private: JAX has no public constructor for a second client (see _stepper_device)
    from jax._src.lib import xla_client as _xla_client
except ImportError:  # pragma: no cover - a JAX without it: the default device
    _xla_client = None

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
            _SYNC_CPU_CLIENT = _xla_client.make_cpu_client(asynchronous=False)
        except (AttributeError, TypeError):  # a JAX without it: the default device
            _SYNC_CPU_CLIENT = False
    return default if _SYNC_CPU_CLIENT is False else _SYNC_CPU_CLIENT.devices()[0]


class _StepperBase:
    """What every stepper shares: sizes, the initial state, the state's pytree, argument checks."""

    device: Any = None  # the JAX device it runs on (None: not JAX, the C backend)

    def __init__(self, plan: _StepPlan, batch_shape: tuple[int, ...], check: bool = True):
        if not isinstance(check, bool):
            raise TypeError(f"check must be True or False, got {check!r}")
        self.check = check
        self._plan = plan
        self.batch_shape = batch_shape
        self.input_size = plan.input_size
        self.output_size = plan.output_size
        self.state_size = int(plan.init.size)
        self.dtype = plan.dtype
        self.fixed_dt = plan.fixed_dt
        self._default_dt = 1.0 if plan.fixed_dt is None else plan.fixed_dt
        # A NumPy scalar of the stepper's dtype: a Python float compares with it in that dtype
        self._fixed = None if plan.fixed_dt is None else plan.dtype.type(plan.fixed_dt)
        self._x_shape = batch_shape + (plan.input_size,)

    def _refuse_other_dt(self, dt: Any) -> None:
        """Raise our ``ValueError`` unless ``dt`` is the fixed one (in the stepper's dtype, any
        shape that broadcasts to ``batch_shape``): the step was folded for that ``dt`` alone,
        another would be stepped across a stale discretisation."""
        if type(dt) in (float, int) or type(dt) is type(self._fixed):  # the usual call
            if dt == self._fixed:  # (a Python number compares in the stepper's dtype)
                return
        else:
            with contextlib.suppress(ValueError, TypeError):
                a = np.asarray(dt)
                fits = a.shape == self.batch_shape or (
                    np.broadcast_shapes(a.shape, self.batch_shape) == self.batch_shape)
                if a.dtype.kind in "biuf" and fits and (a.astype(self.dtype) == self._fixed).all():
                    return
        raise ValueError(
            f"{type(self).__name__} was built for the fixed dt = {self.fixed_dt:g} "
            f"(stepper(..., dt={self.fixed_dt:g})), got dt = {dt!r}: pass that dt or none, or "
            "build it with dt=None to give the elapsed time at every step (irregular sampling)"
        )

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

    def _bad_input(self, x: Any, dt: Any) -> ValueError:
        """The one-line error for a step refused by the run-time check: the first example whose
        ``dt`` is not positive and finite, or whose ``x`` is not finite."""
        x = np.asarray(x, np.float64).reshape(-1, self.input_size)
        dt = np.broadcast_to(np.asarray(dt, np.float64), self.batch_shape).reshape(-1)
        bad_dt = ~(np.isfinite(dt) & (dt > 0))

        def where(i: int) -> str:
            at = [int(k) for k in np.unravel_index(i, self.batch_shape)]
            return "" if not at else f" at example {at[0] if len(at) == 1 else tuple(at)}"

        if bad_dt.any():
            i = int(np.argmax(bad_dt))
            what = f"dt must be positive and finite, got {dt[i]}"
        else:
            i = int(np.argmax(~np.isfinite(x).all(axis=1)))
            j = int(np.argmax(~np.isfinite(x[i])))
            what = f"x must be finite, got x[{j}] = {x[i, j]}"
        return ValueError(f"{type(self).__name__}: {what}{where(i)}; the state is unchanged "
                          "(stepper(..., check=False) skips this check)")

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
                f"batch_shape={self.batch_shape}, dtype={self.dtype}"
                + ("" if self.fixed_dt is None else f", dt={self.fixed_dt:g}")
                + ("" if self.check else ", check=False") + ")")


class Stepper(_StepperBase):
    """A model compiled for streaming: ``step(state, x, dt) -> (output, new_state)``.

    Built by :func:`stepper`. The state is one flat array of shape ``batch_shape + (state_size,)``;
    the parameters are constants of the compiled executable. Calling it runs the executable
    directly (no tracing, no pytree flattening, no cache look-up) on the calling thread.

    On a CPU the stepper runs on a synchronous XLA:CPU client of its own (``device``), so its
    outputs are arrays on that device: NumPy reads them without a copy, ``jax.numpy`` works on
    them as on any array, and ``jax.device_put(y, jax.devices()[0])`` moves one to the default
    device where an operation mixes it with arrays placed there explicitly.

    With ``check=True`` (the default) the executable also tests that every ``dt`` is positive and
    finite and every ``x`` finite, and the call raises ``ValueError`` naming the value and the
    example instead of returning the step (the caller's state is left as it was). The test is a
    flag the call reads, not an ``eqx.error_if``: a host callback in the executable would take
    the call off JAX's fast dispatch path. On an accelerator reading it waits for the step.

    **Attributes:** `input_size`, `output_size`, `state_size`, `batch_shape`, `dtype`, `device`,
    `check`, `fixed_dt` (``None``: ``dt`` given at every call).
    """

    def __init__(self, plan: _StepPlan, batch_shape: tuple[int, ...], check: bool = True):
        super().__init__(plan, batch_shape, check)
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
            results = (new,) if same[-1] else (out, new)
            if check:
                # A flag the caller reads, not eqx.error_if: a host callback in the executable
                # takes JAX's call off its C++ fast path (measured 7x slower).
                ok = jnp.all(jnp.isfinite(xdt)) & jnp.all(xdt[..., n_in] > 0)
                results += (ok,)
            return results

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
        dt: Float[Array, "*batch"] | float | None = None,
    ) -> tuple[Float[Array, "*batch output"], Float[Array, "*batch state"]]:
        """Advance ``state`` across the elapsed time ``dt`` with the observation ``x`` held.

        **Arguments:**
        - `state`: ``batch_shape + (state_size,)``, from :meth:`initial_state` or a previous step.
        - `x`: ``batch_shape + (input_size,)``, any real array (NumPy, JAX; cast to `dtype`).
        - `dt`: elapsed time since the previous observation, shape ``batch_shape`` or one that
          broadcasts to it (a Python float: the same for every example); must be positive.
          ``None`` (default): ``1``, or the stepper's fixed ``dt``. A stepper built with a
          fixed ``dt`` refuses any other (``ValueError``, with ``check=False`` too).

        **Returns:** ``(output, new_state)``.

        **Raises:** ``ValueError`` (one line) for a ``dt`` that is not positive and finite or an
        ``x`` that is not finite, unless the stepper was built with ``check=False``.
        """
        if dt is None:
            dt = self._default_dt
        elif self.fixed_dt is not None:
            self._refuse_other_dt(dt)
        xdt = np.empty(self._xdt_shape, self.dtype)  # a new one each call: the device may alias it
        try:
            if x.shape != self._x_shape:
                raise ValueError("x has the wrong shape")  # (NumPy would broadcast it)
            xdt[self._x_at] = x
            xdt[self._dt_at] = dt
            results = self._compiled(state, xdt)
        except (AttributeError, TypeError, ValueError) as e:  # ours, NumPy's, the executable's
            results = self._compiled(*self._placed(state, x, dt, e))
        if self.check:
            *results, ok = results
            if not np.asarray(ok):  # (NumPy's view of the flag: the quickest read, not bool())
                raise self._bad_input(x, dt)
        return (results[0], results[0]) if self._output_is_state else tuple(results)

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

    With ``check=True`` (the default) the C code tests ``dt`` (positive and finite) and ``x``
    (finite) before the step and returns an error code without writing anything
    (:func:`to_c`'s ``<name>_step``); the call then raises ``ValueError`` naming the value and
    the example. ``check=False`` calls ``<name>_step_unchecked``.

    **Attributes:** `input_size`, `output_size`, `state_size`, `batch_shape`, `dtype`,
    `source_dir`, `check`, `fixed_dt`.
    """

    # Steppers of one model share one library, hence its bound buffers and its scratch: per
    # library, the (weak reference to the) stepper whose buffers it holds, and a lock.
    _bound: dict[str, Any] = {}
    _locks: dict[str, Any] = {}

    def __init__(self, plan: _StepPlan, batch_shape: tuple[int, ...], check: bool = True):
        super().__init__(plan, batch_shape, check)
        fn, self._output_is_state = _c_step(plan, batch_shape, "liquidjax")
        ct = _cgen.ctype(plan.dtype)
        header, source = _c_files(plan, batch_shape, fn, "liquidjax")
        path = _cbuild.build({"liquidjax.h": header,
                              "liquidjax.c": source + _cbuild.glue("liquidjax", ct, check)},
                             "liquidjax.c")
        self.source_dir = path.parent
        self._lib = str(path)
        lib = ctypes.PyDLL(self._lib)  # keeps the GIL: calls take turns
        self._bind_fn = getattr(lib, _cbuild.BINDER)
        self._bind_fn.restype = None
        self._call = getattr(lib, _cbuild.CALL)
        self._call.restype = ctypes.c_int
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
        dt: Float[Array, "*batch"] | float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Advance ``state`` across ``dt`` with ``x`` held; arguments as
        :meth:`Stepper.__call__`, results new NumPy arrays."""
        if dt is None:
            dt = self._default_dt
        elif self.fixed_dt is not None:
            self._refuse_other_dt(dt)
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
            if self._call():  # the check refused x or dt: nothing was written
                raise self._bad_input(self._x, self._dt)
            new = self._state.copy()
            return (new, new) if self._output_is_state else (self._out.copy(), new)


def stepper(
    model: Any, *, batch_shape: Sequence[int] = (), backend: str = "xla", check: bool = True,
    dt: float | None = None,
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
    - `model`: a cell (``LTC`` with any solver, ``CfC``, ``WiredCfC``, ``MixedMemory``, the
      baselines such as ``GRUODEBayes`` and ``NeuralCDE``), a
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
    - `check`: refuse, at every call, a ``dt`` that is not positive and finite or an ``x``
      that is not finite (``ValueError``, the state not advanced) — what
      :class:`~liquidjax.LiquidRNN` refuses; one NaN would otherwise poison the state for good.
      It costs a test of each value per call (see docs/troubleshooting.md for its measured
      cost); ``check=False`` skips it.
    - `dt`: ``None`` (default): the elapsed time is an argument of every step (irregular
      sampling). A positive number: a **fixed-rate stream**, every step across that ``dt``;
      what depends on the parameters and ``dt`` alone is computed once, now, instead of at
      every step (a Liquid-S4 layer's discretised ``Ā``, ``B̄``, the bulk of its step: see
      docs/liquid_s4.md). Calls may omit ``dt`` or pass that same value (compared in the
      stepper's dtype); any other is refused with a ``ValueError``, never stepped with the
      stale discretisation. The numbers equal those of the per-step stepper given that ``dt``
      to rounding.

    **Returns:** a :class:`Stepper` (``step(state, x, dt)``, ``step.initial_state()``,
    ``step.unflatten_state(state)`` to read the model's own state pytree); for ``backend="c"``
    a ``CStepper`` with the same methods.

    **Example:**
    ```python
    step = liquidjax.export.stepper(LiquidRNN(LTC(8, 32, key=key)))
    state = step.initial_state()
    for x, dt in sensor_stream:
        action, state = step(state, x, dt)

    fixed = liquidjax.export.stepper(model, dt=0.02)   # a 50 Hz stream: dt folded in once
    action, state = fixed(fixed.initial_state(), x)    # dt omitted (or 0.02; any other: error)
    ```
    """
    backends: dict[str, type[_StepperBase]] = {"xla": Stepper, "c": CStepper}
    if backend not in backends:
        raise ValueError(f"backend must be one of {sorted(backends)}, got {backend!r}")
    return backends[backend](_plan(model, dt=dt), _check_batch_shape(batch_shape), check)
