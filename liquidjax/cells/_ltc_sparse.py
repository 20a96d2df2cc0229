"""Sparse synapses for wired LTC cells: the fused kernel evaluated on the wiring's synapses only.

An NCP wiring keeps a small part of the synapses (``AutoNCP(64, 10)``: 451 of the 64 × 64
recurrent and 1536 of the 96 × 64 sensory ones), yet the dense kernel
(:mod:`liquidjax.cells._ltc_kernel`) evaluates every one of them and multiplies the absent ones
by zero. Here each post-synaptic neuron that has synapses gets a **padded fan-in list** of its
pre-synaptic neurons, built once on the host from the static boolean masks
(:class:`SynapseLayout`): a forward unfold gathers the potentials ``v[pre]`` into a
``(P, K)`` block (``P`` neurons with fan-in, ``K`` the largest fan-in) and reduces along ``K``.
The backward pass, written by hand like the dense one (activations recomputed from the stored
potentials), sends the pre-synaptic cotangents back through a **padded fan-out list** — a gather
and a sum again, no scatter.

The arithmetic is the dense kernel's except for two things: the sums run over the existing
synapses only, and the forward writes each activation as ``w/2 + w/2 · tanh(σ_ij/2 · (u − μ))``
with the constant halves summed once per call (fewer operations per synapse; the backward keeps
the dense kernel's form). Tests hold the two kernels within 1e-6 in float32 and 1e-12 in
float64, gradients included. Padding slots read a parameter slot that holds zero weight, so they
add nothing and their parameter cotangents land in a discarded slot.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jaxtyping import Array, Float

from ._ltc_kernel import LTCParams, sigmoid

# Below this fraction of the dense kernel's synapse evaluations (recurrent and sensory together,
# padding included: ``SynapseLayout.density``) ``synapses="auto"`` chooses the sparse kernel.
SPARSE_DENSITY_THRESHOLD = 0.5
SYNAPSE_KERNELS = ("auto", "dense", "sparse")


class FanIn(NamedTuple):
    """Padded fan-in lists of one synapse matrix ``[post, pre]`` (host-side NumPy, int32).

    - ``pre``: ``(P, K)`` pre-synaptic index of each slot (padding: 0).
    - ``flat``: ``(P, K)`` index of each slot in the flattened ``[post, pre]`` matrix
      (padding: ``n_post * n_pre``, a slot appended to hold zero).
    - ``posts``: ``(P,)`` the post-synaptic neurons with at least one synapse.
    - ``rows``: ``(n_post,)`` the row of each neuron in ``posts``, or ``P`` (a zero row).
    - ``fanout``: ``(n_pre, F)`` for each pre-synaptic neuron, the flattened ``P * K`` slots it
      feeds (padding: ``P * K``, a zero slot); the backward pass sums its cotangents with it.
    """

    pre: np.ndarray
    flat: np.ndarray
    posts: np.ndarray
    rows: np.ndarray
    fanout: np.ndarray
    full: bool  # every synapse exists: broadcasts and plain sums replace the gathers

    @property
    def slots(self) -> int:
        return int(self.pre.size)


def _fan_in(mask_post_pre: np.ndarray) -> FanIn:
    mask = np.asarray(mask_post_pre, bool)
    n_post, n_pre = mask.shape
    fanin = mask.sum(axis=1)
    posts = np.flatnonzero(fanin).astype(np.int32)
    p, k = len(posts), max(int(fanin.max(initial=0)), 1)
    pre = np.zeros((p, k), np.int32)
    flat = np.full((p, k), n_post * n_pre, np.int32)
    for r, j in enumerate(posts):
        ids = np.flatnonzero(mask[j])
        pre[r, : len(ids)] = ids
        flat[r, : len(ids)] = j * n_pre + ids
    rows = np.full(n_post, p, np.int32)
    rows[posts] = np.arange(p, dtype=np.int32)
    valid = flat < n_post * n_pre
    fan_lists = [np.flatnonzero((pre.ravel() == i) & valid.ravel()) for i in range(n_pre)]
    f = max((len(ids) for ids in fan_lists), default=0) or 1
    fanout = np.full((n_pre, f), p * k, np.int32)
    for i, ids in enumerate(fan_lists):
        fanout[i, : len(ids)] = ids
    for a in (pre, flat, posts, rows, fanout):
        a.flags.writeable = False
    return FanIn(pre, flat, posts, rows, fanout, bool(mask.all()))


class SynapseLayout:
    """The sparse layout of a wired LTC: padded fan-in lists of its recurrent and sensory
    synapses, built once on the host from the static masks.

    Hashable by value (it is a static argument of the kernel).

    **Arguments:**
    - `mask`: boolean ``(N, N)`` recurrent mask, ncps layout ``[pre, post]`` (``LTC.mask``).
    - `sensory_mask`: boolean ``(I, N)`` sensory mask ``[input, post]``.
    """

    __slots__ = ("_key", "inputs", "masks", "recurrent", "sensory", "units")

    def __init__(self, mask, sensory_mask):
        mask, sensory_mask = np.asarray(mask, bool), np.asarray(sensory_mask, bool)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(f"mask must be a square (N, N) boolean matrix, got {mask.shape}")
        if sensory_mask.ndim != 2 or sensory_mask.shape[1] != mask.shape[0]:
            raise ValueError(
                f"sensory_mask must have shape (I, {mask.shape[0]}), got {sensory_mask.shape}"
            )
        self.units, self.inputs = mask.shape[0], sensory_mask.shape[0]
        mask, sensory_mask = mask.copy(), sensory_mask.copy()
        mask.flags.writeable = sensory_mask.flags.writeable = False
        self.masks = (mask, sensory_mask)
        self.recurrent = _fan_in(mask.T)
        self.sensory = _fan_in(sensory_mask.T)
        self._key = (mask.shape, sensory_mask.shape, np.packbits(mask).tobytes(),
                     np.packbits(sensory_mask).tobytes())

    @property
    def density(self) -> float:
        """Evaluated synapse slots (padding included) over the dense count, recurrent and
        sensory together — the fraction of the dense kernel's work the sparse one does."""
        n, i = self.units, self.inputs
        return (self.recurrent.slots + self.sensory.slots) / (n * n + n * i)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, SynapseLayout) and self._key == other._key

    def __repr__(self):
        r, s = self.recurrent, self.sensory
        return (f"SynapseLayout(units={self.units}, inputs={self.inputs}, recurrent "
                f"{r.pre.shape}, sensory {s.pre.shape}, density {self.density:.2f})")


