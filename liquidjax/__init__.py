"""liquidjax: liquid neural networks (LTC, CfC, NCP wirings) in JAX."""

from . import cells as cells
from .cells import AbstractCell as AbstractCell, AbstractODECell as AbstractODECell

__version__ = "0.1.0"
