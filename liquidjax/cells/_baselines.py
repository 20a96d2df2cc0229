"""Continuous-time baseline cells for irregularly sampled series, on the cell contract.

* :class:`CTRNN` — continuous-time RNN, an ODE cell (general form).
* :class:`GRUODE` — the continuous GRU of GRU-ODE-Bayes, an ODE cell in conductance form (so the
  fused semi-implicit solver applies as well as any diffrax solver).
* :class:`GRUODEBayes` — GRU-ODE-Bayes: the GRU-ODE between observations and the GRU-Bayes
  jump at each one (reads ``[x | m]``).
* :class:`ODERNN` — a latent ODE between observations and a GRU jump at each observation.
* :class:`GRUD` — GRU with trainable decays for missing values (reads the ``[x̃ | m | δ]``
  features of :func:`liquidjax.data.missing_value_features`).
* :class:`NeuralCDE` — a neural controlled differential equation driven by the linear
  interpolation of the observations (and time), step by step, or by a continuous linear or
  cubic control path in one ``diffrax.ControlTerm`` solve.

Every ODE part integrates through the cell's :class:`~liquidjax.solvers.Integrator` (one
``liquidjax.solvers.solve``), so any diffrax solver, step-size controller and adjoint applies.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..solvers import Integrator, input_path, make_control_term, solve
from ._base import AbstractCell, AbstractConductanceCell, AbstractODECell, AbstractPathCell


def _default_integrator(integrator: Integrator | None) -> Integrator:
    # Four classic Runge-Kutta-quality steps per interval: explicit, cheap, and accurate enough
    # for these non-stiff fields; pass an Integrator for anything else.
    return Integrator(diffrax.Tsit5(), ode_unfolds=4) if integrator is None else integrator


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _uniform(key, shape, fan_in: int, dtype) -> Array:
    lim = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -lim, lim)


# ------------------------------------------------------------------------------------------ CT-RNN
class CTRNN(AbstractODECell):
    r"""Continuous-time recurrent network (Funahashi & Nakamura 1993, "Approximation of dynamical
    systems by continuous time recurrent neural networks", Neural Networks 6(6)):

    $$\frac{dh}{dt} = -\frac{h}{\tau} + \tanh(W x + U h + b), \qquad \tau = \mathrm{softplus}(\rho) > 0$$

    with the input ``x`` held over each interval (or a continuous path). The output is ``h``.

    **Arguments:**
    - `input_size`, `units`: sizes.
    - `integrator`: a :class:`~liquidjax.solvers.Integrator` (default Tsit5, 4 constant steps
      per interval).
    - `dtype`: parameter dtype.
    - `key`: PRNG key.

    **Example:**
    ```python
    cell = CTRNN(3, 16, key=jax.random.key(0))
    h = cell.advance(cell.init_state(), jnp.ones(3), 0.0, 0.5)
    ```
    """

    weight_in: Float[Array, "units input"]
    weight_rec: Float[Array, "units units"]
    bias: Float[Array, " units"]
    tau_raw: Float[Array, " units"]
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, integrator: Integrator | None = None,
                 dtype: Any = jnp.float32, key: PRNGKeyArray):
        _check_sizes(input_size=input_size, units=units)
        k1, k2 = jax.random.split(key)
        self.weight_in = _uniform(k1, (units, input_size), input_size, dtype)
        self.weight_rec = _uniform(k2, (units, units), units, dtype)
        self.bias = jnp.zeros((units,), dtype)
        self.tau_raw = jnp.full((units,), 0.5413, dtype)  # softplus(0.5413) = 1
        self.integrator = _default_integrator(integrator)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    @property
    def tau(self) -> Array:
        return jax.nn.softplus(self.tau_raw)

    def init_state(self) -> Float[Array, " units"]:
        return jnp.zeros((self.state_size,), self.bias.dtype)

    def vector_field(self, t, state, x):
        u = self.input_at(x, t)
        return -state / self.tau + jnp.tanh(self.weight_in @ u + self.weight_rec @ state
                                            + self.bias)

    def output(self, state):
        return state


# ----------------------------------------------------------------------------------------- GRU-ODE
class _GRUGates(eqx.Module):
    """The three GRU maps of a hidden state and an input (shared by GRU-ODE and GRU-D)."""

    w_x: Float[Array, "three_units input"]
    w_h: Float[Array, "three_units units"]
    bias: Float[Array, " three_units"]

    def __init__(self, input_size: int, units: int, dtype, key):
        k1, k2 = jax.random.split(key)
        self.w_x = _uniform(k1, (3 * units, input_size), max(input_size, 1), dtype)
        self.w_h = _uniform(k2, (3 * units, units), units, dtype)
        self.bias = jnp.zeros((3 * units,), dtype)

    def __call__(self, x, h):
        """``(z, r, g)``: update gate, reset gate and candidate state."""
        n = h.shape[0]
        ax = self.w_x @ x + self.bias
        wz, wr, wg = self.w_h[:n], self.w_h[n : 2 * n], self.w_h[2 * n :]
        z = jax.nn.sigmoid(ax[:n] + wz @ h)
        r = jax.nn.sigmoid(ax[n : 2 * n] + wr @ h)
        g = jnp.tanh(ax[2 * n :] + wg @ (r * h))
        return z, r, g


class GRUODE(AbstractConductanceCell):
    r"""GRU-ODE (De Brouwer et al. 2019, "GRU-ODE-Bayes: Continuous modeling of sporadically-
    observed time series", NeurIPS; eq. 3): the GRU update made continuous,

    $$\frac{dh}{dt} = (1 - z) \odot (g - h),\quad z = \sigma(W_z x + U_z h + b_z),\quad
      r = \sigma(W_r x + U_r h + b_r),\quad g = \tanh(W_g x + U_g (r \odot h) + b_g).$$

    It is in conductance form (``cm = 1``, ``num = (1 − z) g``, ``den = 1 − z ≥ 0``), so the
    fused semi-implicit solver applies as well as any diffrax solver; ``h`` stays in
    ``[−1, 1]``. The input is held over each interval (the paper's GRU-Bayes jump at
    observations is not part of this cell; stack it with a discrete update if needed).

    **Arguments:** `input_size`, `units`, `integrator` (default Tsit5, 4 steps per interval),
    `dtype`, `key`.

    **Example:**
    ```python
    cell = GRUODE(3, 16, key=jax.random.key(0))
    ```
    """

    gates: _GRUGates
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, integrator: Integrator | None = None,
                 dtype: Any = jnp.float32, key: PRNGKeyArray):
        _check_sizes(input_size=input_size, units=units)
        self.gates = _GRUGates(input_size, units, dtype, key)
        self.integrator = _default_integrator(integrator)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.gates.bias.dtype)

    def conductances(self, t, y, x):
        z, _, g = self.gates(self.input_at(x, t), y)
        return (1 - z) * g, 1 - z, jnp.ones_like(y)

    def output(self, state):
        return state


class _PredictedGRUODE(AbstractConductanceCell):
    """GRU-ODE read by its own prediction ``p(h)`` (GRU-ODE-Bayes between observations)."""

    gates: _GRUGates
    predict: eqx.nn.MLP
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, channels, units, p_hidden, integrator, dtype, key):
        k1, k2 = jax.random.split(key)
        self.gates = _GRUGates(2 * channels, units, dtype, k1)
        self.predict = eqx.nn.MLP(units, 2 * channels, p_hidden, 1, activation=jax.nn.relu,
                                  dtype=dtype, key=k2)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = 2 * channels, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.gates.bias.dtype)

    def conductances(self, t, y, x):
        z, _, g = self.gates(self.predict(y), y)
        return (1 - z) * g, 1 - z, jnp.ones_like(y)

    def output(self, state):
        return state


class _AbstractFlowThenJump(AbstractCell):
    """A cell that flows between observations (``flow``, an ODE cell whose state is the cell's)
    and updates at each one: its integrator, initial state and output are the flow's state."""

    flow: eqx.AbstractVar[AbstractODECell]

    @property
    def integrator(self) -> Integrator:
        """The flow's integrator."""
        return self.flow.integrator

    def init_state(self):
        return self.flow.init_state()

    def output(self, state):
        return state


class GRUODEBayes(_AbstractFlowThenJump):
    r"""GRU-ODE-Bayes (De Brouwer et al. 2019, NeurIPS; section 4): a GRU-ODE between
    observations and the **GRU-Bayes jump** at each observation.

    Between observations ``h`` follows the GRU-ODE (:class:`GRUODE`'s equation) read by its own
    prediction of the observations, ``p(h) = (μ, log σ²)`` (an MLP, ReLU, ``p_hidden`` wide: the
    paper's ``p_model``, with ``impute``). At an observation ``x`` with mask ``m`` it jumps:

    $$e_d = rac{x_d − μ_d}{σ_d},\quad
      u_d = m_d\,\mathrm{ReLU}igl([x_d, μ_d, \log σ_d^2, e_d]\,W_d + b_digr),\quad
      h^+ = \mathrm{GRUCell}(u, h^-),$$

    per channel ``d`` (``W_d`` of shape ``4 × prep_hidden``; the paper's
    ``GRUObservationCellLogvar``); a step where nothing was observed does not jump.
    :class:`GRUODE` is the flow alone, read by a held input; here the flow reads ``p(h)``
    instead, as in the paper. It is in conductance form, so the fused solver applies.

    The input of a step is ``[x | m]`` (``input_size = 2 C``, e.g. ``missing="path"`` from
    :func:`liquidjax.data.model_inputs`); values where ``m = 0`` are not read. :meth:`predict`
    gives ``p(h)`` for the paper's observation loss (the Gaussian NLL of the next observations).

    **Arguments:** `input_size` (``2 C``), `units`, `p_hidden` (default `units`), `prep_hidden`
    (default 4), `integrator` (default Tsit5, 4 steps per interval), `dtype`, `key`.

    **Example:**
    ```python
    cell = GRUODEBayes(2 * 3, 16, key=jax.random.key(0))   # 3 channels: [x | m]
    ```
    """

    flow: _PredictedGRUODE
    w_prep: Float[Array, "channels 4 prep"]
    b_prep: Float[Array, "channels prep"]
    gru: eqx.nn.GRUCell
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, p_hidden: int | None = None,
                 prep_hidden: int = 4, integrator: Integrator | None = None,
                 dtype: Any = jnp.float32, key: PRNGKeyArray):
        _check_sizes(input_size=input_size, units=units, prep_hidden=prep_hidden)
        if input_size % 2:
            raise ValueError(
                f"GRU-ODE-Bayes reads [x | m] blocks (values and observation mask, e.g. "
                f"missing='path'): input_size must be 2 × channels, got {input_size}"
            )
        c = input_size // 2
        k1, k2, k3 = jax.random.split(key, 3)
        self.flow = _PredictedGRUODE(c, units, p_hidden or units, _default_integrator(integrator),
                                     dtype, k1)
        std = (2.0 / (4 + prep_hidden)) ** 0.5  # the paper's initialisation
        self.w_prep = std * jax.random.normal(k2, (c, 4, prep_hidden), dtype)
        self.b_prep = jnp.full((c, prep_hidden), 0.1, dtype)
        self.gru = eqx.nn.GRUCell(c * prep_hidden, units, dtype=dtype, key=k3)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def predict(self, state) -> tuple[Array, Array]:
        """``(μ, log σ²)``: the predicted distribution of each channel's next observation."""
        mean, logvar = jnp.split(self.flow.predict(state), 2)
        return mean, logvar

    def jump(self, state, x):
        """The GRU-Bayes update ``h⁺`` of `state` (``h⁻``) by the observation ``x = [x | m]``."""
        c = self.input_size // 2
        obs, m = x[:c], x[c:]
        mean, logvar = self.predict(state)
        error = (obs - mean) * jnp.exp(-0.5 * logvar)
        feats = jnp.stack([obs, mean, logvar, error], axis=-1)
        u = jax.nn.relu(jnp.einsum("cf,cfp->cp", feats, self.w_prep) + self.b_prep)
        u = jnp.where(m[:, None] > 0, u, 0)  # an unobserved value (NaN-free or not) is not read
        return jnp.where(jnp.any(m > 0), self.gru(u.reshape(-1), state), state)

    def advance(self, state, x, t0, t1, *, key=None):
        del key
        return self.jump(self.flow.advance(state, x, t0, t1), x)



# ----------------------------------------------------------------------------------------- ODE-RNN
class _LatentFlow(AbstractODECell):
    """``dh/dt = f(h)``: an MLP vector field that ignores the input (ODE-RNN's latent ODE)."""

    mlp: eqx.nn.MLP
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size, units, width, integrator, dtype, key):
        self.mlp = eqx.nn.MLP(units, units, width, 1, activation=jnp.tanh, dtype=dtype, key=key)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.mlp.layers[0].weight.dtype)

    def vector_field(self, t, state, x):
        return self.mlp(state)

    def output(self, state):
        return state


