"""The one table of cell kinds: what ``ModelConfig(cell=...)`` and ``liquidjax train --cell``
accept, and everything derived from it.

Each :class:`CellKind` says how a cell is built from a model config and what applies to it: a
solver choice (an ODE integrated by an :class:`~liquidjax.solvers.Integrator`), a continuous
input path, the fused semi-implicit solver (conductance form), a wiring, an input layout. The
lists of :class:`~liquidjax.models.ModelConfig`'s rules, the model builder's dispatch and the
command line's input-layout rule all read this table; nothing else names a concrete cell class.

A user adds a kind with :func:`register_cell`, or names a cell class directly as
``"module.path:ClassName"`` (imported once). The constructor protocol is
``Cell(input_size, units, *, key)``, plus ``integrator=`` (an
:class:`~liquidjax.solvers.Integrator`, only when the config chooses a solver) for a kind where a
solver applies; see ``docs/custom_cells.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import diffrax
from jaxtyping import PRNGKeyArray

from ..solvers import Integrator, solver_from_name
from ._base import (
    AbstractCell,
    AbstractConductanceCell,
    AbstractODECell,
    AbstractPathCell,
    AbstractWiredCell,
)
from ._baseline_parts import InputLayout
from ._cfc import CfC
from ._ctrnn import CTRNN
from ._gru_ode import GRUODE
from ._gru_ode_bayes import GRUODE_BAYES_INPUTS, GRUODEBayes
from ._grud import GRUD, GRUD_INPUTS
from ._liquid_s4_stack import LiquidS4Stack
from ._ltc import LTC
from ._ncde import NeuralCDE
from ._ode_rnn import ODERNN
from ._wired_cfc import WiredCfC

# build(config, input_size, units, *, key): `config` is a liquidjax.models.ModelConfig (read by
# field), `units` an int, or a Wiring for a wired kind when the config asks for one.
Build = Callable[..., AbstractCell]


@dataclasses.dataclass(frozen=True)
class CellKind:
    """One kind of cell that a model config can name.

    **Arguments:**
    - `name`: the name in ``ModelConfig(cell=...)`` and ``--cell``.
    - `build`: ``build(config, input_size, units, *, key)`` → the cell.
    - `solver`: a solver choice applies (``ModelConfig.solver``, ``adaptive_tol``).
    - `path`: the cell's state is an ODE state, so a continuous input path applies
      (``interpolation="linear" | "cubic"``).
    - `fused`: the fused semi-implicit solver applies (conductance form).
    - `wired`: a wiring applies (`units` may be a :class:`~liquidjax.wirings.Wiring`).
    - `default_solver`: the solver used when the config names none but sets ``adaptive_tol``.
    - `inputs`: the per-channel input layout the cell reads, or ``None`` for plain features.
    - `stack`: the cell is a whole residual stack of ``ModelConfig.layers`` blocks (Liquid-S4):
      the model holds one such cell instead of ``layers`` stacked recurrent layers.
    """

    name: str
    build: Build
    solver: bool = False
    path: bool = False
    fused: bool = False
    wired: bool = False
    default_solver: str = "tsit5"
    inputs: InputLayout | None = None
    stack: bool = False


def config_integrator(config: Any, default_solver: str = "tsit5") -> Integrator | None:
    """The :class:`~liquidjax.solvers.Integrator` a config chooses (``solver``,
    ``adaptive_tol``, ``ode_unfolds``), or ``None`` for the cell's default."""
    if config.solver is None and config.adaptive_tol is None:
        return None
    controller = (diffrax.PIDController(rtol=config.adaptive_tol, atol=config.adaptive_tol)
                  if config.adaptive_tol is not None else diffrax.ConstantStepSize())
    return Integrator(solver_from_name(config.solver or default_solver), controller,
                      ode_unfolds=config.ode_unfolds)


def _build_cfc(config: Any, input_size: int, units: Any, *, key: PRNGKeyArray) -> AbstractCell:
    if isinstance(units, int):
        return CfC(input_size, units, mode=config.cfc_mode, activation=config.activation,
                   backbone_units=config.backbone_units, backbone_layers=config.backbone_layers,
                   backbone_dropout=config.backbone_dropout, key=key)
    return WiredCfC(input_size, units, mode=config.cfc_mode, key=key)


def _build_ltc(config: Any, input_size: int, units: Any, *, key: PRNGKeyArray) -> AbstractCell:
    controller = (diffrax.PIDController(rtol=config.adaptive_tol, atol=config.adaptive_tol)
                  if config.adaptive_tol is not None else None)
    return LTC(input_size, units, ode_unfolds=config.ode_unfolds,
               solver=solver_from_name(config.solver or "fused"), stepsize_controller=controller,
               implicit_param_constraints=config.implicit_param_constraints,
               init=config.ltc_init, key=key)


