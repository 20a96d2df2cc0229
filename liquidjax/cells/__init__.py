from ._base import (
    AbstractCell as AbstractCell,
    AbstractConductanceCell as AbstractConductanceCell,
    AbstractODECell as AbstractODECell,
    AbstractPathCell as AbstractPathCell,
    AbstractWiredCell as AbstractWiredCell,
    scan_advance as scan_advance,
)
from ._cfc import CfC as CfC
from ._ctrnn import CTRNN as CTRNN
from ._gru_ode import GRUODE as GRUODE
from ._gru_ode_bayes import GRUODEBayes as GRUODEBayes
from ._grud import GRUD as GRUD
from ._liquid_s4 import LiquidS4 as LiquidS4, LiquidS4State as LiquidS4State
from ._liquid_s4_stack import LiquidS4Stack as LiquidS4Stack
from ._lstm import LSTMCell as LSTMCell, MixedMemory as MixedMemory
from ._ltc import (
    LTC as LTC,
    nonnegative_mask as nonnegative_mask,
    nonnegative_projection as nonnegative_projection,
    project_nonnegative as project_nonnegative,
)
from ._ncde import NeuralCDE as NeuralCDE
from ._ode_rnn import ODERNN as ODERNN
from ._registry import (
    CellKind as CellKind,
    cell_kinds as cell_kinds,
    register_cell as register_cell,
)
from ._wired_cfc import WiredCfC as WiredCfC
