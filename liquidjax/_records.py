"""Reading the JSONL metrics file the trainer writes (below both :mod:`liquidjax.train`, which
writes it and re-exports :func:`read_metrics`, and :mod:`liquidjax.plot`, which draws it)."""

from __future__ import annotations

import json
import os
from typing import Any


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a truncated last line, from a kill, is skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