class ODERNN(_AbstractFlowThenJump):
    r"""ODE-RNN (Rubanova, Chen & Duvenaud 2019, "Latent ODEs for irregularly-sampled time
    series", NeurIPS; Algorithm 1): between observations the hidden state follows a learned
    ODE, at each observation a GRU cell updates it,

    $$h'_k = \mathrm{ODESolve}(f_\theta, h_{k-1}, (t_{k-1}, t_k)),\qquad
      h_k = \mathrm{GRUCell}(x_k, h'_k),$$

    with ``f_θ`` an MLP (one hidden layer of `width`, tanh). The output is ``h``.

    **Arguments:** `input_size`, `units`, `width` (hidden width of ``f_θ``, default
    `units`), `integrator` of the latent ODE (default Tsit5, 4 steps per interval), `dtype`,
    `key`.

    **Example:**
    ```python
    cell = ODERNN(3, 16, key=jax.random.key(0))
    ```
    """

    flow: _LatentFlow
    gru: eqx.nn.GRUCell
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, width: int | None = None,
                 integrator: Integrator | None = None, dtype: Any = jnp.float32,
                 key: PRNGKeyArray):
        _check_sizes(input_size=input_size, units=units)
        k1, k2 = jax.random.split(key)
        self.flow = _LatentFlow(input_size, units, width or units,
                                _default_integrator(integrator), dtype, k1)
        self.gru = eqx.nn.GRUCell(input_size, units, dtype=dtype, key=k2)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def advance(self, state, x, t0, t1, *, key=None):
        del key
        return self.gru(x, self.flow.advance(state, x, t0, t1))


