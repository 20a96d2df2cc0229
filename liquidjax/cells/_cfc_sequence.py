"""A CfC run over a whole held-input sequence at once: the fast path of ``LiquidRNN``.

The ``advance_sequence`` of :class:`~liquidjax.cells.CfC`, of
:class:`~liquidjax.cells.MixedMemory` over such a CfC (ncps ``mixed_memory=True``: an LSTM step
on the input, whose new ``h`` the CfC advances from; through ``CfC.memory_sequence``) and of
:class:`~liquidjax.cells.WiredCfC` call it where it applies — one backbone layer, ``"default"``
or ``"no_gate"`` mode, every operand in the weights' dtype — and fall back to
:func:`~liquidjax.cells.scan_advance`, the generic ``lax.scan`` over ``cell.advance``, otherwise
(``LiquidRNN(remat=True)`` always takes the scan). The scan stays the reference
(``tests/test_cfc_sequence.py`` holds the two equal, values and gradients, float32 and float64).

The same numbers, arranged for the hardware:

* for training, the input part of the backbone, ``W_x x_t + b`` for all ``t`` (with mixed
  memory also the LSTM's ``W_x x_t + b_x``), is one matrix product over time × batch before the
  time loop (its weight gradient one after it); a forward pass without gradient keeps it inside
  the loop, which is cheaper there;
* the four heads (``ff1``, ``ff2``, ``time_a``, ``time_b``) are one stacked ``(4H, U)`` product
  (three, ``(3H, U)``, when every ``Δt`` is 1: ``timespans=None``); the LSTM's four gates one
  ``(4H, H)`` product;
* a hand-written VJP for the recurrence: the backward scan carries only ``dh`` (and ``dc``) and
  does two (three) small matrix-vector products per step, its elementwise factors computed
  for all steps before it; every weight gradient is one product over the whole sequence
  afterwards (over batch × time once ``vmap`` adds the batch), instead of one small product
  per step and weight;
* without ``return_sequences`` only the last state leaves the loop;
* on CPU (a CfC, with or without mixed memory) the forward loop and the whole backward but the
  input's cotangent are the compiled kernel of :mod:`liquidjax._native` (``cfc_cpu.cc``; in the
  kernel the input part stays inside the loop and every weight gradient is summed step by step),
  the JAX code below their definition everywhere else (``jax.lax.platform_dependent``) and for
  higher-order derivatives.

A wired CfC gets only the stacked heads (one product per wiring layer; three heads with unit
steps), in a plain scan that JAX differentiates: hoisting its first layer's input part out of
the loop made its forward slower (measured; BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .. import _native
from .._batching import batch_aware_primitive
from ._activations import activation_name
from ._lstm import lstm_gates

FAST_MODES = ("default", "no_gate")


def held_sequence(
    cfc,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None,
    state: Float[Array, " units"] | tuple[Float[Array, " units"], Float[Array, " units"]],
    mask: Bool[Array, " time"] | None = None,
    *,
    last: bool = False,
    lstm=None,
) -> Float[Array, "*time units"] | tuple[Float[Array, "*time units"], Float[Array, "*time units"]]:
    """The states ``s_1 .. s_T`` of the CfC `cfc` (one backbone layer, a mode of
    :data:`FAST_MODES`) over ``x`` held for ``timespans`` (one example), or with ``last`` only
    ``s_T``; equal to ``lax.scan`` of ``cfc.advance``; a masked step (``mask`` False) keeps the
    state. With `lstm` (an :class:`~liquidjax.cells.LSTMCell`: mixed memory) the states are the
    pair ``(hs, cs)``, as ``state`` is ``(h0, c0)``: those of ``MixedMemory(cfc, lstm)``.
    ``timespans=None`` means every ``Δt`` is 1: then ``time_a`` and ``time_b`` act as one head,
    ``(W_a + W_b) z + b_a + b_b``. The caller (the cell's ``advance_sequence``) checks that it
    applies: the mode, one backbone layer, every operand in the weights' dtype."""
    memory = lstm is not None
    (backbone,) = cfc.backbone
    assert backbone.bias is not None
    w_x = backbone.weight[:, : cfc.input_size]
    w_h = backbone.weight[:, cfc.input_size :]
    w_heads, b_heads = _stacked_heads(cfc, unit_steps=timespans is None)
    w_in, b_in, w_lstm, c0 = w_x, backbone.bias, None, None
    h0 = state
    if memory:
        assert lstm.input_map.bias is not None
        w_in = jnp.concatenate([lstm.input_map.weight, w_x])
        b_in = jnp.concatenate([lstm.input_map.bias, backbone.bias])
        w_lstm = lstm.recurrent_map.weight
        h0, c0 = state
    ops = _Operands(w_in, b_in, w_h, w_heads, b_heads, w_lstm, x, h0, c0, timespans, mask)
    states = _recurrence(cfc.activation, cfc.mode == "no_gate", last, ops)
    if not memory:
        return states
    n = cfc.state_size
    return states[..., :n], states[..., n:]


def _stacked_heads(cell, *, unit_steps: bool) -> tuple[Array, Array]:
    """The heads ``ff1, ff2, time_a, time_b`` as one ``(4H, z)`` weight and its bias; with
    ``unit_steps`` (every ``Δt`` is 1) ``(3H, z)``, ``time_a + time_b`` acting as one head."""
    assert cell.ff2 is not None and cell.time_a is not None and cell.time_b is not None
    ff = [cell.masked_weight(cell.ff1), cell.masked_weight(cell.ff2)]
    ff_b = [cell.ff1.bias, cell.ff2.bias]
    if unit_steps:
        return (jnp.concatenate([*ff, cell.time_a.weight + cell.time_b.weight]),
                jnp.concatenate([*ff_b, cell.time_a.bias + cell.time_b.bias]))
    return (jnp.concatenate([*ff, cell.time_a.weight, cell.time_b.weight]),
            jnp.concatenate([*ff_b, cell.time_a.bias, cell.time_b.bias]))


def wired_sequence(cell, x, dts, h0, mask=None, *, last=False):
    """:func:`held_sequence` of a :class:`~liquidjax.cells.WiredCfC` (a mode of
    :data:`FAST_MODES`): a plain ``lax.scan`` (differentiated by JAX) whose
    step is one product per wiring layer with the heads stacked — with unit steps three heads,
    not four, the part that pays (its layers are masked dense products: at these sizes the
    wiring's sparsity leaves too little to skip for a sparse layout to pay; BENCHMARKS.md)."""
    heads = [_stacked_heads(layer, unit_steps=dts is None) for layer in cell.layers]
    bounds = np.cumsum((0,) + cell.layer_sizes)
    no_gate = cell.mode == "no_gate"

    def step(h, inp):
        xk, dt, m = inp
        new = [xk]
        for (w, b), lo, hi in zip(heads, bounds[:-1], bounds[1:]):
            new.append(_gate(w @ jnp.concatenate([new[-1], h[lo:hi]]) + b, dt, no_gate))
        h_new = jnp.concatenate(new[1:])
        if m is not None:
            h_new = jnp.where(m, h_new, h)
        return h_new, (None if last else h_new)

    h, hs = jax.lax.scan(step, h0, (x, dts, mask))
    return h if last else hs


class _Operands(NamedTuple):
    """The recurrence's operands: the weights shared across a batch, then the per-example data
    (``None``: absent — no mixed memory, unit steps, no mask)."""

    w_in: Array  # (K, I): the input maps, the LSTM's (mixed memory: 4H rows) then the backbone's
    b_in: Array  # (K,)
    w_h: Array  # (U, H): the backbone's recurrent part
    w_heads: Array  # (kH, U): the stacked heads
    b_heads: Array  # (kH,)
    w_lstm: Array | None  # (4H, H): the LSTM's recurrent map (mixed memory)
    x: Array  # (T, I)
    h0: Array  # (H,)
    c0: Array | None  # (H,): the LSTM's cell state (mixed memory)
    dts: Array | None  # (T,); None: every Δt is 1
    mask: Array | None  # (T,) bool


_N_SHARED = 6  # the fields of _Operands before x


def _time_major(o: _Operands) -> _Operands:
    """A batch's data ``(B, T, ...)`` moved time-major, ``(T, B, ...)``."""
    return o._replace(x=jnp.swapaxes(o.x, 0, 1), dts=None if o.dts is None else o.dts.T,
                      mask=None if o.mask is None else o.mask.T)


def _project(o: _Operands, x: Array) -> tuple[Array, tuple[Array, ...] | None]:
    """The input parts ``W_in x + b_in`` of ``x (..., I)``: the backbone's ``(..., U)`` and, with
    mixed memory, the LSTM's, one array per gate (XLA:CPU's loop fusions read a lane-slice of
    the per-step slice of one ``(T, B, 4H)`` array slowly, ≈ 1.5× the step)."""
    n = o.h0.shape[-1]
    bounds = [0, n, 2 * n, 3 * n, 4 * n] if o.w_lstm is not None else [0]
    bounds.append(o.w_in.shape[0])
    parts = [x @ o.w_in[lo:hi].T + o.b_in[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    return parts[-1], tuple(parts[:-1]) or None


def _gate(p, dt, no_gate):
    if dt is None:  # unit steps: the time heads are one
        f1, f2, pre = jnp.split(p, 3, axis=-1)
    else:
        f1, f2, ta, tb = jnp.split(p, 4, axis=-1)
        pre = ta * dt[..., None] + tb
    ff1, ff2 = jnp.tanh(f1), jnp.tanh(f2)
    sigma = jax.nn.sigmoid(pre)
    if no_gate:
        return ff1 + sigma * ff2
    return ff1 * (1.0 - sigma) + sigma * ff2


def _scan(activation, no_gate, o: _Operands, *, save: bool, last: bool = False):
    """The recurrence of a batch, time-major (:func:`_time_major`): the states ``(T, B, H)``
    (mixed memory: ``[h | c]``, ``(T, B, 2H)``; with ``last`` only the last, ``(1, B, ...)``),
    and with ``save`` the backbone and head pre-activations (and the LSTM's gate
    pre-activations)."""
    memory = o.w_lstm is not None
    # For training (save), the input parts of all steps are one product over time × batch before
    # the loop (their weight gradient one after it); without a backward pass they are cheaper
    # inside the loop (no (T, B, 4H + U) arrays to write and read back).
    xs = _project(o, o.x) if save else o.x

    def step(carry, inp):
        h, c = carry
        xk, dt, m = inp
        ux, zx = xk if save else _project(o, xk)
        z = None
        if memory:
            z = jnp.concatenate([a + b for a, b in zip(zx, jnp.split(h @ o.w_lstm.T, 4, -1))], -1)
            h_in, c_new = lstm_gates(z, c)
        else:
            h_in, c_new = h, None
        u = h_in @ o.w_h.T + ux
        p = activation(u) @ o.w_heads.T + o.b_heads
        h_new = _gate(p, dt, no_gate)
        if m is not None:
            h_new = jnp.where(m[:, None], h_new, h)
            c_new = None if c is None else jnp.where(m[:, None], c_new, c)
        if save:
            return (h_new, c_new), (h_new, c_new, u, p, z)
        return (h_new, c_new), (None if last else (h_new, c_new))

    final, out = jax.lax.scan(step, (o.h0, o.c0), (xs, o.dts, o.mask))
    hs, cs, *saved = jax.tree_util.tree_map(lambda a: a[None], final) if out is None else out
    ss = hs if cs is None else jnp.concatenate([hs, cs], axis=-1)
    return (ss, *saved) if save else ss


# ------------------------------------------------------------------------------ the recurrence
# `_recurrence` has per-example semantics but is a batch-aware primitive (liquidjax._batching):
# under `grad(vmap(...))` with shared weights its batching rule calls `_batched`, a custom-VJP
# function of the whole batch whose backward computes every weight gradient as one product over
# batch × time, instead of JAX materialising per-example gradients `(B, m, n)` and summing them
# afterwards (XLA:CPU does not fold that sum). Elsewhere it is its per-example definition.
# Two primitives, as the number of shared operands differs (with or without the LSTM's).
def _recurrence(activation: Callable[[Array], Array], no_gate: bool, last: bool,
                ops: _Operands) -> Array:
    present = tuple(f for f, a in zip(_Operands._fields, ops) if a is not None)
    prim = _recurrence_p if ops.w_lstm is None else _memory_recurrence_p
    return prim.bind(*(a for a in ops if a is not None), activation=activation, no_gate=no_gate,
                     last=last, present=present)


def _unpack(args, present) -> _Operands:
    given = dict(zip(present, args))
    return _Operands(*(given.get(f) for f in _Operands._fields))


def _one(*args, activation, no_gate, last, present):
    """The per-example definition: a batch of one."""
    o = _unpack(args, present)
    data = [None if a is None else a[None] for a in o[_N_SHARED:]]
    return _batched(activation, no_gate, last, _Operands(*o[:_N_SHARED], *data))[0]


def _abstract_eval(*args, activation, no_gate, last, present):
    del activation, no_gate
    o = _unpack(args, present)
    width = o.h0.shape[0] * (1 if o.c0 is None else 2)
    return jax.core.ShapedArray((width,) if last else (o.x.shape[0], width), o.h0.dtype)


def _batched_call(weights, data, *, activation, no_gate, last, present):
    return _batched(activation, no_gate, last, _unpack([*weights, *data], present))


def _primitive(name: str, n_shared: int):
    return batch_aware_primitive(name, n_shared=n_shared, one=_one, batched=_batched_call,
                                 out_aval=_abstract_eval)


_recurrence_p = _primitive("liquidjax_cfc_recurrence", _N_SHARED - 1)
_memory_recurrence_p = _primitive("liquidjax_cfc_memory_recurrence", _N_SHARED)


# Everything below works time-major: the scans keep their stacked residuals as they make them,
# and only the primitive's inputs and output change layout.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _batched(activation: Callable[[Array], Array], no_gate: bool, last: bool, o: _Operands):
    """The recurrence of a batch (leading axis of the data) sharing the weights: states
    ``(B, T, H)`` (mixed memory: ``(B, T, 2H)``)."""
    return _output(_states(activation, no_gate, _time_major(o), save=False, last=last), last)


def _kernel_activation(activation: Callable[[Array], Array], o: _Operands) -> str | None:
    """The activation's name when the compiled CPU kernel computes this recurrence (a CfC, with
    or without mixed memory, float32 or float64, an ncps activation, the kernel built), else
    ``None``."""
    if o.x.dtype not in (jnp.float32, jnp.float64):
        return None
    try:
        name = activation_name(activation)
    except ValueError:  # a callable of the user's own
        return None
    return name if name in _native.CFC_ACTIVATIONS and _native.available() else None


def _states(activation, no_gate, o: _Operands, *, save: bool, last: bool = False):
    """:func:`_scan`, lowered on CPU to the compiled kernel where it applies
    (:func:`_kernel_activation`; ``jax.lax.platform_dependent``: JAX's scan on other
    backends)."""
    name = _kernel_activation(activation, o)
    if name is None:
        return _scan(activation, no_gate, o, save=save, last=last)

    def native(o):
        hs, us, ps, zs = _native.cfc_forward(o.x, o.h0, o.c0, o.w_in, o.b_in, o.w_h, o.w_lstm,
                                             o.w_heads, o.b_heads, o.dts, o.mask,
                                             activation=name, no_gate=no_gate,
                                             last=last and not save, keep=save)
        return (hs, us, ps, zs) if save else hs

    def portable(o):
        return _scan(activation, no_gate, o, save=save, last=last)

    return _native.on_cpu(native, portable, o)


def _output(ss, last):
    """The primitive's output from the time-major states: every step's, or the last one's."""
    return ss[-1] if last else jnp.swapaxes(ss, 0, 1)


def _batched_fwd(activation, no_gate, last, o: _Operands):
    o = _time_major(o)  # and so are the residuals
    ss, us, ps, zs = _states(activation, no_gate, o, save=True)
    return _output(ss, last), (o, ss, us, ps, zs)


def _lstm_factors(z, c_prev, c):
    """The LSTM step's local derivatives, for all steps at once: ``dz = [dc'·k_i, dc'·k_g,
    dc'·k_f, dh̃·k_o]``, ``dc' = dc + dh̃·k_c``, ``dc_prev = dc'·f``; and its output ``h̃``."""
    i, ig, fg, og = jnp.split(z, 4, axis=-1)
    ti, s_i, f = jnp.tanh(i), jax.nn.sigmoid(ig), jax.nn.sigmoid(fg + 1.0)
    s_o, tc = jax.nn.sigmoid(og), jnp.tanh(c)
    k_in = jnp.concatenate([s_i * (1 - ti * ti), ti * s_i * (1 - s_i), c_prev * f * (1 - f)],
                           axis=-1)
    return k_in, tc * s_o * (1 - s_o), s_o * (1 - tc * tc), f, tc * s_o


def _cotangents(activation, no_gate, o: _Operands, ss, us, ps, zs, ct):
    """The backward scan (time-major): the cotangents of the head pre-activations ``dps``, of
    the backbone pre-activations ``dus``, of the LSTM's gate pre-activations ``dzs`` (mixed
    memory), of the timespans and of the initial state; and the LSTM's outputs ``h̃``. ``ct``
    is the states' cotangent ``(T, B, ...)``."""
    dts, n = o.dts, o.h0.shape[-1]
    mask = None if o.mask is None else o.mask[..., None]
    # Every local derivative depends on the saved pre-activations only: computed for all steps
    # at once, outside the loop. dp_t = coef_t * [dh_t, dh_t, dh_t, dh_t].
    if dts is None:
        f1, f2, pre = jnp.split(ps, 3, axis=-1)
    else:
        f1, f2, ta, tb = jnp.split(ps, 4, axis=-1)
        pre = ta * dts[..., None] + tb
    ff1, ff2 = jnp.tanh(f1), jnp.tanh(f2)
    sigma = jax.nn.sigmoid(pre)
    d_ff1 = (1.0 - ff1 * ff1) * (1.0 if no_gate else 1.0 - sigma)
    d_ff2 = (1.0 - ff2 * ff2) * sigma
    d_pre = (ff2 if no_gate else ff2 - ff1) * sigma * (1.0 - sigma)  # d h' / d(ta dt + tb)
    heads = [d_ff1, d_ff2, d_pre]
    if dts is not None:
        heads = [d_ff1, d_ff2, d_pre * dts[..., None], d_pre]
    coef = jnp.concatenate(heads, axis=-1)
    k = len(heads)
    _, d_act = jax.jvp(activation, (us,), (jnp.ones_like(us),))
    lstm = h_in = ct_c = None
    ct_h = ct
    if o.w_lstm is not None:
        ct_h, ct_c = ct[..., :n], ct[..., n:]
        c_prev = jnp.concatenate([o.c0[None], ss[:-1, :, n:]])
        k_in, k_o, k_c, f, h_in = _lstm_factors(zs, c_prev, ss[..., n:])
        if mask is not None:  # a masked step passes dc straight through, to nothing else
            k_in, k_o, k_c = (jnp.where(mask, a, 0) for a in (k_in, k_o, k_c))
            f = jnp.where(mask, f, 1)
        lstm = (k_in, k_o, k_c, f)
    if mask is not None:  # a masked step passes dh straight through, to nothing else
        coef = jnp.where(mask, coef, 0)

    def step(carry, inp):
        dh, dc = carry
        cth, ctc, cf, da, lf, m = inp
        dh = dh + cth
        dp = jnp.concatenate([dh] * k, axis=-1) * cf
        du = (dp @ o.w_heads) * da
        dh_prev = du @ o.w_h  # the cotangent of the CfC's input state h̃
        dz = None
        if lf is not None:
            k_in, k_o, k_c, f = lf
            dc = dc + ctc + dh_prev * k_c
            dz = jnp.concatenate([dc, dc, dc], axis=-1) * k_in
            dz = jnp.concatenate([dz, dh_prev * k_o], axis=-1)
            dc = dc * f
            dh_prev = dz @ o.w_lstm
        if m is not None:
            dh_prev = jnp.where(m, dh_prev, dh)
        return (dh_prev, dc), (dp, du, dz)

    zero = jnp.zeros_like(o.h0)
    (dh0, dc0), (dps, dus, dzs) = jax.lax.scan(
        step, (zero, None if o.c0 is None else zero), (ct_h, ct_c, coef, d_act, lstm, mask),
        reverse=True,
    )
    d_dts = None if dts is None else jnp.sum(dps[..., 3 * n :] * ta, axis=-1)
    return dps, dus, dzs, d_dts, dh0, dc0, h_in


def _batched_bwd(activation, no_gate, last, res, ct):
    o, ss, us, ps, zs = res
    ct = ct if last else jnp.swapaxes(ct, 0, 1)  # time-major; with `last` the last state's only
    name = _kernel_activation(activation, o)
    if name is None:
        g = _grads(activation, no_gate, o, ss, us, ps, zs, _every_state(ct, ss, last))
    else:  # on CPU the compiled kernel
        def native(ct, x, h0, c0, ss, us, ps, zs, dts, mask, w_heads, w_h, w_lstm):
            return _native.cfc_backward(ct, x, h0, c0, ss, us, ps, zs, dts, mask, w_heads, w_h,
                                        w_lstm, activation=name, no_gate=no_gate, last=last)

        def portable(ct, x, h0, c0, ss, us, ps, zs, dts, mask, w_heads, w_h, w_lstm):
            ops = _Operands(None, None, w_h, w_heads, None, w_lstm, x, h0, c0, dts, mask)
            return tuple(_grads(activation, no_gate, ops, ss, us, ps, zs,
                                _every_state(ct, ss, last)))

        g = _Grads(*_native.on_cpu(native, portable, ct, o.x, o.h0, o.c0, ss, us, ps, zs, o.dts,
                                   o.mask, o.w_heads, o.w_h, o.w_lstm))
    d_x = g.dus @ o.w_in[-g.dus.shape[-1] :]
    if g.dzs is not None:
        d_x = d_x + g.dzs @ o.w_in[: g.dzs.shape[-1]]
    d_dts = None if g.d_dts is None else g.d_dts.T
    return (_Operands(g.d_w_in, g.d_b_in, g.d_w_h, g.d_w_heads, g.d_b_heads, g.d_w_lstm,
                      jnp.swapaxes(d_x, 0, 1), g.dh0, g.dc0, d_dts, None),)


class _Grads(NamedTuple):
    """What the recurrence's VJP computes but the input's cotangent (``dus @ W_in``): the
    backbone (and LSTM gate) pre-activations' cotangents, the timespans', the initial state's
    and the weight gradients (the LSTM's input map's stacked into ``d_w_in``)."""

    dus: Array
    d_dts: Array | None
    dh0: Array
    d_w_in: Array
    d_w_h: Array
    d_b_in: Array
    d_w_heads: Array
    d_b_heads: Array
    dzs: Array | None = None
    d_w_lstm: Array | None = None
    dc0: Array | None = None


def _every_state(ct, ss, last):
    """The states' cotangent ``(T, B, ...)`` from the last state's (``last``). (Made here, before
    the backward splits it: zeros set after the split made XLA's backward scan of the mixed
    memory path 1.7x slower.)"""
    return jnp.zeros_like(ss).at[-1].set(ct) if last else ct


def _grads(activation, no_gate, o: _Operands, ss, us, ps, zs, ct) -> _Grads:
    """:class:`_Grads` in JAX (time-major, ``ct`` every state's): the backward scan, then every
    weight gradient as one product contracting over time × batch."""
    dps, dus, dzs, d_dts, dh0, dc0, h_in = _cotangents(activation, no_gate, o, ss, us, ps, zs,
                                                       ct)
    n = o.h0.shape[-1]
    h_prev = jnp.concatenate([o.h0[None], ss[:-1, :, :n]])
    d_w_heads = jnp.einsum("tbk,tbu->ku", dps, activation(us))
    d_b_heads = jnp.sum(dps, axis=(0, 1))
    d_w_h = jnp.einsum("tbu,tbn->un", dus, h_prev if h_in is None else h_in)
    d_w_in = jnp.einsum("tbu,tbi->ui", dus, o.x)
    d_b_in = jnp.sum(dus, axis=(0, 1))
    d_w_lstm = None
    if dzs is not None:
        d_w_lstm = jnp.einsum("tbz,tbn->zn", dzs, h_prev)
        d_w_in = jnp.concatenate([jnp.einsum("tbz,tbi->zi", dzs, o.x), d_w_in])
        d_b_in = jnp.concatenate([jnp.sum(dzs, axis=(0, 1)), d_b_in])
    return _Grads(dus, d_dts, dh0, d_w_in, d_w_h, d_b_in, d_w_heads, d_b_heads, dzs, d_w_lstm,
                  dc0)


_batched.defvjp(_batched_fwd, _batched_bwd)
