"""The package's import graph points down: no cycle among liquidjax modules, counting imports
inside functions too; `train/` imports no cell code and draws nothing; `models/` never reaches
`train/`; and imports sit at the top of their module (a function-local import is kept only for
an optional dependency or one of the few slow ones listed in LAZY_IMPORTS)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "liquidjax"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if _is_package(name, modules) else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if sub in modules else src)
            for t in targets:
                while t and t not in modules:  # `import liquidjax.x.y` -> the deepest module
                    t = t.rpartition(".")[0]
                if t.startswith("liquidjax") and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out




def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 30 and graph["liquidjax.cli"], "the import graph was not read"
    cycles = _cycles(graph)
    assert not cycles, "import cycles among liquidjax modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_cycle_detection_is_not_vacuous():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_train_knows_no_cell_and_draws_nothing():
    # Layering: wirings, solvers -> cells -> layers -> models -> train -> cli/plot.
    # train/ may use the model layer's contracts and the wiring records (host-side config kept in
    # checkpoints), but names no cell, solver or layer itself and never reaches the plotting layer.
    graph = _graph()
    train = [m for m in graph if m.startswith("liquidjax.train")]
    direct = sorted({t for m in train for t in graph[m]
                     if t.startswith(("liquidjax.cells", "liquidjax.solvers", "liquidjax.layers"))})
    assert not direct, f"liquidjax.train imports {direct}"
    seen, todo = set(), list(train)
    while todo:  # everything train/ reaches, directly or not
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not any(m.startswith(("liquidjax.plot", "liquidjax.cli")) for m in seen)


def test_models_never_import_train():
    # What both need (losses, metrics) lives below both (liquidjax/_metrics.py); a model
    # declares how its members combine (models.AbstractEnsemble), the trainer reads that.
    graph = _graph()
    models = [m for m in graph if m.startswith("liquidjax.models")]
    assert models, "no liquidjax.models modules found"
    seen, todo, via = set(), list(models), {}
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for t in graph[m]:
            via.setdefault(t, m)
            todo.append(t)
    reached = sorted(m for m in seen if m.startswith("liquidjax.train"))
    assert not reached, f"liquidjax.models reaches {reached} (first via {via[reached[0]]})"


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~!; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


_PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = _requirement_names(_PROJECT["dependencies"])
EXTRAS = _requirement_names([r for reqs in _PROJECT["optional-dependencies"].values()
                             for r in reqs])

# Optional dependencies, by module: the distribution an extra of pyproject.toml installs. They
# are imported only inside the functions that use them, so that the package imports without them.
OPTIONAL_MODULES = {"onnx": "onnx", "onnxruntime": "onnxruntime", "jax2onnx": "jax2onnx",
                    "torch": "torch", "ncps": "ncps", "scipy": "scipy", "psutil": "psutil",
                    "tensorflow": "tensorflow-cpu"}

# Core dependencies imported inside functions all the same: module -> (distribution, why). Each
# reason is a measured import time (on top of jax, equinox, diffrax and optax) paid by code
# that rarely needs the module. Keep this short.
LAZY_IMPORTS = {
    "matplotlib": ("matplotlib", "0.6 s, a fifth of `import liquidjax` (which loads plot and "
                   "wirings.draw); only drawing needs it"),
    "tensorflow_datasets": ("tensorflow-datasets", "0.25 s on every import of liquidjax.data "
                            "(hence train and the CLI); only a tfds load needs it"),
}


def test_dependency_lists_match_pyproject():
    for module, dist in OPTIONAL_MODULES.items():
        assert dist in EXTRAS and dist not in CORE, (
            f"{module} ({dist}) must be an extra and not a core dependency; if it became core, "
            "drop it from OPTIONAL_MODULES and import it at the top")
    for module, (dist, _) in LAZY_IMPORTS.items():
        assert dist in CORE, f"{module} ({dist}) is no core dependency"


def _imports(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """``(line, module)`` of every import of `path`: those inside a function, and those at
    module level outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    local, skip = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local |= {id(sub) for sub in ast.walk(node)}
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    inner, top = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        if id(node) in local:
            inner += [(node.lineno, n) for n in names]
        elif id(node) not in skip:
            top += [(node.lineno, n) for n in names]
    return sorted(set(inner)), sorted(set(top))


def test_every_third_party_import_is_declared():
    # A module imported by the package is a core dependency (or, inside functions, an extra's).
    dist_of = {"PIL": "pillow", **OPTIONAL_MODULES}
    found = set()
    for path in sorted(PKG.rglob("*.py")):
        inner, top = _imports(path)
        for _, mod in inner + top:
            root = mod.split(".")[0]
            if root and root != "liquidjax" and root not in sys.stdlib_module_names:
                dist = dist_of.get(root, root.lower().replace("_", "-"))
                if dist not in CORE and root not in OPTIONAL_MODULES:
                    found.add(f"{root} ({path.relative_to(ROOT).as_posix()})")
    assert not found, f"imported but not in pyproject.toml's dependencies: {sorted(found)}"


def _local_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import inside a function of `path`, optional dependencies and
    lazy imports left out."""
    allowed = set(OPTIONAL_MODULES) | set(LAZY_IMPORTS)
    return [(line, n) for line, n in _imports(path)[0] if n.split(".")[0] not in allowed]


def test_no_function_local_imports():
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        if hits := _local_imports(path):
            found[path.relative_to(ROOT).as_posix()] = hits
    assert not found, "imports inside functions (move them to the top of the module):\n" + (
        "\n".join(f"  {f}:{line} {mod}" for f, hits in found.items() for line, mod in hits))


def test_optional_dependencies_only_inside_functions():
    found = [f"  {path.relative_to(ROOT).as_posix()}:{line} {mod}"
             for path in sorted(PKG.rglob("*.py")) for line, mod in _imports(path)[1]
             if mod.split(".")[0] in OPTIONAL_MODULES]
    assert not found, ("optional dependencies imported at module level (the package must import "
                       "without its extras):\n" + "\n".join(found))


def test_local_import_check_is_not_vacuous(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nimport torch\nfrom typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    import onnx\n\ndef f():\n    import json\n"
                   "    import onnx\n    import matplotlib.figure\n    from . import x\n"
                   "    return json\n")
    assert _local_imports(src) == [(8, "json"), (11, ".")]
    assert _imports(src)[1] == [(1, "os"), (2, "torch"), (3, "typing")]
