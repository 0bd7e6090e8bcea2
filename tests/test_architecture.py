"""The package's import graph has no cycle (DESIGN.md 15: imports go one way).

Every import counts, also those inside functions (they run too, only later). In the master and
worker sides and the top-level modules, imports under `if TYPE_CHECKING:` count too (a cycle of types
is still two modules that need each other); elsewhere only the imports that run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clusterd"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(name: str, path: Path, modules: dict[str, Path], types: bool) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not types and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else base)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


STRICT = ("clusterd.master", "clusterd.worker")


def _strict(name: str, path: Path) -> bool:
    """Type hints count in the master and worker sides and in the top-level modules."""
    return path.parent == PACKAGE or name.startswith(STRICT)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules, types=_strict(name, path)) for name, path in modules.items()}
    # importing a submodule runs its packages' __init__ first: that is no edge back to them
    return {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_supervisor_imports_nothing_of_the_router():
    graph = import_graph()
    seen, todo = set(), ["clusterd.master.supervisor"]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    assert "clusterd.master.router" not in seen


def test_the_worker_side_imports_nothing_of_the_master():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("clusterd.worker"):
            assert not {d for d in deps if d.startswith("clusterd.master")}, name
