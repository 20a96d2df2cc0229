from ._base import AbstractCell as AbstractCell, AbstractODECell as AbstractODECell
from ._ltc import (
    LTC as LTC,
    nonnegative_mask as nonnegative_mask,
    project_nonnegative as project_nonnegative,
)
