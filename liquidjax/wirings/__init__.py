"""Wirings: which neurons of a liquid network connect, and with which sign (ncps-compatible)."""

from ._dense import FullyConnected as FullyConnected, Random as Random
from ._draw import draw as draw
from ._ncp import NCP as NCP, AutoNCP as AutoNCP
from ._wiring import Wiring as Wiring
