"""The fast path of the LTC cell: ncps's fused semi-implicit unfolds with a hand-written VJP.

Differentiating the unfold loop with plain autodiff stores every unfold's ``(N, N)`` synapse
activations (per example, per observation) for the backward pass; for the row-wise image
configuration that is ~0.4 GB of residuals written and read per training step. Here the forward
keeps only the ``(unfolds + 1, N)`` potentials and ``(unfolds, N)`` denominators, and the backward
recomputes each unfold's activations once, fusing every per-synapse gradient into the same pass.

The arithmetic is the same as :class:`liquidjax.solvers.FusedSemiImplicit` applied to
:meth:`liquidjax.cells.LTC.conductances` (a test checks the two paths agree), arranged like ncps:
``v ← (cm_t v + gleak vleak + Σ s erev + N_s) / (cm_t + gleak + Σ s + D_s + ε)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def sigmoid(z):
    # tanh form: the logistic function to an ulp or so; on XLA:CPU it vectorises as well as the
    # exp form and clearly better than the logistic op in some jaxlib versions (measured).
    return 0.5 * jnp.tanh(0.5 * z) + 0.5


class LTCParams(NamedTuple):
    """Effective LTC parameters (positivity applied, masked synapses zeroed), **post-major**:
    synapse matrices are indexed ``[post, pre]`` (the transpose of ncps's ``[pre, post]``), so the
    sums over pre-synaptic neurons run along the contiguous axis (≈25 % faster on XLA:CPU)."""

    w: Float[Array, "N N"]
    sigma: Float[Array, "N N"]
    mu: Float[Array, "N N"]
    erev: Float[Array, "N N"]
    sensory_w: Float[Array, "N I"]
    sensory_sigma: Float[Array, "N I"]
    sensory_mu: Float[Array, "N I"]
    sensory_erev: Float[Array, "N I"]
    gleak: Float[Array, " N"]
    vleak: Float[Array, " N"]
    cm: Float[Array, " N"]


def _sensory(p: LTCParams, x):
    sg = sigmoid(p.sensory_sigma * (x[None, :] - p.sensory_mu))
    s = p.sensory_w * sg
    return sg, s, jnp.sum(s * p.sensory_erev, axis=1), jnp.sum(s, axis=1)


def _prelude(p: LTCParams, x, dt, unfolds: int, epsilon: float):
    _, _, num_s, den_s = _sensory(p, x)
    cm_t = p.cm / (dt / unfolds)
    return cm_t, p.gleak * p.vleak + num_s, cm_t + p.gleak + den_s + epsilon


def _unfold(p: LTCParams, v, cm_t, base_num, base_den):
    s = p.w * sigmoid(p.sigma * (v[None, :] - p.mu))
    den = base_den + jnp.sum(s, axis=1)
    return (cm_t * v + base_num + jnp.sum(s * p.erev, axis=1)) / den, den


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_ltc_step(
    p: LTCParams,
    x: Float[Array, " I"],
    v0: Float[Array, " N"],
    dt: Float[Array, ""],
    unfolds: int,
    epsilon: float,
) -> Float[Array, " N"]:
    """``unfolds`` fused semi-implicit steps of the LTC ODE across an interval of length ``dt``
    with the (already input-mapped) observation ``x`` held. Returns the new potentials."""
    pre = _prelude(p, x, dt, unfolds, epsilon)
    return jax.lax.fori_loop(0, unfolds, lambda _, v: _unfold(p, v, *pre)[0], v0)


def _fwd(p, x, v0, dt, unfolds, epsilon):
    # Keep only the potentials and denominators of each unfold; the backward pass recomputes the
    # (N, N) synapse activations from them.
    pre = _prelude(p, x, dt, unfolds, epsilon)

    def body(k, carry):
        v, vs, dens = carry
        v, den = _unfold(p, v, *pre)
        return v, vs.at[k + 1].set(v), dens.at[k].set(den)

    vs = jnp.zeros((unfolds + 1,) + v0.shape, v0.dtype).at[0].set(v0)
    dens = jnp.zeros((unfolds,) + v0.shape, v0.dtype)
    v, vs, dens = jax.lax.fori_loop(0, unfolds, body, (v0, vs, dens))
    return v, (p, x, dt, vs, dens, pre[0])


def _bwd(unfolds, epsilon, res, g):
    p, x, dt, vs, dens, cm_t = res
    zero_nn = jnp.zeros_like(p.w)

    def body(i, carry):
        k = unfolds - 1 - i
        g, d_w, d_sigma, d_mu, d_erev, d_num, d_den, d_cmt = carry
        v, v_new, den = vs[k], vs[k + 1], dens[k]
        dv_mu = v[None, :] - p.mu
        sg = sigmoid(p.sigma * dv_mu)
        s = p.w * sg
        gn = g / den  # d/d numerator
        gd = -gn * v_new  # d/d denominator
        ds = gn[:, None] * p.erev + gd[:, None]
        dz = ds * p.w * sg * (1 - sg)
        g_prev = gn * cm_t + jnp.sum(dz * p.sigma, axis=0)
        return (
            g_prev,
            d_w + ds * sg,
            d_sigma + dz * dv_mu,
            d_mu - dz * p.sigma,
            d_erev + gn[:, None] * s,
            d_num + gn,
            d_den + gd,
            d_cmt + gn * v + gd,
        )

    zero_n = jnp.zeros_like(g)
    init = (g, zero_nn, zero_nn, zero_nn, zero_nn, zero_n, zero_n, zero_n)
    g0, d_w, d_sigma, d_mu, d_erev, d_num, d_den, d_cmt = jax.lax.fori_loop(
        0, unfolds, body, init
    )

    # Sensory synapses (computed once per observation) receive the summed numerator/denominator
    # cotangents.
    ssg, ss, _, _ = _sensory(p, x)
    dss = d_num[:, None] * p.sensory_erev + d_den[:, None]
    dzs = dss * p.sensory_w * ssg * (1 - ssg)
    dx_mu = x[None, :] - p.sensory_mu
    grads = LTCParams(
        w=d_w,
        sigma=d_sigma,
        mu=d_mu,
        erev=d_erev,
        sensory_w=dss * ssg,
        sensory_sigma=dzs * dx_mu,
        sensory_mu=-dzs * p.sensory_sigma,
        sensory_erev=d_num[:, None] * ss,
        gleak=d_num * p.vleak + d_den,
        vleak=d_num * p.gleak,
        cm=d_cmt * (unfolds / dt),
    )
    dx = jnp.sum(dzs * p.sensory_sigma, axis=0)
    ddt = -jnp.sum(d_cmt * cm_t) / dt
    return grads, dx, g0, ddt.astype(jnp.result_type(dt))


fused_ltc_step.defvjp(_fwd, _bwd)
