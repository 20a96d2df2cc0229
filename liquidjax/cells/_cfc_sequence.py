"""A CfC run over a whole held-input sequence at once: the fast path of ``LiquidRNN``.

:class:`~liquidjax.layers.LiquidRNN` chooses it by itself (:func:`applies`) for a plain
:class:`~liquidjax.cells.CfC` with one backbone layer, and for a
:class:`~liquidjax.cells.WiredCfC`, in ``"default"`` or ``"no_gate"`` mode, without ``remat``;
everything else goes through the generic ``lax.scan`` over ``cell.advance``, which stays the
reference (``tests/test_cfc_sequence.py`` holds the two equal, values and gradients, float32 and
float64).

The same numbers, arranged for the hardware:

* the input part of the backbone, ``W_x x_t + b`` for all ``t``, is one matrix product before the
  time loop (its weight gradient one after it);
* the four heads (``ff1``, ``ff2``, ``time_a``, ``time_b``) are one stacked ``(4H, U)`` product
  (three, ``(3H, U)``, when every ``Δt`` is 1: ``timespans=None``);
* a hand-written VJP for the recurrence: the backward scan carries only ``dh`` and does two
  small matrix-vector products per step; every weight gradient is one product over the whole
  sequence afterwards (over batch × time once ``vmap`` adds the batch), instead of one small
  product per step and weight.

A wired CfC gets only the stacked heads (one product per wiring layer; three heads with unit
steps), in a plain scan that JAX differentiates: hoisting its first layer's input part out of
the loop made its forward slower (measured; BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._batching import batch_aware_primitive
from ._cfc import CfC
from ._wired_cfc import WiredCfC

_FAST_MODES = ("default", "no_gate")


def applies(cell: object, x: Array, timespans: Array, state: object) -> bool:
    """Whether :func:`held_sequence` computes what a scan of ``cell.advance`` would."""
    if type(cell) is CfC:
        if cell.mode not in _FAST_MODES or len(cell.backbone) != 1:
            return False
        dtype = cell.ff1.weight.dtype
    elif type(cell) is WiredCfC:
        if cell.mode not in _FAST_MODES:
            return False
        dtype = cell.layers[0].ff1.weight.dtype
    else:
        return False
    return all(jnp.result_type(a) == dtype for a in (x, timespans, state))


def held_sequence(
    cell: CfC | WiredCfC,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None,
    h0: Float[Array, " units"],
    mask: Bool[Array, " time"] | None = None,
) -> Float[Array, "time units"]:
    """The states ``h_1 .. h_T`` of ``cell`` over ``x`` held for ``timespans`` (one example);
    equal to ``lax.scan`` of ``cell.advance``; a masked step (``mask`` False) keeps the state.
    ``timespans=None`` means every ``Δt`` is 1: then ``time_a`` and ``time_b`` act as one head,
    ``(W_a + W_b) z + b_a + b_b``. Only where :func:`applies`."""
    if isinstance(cell, WiredCfC):
        return _wired_sequence(cell, x, timespans, h0, mask)
    (backbone,) = cell.backbone
    assert backbone.bias is not None
    w_x = backbone.weight[:, : cell.input_size]
    w_h = backbone.weight[:, cell.input_size :]
    u_x = x @ w_x.T + backbone.bias  # (T, U): the whole sequence's input part in one product
    w_heads, b_heads = _stacked_heads(cell, unit_steps=timespans is None)
    return _recurrence(cell.activation, cell.mode == "no_gate", w_h, w_heads, b_heads, u_x,
                       timespans, h0, mask)


def _stacked_heads(cell: CfC, *, unit_steps: bool) -> tuple[Array, Array]:
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


def _wired_sequence(cell: WiredCfC, x, dts, h0, mask):
    """:func:`held_sequence` of a wired CfC: a plain ``lax.scan`` (differentiated by JAX) whose
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
        return h_new, h_new

    return jax.lax.scan(step, h0, (x, dts, mask))[1]


