"""`ModelConfig`: what to build, as plain data; its fields declare their own checks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from .._checks import check_fields, config_field, literal_choices
from ..cells._cfc import ACTIVATIONS, Mode as CfCMode
from ..cells._liquid_s4 import Discretisation, LiquidKernel, S4Init
from ..cells._ltc import Init as LTCInit
from ..cells._registry import (
    CELL_KINDS,
    cell_kind,
    cell_kind_name,
    fused_cells,
    path_cells,
    solver_cells,
    wired_cells,
)
from ..layers import Interpolation
from ..solvers import SOLVER_NAMES, is_adaptive, solver_from_name
from ._classifier import Readout
from ._conv_stem import ConvSequence, ConvStem, feature_map_shape

ModelKind = Literal["sequence", "conv"]
WiringKind = Literal["fc", "ncp", "autoncp", "random"]
Task = Literal["classification", "regression"]

MODEL_KINDS: tuple[str, ...] = literal_choices(ModelKind)
WIRINGS: tuple[str, ...] = literal_choices(WiringKind)
CFC_MODES: tuple[str, ...] = literal_choices(CfCMode)
INTERPOLATIONS: tuple[str, ...] = literal_choices(Interpolation)
TASKS: tuple[str, ...] = literal_choices(Task)

_RATE = dict(minimum=0.0, maximum=1.0, max_open=True)
_POSITIVE = dict(minimum=1)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What to build; every field is plain data (JSON-serialisable, stored in checkpoints).

    Each field declares its type (a ``Literal`` for a choice) and bounds; the same declaration
    validates the config and defines its command-line flag (``liquidjax train --help``).

    **Arguments:**
    - `input_size`: features per step of the input sequence (for ``kind="conv"``: unused by the
      stem but kept for the record).
    - `num_classes`: number of classes (classification; ignored for regression).
    - `kind`: ``"sequence"`` (liquid layers on the input sequence) or ``"conv"`` (conv stem).
    - `cell`: ``"cfc"`` or ``"ltc"``, or a continuous-time baseline: ``"ctrnn"``,
      ``"gruode"``, ``"gruode_bayes"`` (GRU-ODE-Bayes: reads ``[x | m]``, e.g.
      ``missing="path"``), ``"odernn"``, ``"grud"`` (needs the ``[x̃ | m | δ]`` inputs of
      :func:`liquidjax.data.missing_value_features`), ``"ncde"`` (see :mod:`liquidjax.cells`);
      a kind added by :func:`liquidjax.cells.register_cell`; or your own cell class written
      ``module.path:ClassName`` (see ``docs/custom_cells.md``).
    - `units`: neurons per liquid layer.
    - `wiring`: ``"fc"`` (fully connected), ``"ncp"``/``"autoncp"`` (an AutoNCP wiring with
      `motor_neurons` outputs and `sparsity`), ``"random"`` (random sparse, `sparsity`).
    - `motor_neurons`: outputs of a wired layer (default: `num_classes` if it fits, else
      ``units // 3``).
    - `sparsity`: sparsity level of ``ncp``/``random`` wirings (at least 0.1 for ``ncp``).
    - `wiring_seed`: seed of the wiring's draws.
    - `layers`: number of stacked liquid layers (``liquid_s4``: residual Liquid-S4 blocks of
      one :class:`~liquidjax.cells.LiquidS4Stack`).
    - `readout`: ``"last"`` (output at the last valid step) or ``"mean"`` (mean over steps).
    - `dropout`: dropout on the pooled features (training only).
    - `mixed_memory`: put an LSTM memory in front of each liquid cell.
    - `solver`: LTC solver name (one of :data:`liquidjax.solvers.SOLVER_NAMES`; default
      ``"fused"``); not allowed for CfC.
    - `ode_unfolds`: LTC steps per observation (or first step for an adaptive solve).
    - `adaptive_tol`: if set, an adaptive solver (``tsit5``, ``dopri5``, ``kvaerno*``...) runs
      with ``PIDController(rtol=atol=adaptive_tol)``.
    - `implicit_param_constraints`: LTC positivity by softplus (``True``) or by projection after
      each optimiser step (``False``; train with :func:`constraint_transforms` in the chain).
    - `ltc_init`: LTC initialisation, ``"slow"`` (time constants of several timespans: the
      network remembers across observations from the start; default for new models) or
      ``"ncps"`` (ncps's ranges: < 0.1 % of the state kept per timespan; see
      ``benchmarks/ltc_trainability.py``).
    - `interpolation`: ``"hold"``, ``"linear"`` or ``"cubic"`` input path between observations
      (the latter two for the ODE cells ltc, ctrnn, gruode and for ncde, driven by the path).
    - `cfc_mode`: CfC mode, ``"default"``, ``"no_gate"`` or ``"pure"``.
    - `activation`: CfC backbone activation (unwired CfC).
    - `backbone_units`: CfC backbone width (unwired CfC).
    - `backbone_layers`: CfC backbone depth (unwired CfC; 0 for none).
    - `backbone_dropout`: dropout in the CfC backbone (unwired CfC; training only).
    - `ssm_size`: Liquid-S4: the state size ``N`` per channel (even: ``N/2`` conjugate pairs);
      `units` is the model width ``H``.
    - `liquid_order`: Liquid-S4: ``0`` (plain S4D) or ``P >= 2``, the liquid terms over
      products of up to ``P`` inputs.
    - `liquid_kernel`: Liquid-S4: ``"pb"`` (polynomials of ``B̄``, the reference's default) or
      ``"kb"`` (the full liquid kernel); see ``docs/liquid_s4.md``.
    - `discretisation`: Liquid-S4: ``"zoh"`` (zero-order hold) or ``"bilinear"``.
    - `ssm_init`: Liquid-S4: ``"lin"`` (S4D-Lin) or ``"inv"`` (S4D-Inv) state matrix.
    - `glu`: Liquid-S4: GLU mixing after each block's SSM (else a position-wise linear layer).
    - `ssm_dropout`: Liquid-S4: dropout after each block's mixing (training only).
    - `image_shape`: ``(H, W, C)``, required for ``kind="conv"``.
    - `conv_channels`: output channels of the stem's conv blocks (``"strided"``) or stages
      (``"pooled"``).
    - `conv_sequence`: ``"rows"`` or ``"columns"`` of the feature map.
    - `conv_stem`: ``"strided"`` or ``"pooled"`` (see :class:`ConvLiquidClassifier`).
    - `conv_dropout`: dropout in the stem (after each pool, or on the feature map; training only).
    - `stem_channels`: sequence models: a temporal convolution stem before the liquid layers
      (:class:`StemSequenceClassifier`): ``Conv1d → GroupNorm → ReLU`` blocks of these
      channels (kernels 8, 5, 3, …) at full resolution, read by the liquid layers in windows of
      `stem_pool` steps, their global average beside the liquid features (LSTM-FCN); ``None``
      (the default; ``none`` on the command line): no stem.
    - `stem_pool`: observations per liquid step behind a stem (``None``: 1; ``--dataset ts``
      chooses it from the longest training series).
    - `stem_gap`: give the head the stem's global average over the valid steps too.
    - `rocket_features`: behind a stem: this many MiniRocket features of the input (random
      convolutions, :class:`~liquidjax.models.RocketFeatures`; rounded down to a multiple of
      84), standardised, given to the head beside the liquid features; fitted on the training
      split (:meth:`~liquidjax.models.AbstractClassifier.init_from_data`). ``0``: none.
    - `rocket_length`: the longest training series in the model's steps (the data gives it):
      fixes the features' dilations.
    - `task`: ``"classification"`` (logits) or ``"regression"`` (real predictions).
    - `per_step`: one output per step (Keras ``return_sequences``) instead of one per
      sequence (sequence models only).
    - `target_size`: dimension of a regression target.
    - `predict_variance`: regression only: the head also predicts a variance per target
      (``2 · target_size`` outputs, trained by the Gaussian NLL; see
      :func:`liquidjax.train.split_gaussian`).
    - `target_mean`: regression only: the mean of each target dimension over the training
      split (from the data; ``None``: 0). The head predicts standardised targets and the model
      returns ``target_mean + target_std · head`` — predictions, losses and metrics in the
      targets' own units while the network learns targets of mean 0 and variance 1
      (:func:`liquidjax.data.target_statistics`).
    - `target_std`: regression only: the standard deviation of each target dimension over the
      training split (from the data; ``None``: 1).
    - `ensemble`: train this many independently initialised copies of the model at once, each
      on its own loss, and predict with their average (:class:`Ensemble`; 1: one model).

    **Example:**
    ```python
    ModelConfig(input_size=28, num_classes=10, cell="ltc", wiring="ncp", units=32)
    ```
    """

    input_size: int = config_field(minimum=1, from_data=True)
    num_classes: int = config_field(minimum=0, from_data=True)
    kind: ModelKind = config_field("sequence", flags=("--model", "--kind"))
    cell: str = config_field("cfc", choices=CELL_KINDS, parse=cell_kind_name)
    units: int = config_field(64, **_POSITIVE)
    wiring: WiringKind = "fc"
    motor_neurons: int | None = config_field(None, **_POSITIVE)
    sparsity: float = config_field(0.5, **_RATE)
    wiring_seed: int = config_field(22222, minimum=0, maximum=2**32 - 1)
    layers: int = config_field(1, **_POSITIVE)
    readout: Readout = "last"
    dropout: float = config_field(0.0, **_RATE)
    mixed_memory: bool = False
    solver: str | None = config_field(None, choices=SOLVER_NAMES, cli_default="fused")
    ode_unfolds: int = config_field(6, **_POSITIVE)
    adaptive_tol: float | None = config_field(None, minimum=0.0, min_open=True)
    implicit_param_constraints: bool = True
    ltc_init: LTCInit = "slow"
    interpolation: Interpolation = "hold"
    cfc_mode: CfCMode = "default"
    activation: str = config_field("lecun_tanh", choices=tuple(ACTIVATIONS))
    backbone_units: int = config_field(128, **_POSITIVE)
    backbone_layers: int = config_field(1, minimum=0)
    backbone_dropout: float = config_field(0.0, **_RATE)
    ssm_size: int = config_field(64, minimum=2)
    liquid_order: int = config_field(2, minimum=0)
    liquid_kernel: LiquidKernel = "pb"
    discretisation: Discretisation = "zoh"
    ssm_init: S4Init = "lin"
    glu: bool = True
    ssm_dropout: float = config_field(0.0, **_RATE)
    image_shape: tuple[int, int, int] | None = config_field(None, minimum=1, from_data=True)
    conv_channels: tuple[int, ...] = config_field((32, 64, 64), **_POSITIVE)
    conv_sequence: ConvSequence = "rows"
    conv_stem: ConvStem = "strided"
    conv_dropout: float = config_field(0.0, **_RATE)
    stem_channels: tuple[int, ...] | None = config_field(None, **_POSITIVE)
    stem_pool: int | None = config_field(None, **_POSITIVE)
    stem_gap: bool = True
    rocket_features: int = config_field(0, minimum=0, maximum=100_000)
    rocket_length: int | None = config_field(None, minimum=1, from_data=True)
    task: Task = config_field("classification", from_data=True)
    per_step: bool = False
    target_size: int = config_field(1, minimum=1, from_data=True)
    predict_variance: bool = False
    target_mean: tuple[float, ...] | None = config_field(None, from_data=True)
    target_std: tuple[float, ...] | None = config_field(None, minimum=0.0, min_open=True,
                                                        from_data=True)
    ensemble: int = config_field(1, minimum=1, maximum=64)

    def __post_init__(self):
        check_fields(self)
        if self.task == "classification":
            if self.num_classes < 2:
                raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
            if self.predict_variance:
                raise ValueError("predict_variance applies to task='regression' only")
        for name in ("target_mean", "target_std"):
            stat = getattr(self, name)
            if stat is None:
                continue
            if self.task != "regression":
                raise ValueError(f"{name} applies to task='regression' only")
            if len(stat) != self.target_size:
                raise ValueError(f"{name} needs one value per target dimension "
                                 f"({self.target_size}), got {len(stat)}")
            if not all(math.isfinite(v) for v in stat):
                raise ValueError(f"{name} must be finite, got {stat}")
        if self.ssm_size % 2:
            raise ValueError(f"ssm_size must be even (N/2 conjugate pairs), got {self.ssm_size}")
        if self.liquid_order == 1:
            raise ValueError("liquid_order must be 0 (plain S4D) or >= 2 (products of up to "
                             "that many inputs), got 1")
        if self.per_step and self.kind != "sequence":
            raise ValueError("per_step outputs need kind='sequence'")
        if self.stem_channels and (self.kind != "sequence" or self.per_step):
            raise ValueError("stem_channels (a temporal convolution stem) needs kind='sequence' "
                             "with one output per sequence (not per_step)")
        if self.rocket_features and not self.stem_channels:
            raise ValueError("rocket_features (random convolutional features beside the liquid "
                             "layers) needs a temporal stem too: set stem_channels")
        if self.rocket_features and self.rocket_length is None:
            raise ValueError("rocket_features needs rocket_length (the longest training series, "
                             "in the model's steps; liquidjax train fills it in from the data)")
        if (self.stem_pool or 1) > 1 and not self.stem_channels:
            raise ValueError(f"stem_pool={self.stem_pool} pools the stem's features: set "
                             "stem_channels too (or patch the data: --patch-length)")
        cell = cell_kind(self.cell)
        if self.solver is not None:
            if not cell.solver:
                raise ValueError(
                    f"solver={self.solver!r} applies only to ODE cells "
                    f"({', '.join(solver_cells())}); a {self.cell} cell advances in closed form"
                )
            if self.solver == "fused" and not cell.fused:
                raise ValueError(
                    f"the fused semi-implicit solver needs a cell in conductance form "
                    f"({', '.join(fused_cells())}); choose another solver for {self.cell!r}"
                )
        if self.interpolation != "hold" and not cell.path:
            raise ValueError(
                f"interpolation={self.interpolation!r} needs an ODE cell "
                f"({', '.join(path_cells())})"
            )
        if self.mixed_memory and cell.stack:
            raise ValueError(f"mixed_memory puts an LSTM in front of a recurrent cell; a "
                             f"{self.cell} cell is a whole residual stack: drop mixed_memory")
        if self.wiring != "fc" and not cell.wired:
            raise ValueError(
                f"wiring={self.wiring!r} applies to {' and '.join(wired_cells())} cells only")
        if cell.inputs is not None:
            cell.inputs.check(f"cell={self.cell!r}", self.input_size)
        if self.adaptive_tol is not None and (
            not cell.solver
            or not is_adaptive(solver_from_name(self.solver or cell.default_solver))
        ):
            raise ValueError(
                "adaptive_tol needs an ODE cell and an adaptive solver (e.g. tsit5, dopri5, "
                f"kvaerno5), got cell={self.cell!r}, solver={self.solver!r}"
            )
        if self.wiring != "fc":
            motor = self.wired_motor_neurons
            if self.wiring in ("ncp", "autoncp") and not 1 <= motor <= self.units - 3:
                raise ValueError(
                    f"an NCP wiring of {self.units} units needs motor_neurons in "
                    f"[1, {self.units - 3}], got {motor}"
                )
            if self.wiring in ("ncp", "autoncp") and self.sparsity < 0.1:
                raise ValueError(
                    f"an NCP wiring needs sparsity in [0.1, 1) (AutoNCP's range), got "
                    f"{self.sparsity}; for a denser wiring use wiring='random' or 'fc'")
            if self.wiring == "random" and not 1 <= motor <= self.units:
                raise ValueError(f"motor_neurons must be in [1, {self.units}], got {motor}")
        if self.kind == "conv":
            if self.image_shape is None:
                raise ValueError("kind='conv' needs image_shape=(H, W, C) of positive ints")
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
        return cls(**d)  # lists (from JSON) become tuples in check_fields