@functools.lru_cache(maxsize=64)
def choose_layout(mask, sensory_mask, synapses: str) -> SynapseLayout | None:
    """The layout the LTC's fused step uses: ``None`` for the dense kernel.

    **Arguments:** the cell's static masks (hashable, e.g. ``StaticArray``) and its `synapses`
    setting: ``"dense"``, ``"sparse"``, or ``"auto"`` (sparse when the layout's
    :attr:`SynapseLayout.density` is below ``SPARSE_DENSITY_THRESHOLD``). Cached: built once.
    """
    if synapses not in SYNAPSE_KERNELS:
        raise ValueError(f"synapses must be one of {SYNAPSE_KERNELS}, got {synapses!r}")
    if synapses == "dense":
        return None
    layout = SynapseLayout(np.asarray(mask), np.asarray(sensory_mask))
    if synapses == "auto" and layout.density >= SPARSE_DENSITY_THRESHOLD:
        return None
    return layout


class LTCSparseParams(NamedTuple):
    """Effective LTC parameters on the layout's slots: synapse arrays ``(P, K)`` (recurrent) and
    ``(Ps, Ks)`` (sensory) in fan-in order; neuron arrays ``(N,)``."""

    w: Float[Array, "P K"]
    sigma: Float[Array, "P K"]
    mu: Float[Array, "P K"]
    erev: Float[Array, "P K"]
    sensory_w: Float[Array, "Ps Ks"]
    sensory_sigma: Float[Array, "Ps Ks"]
    sensory_mu: Float[Array, "Ps Ks"]
    sensory_erev: Float[Array, "Ps Ks"]
    gleak: Float[Array, " N"]
    vleak: Float[Array, " N"]
    cm: Float[Array, " N"]


