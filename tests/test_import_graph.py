"""The import graph of the project's own modules, read from the source (ast): no cycles, and the model
package does not depend on the data package (the data set describes itself through util.metadata).

Every import counts, also one inside a function: a lazy import still ties two files together.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "build", "data", "exps", ".git", ".ci"}
# Import edges known to close a cycle, each to be dropped once its edge is gone (none today).
KNOWN_UPWARD_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: ``import a.b``, ``from a import b`` (module b, or a itself
    for a name defined in a), relative imports resolved against ``name``'s package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "util.args" in graph["models.deformable_transformer"]  # a module-level import
    assert "datasets" in graph["util.args"]  # imported inside a function
    assert "models.ops.modules.ms_deform_attn" in graph["models.ops.modules"]  # `from .ms_deform_attn import`


def test_no_import_cycles():
    graph = _graph()
    assert {(a, b) for a, b in KNOWN_UPWARD_EDGES if b in graph.get(a, ())} == KNOWN_UPWARD_EDGES
    for a, b in KNOWN_UPWARD_EDGES:
        graph[a] = graph[a] - {b}
    assert _cycles(graph) == []


def test_models_import_nothing_from_datasets():
    graph = _graph()
    offending = {name: sorted(t for t in targets if t == "datasets" or t.startswith("datasets."))
                 for name, targets in graph.items() if name == "models" or name.startswith("models.")}
    assert {name: t for name, t in offending.items() if t} == {}


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
