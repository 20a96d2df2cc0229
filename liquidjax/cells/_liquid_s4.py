r"""Liquid-S4: a diagonal structured state-space layer with liquid (input-correlation) terms.

Hasani, Lechner, Wang, Chahine, Amini, Rus, "Liquid Structural State-Space Models", ICLR 2023
(arXiv:2209.12951), on the diagonal S4D parameterisation of Gu, Gupta, Goel, Ré, "On the
Parameterization and Initialization of Diagonal State Space Models", NeurIPS 2022.

Each of the ``H`` channels is a single-input single-output SSM with a diagonal complex state
matrix of ``N/2`` conjugate pairs, discretised with the learned step :math:`\Delta`
(zero-order hold or bilinear). Liquid-S4 linearises the LTC: its transition depends on the input,
``x_k = (Ā + B̄ u_k 1ᵀ) x_{k-1} + B̄ u_k``; unrolled, the output gains terms over products of
``p`` inputs with the coefficient ``B̄ sᵖ⁻¹``, ``s = 1ᵀB̄`` (the rank-one matrix ``B̄1ᵀ`` to the
``p``-th power). Truncated at order ``P`` (:attr:`LiquidS4.liquid_order`), with the products of
the ``p`` most recent inputs ``π⁽ᵖ⁾_k = u_k u_{k-1} ⋯ u_{k-p+1}`` and

    ℓ_k = Σ_{p=2..P} sᵖ⁻¹ π⁽ᵖ⁾_k,

the two kernels of the reference implementation are

* ``"kb"`` (the liquid kernel ``K̄ sᵖ⁻¹``, with ``K̄_j = C Āʲ B̄``)::

      x_k = Ā x_{k-1} + B̄ (u_k + ℓ_k),   y_k = 2 Re(C x_k) + D u_k
      y   = K̄ * (u + ℓ) + D u                                    (convolution mode)

* ``"pb"`` (polynomials of ``B̄`` only, the reference's default and faster choice)::

      x_k = Ā x_{k-1} + B̄ u_k,   y_k = 2 Re(C x_k) + D u_k + K̄_0 ℓ_k
      y   = K̄ * u + D u + K̄_0 ℓ                                  (convolution mode)

``liquid_order=0`` is plain S4D. Convolution mode (an FFT, ``O(T log T)``, parallel over time)
applies when every step is the learned one (``timespans=None``); the recurrent mode
(:meth:`LiquidS4.advance`) takes any elapsed time per step and scales the learned step by it.
See ``docs/liquid_s4.md``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._base import AbstractCell

__all__ = ["LiquidS4", "LiquidS4State"]

LiquidKernel = Literal["pb", "kb"]
Discretisation = Literal["zoh", "bilinear"]
S4Init = Literal["lin", "inv"]
_KERNELS: tuple[str, ...] = get_args(LiquidKernel)
_DISCRETISATIONS: tuple[str, ...] = get_args(Discretisation)
_INITS: tuple[str, ...] = get_args(S4Init)


class LiquidS4State(NamedTuple):
    """The recurrent state of a :class:`LiquidS4` layer (real arrays only, so that it flattens
    into the exporters' state vector)."""

    re: Array  # (H, N/2) real part of the SSM state x_k
    im: Array  # (H, N/2) imaginary part
    history: Array | None  # (P-1, H): u_k, u_{k-1}, ..., u_{k-P+2}; None without liquid terms
    y: Array  # (H,) the output y_k (it depends on the current input: kept, not recomputed)


class LiquidS4(AbstractCell):
    r"""A Liquid-S4 layer on ``H`` channels (``input_size == output_size == H``), one example.

    Per channel: ``A = -exp(a_log) + i a_im`` (``N/2`` conjugate pairs), ``B``, ``C`` complex,
    ``D`` real, step ``Δ = exp(log_dt)``. With elapsed time ``τ`` the step is ``Δτ``:

    * zero-order hold: ``Ā = exp(ΔτA)``, ``B̄ = (Ā - 1) A⁻¹ B``;
    * bilinear: ``Ā = (1 + ΔτA/2)/(1 - ΔτA/2)``, ``B̄ = Δτ B/(1 - ΔτA/2)``.

    The liquid terms of order 2..``liquid_order`` follow the module docstring (``"pb"`` or
    ``"kb"`` kernel).

    **Recurrent mode** (:meth:`advance`): one observation per call, with its own elapsed time
    ``t1 - t0`` in units of the learned step (continuous time: ``1`` is the learned step ``Δ``,
    ``0.5`` half of it; the sequence layer's default timespan is 1). **Convolution mode**
    (:meth:`advance_sequence` with ``timespans=None``): all steps by one FFT convolution, the
    same numbers.

    **Arguments:**
    - `hidden_size`: ``H``, the channels (input and output size).
    - `ssm_size`: ``N``, the state size per channel (even: ``N/2`` conjugate pairs; the cell's
      ``state_size``; the state itself is a :class:`LiquidS4State` pytree).
    - `liquid_order`: ``0`` (plain S4D) or ``P ≥ 2`` (products of up to ``P`` inputs).
    - `liquid_kernel`: ``"pb"`` (default) or ``"kb"``.
    - `discretisation`: ``"zoh"`` (default) or ``"bilinear"``.
    - `init`: ``"lin"`` (S4D-Lin, ``A_n = -1/2 + iπn``) or ``"inv"`` (S4D-Inv,
      ``A_n = -1/2 + i N/π (N/(2n+1) - 1)``).
    - `dt_min`, `dt_max`: ``Δ`` is drawn log-uniform in ``[dt_min, dt_max]`` per channel.
    - `dtype`: of the parameters (``float32`` default; ``float64`` needs ``jax_enable_x64``).
    - `key`: PRNG key.

    **Example:**
    ```python
    layer = LiquidS4(4, 8, liquid_order=2, key=jax.random.key(0))
    states = layer.advance_sequence(layer.init_state(), u, None)   # u: (T, 4), conv mode
    ys = states.y                                                  # (T, 4)
    ```
    """

    a_log: Float[Array, "hidden half"]
    a_im: Float[Array, "hidden half"]
    b_re: Float[Array, "hidden half"]
    b_im: Float[Array, "hidden half"]
    c_re: Float[Array, "hidden half"]
    c_im: Float[Array, "hidden half"]
    d: Float[Array, " hidden"]
    log_dt: Float[Array, " hidden"]
    liquid_order: int = eqx.field(static=True)
    liquid_kernel: str = eqx.field(static=True)
    discretisation: str = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    # The SSM's own parameters (S4 trains them at a small rate without weight decay).
    ssm_fields: ClassVar[tuple[str, ...]] = ("a_log", "a_im", "b_re", "b_im", "log_dt")

    def __init__(
        self,
        hidden_size: int,
        ssm_size: int = 64,
        *,
        liquid_order: int = 2,
        liquid_kernel: str = "pb",
        discretisation: str = "zoh",
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dtype=None,
        key: PRNGKeyArray,
    ):
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"LiquidS4 hidden_size must be a positive int, got {hidden_size!r}")
        if not isinstance(ssm_size, int) or ssm_size < 2 or ssm_size % 2:
            raise ValueError(
                f"LiquidS4 ssm_size must be an even int >= 2 (N/2 conjugate pairs), got "
                f"{ssm_size!r}"
            )
        if init not in _INITS:
            raise ValueError(f"LiquidS4 init must be one of {_INITS}, got {init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"LiquidS4 needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        dtype = jnp.float32 if dtype is None else dtype
        h, half = hidden_size, ssm_size // 2
        kc, kd, kt = jax.random.split(key, 3)
        n = jnp.arange(half, dtype=dtype)
        if init == "lin":
            a_im = math.pi * n
        else:
            a_im = ssm_size / math.pi * (ssm_size / (2 * n + 1) - 1)
        self.a_log = jnp.full((h, half), math.log(0.5), dtype)
        self.a_im = jnp.broadcast_to(a_im, (h, half)).astype(dtype)
        self.b_re = jnp.ones((h, half), dtype)
        self.b_im = jnp.zeros((h, half), dtype)
        c = jax.random.normal(kc, (2, h, half), dtype) * math.sqrt(0.5)
        self.c_re, self.c_im = c[0], c[1]
        self.d = jax.random.normal(kd, (h,), dtype)
        lo, hi = math.log(dt_min), math.log(dt_max)
        self.log_dt = jax.random.uniform(kt, (h,), dtype, lo, hi)
        self.liquid_order = liquid_order
        self.liquid_kernel = liquid_kernel
        self.discretisation = discretisation
        self.input_size = self.output_size = h
        self.state_size = ssm_size

    def __check_init__(self):
        order = self.liquid_order
        if not isinstance(order, int) or isinstance(order, bool) or order < 0 or order == 1:
            raise ValueError(
                f"LiquidS4 liquid_order must be 0 (plain S4D) or an int >= 2 (products of up to "
                f"that many inputs), got {order!r}"
            )
        if self.liquid_kernel not in _KERNELS:
            raise ValueError(
                f"LiquidS4 liquid_kernel must be one of {_KERNELS}, got {self.liquid_kernel!r}"
            )
        if self.discretisation not in _DISCRETISATIONS:
            raise ValueError(
                f"LiquidS4 discretisation must be one of {_DISCRETISATIONS}, got "
                f"{self.discretisation!r}"
            )

    # --------------------------------------------------------------------------- the SSM
    def _discrete(self, tau):
        """``(Ā, B̄, log Ā)`` (complex, ``(H, N/2)``) for the elapsed time ``tau`` (a scalar, in
        units of the learned step)."""
        a = -jnp.exp(self.a_log) + 1j * self.a_im
        b = self.b_re + 1j * self.b_im
        da = (jnp.exp(self.log_dt) * tau)[:, None] * a
        if self.discretisation == "zoh":
            abar = jnp.exp(da)
            return abar, (abar - 1) / a * b, da
        abar = (1 + da / 2) / (1 - da / 2)
        return abar, (jnp.exp(self.log_dt) * tau)[:, None] * b / (1 - da / 2), jnp.log(abar)

    def _liquid(self, s, current, previous):
        """``ℓ = Σ_{p=2..P} sᵖ⁻¹ u_k ⋯ u_{k-p+1}`` with ``s = 1ᵀB̄ = 2 Re Σ_n B̄_n`` (``(H,)``);
        `current`: ``u_k`` (``(..., H)``), `previous`: ``u_{k-1}, ..., u_{k-P+1}``
        (``(P-1, ..., H)``)."""
        prod, power, total = current, jnp.ones_like(s), jnp.zeros_like(current)
        for p in range(2, self.liquid_order + 1):  # static, small
            prod = prod * previous[p - 2]
            power = power * s
            total = total + power * prod
        return total

    def _discrete_real(self, tau):
        """``Ā``, ``B̄`` of :meth:`_discrete` as (real, imaginary) pairs, in real arithmetic only
        (the recurrent step then translates to C and ONNX, which have no complex numbers)."""
        ar, ai = -jnp.exp(self.a_log), self.a_im
        b = (self.b_re, self.b_im)
        step = (jnp.exp(self.log_dt) * tau)[:, None]
        dr, di = step * ar, step * ai
        if self.discretisation == "zoh":
            mag = jnp.exp(dr)
            abar = (mag * jnp.cos(di), mag * jnp.sin(di))
            # (Ā - 1)·(B/A): B/A depends on the parameters alone, so the exporters fold it
            return abar, _cmul((abar[0] - 1, abar[1]), _cdiv(b, (ar, ai)))
        den = (1 - dr / 2, -di / 2)
        abar = _cdiv((1 + dr / 2, di / 2), den)
        return abar, _cdiv((step * b[0], step * b[1]), den)  # Δτ B / (1 - ΔτA/2)

    def _c(self):
        return self.c_re + 1j * self.c_im

    # --------------------------------------------------------------------------- the contract
    def init_state(self) -> LiquidS4State:
        """Zero SSM state, zero input history, zero output (the parameters' dtype)."""
        h, half, dtype = self.output_size, self.state_size // 2, self.d.dtype
        p = self.liquid_order
        return LiquidS4State(
            re=jnp.zeros((h, half), dtype),
            im=jnp.zeros((h, half), dtype),
            history=None if p == 0 else jnp.zeros((p - 1, h), dtype),
            y=jnp.zeros((h,), dtype),
        )

    def advance(self, state, x, t0, t1, *, key=None) -> LiquidS4State:
        """Recurrent mode: the state after the observation ``x`` (``(H,)``), the learned step
        scaled by the elapsed time ``t1 - t0`` (``1`` = the learned step). `key` is unused."""
        del key
        if x.shape != (self.input_size,):
            raise ValueError(f"LiquidS4 expected x of shape ({self.input_size},), got {x.shape}")
        dtype = self.d.dtype
        x = x.astype(dtype)
        tau = jnp.asarray(t1, dtype) - jnp.asarray(t0, dtype)
        (ar, ai), (br, bi) = self._discrete_real(tau)
        if self.liquid_order:
            ell = self._liquid(2 * jnp.sum(br, axis=-1), x, state.history)
            history = jnp.concatenate([x[None], state.history[:-1]], axis=0)
        else:
            ell, history = None, None
        drive = (x if ell is None or self.liquid_kernel == "pb" else x + ell)[:, None]
        xr = ar * state.re - ai * state.im + br * drive
        xi = ar * state.im + ai * state.re + bi * drive
        y = 2 * jnp.sum(self.c_re * xr - self.c_im * xi, axis=-1) + self.d * x
        if ell is not None and self.liquid_kernel == "pb":
            y = y + 2 * jnp.sum(self.c_re * br - self.c_im * bi, axis=-1) * ell
        return LiquidS4State(xr, xi, history, y)

    def output(self, state: LiquidS4State) -> Float[Array, " hidden"]:
        """``y_k = 2 Re(C x_k) + D u_k`` (plus the ``"pb"`` liquid term), kept in the state."""
        return state.y

    def advance_sequence(
        self,
        state: LiquidS4State,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None,
        mask: Bool[Array, " time"] | None = None,
        *,
        last: bool = False,
        key: PRNGKeyArray | None = None,
    ) -> LiquidS4State:
        """The states after every observation (leading time axis), or with `last` the final
        state. Unit steps (``timespans=None``, no `mask`): convolution mode, the outputs by one
        FFT convolution, the final state by one sum; the per-step SSM states (only when asked
        for, ``last=False``) by a parallel prefix scan. Otherwise the recurrent scan
        (:func:`~liquidjax.cells._base.scan_advance`), which these numbers equal.
        `key` is unused (no dropout in the layer)."""
        del key
        if timespans is not None or mask is not None:
            return super().advance_sequence(state, x, timespans, mask, last=last)
        ys, final, every = self.convolve(state, x, every_state=not last)
        return final if last else every

    def convolve(self, state: LiquidS4State, u: Float[Array, "time input"], *,
                 every_state: bool = False):
        r"""Convolution mode over unit steps.

        **Returns:** ``(ys, final_state, states)``: the outputs ``(T, H)``, the state after the
        last step, and (with `every_state`, else ``None``) the states after every step."""
        if u.ndim != 2 or u.shape[1] != self.input_size:
            raise ValueError(
                f"LiquidS4 expected inputs of shape (time, {self.input_size}), got {u.shape}"
            )
        dtype = self.d.dtype
        u = u.astype(dtype)
        n = u.shape[0]
        abar, bbar, log_abar = self._discrete(jnp.ones((), dtype))
        c = self._c()
        x0 = state.re + 1j * state.im
        p = self.liquid_order
        if p:
            # ext[k + P - 1] = u_k; the history in front (oldest first)
            ext = jnp.concatenate([state.history[::-1], u], axis=0)
            previous = jnp.stack([ext[p - 1 - i: p - 1 - i + n] for i in range(1, p)])
            ell = self._liquid(2 * jnp.sum(bbar.real, axis=-1), u, previous)
        else:
            ext, ell = None, None
        drive = u if ell is None or self.liquid_kernel == "pb" else u + ell
        # Vandermonde powers Ā^j, j = 0..T-1: (H, N/2, T)
        powers = jnp.exp(log_abar[..., None] * jnp.arange(n, dtype=dtype))
        kernel = 2 * jnp.einsum("hn,hnj->hj", c * bbar, powers).real  # (H, T)
        m = 2 * n
        y = jnp.fft.irfft(jnp.fft.rfft(kernel, m) * jnp.fft.rfft(drive.T, m), m)[:, :n].T
        y = y + 2 * jnp.einsum("hn,hnk->kh", c * x0 * abar, powers).real + self.d * u
        if ell is not None and self.liquid_kernel == "pb":
            y = y + kernel[:, 0] * ell
        y = y.astype(dtype)
        # x_{T-1} = Ā^T x0 + Σ_j Ā^{T-1-j} B̄ drive_j
        xf = abar * powers[..., -1] * x0 + bbar * jnp.einsum("hnj,jh->hn", powers[..., ::-1],
                                                             drive)
        history = None if not p else ext[n:][::-1]
        final = LiquidS4State(xf.real.astype(dtype), xf.imag.astype(dtype), history, y[-1])
        if not every_state:
            return y, final, None
        elems_a = jnp.broadcast_to(abar, (n,) + abar.shape)
        elems_b = bbar * drive[:, :, None]
        elems_b = elems_b.at[0].add(abar * x0)

        def combine(first, second):
            a1, b1 = first
            a2, b2 = second
            return a2 * a1, a2 * b1 + b2

        _, xs = jax.lax.associative_scan(combine, (elems_a, elems_b))
        histories = None
        if p:
            histories = jnp.stack([ext[p - 1 - i: p - 1 - i + n] for i in range(p - 1)], axis=1)
        # The last step is the final state already computed: a caller that reads only it (the
        # sequence layer's final state) lets XLA drop the prefix scan (a slice of a concatenate).
        every = LiquidS4State(
            jnp.concatenate([xs.real[:-1].astype(dtype), final.re[None]]),
            jnp.concatenate([xs.imag[:-1].astype(dtype), final.im[None]]),
            histories, y)
        return y, final, every


def _cmul(a, b):
    """The complex product of (real, imaginary) pairs."""
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def _cdiv(a, b):
    """The complex quotient of (real, imaginary) pairs."""
    norm = b[0] * b[0] + b[1] * b[1]
    return (a[0] * b[0] + a[1] * b[1]) / norm, (a[1] * b[0] - a[0] * b[1]) / norm