def _gather(values, index):
    # Static, in-bounds indices: no clamping or fill masks in the generated loop.
    return values.at[index].get(mode="promise_in_bounds")


def _take(matrix, flat):
    # The appended zero is the padding slot: zero weight, and the cotangent sent to it is dropped.
    return _gather(jnp.concatenate([matrix.ravel(), jnp.zeros((1,), matrix.dtype)]), flat)


def sparse_params(p: LTCParams, layout: SynapseLayout) -> LTCSparseParams:
    """Gather the dense effective parameters (``[post, pre]`` layout, absent synapses zero) onto
    the layout's slots. Differentiable: the cotangents flow back to the dense matrices."""
    r, s = layout.recurrent.flat, layout.sensory.flat
    return LTCSparseParams(
        w=_take(p.w, r), sigma=_take(p.sigma, r), mu=_take(p.mu, r), erev=_take(p.erev, r),
        sensory_w=_take(p.sensory_w, s), sensory_sigma=_take(p.sensory_sigma, s),
        sensory_mu=_take(p.sensory_mu, s), sensory_erev=_take(p.sensory_erev, s),
        gleak=p.gleak, vleak=p.vleak, cm=p.cm,
    )


# ------------------------------------------------------------------------------ the kernel
# Everything below works on a batch held **batch-minor**: potentials ``(N, B)``, inputs ``(I, B)``,
# synapse blocks ``(P, K, B)``. A gather ``v[pre]`` then copies whole contiguous rows of ``B``
# values and every elementwise op vectorises along the batch — about 3× faster on XLA:CPU than
# the same arithmetic under ``jax.vmap``, whose batch-major layout turns each gather into
# strided single-element loads. ``jax.custom_batching.custom_vmap`` routes a ``jax.vmap`` of the
# per-example kernel to this batched code; an unbatched call is a batch of one.


def _pre(u, f: FanIn):
    """Pre-synaptic values ``(n_pre, B)`` → the slots ``(P, K, B)``."""
    return u[None] if f.full else _gather(u, f.pre)


def _post(u, f: FanIn):
    """Per-neuron values ``(n_post, B)`` → the rows ``(P, 1, B)``."""
    return (u if f.full else _gather(u, f.posts))[:, None]


def _to_neurons(values, f: FanIn):
    """``(P, B)`` per-row sums → ``(n_post, B)``, zero for neurons without fan-in (a gather)."""
    if f.full:
        return values
    zero = jnp.zeros((1,) + values.shape[1:], values.dtype)
    return _gather(jnp.concatenate([values, zero]), f.rows)


def _from_slots(values, f: FanIn):
    """``(P, K, B)`` slot values → ``(n_pre, B)`` sums over each pre-synaptic neuron's slots."""
    if f.full:
        return jnp.sum(values, axis=0)
    fanout = f.fanout
    flat = values.reshape((-1,) + values.shape[2:])
    flat = jnp.concatenate([flat, jnp.zeros((1,) + flat.shape[1:], flat.dtype)])
    return jnp.sum(_gather(flat, fanout), axis=1)


def _col(a):
    return a[..., None]


