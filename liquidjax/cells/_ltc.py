"""Liquid Time-Constant (LTC) cell: an Equinox vector field integrated by diffrax."""

from __future__ import annotations

from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .._static import StaticArray, replace_fields
from ..solvers import FusedSemiImplicit, Integrator, count_fused_evals
from ..wirings import FullyConnected, Wiring
from ._base import AbstractConductanceCell, AbstractWiredCell
from ._ltc_batched import ltc_step
from ._ltc_kernel import LTCParams, fused_ltc_step, sigmoid
from ._ltc_sparse import (
    SYNAPSE_KERNELS,
    LTCSparseParams,
    SynapseLayout,
    choose_layout,
    sparse_ltc_step,
    sparse_params,
)

Mapping = Literal["affine", "linear", "none"]
_MAPPINGS = ("affine", "linear", "none")
Init = Literal["ncps", "slow"]
Kernel = Literal["auto", "portable"]
_KERNELS = ("auto", "portable")
_INITS = ("ncps", "slow")

# ncps init ranges (uniform).
_INIT_RANGES = {
    "gleak": (0.001, 1.0),
    "vleak": (-0.2, 0.2),
    "cm": (0.4, 0.6),
    "w": (0.001, 1.0),
    "sigma": (3.0, 8.0),
    "mu": (0.3, 0.8),
    "sensory_w": (0.001, 1.0),
    "sensory_sigma": (3.0, 8.0),
    "sensory_mu": (0.3, 0.8),
}

# Parameters that must stay non-negative (through softplus, or a projection after each update).
POSITIVE_PARAMS = ("w", "sensory_w", "cm", "gleak")


def _built_wiring(units_or_wiring: Any, input_size: int) -> Wiring:
    if isinstance(units_or_wiring, Wiring):
        if units_or_wiring.is_built() and units_or_wiring.input_dim != input_size:
            raise ValueError(
                f"the wiring is built for input_dim={units_or_wiring.input_dim}, got "
                f"input_size={input_size}"
            )
        return units_or_wiring.build(input_size)
    if isinstance(units_or_wiring, (int, np.integer)) and not isinstance(units_or_wiring, bool):
        return FullyConnected(int(units_or_wiring)).build(input_size)
    raise TypeError(
        f"units must be an int or a liquidjax.wirings.Wiring, got {type(units_or_wiring).__name__}"
    )


def _integrator(integrator, epsilon, solver, stepsize_controller, ode_unfolds, adjoint,
                max_steps) -> Integrator:
    settings = dict(solver=solver, stepsize_controller=stepsize_controller,
                    ode_unfolds=ode_unfolds, adjoint=adjoint, max_steps=max_steps)
    if integrator is not None:
        given = sorted(k for k, v in settings.items() if v is not None)
        if given or epsilon is not None:
            raise ValueError(
                f"pass either integrator= or the separate settings {given or ['epsilon']}, "
                "not both"
            )
        return integrator
    if epsilon is not None:
        # epsilon belongs to the fused solver: one source of truth.
        if solver is None:
            settings["solver"] = FusedSemiImplicit(float(epsilon))
        elif not isinstance(solver, FusedSemiImplicit):
            raise ValueError(
                f"epsilon={epsilon} is the denominator guard of the fused solver, but the solver "
                f"is {type(solver).__name__}: drop epsilon"
            )
        elif solver.epsilon != float(epsilon):
            raise ValueError(
                f"epsilon={epsilon} disagrees with the solver's FusedSemiImplicit(epsilon="
                f"{solver.epsilon}): give it once, e.g. solver=FusedSemiImplicit({epsilon})"
            )
    return Integrator().replace(**settings)