def _gate(p, dt, no_gate):
    if dt is None:  # unit steps: the time heads are one
        f1, f2, pre = jnp.split(p, 3, axis=-1)
    else:
        f1, f2, ta, tb = jnp.split(p, 4, axis=-1)
        pre = ta * dt + tb
    ff1, ff2 = jnp.tanh(f1), jnp.tanh(f2)
    sigma = jax.nn.sigmoid(pre)
    if no_gate:
        return ff1 + sigma * ff2
    return ff1 * (1.0 - sigma) + sigma * ff2


def _scan(activation, no_gate, w_h, w_heads, b_heads, u_x, dts, h0, mask, *, save: bool):
    def step(h, inp):
        ux, dt, m = inp
        u = w_h @ h + ux
        p = w_heads @ activation(u) + b_heads
        h_new = _gate(p, dt, no_gate)
        if m is not None:
            h_new = jnp.where(m, h_new, h)
        return h_new, ((h_new, u, p) if save else h_new)

    _, out = jax.lax.scan(step, h0, (u_x, dts, mask))
    return out


# ------------------------------------------------------------------------------ the recurrence
# `_recurrence` has per-example semantics but is a batch-aware primitive (liquidjax._batching):
# under `grad(vmap(...))` with shared weights its batching rule calls `_batched`, a custom-VJP
# function of the whole batch whose backward computes every weight gradient as one product over
# batch × time, instead of JAX materialising per-example gradients `(B, m, n)` and summing them
# afterwards (XLA:CPU does not fold that sum). Elsewhere it is its per-example definition.
def _recurrence(activation: Callable[[Array], Array], no_gate: bool, w_h, w_heads, b_heads, u_x,
                dts, h0, mask):
    ops = [w_h, w_heads, b_heads, u_x, h0] + [a for a in (dts, mask) if a is not None]
    return _recurrence_p.bind(*ops, activation=activation, no_gate=no_gate,
                              has_dts=dts is not None, has_mask=mask is not None)


def _unpack(args, has_dts, has_mask):
    w_h, w_heads, b_heads, u_x, h0, *rest = args
    dts = rest.pop(0) if has_dts else None
    mask = rest.pop(0) if has_mask else None
    return w_h, w_heads, b_heads, u_x, h0, dts, mask


def _one(*args, activation, no_gate, has_dts, has_mask):
    """The per-example definition: a batch of one."""
    w_h, w_heads, b_heads, u_x, h0, dts, mask = _unpack(args, has_dts, has_mask)
    first = (lambda a: None if a is None else a[None])
    return _batched(activation, no_gate, w_h, w_heads, b_heads, u_x[None], first(dts), h0[None],
                    first(mask))[0]


def _abstract_eval(*args, activation, no_gate, has_dts, has_mask):
    del activation, no_gate
    _, _, _, u_x, h0, _, _ = _unpack(args, has_dts, has_mask)
    return jax.core.ShapedArray((u_x.shape[0], h0.shape[0]), h0.dtype)


def _batched_call(weights, data, *, activation, no_gate, has_dts, has_mask):
    w_h, w_heads, b_heads, u_x, h0, dts, mask = _unpack([*weights, *data], has_dts, has_mask)
    return _batched(activation, no_gate, w_h, w_heads, b_heads, u_x, dts, h0, mask)


_recurrence_p = batch_aware_primitive("liquidjax_cfc_recurrence", n_shared=3, one=_one,
                                      batched=_batched_call, out_aval=_abstract_eval)