def _sensory(p: LTCSparseParams, lay: SynapseLayout, x):
    f = lay.sensory
    x_mu = _pre(x, f) - _col(p.sensory_mu)
    sg = sigmoid(_col(p.sensory_sigma) * x_mu)
    s = _col(p.sensory_w) * sg
    num = _to_neurons(jnp.sum(s * _col(p.sensory_erev), axis=1), f)
    return x_mu, sg, s, num, _to_neurons(jnp.sum(s, axis=1), f)


class _Tanh(NamedTuple):
    """One synapse block in the forward's arithmetic: ``s = w σ(σ_ij (u − μ))`` with
    ``σ(z) = ½ tanh(z/2) + ½`` becomes ``s = h + h tanh(a (u − μ))`` (``h = w/2``,
    ``a = σ_ij/2``); the constant halves ``Σ h``, ``Σ h erev`` are summed once per call, so each
    slot costs a subtract, a multiply, a tanh and two multiply-adds."""

    a: Array
    mu: Array
    h: Array
    he: Array
    const_den: Array  # (n_post, 1): Σ_k h over each neuron's synapses
    const_num: Array  # (n_post, 1): Σ_k h·erev


def _tanh_form(w, sigma, mu, erev, f: FanIn) -> _Tanh:
    a = 0.5 * sigma
    h = 0.5 * w
    he = h * erev
    return _Tanh(_col(a), _col(mu), _col(h), _col(he),
                 _to_neurons(jnp.sum(h, axis=1)[:, None], f),
                 _to_neurons(jnp.sum(he, axis=1)[:, None], f))


def _sums(t: _Tanh, u, f: FanIn):
    th = jnp.tanh(t.a * (_pre(u, f) - t.mu))
    return (_to_neurons(jnp.sum(t.he * th, axis=1), f),
            _to_neurons(jnp.sum(t.h * th, axis=1), f))


def _prelude(p: LTCSparseParams, lay, x, dt, unfolds: int, epsilon: float):
    ts = _tanh_form(p.sensory_w, p.sensory_sigma, p.sensory_mu, p.sensory_erev, lay.sensory)
    tr = _tanh_form(p.w, p.sigma, p.mu, p.erev, lay.recurrent)
    num_s, den_s = _sums(ts, x, lay.sensory)
    cm_t = _col(p.cm) / (dt / unfolds)
    base_num = _col(p.gleak * p.vleak) + ts.const_num + num_s + tr.const_num
    base_den = cm_t + _col(p.gleak) + ts.const_den + den_s + tr.const_den + epsilon
    return tr, cm_t, base_num, base_den


def _unfold(lay: SynapseLayout, v, tr: _Tanh, cm_t, base_num, base_den):
    num, den = _sums(tr, v, lay.recurrent)
    den = base_den + den
    return (cm_t * v + base_num + num) / den, den


def _forward(p, lay, x, v0, dt, unfolds, epsilon, keep: bool):
    """Batch-minor forward: ``x (I, B)``, ``v0 (N, B)``, ``dt (B,)`` → ``v (N, B)`` and, with
    `keep`, every unfold's potentials ``(unfolds + 1, N, B)`` and denominators."""
    pre = _prelude(p, lay, x, dt, unfolds, epsilon)
    if not keep:
        return jax.lax.fori_loop(0, unfolds, lambda _, v: _unfold(lay, v, *pre)[0], v0)

    def body(k, carry):
        v, vs, dens = carry
        v, den = _unfold(lay, v, *pre)
        return v, vs.at[k + 1].set(v), dens.at[k].set(den)

    vs = jnp.zeros((unfolds + 1,) + v0.shape, v0.dtype).at[0].set(v0)
    dens = jnp.zeros((unfolds,) + v0.shape, v0.dtype)
    return jax.lax.fori_loop(0, unfolds, body, (v0, vs, dens))