class LTC(AbstractConductanceCell, AbstractWiredCell):
    r"""Liquid Time-Constant cell (Hasani et al., AAAI 2021), ncps parametrisation.

    Hidden state: the membrane potentials ``v`` of the wiring's ``N`` neurons. With the mapped
    input ``x ← x ⊙ input_w + input_b`` and synapse activations
    ``s_ij(v) = W_ij σ(sigma_ij (v_i − mu_ij))`` on the wiring's synapses ``i → j``,

    $$cm_j \frac{dv_j}{dt} = gleak_j (vleak_j - v_j) + \sum_i s_{ij}(v) (erev_{ij} - v_j)
      + \sum_k s^{sens}_{kj}(x) (erev^{sens}_{kj} - v_j).$$

    The output is the first ``M`` (motor) neurons, mapped by ``output_w``, ``output_b``.

    Integration over each observation interval uses `solver` (a diffrax solver object):
    :class:`~liquidjax.solvers.FusedSemiImplicit` (ncps's scheme; default) with ``ode_unfolds``
    constant steps runs a fused kernel with a hand-written VJP; any other diffrax solver (Euler,
    Tsit5, Kvaerno5, ...) runs through ``diffrax.diffeqsolve`` with ``ode_unfolds`` constant steps,
    or adaptively when `stepsize_controller` is a ``diffrax.PIDController``.

    **Arguments:**
    - `input_size`: number of input features ``I``.
    - `units`: an int (a fully connected wiring) or a :class:`liquidjax.wirings.Wiring`.
    - `input_mapping`, `output_mapping`: ``"affine"`` (default), ``"linear"`` or ``"none"``.
    - `ode_unfolds`: constant steps per observation interval (ncps default 6).
    - `epsilon`: denominator guard of the fused step (ncps default ``1e-8``); shorthand for
      ``solver=FusedSemiImplicit(epsilon)`` — it lives in the solver (``cell.epsilon`` reads it).
    - `implicit_param_constraints`: ``True`` (default, like ncps's ``LTC`` wrapper): ``w``,
      ``sensory_w``, ``cm``, ``gleak`` are softplus of the stored values. ``False``: used as stored;
      keep them non-negative with :func:`liquidjax.nonnegative_projection` in the optax chain.
    - `solver`: a diffrax solver (default ``FusedSemiImplicit(epsilon)``).
    - `stepsize_controller`: default ``diffrax.ConstantStepSize()``.
    - `adjoint`: diffrax adjoint for gradients through ``diffeqsolve`` (default
      ``RecursiveCheckpointAdjoint()``; ``BacksolveAdjoint()`` for O(1) memory).
    - `max_steps`: step budget of an adaptive solve per interval.
    - `init`: ``"ncps"`` (default; ncps's initial ranges, so ``from_ncps`` and the reference
      cases are unchanged) or ``"slow"``: synaptic weights U(0.001, 1) / fan-in, sensory
      synapses centred on standardised inputs (mu ~ U(−0.5, 0.5), sigma ~ U(0.5, 2)), leak 0.1,
      capacitance 8 — time constants of several timespans instead of ≈ 0.06, so that the
      network remembers across observations from the start (with ncps's ranges a neuron keeps
      < 0.1 % of its state per unit timespan under standardised inputs;
      ``benchmarks/ltc_trainability.py``).
    - `integrator`: all five integration settings as one
      :class:`~liquidjax.solvers.Integrator` (instead of the separate arguments).
    - `synapses`: the fused kernel's synapse evaluation: ``"sparse"`` evaluates only the
      wiring's synapses (padded fan-in lists built once from the masks), ``"dense"`` every
      ``N × N`` and ``I × N`` pair times the mask, ``"auto"`` (default) sparse when that does
      less than half the dense work (NCP wirings) and dense otherwise (fully connected). Same
      numbers either way, to rounding.
    - `kernel`: what runs the fused step: ``"auto"`` (default) a batch-aware kernel — under
      ``jax.vmap`` one batched step whose backward sums the parameter gradients over the batch,
      run on CPU by the compiled C++ kernel of :mod:`liquidjax._native` when it is built and by
      pure JAX otherwise — or ``"portable"``: per-example pure-JAX kernels with a hand-written
      VJP and no custom primitive in the graph (what :mod:`liquidjax.export` traces). Same
      numbers either way, to rounding.
    - `key`: PRNG key for the initial parameters (keyword-only).

    **Example:**
    ```python
    cell = LTC(3, 8, key=jax.random.key(0))
    v1 = cell.advance(cell.init_state(), jnp.ones(3), 0.0, 1.0)
    ```
    """

    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    gleak: Float[Array, " N"]
    vleak: Float[Array, " N"]
    cm: Float[Array, " N"]
    w: Float[Array, "N N"]
    sigma: Float[Array, "N N"]
    mu: Float[Array, "N N"]
    erev: Float[Array, "N N"]
    sensory_w: Float[Array, "I N"]
    sensory_sigma: Float[Array, "I N"]
    sensory_mu: Float[Array, "I N"]
    sensory_erev: Float[Array, "I N"]
    mask: StaticArray = eqx.field(static=True)  # bool (N, N): synapse i -> j exists
    sensory_mask: StaticArray = eqx.field(static=True)  # bool (I, N)
    wiring: Wiring = eqx.field(static=True)  # the built wiring (kind, arguments, seed, inputs)
    input_w: Float[Array, " I"] | None
    input_b: Float[Array, " I"] | None
    output_w: Float[Array, " M"] | None
    output_b: Float[Array, " M"] | None
    input_mapping: str = eqx.field(static=True)
    output_mapping: str = eqx.field(static=True)
    implicit_param_constraints: bool = eqx.field(static=True)
    integrator: Integrator
    synapses: str = eqx.field(static=True)
    kernel: str = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        units: Any,
        *,
        input_mapping: Mapping = "affine",
        output_mapping: Mapping = "affine",
        ode_unfolds: int | None = None,
        epsilon: float | None = None,
        implicit_param_constraints: bool = True,
        solver: diffrax.AbstractSolver | None = None,
        stepsize_controller: diffrax.AbstractStepSizeController | None = None,
        adjoint: diffrax.AbstractAdjoint | None = None,
        max_steps: int | None = None,
        integrator: Integrator | None = None,
        synapses: str = "auto",
        kernel: Kernel = "auto",
        init: Init = "ncps",
        dtype: Any = jnp.float32,
        key: PRNGKeyArray,
    ):
        init_scheme = init
        if not isinstance(input_size, (int, np.integer)) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        for name, m in (("input_mapping", input_mapping), ("output_mapping", output_mapping)):
            if m not in _MAPPINGS:
                raise ValueError(f"{name} must be one of {_MAPPINGS}, got {m!r}")
        self.integrator = _integrator(integrator, epsilon, solver, stepsize_controller,
                                      ode_unfolds, adjoint, max_steps)
        wiring = _built_wiring(units, int(input_size))
        n, m, i = wiring.units, wiring.output_dim, int(input_size)
        self.input_size, self.state_size, self.output_size = i, n, m

        keys = dict(zip(_INIT_RANGES, jax.random.split(key, len(_INIT_RANGES))))
        shapes = {"gleak": (n,), "vleak": (n,), "cm": (n,), "w": (n, n), "sigma": (n, n),
                  "mu": (n, n), "sensory_w": (i, n), "sensory_sigma": (i, n), "sensory_mu": (i, n)}

        def init(name):
            lo, hi = _INIT_RANGES[name]
            return jax.random.uniform(keys[name], shapes[name], dtype, lo, hi)

        self.gleak, self.vleak, self.cm = init("gleak"), init("vleak"), init("cm")
        self.w, self.sigma, self.mu = init("w"), init("sigma"), init("mu")
        self.sensory_w, self.sensory_sigma = init("sensory_w"), init("sensory_sigma")
        self.sensory_mu = init("sensory_mu")
        adj = np.asarray(wiring.adjacency_matrix)
        sadj = np.asarray(wiring.sensory_adjacency_matrix)
        if init_scheme == "slow":
            self._init_slow(adj, sadj, keys, implicit_param_constraints)
        elif init_scheme != "ncps":
            raise ValueError(f"init must be one of {_INITS}, got {init_scheme!r}")
        self.erev = jnp.asarray(adj, dtype)
        self.sensory_erev = jnp.asarray(sadj, dtype)
        self.mask = StaticArray(adj != 0)
        self.sensory_mask = StaticArray(sadj != 0)
        affine_in, affine_out = input_mapping == "affine", output_mapping == "affine"
        self.input_w = None if input_mapping == "none" else jnp.ones((i,), dtype)
        self.input_b = jnp.zeros((i,), dtype) if affine_in else None
        self.output_w = None if output_mapping == "none" else jnp.ones((m,), dtype)
        self.output_b = jnp.zeros((m,), dtype) if affine_out else None
        self.input_mapping, self.output_mapping = input_mapping, output_mapping
        self.implicit_param_constraints = bool(implicit_param_constraints)
        self.wiring = wiring
        self.synapses = synapses
        self.kernel = kernel

    def __check_init__(self):
        if self.synapses not in SYNAPSE_KERNELS:
            raise ValueError(f"synapses must be one of {SYNAPSE_KERNELS}, got {self.synapses!r}")
        if self.kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}")
        n, i = self.state_size, self.input_size
        expected = {"gleak": (n,), "vleak": (n,), "cm": (n,), "w": (n, n), "sigma": (n, n),
                    "mu": (n, n), "erev": (n, n), "mask": (n, n), "sensory_w": (i, n),
                    "sensory_sigma": (i, n), "sensory_mu": (i, n), "sensory_erev": (i, n),
                    "sensory_mask": (i, n)}
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"LTC.{name} has shape {got}, expected {shape}")
        if not (0 < self.output_size <= n):
            raise ValueError(f"output_size must be in [1, {n}], got {self.output_size}")

    def _init_slow(self, adj, sadj, keys, implicit: bool) -> None:
        # Every neuron's total conductance O(1) (weights / fan-in), sensory synapses centred on
        # standardised inputs, small leak, large capacitance: time constants of several
        # timespans instead of ~0.06 (benchmarks/ltc_trainability.py).
        dtype = self.gleak.dtype
        n, i = self.state_size, self.input_size

        def stored(value):  # the raw parameter whose effective (positive) value is `value`
            return jnp.log(jnp.expm1(value)) if implicit else value

        def per_fan_in(raw, matrix):
            fan_in = np.maximum(np.count_nonzero(matrix, axis=0), 1).astype(np.float64)
            return raw / jnp.asarray(fan_in, dtype)[None, :]

        self.w = stored(per_fan_in(self.w, adj))
        self.sensory_w = stored(per_fan_in(self.sensory_w, sadj))
        self.sensory_mu = jax.random.uniform(keys["sensory_mu"], (i, n), dtype, -0.5, 0.5)
        self.sensory_sigma = jax.random.uniform(keys["sensory_sigma"], (i, n), dtype, 0.5, 2.0)
        self.gleak = stored(jnp.full((n,), 0.1, dtype))
        self.cm = stored(jnp.full((n,), 8.0, dtype))

    @property
    def epsilon(self) -> float | None:
        """The fused solver's denominator guard (what the dynamics use); ``None`` with another
        solver."""
        solver = self.integrator.solver
        return solver.epsilon if isinstance(solver, FusedSemiImplicit) else None

    @property
    def uses_fused_kernel(self) -> bool:
        """Whether :meth:`advance` takes the fused fast path (fused solver, constant steps)."""
        return self.integrator.uses_fused_step

    def with_kernel(self, kernel: Kernel) -> LTC:
        """The same cell with its fused step run by the ``"auto"`` or the ``"portable"`` kernel
        (see the class arguments)."""
        return replace_fields(self, kernel=kernel)

    def portable(self) -> LTC:
        """The same cell on the ``"portable"`` kernel: per-example pure JAX, no custom primitive
        or custom call in the traced graph — what ``jax.export`` can serialise and ``jax2onnx``
        can convert. Same numbers (to rounding)."""
        return self.with_kernel("portable")

    def with_synapses(self, synapses: str) -> LTC:
        """The same cell with the fused kernel's synapse evaluation set to ``"auto"``,
        ``"dense"`` or ``"sparse"`` (see the class arguments)."""
        return replace_fields(self, synapses=synapses)

    @property
    def synapse_layout(self) -> SynapseLayout | None:
        """The sparse layout the fused kernel uses, or ``None`` for the dense kernel."""
        return choose_layout(self.mask, self.sensory_mask, self.synapses)

    @property
    def synapse_kernel(self) -> str:
        """``"sparse"`` or ``"dense"``: the synapse evaluation the fused kernel runs."""
        return "dense" if self.synapse_layout is None else "sparse"

    # ----------------------------------------------------------------------------- parameters
    def _positive(self, x):
        return jax.nn.softplus(x) if self.implicit_param_constraints else x

    def effective_params(self) -> LTCParams:
        """The parameters the dynamics use — positivity applied, non-synapses zeroed — with the
        synapse matrices transposed to the kernel's ``[post, pre]`` layout."""
        return LTCParams(
            w=jnp.where(self.mask.array, self._positive(self.w), 0).T,
            sigma=self.sigma.T,
            mu=self.mu.T,
            erev=self.erev.T,
            sensory_w=jnp.where(self.sensory_mask.array, self._positive(self.sensory_w), 0).T,
            sensory_sigma=self.sensory_sigma.T,
            sensory_mu=self.sensory_mu.T,
            sensory_erev=self.sensory_erev.T,
            gleak=self._positive(self.gleak),
            vleak=self.vleak,
            cm=self._positive(self.cm),
        )

    def map_input(self, x: Float[Array, " I"]) -> Float[Array, " I"]:
        """The affine/linear input map ``x ⊙ input_w + input_b``."""
        if self.input_w is not None:
            x = x * self.input_w
        if self.input_b is not None:
            x = x + self.input_b
        return x

    # ------------------------------------------------------------------------------ contract
    def init_state(self) -> Float[Array, " N"]:
        return jnp.zeros((self.state_size,), self.gleak.dtype)

    def output(self, state: Float[Array, " N"]) -> Float[Array, " M"]:
        out = state[: self.output_size]
        if self.output_w is not None:
            out = out * self.output_w
        if self.output_b is not None:
            out = out + self.output_b
        return out

    def conductances(self, t, y, x):
        """``(num, den, cm)`` of ``cm dv/dt = num − den v``; ``x`` is the raw observation (an
        array) or a ``diffrax.AbstractPath`` evaluated at ``t``."""
        x = self.input_at(x, t)
        p = self.effective_params()  # [post, pre] layout
        x = self.map_input(x)
        s_sens = p.sensory_w * sigmoid(p.sensory_sigma * (x[None, :] - p.sensory_mu))
        s = p.w * sigmoid(p.sigma * (y[None, :] - p.mu))
        num = p.gleak * p.vleak + jnp.sum(s_sens * p.sensory_erev, 1) + jnp.sum(s * p.erev, 1)
        den = p.gleak + jnp.sum(s_sens, 1) + jnp.sum(s, 1)
        return num, den, p.cm

    # ---------------------------------------------------------------------- the fused kernels
    def _kernel_params(self) -> LTCParams | LTCSparseParams:
        """The parameters in the form the fused kernel reads (the sparse portable kernel's on
        its slots): computed once per sequence by :meth:`advance_sequence`."""
        p, layout = self.effective_params(), self.synapse_layout
        if self.kernel == "portable" and layout is not None:
            return sparse_params(p, layout)
        return p

    def _fused_step(self, q, x, y0, dt, unfolds: int, epsilon: float):
        """``unfolds`` fused steps by the kernel of :attr:`kernel` and :attr:`synapse_layout`
        from the kernel parameters `q` (:meth:`_kernel_params`) and the mapped input `x`."""
        layout = self.synapse_layout
        if self.kernel == "auto":
            return ltc_step(q, x, y0, dt, layout, unfolds, epsilon)
        if layout is not None:
            return sparse_ltc_step(q, x, y0, dt, layout, unfolds, epsilon)
        return fused_ltc_step(q, x, y0, dt, unfolds, epsilon)

    def fused_unfolds(self, y0, x, dt, unfolds, epsilon):
        """:meth:`AbstractConductanceCell.fused_unfolds` by the LTC's kernels (a hand-written
        VJP; batch-aware and compiled on CPU with ``kernel="auto"``; sparse synapses where
        :attr:`synapse_layout` says): the same numbers as the generic loop over
        :meth:`conductances`, to rounding (tests/test_ltc.py)."""
        return self._fused_step(self._kernel_params(), self.map_input(x), y0, dt, unfolds,
                                epsilon)

    def advance_sequence(self, state, x, timespans, mask=None, *, last=False, key=None):
        """:meth:`AbstractCell.advance_sequence`; on the fused solver a scan of the fused
        kernel with what does not depend on the state computed once for the whole sequence —
        the effective parameters (positivity, masks, the kernel's layout) and the input map of
        every observation — the same numbers as the scan of :meth:`advance`. Other solvers:
        the scan of :meth:`advance`."""
        if not self.integrator.uses_fused_step:
            return super().advance_sequence(state, x, timespans, mask, last=last, key=key)
        del key
        n, dtype = x.shape[0], state.dtype
        dts = jnp.ones((n,), dtype) if timespans is None else timespans.astype(dtype)
        unfolds, epsilon = self.integrator.ode_unfolds, self.integrator.solver.epsilon
        q, xs = self._kernel_params(), self.map_input(x)

        def step(v, inp):
            xk, dt, mk = inp
            count_fused_evals(unfolds, v)
            v_new = self._fused_step(q, xk, v, dt, unfolds, epsilon)
            if mk is not None:
                v_new = jnp.where(mk, v_new, v)
            return v_new, (None if last else v_new)

        v, vs = jax.lax.scan(step, state, (xs, dts, mask))
        return v if last else vs