def _build_liquid_s4(config: Any, input_size: int, units: Any, *,
                     key: PRNGKeyArray) -> AbstractCell:
    return LiquidS4Stack(input_size, units, depth=config.layers, ssm_size=config.ssm_size,
                         glu=config.glu, dropout=config.ssm_dropout,
                         liquid_order=config.liquid_order, liquid_kernel=config.liquid_kernel,
                         discretisation=config.discretisation, init=config.ssm_init, key=key)


def _build_with_integrator(make: Callable[..., AbstractCell], default_solver: str) -> Build:
    def build(config: Any, input_size: int, units: Any, *, key: PRNGKeyArray) -> AbstractCell:
        integrator = config_integrator(config, default_solver)
        if integrator is None:
            return make(input_size, units, key=key)
        return make(input_size, units, integrator=integrator, key=key)

    return build


def _build_plain(make: Callable[..., AbstractCell]) -> Build:
    def build(config: Any, input_size: int, units: Any, *, key: PRNGKeyArray) -> AbstractCell:
        del config
        return make(input_size, units, key=key)

    return build


def _ode(name: str, make: Callable[..., AbstractCell], **flags: Any) -> CellKind:
    return CellKind(name, _build_with_integrator(make, "tsit5"), solver=True, **flags)


_BUILTIN: tuple[CellKind, ...] = (
    CellKind("cfc", _build_cfc, wired=True),
    CellKind("ltc", _build_ltc, solver=True, path=True, fused=True, wired=True,
             default_solver="fused"),
    _ode("ctrnn", CTRNN, path=True),
    _ode("gruode", GRUODE, path=True, fused=True),
    _ode("gruode_bayes", GRUODEBayes, fused=True, inputs=GRUODE_BAYES_INPUTS),
    _ode("odernn", ODERNN),
    CellKind("grud", _build_plain(GRUD), inputs=GRUD_INPUTS),
    _ode("ncde", NeuralCDE, path=True),
    CellKind("liquid_s4", _build_liquid_s4, stack=True),
)

# The built-in kinds, in the order the help lists them.
CELL_KINDS: tuple[str, ...] = tuple(k.name for k in _BUILTIN)
_KINDS: dict[str, CellKind] = {k.name: k for k in _BUILTIN}
_IMPORTED: dict[str, CellKind] = {}  # "module:Class" -> its kind, imported once


def cell_kinds() -> tuple[str, ...]:
    """The names of every kind: the built-in ones, then those added by :func:`register_cell`."""
    return tuple(_KINDS)