def _backward(p, lay, x, dt, vs, dens, g, unfolds, epsilon):
    """Batch-minor backward (activations recomputed from ``vs``); per-example parameter
    cotangents with the batch last."""
    f = lay.recurrent
    cm_t = _col(p.cm) / (dt / unfolds)
    w, sigma, erev = _col(p.w), _col(p.sigma), _col(p.erev)
    zero_pk = jnp.zeros(p.w.shape + g.shape[1:], g.dtype)

    def body(i, carry):
        k = unfolds - 1 - i
        g, d_w, d_sigma, d_dz, d_erev, d_num, d_den, d_cmt = carry
        v, v_new, den = vs[k], vs[k + 1], dens[k]
        dv_mu = _pre(v, f) - _col(p.mu)
        sg = sigmoid(sigma * dv_mu)
        gn = g / den
        gd = -gn * v_new
        gn_p = _post(gn, f)
        ds = gn_p * erev + _post(gd, f)
        dz = ds * w * sg * (1 - sg)
        g_prev = gn * cm_t + _from_slots(dz * sigma, f)
        return (
            g_prev,
            d_w + ds * sg,
            d_sigma + dz * dv_mu,
            d_dz + dz,
            d_erev + gn_p * (w * sg),
            d_num + gn,
            d_den + gd,
            d_cmt + gn * v + gd,
        )

    zero_n = jnp.zeros_like(g)
    init = (g, zero_pk, zero_pk, zero_pk, zero_pk, zero_n, zero_n, zero_n)
    g0, d_w, d_sigma, d_dz, d_erev, d_num, d_den, d_cmt = jax.lax.fori_loop(
        0, unfolds, body, init
    )

    fs = lay.sensory
    x_mu, ssg, ss, _, _ = _sensory(p, lay, x)
    dn_p = _post(d_num, fs)
    dss = dn_p * _col(p.sensory_erev) + _post(d_den, fs)
    dzs = dss * _col(p.sensory_w) * ssg * (1 - ssg)
    grads = LTCSparseParams(
        w=d_w,
        sigma=d_sigma,
        mu=-d_dz * sigma,
        erev=d_erev,
        sensory_w=dss * ssg,
        sensory_sigma=dzs * x_mu,
        sensory_mu=-dzs * _col(p.sensory_sigma),
        sensory_erev=dn_p * ss,
        gleak=d_num * _col(p.vleak) + d_den,
        vleak=d_num * _col(p.gleak),
        cm=d_cmt * (unfolds / dt),
    )
    dx = _from_slots(dzs * _col(p.sensory_sigma), fs)
    ddt = -jnp.sum(d_cmt * cm_t, axis=0) / dt
    return grads, dx, g0, ddt


def _batch_last(tree):
    return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, -1, 0), tree)


def _any(tree) -> bool:
    return any(jax.tree_util.tree_leaves(tree))


def _batched(a, is_batched: bool, size: int):
    return a if is_batched else jnp.broadcast_to(a, (size,) + jnp.shape(a))


