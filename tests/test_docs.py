"""The docs site builds with `mkdocs build --strict` (broken references or docstrings fail)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    missing = [m for m in NEEDED if importlib.util.find_spec(m.split(".")[0]) is None
               or importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"docs toolchain not installed ({', '.join(missing)}): "
                    "pip install mkdocs-material 'mkdocstrings[python]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("LiquidRNN", "system_time_constants", "FusedSemiImplicit", "training_curves"):
        assert name in api, f"{name} missing from the API reference"
