"""A CfC run over a whole held-input sequence at once: the fast path of ``LiquidRNN``.

:class:`~liquidjax.layers.LiquidRNN` chooses it by itself (:func:`applies`) for a plain
:class:`~liquidjax.cells.CfC` with one backbone layer in ``"default"`` or ``"no_gate"`` mode,
without ``remat``; everything else goes through the generic ``lax.scan`` over
``cell.advance``, which stays the reference (``tests/test_cfc_sequence.py`` holds the two equal,
values and gradients, float32 and float64).

The same numbers, arranged for the hardware:

* the input part of the backbone, ``W_x x_t + b`` for all ``t``, is one matrix product before the
  time loop (its weight gradient one after it);
* the four heads (``ff1``, ``ff2``, ``time_a``, ``time_b``) are one stacked ``(4H, U)`` product
  (three, ``(3H, U)``, when every ``Δt`` is 1: ``timespans=None``);
* a hand-written VJP for the recurrence: the backward scan carries only ``dh`` and does two
  small matrix-vector products per step; every weight gradient is one product over the whole
  sequence afterwards (over batch × time once ``vmap`` adds the batch), instead of one small
  product per step and weight.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._cfc import CfC

_FAST_MODES = ("default", "no_gate")


def applies(cell: object, x: Array, timespans: Array, state: object) -> bool:
    """Whether :func:`held_sequence` computes what a scan of ``cell.advance`` would."""
    if type(cell) is not CfC or cell.mode not in _FAST_MODES or len(cell.backbone) != 1:
        return False
    dtype = cell.ff1.weight.dtype
    return all(jnp.result_type(a) == dtype for a in (x, timespans, state))


def held_sequence(
    cell: CfC,
    x: Float[Array, "time input"],
    timespans: Float[Array, " time"] | None,
    h0: Float[Array, " units"],
    mask: Bool[Array, " time"] | None = None,
) -> Float[Array, "time units"]:
    """The states ``h_1 .. h_T`` of ``cell`` over ``x`` held for ``timespans`` (one example);
    equal to ``lax.scan`` of ``cell.advance``; a masked step (``mask`` False) keeps the state.
    ``timespans=None`` means every ``Δt`` is 1: then ``time_a`` and ``time_b`` act as one head,
    ``(W_a + W_b) z + b_a + b_b``. Only where :func:`applies`."""
    (backbone,) = cell.backbone
    assert backbone.bias is not None
    w_x = backbone.weight[:, : cell.input_size]
    w_h = backbone.weight[:, cell.input_size :]
    u_x = x @ w_x.T + backbone.bias  # (T, U): the whole sequence's input part in one product
    assert cell.ff2 is not None and cell.time_a is not None and cell.time_b is not None
    ff = [cell.masked_weight(cell.ff1), cell.masked_weight(cell.ff2)]
    ff_b = [cell.ff1.bias, cell.ff2.bias]
    if timespans is None:
        w_heads = jnp.concatenate([*ff, cell.time_a.weight + cell.time_b.weight])  # (3H, U)
        b_heads = jnp.concatenate([*ff_b, cell.time_a.bias + cell.time_b.bias])
    else:
        w_heads = jnp.concatenate([*ff, cell.time_a.weight, cell.time_b.weight])  # (4H, U)
        b_heads = jnp.concatenate([*ff_b, cell.time_a.bias, cell.time_b.bias])
    return _recurrence(cell.activation, cell.mode == "no_gate", w_h, w_heads, b_heads, u_x,
                       timespans, h0, mask)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(activation: Callable[[Array], Array], no_gate: bool, w_h, w_heads, b_heads, u_x,
                dts, h0, mask):
    return _scan(activation, no_gate, w_h, w_heads, b_heads, u_x, dts, h0, mask, save=False)


def _recurrence_fwd(activation, no_gate, w_h, w_heads, b_heads, u_x, dts, h0, mask):
    hs, us, ps = _scan(activation, no_gate, w_h, w_heads, b_heads, u_x, dts, h0, mask, save=True)
    return hs, (w_h, w_heads, dts, h0, mask, hs, us, ps)


def _recurrence_bwd(activation, no_gate, res, ct_hs):
    w_h, w_heads, dts, h0, mask, hs, us, ps = res
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
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    n = h0.shape[0]
    d_w_heads = _weight_cotangent(w_heads, dps, activation(us))
    d_b_heads = jnp.sum(dps, axis=0)
    d_w_h = _weight_cotangent(w_h, dus, h_prev)
    d_dts = None if dts is None else jnp.sum(dps[:, 3 * n :] * ta, axis=-1)
    return d_w_h, d_w_heads, d_b_heads, dus, d_dts, dh0, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# The weight gradient sum_t a_t b_t^T of one example. Under `vmap` (the batch), JAX's rule for
# `custom_vjp` would compute it per example, (B, m, n), and then sum over the batch, because the
# weight is shared; XLA:CPU does not fold that sum into the product. The batching rule below
# computes the sum directly, as one product contracting over batch × time, and returns it as
# unbatched — exactly the cotangent that rule would have produced for an unbatched weight. `w`
# is passed only so that the rule sees whether the weight itself is batched (e.g. a vmap over
# models): then the cotangent stays per example.
@jax.custom_vjp
@jax.custom_batching.custom_vmap
def _weight_cotangent(w, a, b):
    del w
    return a.T @ b


@_weight_cotangent.def_vmap
def _weight_cotangent_vmap(axis_size, in_batched, w, a, b):
    w_batched, a_batched, b_batched = in_batched
    if not w_batched and not a_batched and not b_batched:
        return a.T @ b, False
    if not a_batched:
        a = jnp.broadcast_to(a, (axis_size, *a.shape))
    if not b_batched:
        b = jnp.broadcast_to(b, (axis_size, *b.shape))
    if w_batched:
        return jnp.einsum("ktm,ktn->kmn", a, b), True
    # Batch and time flattened into one contraction: one GEMM.
    a2 = a.reshape(-1, a.shape[-1])
    b2 = b.reshape(-1, b.shape[-1])
    return a2.T @ b2, False


def _weight_cotangent_fwd(w, a, b):
    return _weight_cotangent(w, a, b), (w, a, b)


def _weight_cotangent_bwd(res, g):
    w, a, b = res  # reverse mode through the custom batching rule (e.g. a Hessian)
    return jnp.zeros_like(w), b @ g.T, a @ g


_weight_cotangent.defvjp(_weight_cotangent_fwd, _weight_cotangent_bwd)