def _takes(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_constructor(make: Callable, what: str) -> None:
    try:
        sig = inspect.signature(make)
    except (TypeError, ValueError):
        return  # a builtin or C callable: its call tells
    try:
        sig.bind(1, 1, key=None)
    except TypeError:
        raise ValueError(
            f"{what} must be callable as {what.split()[-1]}(input_size, units, *, key) to be "
            f"built from a ModelConfig; its signature is {sig}"
        ) from None


def _kind_for(name: str, make: Callable, *, solver: bool | None, path: bool | None,
              fused: bool | None, wired: bool | None, inputs: InputLayout | None,
              what: str) -> CellKind:
    if isinstance(make, type):
        if not issubclass(make, AbstractCell):
            raise ValueError(f"{what} is not a subclass of liquidjax.cells.AbstractCell")
        ode = issubclass(make, AbstractODECell)
        if solver is None:
            solver = ode and _takes(make, "integrator")
        if path is None:
            path = ode or issubclass(make, AbstractPathCell)
        if fused is None:
            fused = solver and issubclass(make, AbstractConductanceCell)
        if wired is None:
            wired = issubclass(make, AbstractWiredCell)
    elif not callable(make):
        raise ValueError(f"{what} is neither an AbstractCell subclass nor a callable")
    _check_constructor(make, what)
    solver, path, fused, wired = (bool(v) for v in (solver, path, fused, wired))
    if solver and not _takes(make, "integrator"):
        raise ValueError(f"{what} takes no integrator= keyword, so no solver choice applies "
                         "to it: register it with solver=False")
    build = _build_with_integrator(make, "tsit5") if solver else _build_plain(make)
    return CellKind(name, build, solver=solver, path=path, fused=fused and solver, wired=wired,
                    inputs=inputs)


def register_cell(name: str, cell: Callable[..., AbstractCell], *, solver: bool | None = None,
                  path: bool | None = None, fused: bool | None = None,
                  wired: bool | None = None, inputs: InputLayout | None = None) -> CellKind:
    """Add a kind of cell that ``ModelConfig(cell=name)`` (and ``--cell name``) builds.

    **Arguments:**
    - `name`: the new kind's name (lower case, not one of the built-in kinds).
    - `cell`: an :class:`AbstractCell` subclass or a factory, called as
      ``cell(input_size, units, *, key)`` (plus ``integrator=`` when a solver applies and the
      config chooses one).
    - `solver`, `path`, `fused`, `wired`: what applies to the kind (see :class:`CellKind`);
      ``None`` reads them from a class: a solver for an :class:`AbstractODECell` whose
      constructor takes ``integrator``, a path for an ODE or path cell, the fused solver for an
      :class:`AbstractConductanceCell`, a wiring for an :class:`AbstractWiredCell`.
    - `inputs`: the per-channel layout the cell reads, if any.

    **Returns:** the registered :class:`CellKind`. Registering a name again replaces a kind
    registered before (never a built-in one).

    **Example:**
    ```python
    register_cell("fhn", FitzHughNagumo)
    config = ModelConfig(input_size=1, num_classes=2, cell="fhn")
    ```
    """
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"a cell kind's name must be a lower-case identifier, got {name!r}")
    if name in CELL_KINDS:
        raise ValueError(f"{name!r} is a built-in cell kind; choose another name")
    kind = _kind_for(name, cell, solver=solver, path=path, fused=fused, wired=wired,
                     inputs=inputs, what=f"cell {getattr(cell, '__qualname__', repr(cell))}")
    _KINDS[name] = kind
    return kind


def _import_cell(spec: str) -> CellKind:
    module_name, _, attr = spec.partition(":")
    what = f"cell {spec!r}"
    if not module_name or not attr or ":" in attr:
        raise ValueError(f"{what}: expected module.path:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what}: cannot import module {module_name!r} ({e})") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what}: module {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, type):
        raise ValueError(f"{what} is not a class (an AbstractCell subclass)")
    return _kind_for(spec, obj, solver=None, path=None, fused=None, wired=None, inputs=None,
                     what=what)


def cell_kind(name: str) -> CellKind:
    """The :class:`CellKind` named `name`: a built-in or registered kind, or a cell class
    written ``"module.path:ClassName"`` (imported once); ``ValueError`` in one line otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"cell must be a string, got {name!r}")
    if name in _KINDS:
        return _KINDS[name]
    if ":" in name:
        if name not in _IMPORTED:
            _IMPORTED[name] = _import_cell(name)
        return _IMPORTED[name]
    raise ValueError(f"unknown cell {name!r}; expected one of: {', '.join(_KINDS)}, or "
                     "module.path:ClassName of an AbstractCell subclass")


def cell_kind_name(value: str) -> str:
    """`value` checked as a cell kind and normalised (a name is read case-insensitively with
    ``-`` as ``_``; a ``module:Class`` is kept as written): the ``ModelConfig.cell`` check and
    the ``--cell`` converter."""
    if isinstance(value, str) and ":" not in value:
        value = value.strip().lower().replace("-", "_")
    cell_kind(value)
    return value


def solver_cells() -> tuple[str, ...]:
    """The kinds where a solver choice applies."""
    return tuple(k.name for k in _KINDS.values() if k.solver)


def path_cells() -> tuple[str, ...]:
    """The kinds where a continuous input path applies."""
    return tuple(k.name for k in _KINDS.values() if k.path)


def fused_cells() -> tuple[str, ...]:
    """The kinds where the fused semi-implicit solver applies."""
    return tuple(k.name for k in _KINDS.values() if k.fused)


def wired_cells() -> tuple[str, ...]:
    """The kinds where a wiring applies."""
    return tuple(k.name for k in _KINDS.values() if k.wired)


def input_layout(cell: str) -> InputLayout | None:
    """The per-channel input layout the kind `cell` reads (``None``: plain features)."""
    return cell_kind(cell).inputs


def missing_mode_error(cell: str, missing: str) -> str | None:
    """Why data written with ``missing=missing`` cannot feed the kind `cell` (one line naming
    the mode to use), or ``None`` when it can."""
    layout = input_layout(cell)
    if layout is None or layout.missing == missing:
        return None
    return (f"--cell {cell} reads {layout.description}: use --missing {layout.missing} "
            f"(got --missing {missing})")
