"""``python -m liquidjax._native``: build the compiled CPU kernel (see the package docstring)."""

import sys

from . import build

try:
    print(build(verbose=True))
except RuntimeError as e:
    sys.exit(f"liquidjax._native: {e}")
