"""ruff (pycodestyle, pyflakes, import order; line length 100) is clean on the package, the
benchmarks and the tests (configuration in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if Path(exe).exists():
        return [exe]
    return [sys.executable, "-m", "ruff"]  # ruff is in the `test` extra


def test_ruff_clean():
    proc = subprocess.run([*_ruff(), "check", "liquidjax", "benchmarks", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
