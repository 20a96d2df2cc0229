from ._base import AbstractCell as AbstractCell, AbstractODECell as AbstractODECell