def nonnegative_mask(model: Any) -> Any:
    """A pytree of bools like ``model``: ``True`` on the LTC parameters that must stay ≥ 0 when
    ``implicit_param_constraints=False`` (``w``, ``sensory_w``, ``cm``, ``gleak``)."""
    def is_ltc(x):
        return isinstance(x, LTC)

    def mark(sub):
        if not is_ltc(sub):
            return jax.tree_util.tree_map(lambda _: False, sub)
        flags = jax.tree_util.tree_map(lambda _: False, sub)
        if not sub.implicit_param_constraints:
            for name in POSITIVE_PARAMS:
                flags = eqx.tree_at(lambda c, n=name: getattr(c, n), flags, True)
        return flags

    return jax.tree_util.tree_map(mark, model, is_leaf=is_ltc)


def project_nonnegative(model: Any) -> Any:
    """Clip the constrained LTC parameters of ``model`` at zero (ncps
    ``apply_weight_constraints``)."""
    flags = nonnegative_mask(model)
    return jax.tree_util.tree_map(
        lambda p, f: jnp.maximum(p, 0) if f else p, model, flags,
        is_leaf=lambda z: z is None,
    )


def nonnegative_projection():
    """An optax transformation that keeps the constrained LTC parameters non-negative.

    For cells built with ``implicit_param_constraints=False`` (ncps's bare-cell convention):
    put it **last** in the chain; it turns each update ``u`` of ``w``, ``sensory_w``, ``cm``,
    ``gleak`` into ``max(u, −p)``, so ``p + u = max(p + u, 0)`` — ncps's ReLU clip after the
    optimiser step, as a pure transformation. Other parameters pass through unchanged.

    ```python
    opt = optax.chain(optax.adam(1e-3), nonnegative_projection())
    updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
    ```
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                "nonnegative_projection needs the current parameters: "
                "call opt.update(updates, state, params)"
            )
        flags = nonnegative_mask(params)
        updates = jax.tree_util.tree_map(
            lambda u, p, f: jnp.maximum(u, -p) if (f and u is not None) else u,
            updates, params, flags, is_leaf=lambda z: z is None,
        )
        return updates, state

    return optax.GradientTransformation(init, update)
