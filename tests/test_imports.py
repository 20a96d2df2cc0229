"""The package's import graph points down: no cycle among liquidjax modules, counting
imports inside functions too, and `train/` imports no cell code and draws nothing."""

from __future__ import annotations

import ast
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
    # Layering (DESIGN.md): wirings, solvers -> cells -> layers -> models -> train -> cli/plot.
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
