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
from ._version import __version__ as __version__
from .cells import (
    CTRNN as CTRNN,
    GRUD as GRUD,
    GRUODE as GRUODE,
    LTC as LTC,
    ODERNN as ODERNN,
    AbstractCell as AbstractCell,
    AbstractConductanceCell as AbstractConductanceCell,
    AbstractODECell as AbstractODECell,
    AbstractPathCell as AbstractPathCell,
    AbstractWiredCell as AbstractWiredCell,
    CfC as CfC,
    GRUODEBayes as GRUODEBayes,
    LSTMCell as LSTMCell,
    MixedMemory as MixedMemory,
    NeuralCDE as NeuralCDE,
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

