"""`ModelConfig`: what to build, as plain data."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._checks import check_choice, check_positive_int
from ..cells._cfc import ACTIVATIONS
from ..solvers import SOLVER_NAMES, is_adaptive, solver_from_name
from ._classifier import READOUTS
from ._conv_stem import CONV_SEQUENCES, CONV_STEMS, feature_map_shape

MODEL_KINDS: tuple[str, ...] = ("sequence", "conv")
CELL_KINDS: tuple[str, ...] = ("cfc", "ltc")
WIRINGS: tuple[str, ...] = ("fc", "ncp", "autoncp", "random")
CFC_MODES: tuple[str, ...] = ("default", "no_gate", "pure")
INTERPOLATIONS: tuple[str, ...] = ("hold", "linear", "cubic")
TASKS: tuple[str, ...] = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What to build; every field is plain data (JSON-serialisable, stored in checkpoints).

    **Arguments:**
    - `input_size`: features per step of the input sequence (for ``kind="conv"``: unused by the
      stem but kept for the record).
    - `num_classes`: number of classes (classification; ignored for regression).
    - `kind`: ``"sequence"`` (liquid layers on the input sequence) or ``"conv"`` (conv stem).
    - `cell`: ``"cfc"`` or ``"ltc"``.
    - `units`: neurons per liquid layer.
    - `wiring`: ``"fc"`` (fully connected), ``"ncp"``/``"autoncp"`` (an AutoNCP wiring with
      `motor_neurons` outputs and `sparsity`), ``"random"`` (random sparse, `sparsity`).
    - `motor_neurons`: outputs of a wired layer (default: `num_classes` if it fits, else
      ``units // 3``).
    - `sparsity`: sparsity level of ``ncp``/``random`` wirings.
    - `wiring_seed`: seed of the wiring's draws.
    - `layers`: number of stacked liquid layers.
    - `readout`: ``"last"`` or ``"mean"``.
    - `dropout`: dropout on the pooled features.
    - `mixed_memory`: put an LSTM memory in front of each liquid cell.
    - `solver`: LTC solver name (one of :data:`liquidjax.solvers.SOLVER_NAMES`; default
      ``"fused"``); not allowed for CfC.
    - `ode_unfolds`: LTC steps per observation (or first step for an adaptive solve).
    - `adaptive_tol`: if set, an adaptive solver (``tsit5``, ``dopri5``, ``kvaerno*``...) runs
      with ``PIDController(rtol=atol=adaptive_tol)``.
    - `implicit_param_constraints`: LTC positivity by softplus (``True``) or by projection after
      each optimiser step (``False``).
    - `interpolation`: ``"hold"``, ``"linear"`` or ``"cubic"`` (LTC only for the latter two).
    - `cfc_mode`, `activation`, `backbone_units`, `backbone_layers`, `backbone_dropout`: CfC
      options (the backbone only for unwired CfC).
    - `image_shape`: ``(H, W, C)``, required for ``kind="conv"``.
    - `conv_channels`: output channels of the stem's conv blocks (``"strided"``) or stages
      (``"pooled"``).
    - `conv_stem`: ``"strided"`` or ``"pooled"`` (see :class:`ConvLiquidClassifier`).
    - `conv_dropout`: dropout in the stem (after each pool, or on the feature map).
    - `conv_sequence`: ``"rows"`` or ``"columns"`` of the feature map.
    - `task`: ``"classification"`` (logits) or ``"regression"`` (real predictions).
    - `per_step`: one output per step (Keras ``return_sequences``) instead of one per
      sequence (sequence models only).
    - `target_size`: dimension of a regression target.
    - `predict_variance`: regression only: the head also predicts a variance per target
      (``2 · target_size`` outputs, trained by the Gaussian NLL; see
      :func:`liquidjax.train.split_gaussian`).

    **Example:**
    ```python
    ModelConfig(input_size=28, num_classes=10, cell="ltc", wiring="ncp", units=32)
    ```
    """

    input_size: int
    num_classes: int
    kind: str = "sequence"
    cell: str = "cfc"
    units: int = 64
    wiring: str = "fc"
    motor_neurons: int | None = None
    sparsity: float = 0.5
    wiring_seed: int = 22222
    layers: int = 1
    readout: str = "last"
    dropout: float = 0.0
    mixed_memory: bool = False
    solver: str | None = None
    ode_unfolds: int = 6
    adaptive_tol: float | None = None
    implicit_param_constraints: bool = True
    interpolation: str = "hold"
    cfc_mode: str = "default"
    activation: str = "lecun_tanh"
    backbone_units: int = 128
    backbone_layers: int = 1
    backbone_dropout: float = 0.0
    image_shape: tuple[int, int, int] | None = None
    conv_channels: tuple[int, ...] = (32, 64, 64)
    conv_sequence: str = "rows"
    conv_stem: str = "strided"
    conv_dropout: float = 0.0
    task: str = "classification"
    per_step: bool = False
    target_size: int = 1
    predict_variance: bool = False

    def __post_init__(self):
        check_choice("task", self.task, TASKS)
        check_choice("model kind", self.kind, MODEL_KINDS)
        check_choice("cell", self.cell, CELL_KINDS)
        check_choice("wiring", self.wiring, WIRINGS)
        check_choice("readout", self.readout, READOUTS)
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        check_choice("CfC mode", self.cfc_mode, CFC_MODES)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("conv sequence", self.conv_sequence, CONV_SEQUENCES)
        check_choice("conv stem", self.conv_stem, CONV_STEMS)
        for name in ("input_size", "units", "layers", "ode_unfolds", "target_size"):
            check_positive_int(name, getattr(self, name))
        if self.task == "classification":
            check_positive_int("num_classes", self.num_classes)
            if self.num_classes < 2:
                raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
            if self.predict_variance:
                raise ValueError("predict_variance applies to task='regression' only")
        if self.per_step and self.kind != "sequence":
            raise ValueError("per_step outputs need kind='sequence'")
        if self.solver is not None:
            check_choice("solver", self.solver, SOLVER_NAMES)
            if self.cell != "ltc":
                raise ValueError(
                    f"solver={self.solver!r} applies only to ODE cells (cell='ltc'); "
                    f"a {self.cell} cell advances in closed form"
                )
        if self.interpolation != "hold" and self.cell != "ltc":
            raise ValueError(
                f"interpolation={self.interpolation!r} needs an ODE cell (cell='ltc')"
            )
        if self.adaptive_tol is not None:
            if self.cell != "ltc" or not is_adaptive(solver_from_name(self.solver or "fused")):
                raise ValueError(
                    "adaptive_tol needs cell='ltc' and an adaptive solver (e.g. tsit5, dopri5, "
                    f"kvaerno5), got cell={self.cell!r}, solver={self.solver!r}"
                )
            if not self.adaptive_tol > 0:
                raise ValueError(f"adaptive_tol must be positive, got {self.adaptive_tol}")
        for name in ("dropout", "backbone_dropout", "conv_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.backbone_layers < 0 or self.backbone_units < 1:
            raise ValueError(
                f"backbone_layers must be >= 0 and backbone_units >= 1, got "
                f"{self.backbone_layers}, {self.backbone_units}"
            )
        if self.wiring != "fc":
            motor = self.wired_motor_neurons
            if self.wiring in ("ncp", "autoncp") and not 1 <= motor <= self.units - 3:
                raise ValueError(
                    f"an NCP wiring of {self.units} units needs motor_neurons in "
                    f"[1, {self.units - 3}], got {motor}"
                )
            if self.wiring == "random" and not 1 <= motor <= self.units:
                raise ValueError(f"motor_neurons must be in [1, {self.units}], got {motor}")
        if self.kind == "conv":
            if self.image_shape is None or len(self.image_shape) != 3 or any(
                not isinstance(s, int) or s < 1 for s in self.image_shape
            ):
                raise ValueError(
                    f"kind='conv' needs image_shape=(H, W, C) of positive ints, got "
                    f"{self.image_shape!r}"
                )
            if not self.conv_channels or any(
                not isinstance(c, int) or c < 1 for c in self.conv_channels
            ):
                raise ValueError(
                    f"conv_channels must be positive ints, got {self.conv_channels!r}"
                )
            _, h, w = feature_map_shape(self.image_shape, self.conv_channels, self.conv_stem)
            if h < 1 or w < 1:
                raise ValueError(
                    f"a {self.conv_stem} stem with channels {self.conv_channels} shrinks an image "
                    f"of shape {self.image_shape} to nothing; use fewer stages"
                )

    @property
    def output_size(self) -> int:
        """Width of the model's output: classes, or target dimensions (twice with a variance)."""
        if self.task == "classification":
            return self.num_classes
        return self.target_size * (2 if self.predict_variance else 1)

    @property
    def wired_motor_neurons(self) -> int:
        """Outputs of a wired layer."""
        if self.motor_neurons is not None:
            return self.motor_neurons
        out = self.output_size
        return out if out <= self.units - 3 else max(self.units // 3, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        d = dict(d)
        for name in ("image_shape", "conv_channels"):
            if d.get(name) is not None:
                d[name] = tuple(d[name])
        return cls(**d)
