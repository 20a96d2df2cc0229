"""The notebooks: stored clean, and each one executes top to bottom in small mode with figures."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

import liquidjax

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "liquidjax-test-python"


def test_notebooks_are_stored_clean():
    assert len(NOTEBOOKS) == 6, [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4
        code = [c for c in nb.cells if c.cell_type == "code"]
        for cell in code:
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs kept"
        # The first code cell installs liquidjax only where it is missing (Colab).
        first = code[0].source
        assert "import liquidjax" in first and "except ImportError" in first and "%pip" in first
        assert any("LIQUIDJAX_SMALL" in c.source for c in code), f"{path.name}: no small mode"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec running this interpreter (the project venv), found through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "liquidjax tests",
        "language": "python",
    }))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, kernel_dir, tmp_path, monkeypatch):
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    # The kernel imports the liquidjax under test, not another installed copy (a relative
    # PYTHONPATH=. does not reach it from the kernel's working directory).
    here = Path(liquidjax.__file__).resolve()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(here.parents[1]), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("LIQUIDJAX_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import liquidjax; print(liquidjax.__file__)"))
    client = NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} produced no figure"
    assert Path(nb.cells[-1].outputs[0]["text"].strip()).resolve() == here
