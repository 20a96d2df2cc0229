"""Load ncps (PyTorch) models into liquidjax, and go back.

``from_ncps(state_dict, kind=..., input_size=..., units=..., **ncps_kwargs)`` builds the liquidjax
model equivalent to ``ncps.torch.LTC`` / ``ncps.torch.CfC`` with the same constructor arguments;
the same weights then give the same numbers (see ``tests/refs/ncps``).
"""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._static import StaticArray, replace_fields
from ..cells import LTC, MixedMemory
from ..layers import LiquidRNN
from ._cfc import (
    cfc_from_state_dict,
    cfc_to_state_dict,
    lstm_from_state_dict,
    lstm_to_state_dict,
)

_LTC_KWARGS = {"input_mapping", "output_mapping", "ode_unfolds", "epsilon",
               "implicit_param_constraints"}
_COMMON_KWARGS = {"mixed_memory", "proj_size", "return_sequences", "batch_first"}
_LTC_TENSORS = ("gleak", "vleak", "cm", "w", "sigma", "mu", "erev", "sensory_w", "sensory_sigma",
                "sensory_mu", "sensory_erev", "input_w", "input_b", "output_w", "output_b")


def _as_numpy(sd: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):  # a torch tensor slipped through
            v = v.detach().cpu().numpy()
        out[k] = np.asarray(v)
    return out


def _take(sd: dict[str, np.ndarray], key: str, shape: tuple[int, ...], dtype) -> jax.Array:
    if key not in sd:
        raise ValueError(f"state_dict has no entry {key!r} (keys: {sorted(sd)[:8]}...)")
    arr = sd[key]
    if arr.shape != shape:
        raise ValueError(f"state_dict[{key!r}] has shape {arr.shape}, expected {shape}")
    return jnp.asarray(arr, dtype)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def _ltc_from_state_dict(sd, *, input_size, units, dtype, prefix="rnn_cell.", **kw):
    cell = LTC(input_size, units, key=jax.random.key(0), dtype=dtype, **kw)
    n, i, m = cell.state_size, cell.input_size, cell.output_size
    shapes = {"gleak": (n,), "vleak": (n,), "cm": (n,), "w": (n, n), "sigma": (n, n),
              "mu": (n, n), "erev": (n, n), "sensory_w": (i, n), "sensory_sigma": (i, n),
              "sensory_mu": (i, n), "sensory_erev": (i, n), "input_w": (i,), "input_b": (i,),
              "output_w": (m,), "output_b": (m,)}
    names = [t for t in _LTC_TENSORS if getattr(cell, t) is not None]
    values = [_take(sd, prefix + t, shapes[t], dtype) for t in names]
    cell = eqx.tree_at(lambda c: [getattr(c, t) for t in names], cell, values)
    mask = np.asarray(_take(sd, prefix + "sparsity_mask", (n, n), dtype)) != 0
    smask = np.asarray(_take(sd, prefix + "sensory_sparsity_mask", (i, n), dtype)) != 0
    # Masks are static configuration: rebuild the cell around them rather than tree_at.
    return replace_fields(cell, mask=StaticArray(mask), sensory_mask=StaticArray(smask))


def _ltc_to_state_dict(cell, prefix="rnn_cell.") -> dict[str, np.ndarray]:
    sd = {prefix + t: np.asarray(getattr(cell, t), np.float32) for t in _LTC_TENSORS
          if getattr(cell, t) is not None}
    sd[prefix + "sparsity_mask"] = cell.mask.array.astype(np.float32)
    sd[prefix + "sensory_sparsity_mask"] = cell.sensory_mask.array.astype(np.float32)
    return sd


