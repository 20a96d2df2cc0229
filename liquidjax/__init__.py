"""liquidjax: liquid neural networks (LTC, CfC, NCP wirings) in JAX.

Equinox modules define the liquid dynamics as vector fields, diffrax integrates them (the ncps
fused semi-implicit step or any other solver), optax trains them. ``liquidjax.data``,
``liquidjax.models`` and ``liquidjax.train`` are imported on demand.
"""

from . import (
    cells as cells,
    export as export,
    inspect as inspect,
    interop as interop,
    plot as plot,
    solvers as solvers,
    wirings as wirings,
)
from ._platform import use_cpu_cores as use_cpu_cores
from ._static import StaticArray as StaticArray, replace_fields as replace_fields
from .cells import (
    CTRNN as CTRNN,
    GRUD as GRUD,
    GRUODE as GRUODE,
    ODERNN as ODERNN,
    NeuralCDE as NeuralCDE,
    CfC as CfC,
    LSTMCell as LSTMCell,
    LTC as LTC,
    AbstractCell as AbstractCell,
    AbstractODECell as AbstractODECell,
    AbstractConductanceCell as AbstractConductanceCell,
    AbstractWiredCell as AbstractWiredCell,
    MixedMemory as MixedMemory,
    WiredCfC as WiredCfC,
    nonnegative_projection as nonnegative_projection,
    project_nonnegative as project_nonnegative,
)
from .interop.ncps import from_ncps as from_ncps, to_ncps as to_ncps
from .layers import LiquidRNN as LiquidRNN
from .solvers import (
    FusedSemiImplicit as FusedSemiImplicit,
    Integrator as Integrator,
    LiquidTerm as LiquidTerm,
    count_vf_evals as count_vf_evals,
    solver_from_name as solver_from_name,
)
from .wirings import (
    NCP as NCP,
    AutoNCP as AutoNCP,
    FullyConnected as FullyConnected,
    Random as Random,
    Wiring as Wiring,
)

__version__ = "0.1.0"
