"""Interoperability with other liquid-network libraries: ncps (PyTorch) weights in and out.

```python
from liquidjax.interop import from_ncps, to_ncps
```
"""

from .ncps import from_ncps as from_ncps, to_ncps as to_ncps
