"""GRU-D: a GRU with trainable decays for missing values (reads the ``[x̃ | m | δ]`` features
of :func:`liquidjax.data.missing_value_features`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractCell
from ._baseline_parts import GRUGates, InputLayout, check_sizes, uniform_init

GRUD_INPUTS = InputLayout(
    3, "features", "[x~ | m | delta] blocks (liquidjax.data.missing_value_features)")


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
    gates: GRUGates
    input_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)

    def __init__(self, input_size: int, units: int, *, dtype: Any = jnp.float32,
                 key: PRNGKeyArray):
        check_sizes(input_size=input_size, units=units)
        GRUD_INPUTS.check("GRU-D", input_size)
        c = input_size // 3
        k1, k2, k3 = jax.random.split(key, 3)
        self.decay_x_w = uniform_init(k1, (c,), c, dtype)
        self.decay_x_b = jnp.zeros((c,), dtype)
        self.decay_h_w = uniform_init(k2, (units, c), c, dtype)
        self.decay_h_b = jnp.zeros((units,), dtype)
        self.gates = GRUGates(2 * c, units, dtype, k3)
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
