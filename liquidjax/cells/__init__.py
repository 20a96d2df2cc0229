from ._base import (
    AbstractCell as AbstractCell,
    AbstractConductanceCell as AbstractConductanceCell,
    AbstractODECell as AbstractODECell,
    AbstractPathCell as AbstractPathCell,
    AbstractWiredCell as AbstractWiredCell,
    scan_advance as scan_advance,
)
from ._baselines import (
    CTRNN as CTRNN,
    GRUD as GRUD,
    GRUODE as GRUODE,
    ODERNN as ODERNN,
    GRUODEBayes as GRUODEBayes,
    NeuralCDE as NeuralCDE,
)
from ._cfc import CfC as CfC
from ._liquid_s4 import LiquidS4 as LiquidS4, LiquidS4State as LiquidS4State
from ._liquid_s4_stack import LiquidS4Stack as LiquidS4Stack
from ._lstm import LSTMCell as LSTMCell, MixedMemory as MixedMemory
from ._ltc import (
    LTC as LTC,
    nonnegative_mask as nonnegative_mask,
    nonnegative_projection as nonnegative_projection,
    project_nonnegative as project_nonnegative,
)
from ._wired_cfc import WiredCfC as WiredCfC