# ------------------------------------------------------------------------------------------ GRU-D
class GRUD(AbstractCell):
    r"""GRU-D (Che et al. 2018, "Recurrent neural networks for multivariate time series with
    missing values", Scientific Reports 8:6085; eqs. 4–5): a GRU whose input and hidden state
    decay with the time since each channel was last observed.

    The input of a step is the ``[x̃ | m | δ]`` block of
    :func:`liquidjax.data.missing_value_features` (``input_size = 3 C``): ``x̃`` the last
    observed values, ``m`` the observation mask, ``δ`` the time since each channel's previous
    observation. With ``γ_x = exp(−max(0, w_γx ⊙ δ + b_γx))`` (diagonal) and
    ``γ_h = exp(−max(0, W_γh δ + b_γh))``,

    $$\hat x = m \odot \tilde x + (1 - m) \odot (\gamma_x \odot \tilde x
      + (1 - \gamma_x) \odot \bar x),\qquad \hat h = \gamma_h \odot h,\qquad
      h' = \mathrm{GRU}([\hat x, m], \hat h),$$

    where ``x̄`` is the empirical mean, 0 for data normalised by the training statistics
    (:class:`liquidjax.data.ChannelNormalizer`). Time enters through ``δ``; the interval
    ``t1 − t0`` is not used again.

    **Arguments:** `input_size` (``3 C``), `units`, `dtype`, `key`.

    **Example:**
    ```python
    cell = GRUD(3 * 4, 16, key=jax.random.key(0))   # 4 channels
    ```
    """

    decay_x_w: Float[Array, " channels"]
    decay_x_b: Float[Array, " channels"]
    decay_h_w: Float[Array, "units channels"]
    decay_h_b: Float[Array, " units"]
    gates: _GRUGates
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, dtype: Any = jnp.float32,
                 key: PRNGKeyArray):
        _check_sizes(input_size=input_size, units=units)
        if input_size % 3:
            raise ValueError(
                f"GRU-D reads [x̃ | m | δ] blocks (liquidjax.data.missing_value_features): "
                f"input_size must be 3 × channels, got {input_size}"
            )
        c = input_size // 3
        k1, k2, k3 = jax.random.split(key, 3)
        self.decay_x_w = _uniform(k1, (c,), c, dtype)
        self.decay_x_b = jnp.zeros((c,), dtype)
        self.decay_h_w = _uniform(k2, (units, c), c, dtype)
        self.decay_h_b = jnp.zeros((units,), dtype)
        self.gates = _GRUGates(2 * c, units, dtype, k3)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.decay_h_b.dtype)

    def advance(self, state, x, t0, t1, *, key=None):
        del key, t0, t1
        c = self.input_size // 3
        xt, m, delta = x[:c], x[c : 2 * c], x[2 * c :]
        gamma_x = jnp.exp(-jax.nn.relu(self.decay_x_w * delta + self.decay_x_b))
        gamma_h = jnp.exp(-jax.nn.relu(self.decay_h_w @ delta + self.decay_h_b))
        x_hat = m * xt + (1 - m) * gamma_x * xt  # (1 - γ_x) · x̄ with x̄ = 0
        h = gamma_h * state
        z, _, g = self.gates(jnp.concatenate([x_hat, m]), h)
        return (1 - z) * h + z * g

    def output(self, state):
        return state


