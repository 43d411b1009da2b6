"""The import graph of this tree, read with ``ast`` (nothing is imported): which module imports which of ours.

Every import counts, also one deferred into a function or kept for type checking only: a
deferred import that hides a cycle is still a cycle, and a type-level dependency is still one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

__all__ = ["OURS", "ROOT", "collapse", "cycles", "import_graph", "modules"]

ROOT = Path(__file__).resolve().parents[2]
# Top-level packages of this tree, and where each one's source is.
OURS = {"edge": ROOT / "edge", "drivers": ROOT / "drivers", "hub": ROOT / "hub", "hilsim": ROOT / "hil-sim" / "hilsim",
        "bench": ROOT / "bench", "images": ROOT / "images", "tests": ROOT / "tests"}


def modules() -> dict[str, Path]:
    """Every module of ours by dotted name (a package by its own name, for its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for top, directory in OURS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [top, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(tree: ast.Module, name: str, is_package: bool, known: Mapping[str, Path]) -> Iterator[str]:
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # `from a import b` imports the module a.b when there is one, else a name from a.
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (itself left out)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = _imported(tree, name, path.name == "__init__.py", known)
        graph[name] = {t for t in targets if t.split(".")[0] in OURS and t != name}
    return graph


def collapse(name: str, package: str) -> str | None:
    """The direct child of ``package`` that ``name`` is or lies in (``package`` itself for its ``__init__``); None outside it."""
    if name == package:
        return package
    if not name.startswith(package + "."):
        return None
    return package + "." + name[len(package) + 1 :].split(".")[0]


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)
