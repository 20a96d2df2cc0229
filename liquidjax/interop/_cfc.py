"""ncps (PyTorch) state-dict <-> liquidjax mapping for CfC, wired CfC and the mixed-memory LSTM.

torch ``nn.Linear.weight`` is ``(out, in)``, like ``eqx.nn.Linear.weight``: weights are copied
without transposing. ncps's ``w_tau``/``A`` are ``(1, H)``; liquidjax keeps them as ``(H,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ..cells._cfc import ACTIVATIONS, CfC, activation_name
from ..cells._lstm import LSTMCell
from ..cells._wired_cfc import WiredCfC

# ncps CfC wrapper arguments that do not concern the cell (handled by the layer / interop).
_WRAPPER_KWARGS = frozenset({"proj_size", "return_sequences", "batch_first", "mixed_memory"})

_Getter = Callable[[Any], Any]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _backbone_index(k: int, dropout: bool) -> int:
    # nn.Sequential(Linear, act, [Linear, act, (Dropout)] * (layers - 1)).
    return 0 if k == 0 else 2 + (k - 1) * (3 if dropout else 2)


def _head_entries(prefix: str, cell: CfC, get: _Getter) -> dict[str, tuple[_Getter, tuple]]:
    h = cell.state_size
    names = ["ff1"] if cell.mode == "pure" else ["ff1", "ff2", "time_a", "time_b"]
    out: dict[str, tuple[_Getter, tuple]] = {}
    for name in names:
        linear = getattr(cell, name)
        out[f"{prefix}{name}.weight"] = (
            lambda c, n=name: getattr(get(c), n).weight,
            linear.weight.shape,
        )
        out[f"{prefix}{name}.bias"] = (lambda c, n=name: getattr(get(c), n).bias, (h,))
    if cell.mode == "pure":
        out[f"{prefix}w_tau"] = (lambda c: get(c).w_tau, (1, h))
        out[f"{prefix}A"] = (lambda c: get(c).A, (1, h))
    return out


def _cfc_entries(
    cell: CfC, prefix: str, get: _Getter, indices: list[int] | None = None
) -> dict[str, tuple[_Getter, tuple]]:
    if indices is None:
        dropout = cell.backbone_dropout > 0
        indices = [_backbone_index(k, dropout) for k in range(len(cell.backbone))]
    out: dict[str, tuple[_Getter, tuple]] = {}
    for k, linear in enumerate(cell.backbone):
        base = f"{prefix}backbone.{indices[k]}."
        out[base + "weight"] = (lambda c, k=k: get(c).backbone[k].weight, linear.weight.shape)
        out[base + "bias"] = (lambda c, k=k: get(c).backbone[k].bias, (linear.out_features,))
    out.update(_head_entries(prefix, cell, get))
    return out


def _entries(cell: CfC | WiredCfC, prefix: str) -> dict[str, tuple[_Getter, tuple]]:
    """ncps key -> (getter of the liquidjax array, ncps shape)."""
    if isinstance(cell, CfC):
        return _cfc_entries(cell, prefix, lambda c: c)
    if isinstance(cell, WiredCfC):
        out: dict[str, tuple[_Getter, tuple]] = {}
        for l, layer in enumerate(cell.layers):
            out.update(_cfc_entries(layer, f"{prefix}layer_{l}.", lambda c, l=l: c.layers[l]))
        return out
    raise TypeError(f"expected a CfC or WiredCfC, got {type(cell).__name__}")


def _load(cell: Any, sd: Mapping[str, Any], entries: dict[str, tuple[_Getter, tuple]]) -> Any:
    getters, values = [], []
    for key, (getter, ncps_shape) in entries.items():
        value = _to_numpy(sd[key])
        if value.shape != tuple(ncps_shape):
            raise ValueError(f"{key}: expected shape {tuple(ncps_shape)}, got {value.shape}")
        getters.append(getter)
        values.append(jnp.asarray(value.reshape(getter(cell).shape)))
    return eqx.tree_at(lambda c: [g(c) for g in getters], cell, values)


def cfc_from_state_dict(
    sd: Mapping[str, Any],
    *,
    input_size: int,
    units: Any,
    mode: str = "default",
    activation: str | None = None,
    backbone_units: int | None = None,
    backbone_layers: int | None = None,
    backbone_dropout: float | None = None,
    prefix: str = "rnn_cell.",
    **wrapper_kwargs: Any,
) -> CfC | WiredCfC:
    """Build a :class:`CfC` (``units`` an int) or :class:`WiredCfC` (``units`` a wiring) from an
    ncps ``CfC`` state dict.

    **Arguments:**

    - `sd`: ``model.state_dict()`` of an ``ncps.torch.CfC`` (torch tensors or NumPy arrays);
      only the keys under `prefix` are read.
    - `input_size`, `units`, `mode`, `activation`, `backbone_units`, `backbone_layers`,
      `backbone_dropout`: the ncps ``CfC`` constructor arguments (``None`` = ncps default).
      `backbone_units` is inferred from the weights; the wired backbone arguments are
      rejected like ncps does.
    - `prefix`: the cell's key prefix (ncps: ``"rnn_cell."``).
    - `wrapper_kwargs`: ``proj_size``, ``return_sequences``, ``batch_first``, ``mixed_memory``
      are accepted and ignored (they do not concern the cell).

    **Returns:** the cell, with the state dict's values and dtypes.

    ```python
    cell = cfc_from_state_dict(torch_model.state_dict(), input_size=5, units=16)
    ```
    """
    unknown = set(wrapper_kwargs) - _WRAPPER_KWARGS
    if unknown:
        raise ValueError(f"unknown ncps CfC arguments {sorted(unknown)}")
    key = jr.key(0)  # every value is overwritten
    if isinstance(units, (int, np.integer)):
        pattern = f"{prefix}backbone."
        indices = sorted(
            {int(k[len(pattern) :].split(".")[0]) for k in sd if k.startswith(pattern)}
        )
        layers = 1 if backbone_layers is None else backbone_layers
        if len(indices) != layers:
            raise ValueError(
                f"backbone_layers={layers} but the state dict has {len(indices)} backbone "
                f"Linear layers (indices {indices})"
            )
        if indices:
            found = _to_numpy(sd[f"{pattern}{indices[0]}.weight"]).shape[0]
            if backbone_units is not None and backbone_units != found:
                raise ValueError(f"backbone_units={backbone_units} but the weights have {found}")
            backbone_units = found
        cell: CfC | WiredCfC = CfC(
            input_size,
            int(units),
            mode=mode,  # pyright: ignore
            activation="lecun_tanh" if activation is None else activation,
            backbone_units=128 if backbone_units is None else backbone_units,
            backbone_layers=layers,
            backbone_dropout=0.0 if backbone_dropout is None else backbone_dropout,
            key=key,
        )
        # The Sequential indices depend on whether Dropout modules exist: read them as found.
        entries = _cfc_entries(cell, prefix, lambda c: c, indices)
    else:
        # ncps ignores the activation of a wired CfC (it has no backbone); so do we, once valid.
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid options are {list(ACTIVATIONS)}"
            )
        cell = WiredCfC(
            input_size,
            units,
            mode=mode,  # pyright: ignore
            backbone_units=backbone_units,
            backbone_layers=backbone_layers,
            backbone_dropout=backbone_dropout,
            key=key,
        )
        entries = _entries(cell, prefix)
        for l, mask in enumerate(cell.masks):
            mkey = f"{prefix}layer_{l}.sparsity_mask"
            if mkey in sd and not np.array_equal(_to_numpy(sd[mkey]) != 0, np.asarray(mask)):
                raise ValueError(f"{mkey} differs from the mask of the given wiring")
    missing = [k for k in entries if k not in sd]
    extra = [
        k
        for k in sd
        if k.startswith(prefix) and k not in entries and not k.endswith("sparsity_mask")
    ]
    if missing or extra:
        raise ValueError(
            f"the state dict does not fit a mode={mode!r} {type(cell).__name__}: "
            f"missing {missing}, unexpected {extra}"
        )
    return _load(cell, sd, entries)


def cfc_to_state_dict(
    cell: CfC | WiredCfC, *, prefix: str = "rnn_cell.", dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    """The ncps ``CfC`` state-dict entries (keys under `prefix`) of a CfC or WiredCfC.

    Wired cells also get their ``layer_{l}.sparsity_mask`` (float32, as ncps stores it).

    **Arguments:** `dtype`: of the parameter arrays (``None``: keep the cell's).

    **Returns:** ``{key: np.ndarray}`` in ncps shapes, ready for ``torch.from_numpy``.
    """
    entries = _entries(cell, prefix)
    out = {
        k: np.asarray(g(cell), dtype=dtype).reshape(shape) for k, (g, shape) in entries.items()
    }
    if isinstance(cell, WiredCfC):
        for l, mask in enumerate(cell.masks):
            out[f"{prefix}layer_{l}.sparsity_mask"] = np.asarray(mask).astype(np.float32)
    return out


def cfc_ncps_kwargs(cell: CfC | WiredCfC) -> dict[str, Any]:
    """The ncps ``CfC`` constructor arguments (besides input size and units) of a cell."""
    if isinstance(cell, WiredCfC):
        return {"mode": cell.mode}
    return {
        "mode": cell.mode,
        "activation": activation_name(cell.activation),
        "backbone_units": cell.backbone_units or 128,
        "backbone_layers": cell.backbone_layers,
        "backbone_dropout": cell.backbone_dropout,
    }


def _lstm_entries(lstm: LSTMCell, prefix: str) -> dict[str, tuple[_Getter, tuple]]:
    n = 4 * lstm.hidden_size
    return {
        f"{prefix}input_map.weight": (lambda m: m.input_map.weight, (n, lstm.input_size)),
        f"{prefix}input_map.bias": (lambda m: m.input_map.bias, (n,)),
        f"{prefix}recurrent_map.weight": (lambda m: m.recurrent_map.weight, (n, lstm.hidden_size)),
    }


def lstm_from_state_dict(sd: Mapping[str, Any], prefix: str = "lstm.") -> LSTMCell:
    """Build the ncps mixed-memory :class:`LSTMCell` from a state dict (sizes from the shapes).

    ```python
    lstm = lstm_from_state_dict(torch_model.state_dict())
    ```
    """
    key = f"{prefix}recurrent_map.weight"
    if key not in sd or f"{prefix}input_map.weight" not in sd:
        raise ValueError(f"state dict has no LSTM under prefix {prefix!r}")
    n, hidden = _to_numpy(sd[key]).shape
    inputs = _to_numpy(sd[f"{prefix}input_map.weight"]).shape[1]
    if n != 4 * hidden:
        raise ValueError(f"{key}: expected shape (4H, H), got {(n, hidden)}")
    lstm = LSTMCell(int(inputs), int(hidden), key=jr.key(0))
    entries = _lstm_entries(lstm, prefix)
    missing = [k for k in entries if k not in sd]
    if missing:
        raise ValueError(f"state dict lacks {missing}")
    return _load(lstm, sd, entries)


def lstm_to_state_dict(
    lstm: LSTMCell, prefix: str = "lstm.", *, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    """The ncps state-dict entries (keys under `prefix`) of an :class:`LSTMCell`, as `dtype`
    (``None``: keep the cell's)."""
    entries = _lstm_entries(lstm, prefix)
    return {k: np.asarray(g(lstm), dtype=dtype) for k, (g, _) in entries.items()}