# ------------------------------------------------------------------------------------ Neural CDE
class _CDEField(AbstractODECell):
    """``dz/dt = f(z) · v`` for a held control derivative ``v = dX/dt``."""

    mlp: eqx.nn.MLP
    integrator: Integrator
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, control_size, units, width, depth, integrator, dtype, key):
        self.mlp = eqx.nn.MLP(units, units * control_size, width, depth, activation=jax.nn.softplus,
                              final_activation=jnp.tanh, dtype=dtype, key=key)
        self.integrator = integrator
        self.input_size, self.state_size, self.output_size = control_size, units, units

    def init_state(self):
        return jnp.zeros((self.state_size,), self.mlp.layers[0].weight.dtype)

    def matrix(self, z):
        """``f(z)``, shape ``(units, control)``."""
        return self.mlp(z).reshape(self.state_size, self.input_size)

    def vector_field(self, t, state, x):
        return self.matrix(state) @ self.input_at(x, t)

    def output(self, state):
        return state


class NeuralCDE(AbstractPathCell):
    r"""Neural controlled differential equation (Kidger, Morrill, Foster & Lyons 2020, "Neural
    controlled differential equations for irregular time series", NeurIPS; eq. 4):

    $$z_0 = \zeta(x_1),\qquad z_t = z_0 + \int_0^t f_\theta(z_s)\,dX_s,$$

    with ``X(t) = (t, x(t))`` the observations augmented with time, ``ζ`` linear and ``f_θ`` an
    MLP (softplus, final tanh) into ``units × (C + 1)`` matrices. As for every cell of
    :class:`~liquidjax.LiquidRNN` the sequence starts at ``t = 0`` and observation ``k`` comes
    at ``T_k = Δt_1 + … + Δt_k``; before the first one the path holds ``x_1`` (so ``z`` follows
    the time channel alone; Kidger et al. start at ``T_1``, the same when ``Δt_1 → 0``).

    * **Held inputs** (``interpolation="hold"``, a step per observation): ``X`` is the
      **linear interpolation** of the observations; over each interval ``dX/dt`` is constant,
      ``(1, (x_k − x_{k−1}) / Δt_k)``, so ``dz/dt = f_θ(z)·dX/dt`` is an ODE with a held input,
      integrated by the cell's :class:`~liquidjax.solvers.Integrator`. The state is
      ``(z, x_prev, started)``.
    * **Continuous path** (``LiquidRNN(cell, interpolation="linear" | "cubic")``,
      :meth:`solve_path`): ``X`` is a diffrax interpolation of the observations over the
      observation times (``LinearInterpolation``, or ``backward_hermite_coefficients`` +
      ``CubicInterpolation``) and one ``diffeqsolve`` integrates ``dz = f_θ(z) dX`` — a
      ``diffrax.ControlTerm`` — over the whole time range with the integrator's solver and
      step-size controller. A linear path is linear inside every step (the steps meet every
      knot), so the term takes the control's exact increments and matches the held mode; a
      cubic path has a continuous derivative, so the term is the ODE ``f_θ(z)·dX/dt``
      (``ControlTerm.to_ode()``: the solver's full order and an honest error estimate).

    **Arguments:** `input_size` (``C``), `units`, `width`/`depth` of ``f_θ`` (default `units`,
    1), `integrator` (default Tsit5, 4 steps per interval), `dtype`, `key`.

    **Example:**
    ```python
    cell = NeuralCDE(3, 16, key=jax.random.key(0))
    zs, _ = LiquidRNN(cell, interpolation="cubic")(xs, timespans)   # continuous control path
    ```
    """

    field: _CDEField
    initial: eqx.nn.Linear
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, width: int | None = None, depth: int = 1,
                 integrator: Integrator | None = None, dtype: Any = jnp.float32,
                 key: PRNGKeyArray):
        _check_sizes(input_size=input_size, units=units, depth=depth)
        k1, k2 = jax.random.split(key)
        self.field = _CDEField(input_size + 1, units, width or units, depth,
                               _default_integrator(integrator), dtype, k1)
        self.initial = eqx.nn.Linear(input_size, units, dtype=dtype, key=k2)
        self.input_size, self.state_size, self.output_size = input_size, units, units

    @property
    def integrator(self) -> Integrator:
        return self.field.integrator

    def init_state(self):
        dtype = self.initial.weight.dtype
        return (jnp.zeros((self.state_size,), dtype), jnp.zeros((self.input_size,), dtype),
                jnp.zeros((), dtype))

    def _start(self, state, x_first):
        """``(z, x_prev)`` at the start of an interval: the state's, or ``(ζ(x), x)`` before
        the first observation (the path held at it)."""
        z, x_prev, started = state
        go = started > 0
        return jnp.where(go, z, self.initial(x_first)), jnp.where(go, x_prev, x_first)

    def advance(self, state, x, t0, t1, *, key=None):
        del key
        z, x_prev = self._start(state, x)
        dt = jnp.asarray(t1, z.dtype) - jnp.asarray(t0, z.dtype)
        v = jnp.concatenate([jnp.ones((1,), z.dtype), (x - x_prev) / dt])
        return self.field.advance(z, v, t0, t1), x, jnp.ones((), z.dtype)

    def solve_path(self, state, knots, x, interpolation, t_end):
        """The states ``(z, x_k, 1)`` at the observation times along the `interpolation` of
        ``(t, x)`` (one ``diffrax.ControlTerm`` solve, see the class docs)."""
        z0, x_prev = self._start(state, x[0])
        values = jnp.concatenate([knots[:, None], jnp.concatenate([x_prev[None], x])], axis=1)
        term = make_control_term(self.field.matrix, input_path(knots, values, interpolation))
        sol = solve(self, z0, None, knots[0], t_end,
                    saveat=diffrax.SaveAt(ts=jnp.minimum(knots[1:], t_end)),
                    observation_times=knots,
                    term=term if interpolation == "linear" else term.to_ode())
        return sol.ys, x, jnp.ones(x.shape[:1], z0.dtype)

    def output(self, state):
        return state[0]