def _over_batch(fn, dts, mask, *args):
    """``jax.vmap`` of a per-example ``fn(dts, mask, *args)`` over a batch (``None`` stays)."""
    return jax.vmap(fn, in_axes=(None if dts is None else 0, None if mask is None else 0)
                    + (0,) * len(args))(dts, mask, *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _batched(activation: Callable[[Array], Array], no_gate: bool, w_h, w_heads, b_heads, u_x,
             dts, h0, mask):
    """The recurrence of a batch (leading axis) sharing the weights: states ``(B, T, n)``."""
    return _over_batch(lambda d, m, u, h: _scan(activation, no_gate, w_h, w_heads, b_heads, u, d,
                                                h, m, save=False), dts, mask, u_x, h0)


def _batched_fwd(activation, no_gate, w_h, w_heads, b_heads, u_x, dts, h0, mask):
    hs, us, ps = _over_batch(lambda d, m, u, h: _scan(activation, no_gate, w_h, w_heads, b_heads,
                                                      u, d, h, m, save=True), dts, mask, u_x, h0)
    return hs, (w_h, w_heads, dts, h0, mask, hs, us, ps)


def _cotangents(activation, no_gate, w_h, w_heads, dts, h0, mask, hs, us, ps, ct_hs):
    """One example's backward scan: the cotangents of the head pre-activations ``dps``, of the
    backbone pre-activations ``dus``, of the timespans and of ``h0``."""
    # Every local derivative depends on the saved pre-activations only: computed for all steps
    # at once, outside the loop. dp_t = coef_t * [dh_t, dh_t, dh_t, dh_t].
    if dts is None:
        f1, f2, pre = jnp.split(ps, 3, axis=-1)
    else:
        f1, f2, ta, tb = jnp.split(ps, 4, axis=-1)
        pre = ta * dts[:, None] + tb
    ff1, ff2 = jnp.tanh(f1), jnp.tanh(f2)
    sigma = jax.nn.sigmoid(pre)
    d_ff1 = (1.0 - ff1 * ff1) * (1.0 if no_gate else 1.0 - sigma)
    d_ff2 = (1.0 - ff2 * ff2) * sigma
    d_pre = (ff2 if no_gate else ff2 - ff1) * sigma * (1.0 - sigma)  # d h' / d(ta dt + tb)
    heads = [d_ff1, d_ff2, d_pre] if dts is None else [d_ff1, d_ff2, d_pre * dts[:, None], d_pre]
    coef = jnp.concatenate(heads, axis=-1)
    k = len(heads)
    if mask is not None:  # a masked step passes dh straight through, to nothing else
        coef = jnp.where(mask[:, None], coef, 0)
    _, d_act = jax.jvp(activation, (us,), (jnp.ones_like(us),))

    def step(dh, inp):
        ct, cf, da, m = inp
        dh = dh + ct
        dp = jnp.tile(dh, k) * cf
        du = (w_heads.T @ dp) * da
        dh_prev = w_h.T @ du
        if m is not None:
            dh_prev = jnp.where(m, dh_prev, dh)
        return dh_prev, (dp, du)

    dh0, (dps, dus) = jax.lax.scan(
        step, jnp.zeros_like(h0), (ct_hs, coef, d_act, mask), reverse=True
    )
    n = h0.shape[0]
    d_dts = None if dts is None else jnp.sum(dps[:, 3 * n :] * ta, axis=-1)
    return dps, dus, d_dts, dh0


def _batched_bwd(activation, no_gate, res, ct_hs):
    w_h, w_heads, dts, h0, mask, hs, us, ps = res
    dps, dus, d_dts, dh0 = _over_batch(
        lambda d, m, *a: _cotangents(activation, no_gate, w_h, w_heads, d, h0=a[0], mask=m,
                                     hs=a[1], us=a[2], ps=a[3], ct_hs=a[4]),
        dts, mask, h0, hs, us, ps, ct_hs)
    # Every weight gradient: one product contracting over batch × time.
    h_prev = jnp.concatenate([h0[:, None], hs[:, :-1]], axis=1)
    d_w_heads = jnp.einsum("btk,btu->ku", dps, activation(us))
    d_b_heads = jnp.sum(dps, axis=(0, 1))
    d_w_h = jnp.einsum("btu,btn->un", dus, h_prev)
    return d_w_h, d_w_heads, d_b_heads, dus, d_dts, dh0, None


_batched.defvjp(_batched_fwd, _batched_bwd)