@functools.lru_cache(maxsize=64)
def _kernel(layout: SynapseLayout, unfolds: int, epsilon: float):
    """The custom-VJP, custom-vmap kernel for one static configuration."""

    def forward_one(p, x, v0, dt):
        return _forward(p, layout, x[:, None], v0[:, None], dt[None], unfolds, epsilon,
                        False)[:, 0]

    def fwd_one(p, x, v0, dt):
        v, vs, dens = _forward(p, layout, x[:, None], v0[:, None], dt[None], unfolds,
                               epsilon, True)
        return v[:, 0], (p, x, dt, vs[..., 0], dens[..., 0])

    def bwd_one(res, g):
        p, x, dt, vs, dens = res
        grads, dx, dv0, ddt = _backward(p, layout, x[:, None], dt[None], vs[..., None],
                                        dens[..., None], g[:, None], unfolds, epsilon)
        grads = jax.tree_util.tree_map(lambda a: a[..., 0], grads)
        return grads, dx[:, 0], dv0[:, 0], ddt[0].astype(dt.dtype)

    forward = custom_vmap(forward_one)
    fwd = custom_vmap(fwd_one)
    bwd = custom_vmap(bwd_one)

    @forward.def_vmap
    def _forward_rule(size, in_batched, p, x, v0, dt):
        if _any(in_batched[0]):  # per-example parameters: no shared synapse blocks
            return jax.vmap(forward_one, in_axes=_axes(in_batched))(p, x, v0, dt), True
        _, bx, bv, bt = in_batched
        v = _forward(p, layout, _batched(x, bx, size).T, _batched(v0, bv, size).T,
                     _batched(dt, bt, size), unfolds, epsilon, False)
        return v.T, True

    @fwd.def_vmap
    def _fwd_rule(size, in_batched, p, x, v0, dt):
        if _any(in_batched[0]):
            out = jax.vmap(fwd_one, in_axes=_axes(in_batched))(p, x, v0, dt)
            return out, jax.tree_util.tree_map(lambda _: True, out)
        _, bx, bv, bt = in_batched
        x, dt = _batched(x, bx, size), _batched(dt, bt, size)
        v, vs, dens = _forward(p, layout, x.T, _batched(v0, bv, size).T, dt, unfolds,
                               epsilon, True)
        res = (p, x, dt, _batch_last(vs), _batch_last(dens))
        flags = (jax.tree_util.tree_map(lambda _: False, p), True, True, True, True)
        return (v.T, res), (True, flags)

    @bwd.def_vmap
    def _bwd_rule(size, in_batched, res, g):
        (bp, bx, bt, bvs, bdens), bg = in_batched
        if _any(bp):
            out = jax.vmap(bwd_one, in_axes=_axes(in_batched))(res, g)
            return out, jax.tree_util.tree_map(lambda _: True, out)
        p, x, dt, vs, dens = res
        x, dt = _batched(x, bx, size), _batched(dt, bt, size)
        vs, dens = _batched(vs, bvs, size), _batched(dens, bdens, size)
        grads, dx, dv0, ddt = _backward(
            p, layout, x.T, dt, jnp.moveaxis(vs, 0, -1), jnp.moveaxis(dens, 0, -1),
            _batched(g, bg, size).T, unfolds, epsilon)
        out = (_batch_last(grads), dx.T, dv0.T, ddt.astype(dt.dtype))
        return out, jax.tree_util.tree_map(lambda _: True, out)

    step = jax.custom_vjp(lambda p, x, v0, dt: forward(p, x, v0, dt))
    step.defvjp(fwd, bwd)
    return step


def _axes(in_batched):
    return jax.tree_util.tree_map(lambda b: 0 if b else None, in_batched)


def sparse_ltc_step(
    p: LTCSparseParams,
    x: Float[Array, " I"],
    v0: Float[Array, " N"],
    dt: Float[Array, ""],
    layout: SynapseLayout,
    unfolds: int,
    epsilon: float,
) -> Float[Array, " N"]:
    """``unfolds`` fused semi-implicit LTC steps across ``dt`` with ``x`` held, evaluating only
    the synapses of ``layout`` — the sparse twin of
    :func:`liquidjax.cells._ltc_kernel.fused_ltc_step`, with a hand-written VJP.

    Acts on one example; under ``jax.vmap`` (with shared parameters) it runs one batched,
    batch-minor kernel instead of a vmap of per-example ops.

    **Arguments:**
    - `p`: :func:`sparse_params` of the cell's effective parameters.
    - `x`: the (already input-mapped) observation ``(I,)``; `v0`: potentials ``(N,)``.
    - `dt`: the elapsed time; `layout`: the static :class:`SynapseLayout`.
    - `unfolds`, `epsilon`: as the dense kernel.

    **Returns:** the potentials after ``dt``, shape ``(N,)``.
    """
    dt = jnp.asarray(dt, v0.dtype)
    return _kernel(layout, int(unfolds), float(epsilon))(p, x, v0, dt)
