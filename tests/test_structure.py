"""Tests of the package's shape: modules import each other without loops."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "redis_broker"


def module_name(path: Path) -> str:
    """Return the dotted name of a module file of the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Return, for each module, the package modules it imports anywhere (functions and
    ``TYPE_CHECKING`` blocks included: a loop there is still a loop to a reader)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    graph[name].add(target if target in files else base)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
    # The root only re-exports, lazily (PEP 562), so importing it is never part of a loop.
    return {
        name: {t for t in targets if t in files and t not in (name, "redis_broker")}
        for name, targets in graph.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    """Tests that the import graph of redis_broker has no loop, at any import's depth."""
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert "redis_broker.wire" in graph["redis_broker.publishing"]  # and its imports
    assert cycles(graph) == []


def test_the_loop_finder_finds_a_loop() -> None:
    """Tests the finder itself on a three-module loop and a tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
