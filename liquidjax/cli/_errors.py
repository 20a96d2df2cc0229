"""The command line's own failures: a run-time failure (exit 1) and a bad combination of flags
(exit 2), each reported as one line."""

from __future__ import annotations


class CliError(Exception):
    """A run-time failure reported as one message and exit code 1."""


class UsageError(Exception):
    """A bad combination of flags (exit code 2)."""


class RunInterrupted(KeyboardInterrupt):
    """An interrupted ``liquidjax train``; its message says what was saved and how to resume
    (exit code 130)."""


def one_line(text: str) -> str:
    """A message on one line: its lines joined (after a line ending in ':' with a space, else
    with '; '), list markers and indentation dropped."""
    out = ""
    for raw in str(text).strip().splitlines():
        line = raw.strip()
        if line.startswith("- "):
            line = line[2:]
        if not line:
            continue
        out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out