def from_ncps(
    state_dict: dict[str, Any],
    *,
    kind: Literal["ltc", "cfc"],
    input_size: int,
    units: Any,
    dtype: Any = None,
    **ncps_kwargs: Any,
) -> LiquidRNN:
    """Build the liquidjax model equivalent to an ncps (PyTorch) ``LTC`` or ``CfC``.

    **Arguments:**
    - `state_dict`: ncps's ``state_dict`` as NumPy arrays
      (``{k: v.numpy() for k, v in m.state_dict().items()}``).
    - `kind`: ``"ltc"`` (``ncps.torch.LTC``) or ``"cfc"`` (``ncps.torch.CfC``).
    - `input_size`: number of input features.
    - `units`: an int or a :class:`liquidjax.wirings.Wiring` (same arguments as given to ncps).
    - `dtype`: parameter dtype (default float32, or float64 when ``jax_enable_x64`` is on).
    - `ncps_kwargs`: the other ncps constructor arguments (``mixed_memory``, ``proj_size``,
      ``return_sequences``, ``mode``, ``activation``, ``backbone_units``, ``backbone_layers``,
      ``backbone_dropout``, ``ode_unfolds``, ``epsilon``, ``implicit_param_constraints``,
      ``input_mapping``, ``output_mapping``). ``batch_first`` is accepted and ignored: the model
      acts on one unbatched ``(L, input_size)`` sequence (``jax.vmap`` for batches).

    **Returns:** a :class:`~liquidjax.LiquidRNN` ``m`` with ``m(x, timespans=None)`` →
    ``(outputs, final_state)`` (``final_state`` is ``(h, c)`` with mixed memory).

    **Example:**
    ```python
    sd = {k: v.numpy() for k, v in torch_ltc.state_dict().items()}
    m = from_ncps(sd, kind="ltc", input_size=5, units=8)
    ys, h = jax.vmap(m)(x)      # x: (batch, time, 5)
    ```
    """
    sd = _as_numpy(state_dict)
    if dtype is None:
        dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    mixed = bool(ncps_kwargs.pop("mixed_memory", False))
    proj_size = ncps_kwargs.pop("proj_size", None)
    return_sequences = bool(ncps_kwargs.pop("return_sequences", True))
    ncps_kwargs.pop("batch_first", None)
    if kind == "ltc":
        unknown = set(ncps_kwargs) - _LTC_KWARGS
        if unknown:
            raise ValueError(
                f"unknown ncps LTC arguments {sorted(unknown)}; expected some of "
                f"{sorted(_LTC_KWARGS | _COMMON_KWARGS)}"
            )
        cell = _ltc_from_state_dict(sd, input_size=input_size, units=units, dtype=dtype,
                                    **ncps_kwargs)
    elif kind == "cfc":
        cell = _cast(cfc_from_state_dict(sd, input_size=input_size, units=units, **ncps_kwargs),
                     dtype)
    else:
        raise ValueError(f"kind must be 'ltc' or 'cfc', got {kind!r}")
    if mixed:
        cell = MixedMemory(cell, _cast(lstm_from_state_dict(sd, prefix="lstm."), dtype))
    proj = None
    if proj_size is not None:
        out = cell.output_size
        proj = eqx.nn.Linear(out, proj_size, key=jax.random.key(0), dtype=dtype)
        proj = eqx.tree_at(lambda p: (p.weight, p.bias), proj,
                           (_take(sd, "fc.weight", (proj_size, out), dtype),
                            _take(sd, "fc.bias", (proj_size,), dtype)))
    return LiquidRNN(cell, proj, return_sequences=return_sequences)


def to_ncps(model: LiquidRNN) -> dict[str, np.ndarray]:
    """The ncps ``state_dict`` (NumPy float32 arrays; wrap with ``torch.from_numpy``) of a model
    built by :func:`from_ncps` or with the same structure."""
    cell = model.cell
    sd: dict[str, np.ndarray] = {}
    if isinstance(cell, MixedMemory):
        sd.update(lstm_to_state_dict(cell.lstm, prefix="lstm."))
        cell = cell.cell
    if isinstance(cell, LTC):
        sd.update(_ltc_to_state_dict(cell))
    else:
        sd.update(cfc_to_state_dict(cell))
    if model.proj is not None:
        sd["fc.weight"] = np.asarray(model.proj.weight, np.float32)
        sd["fc.bias"] = np.asarray(model.proj.bias, np.float32)
    return sd
