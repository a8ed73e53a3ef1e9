"""The modules of ``blockstore`` import each other without a circle (base <-> lease was one).

Read from the source, so a lazy import inside a function counts as much as one at the top;
imports under ``if TYPE_CHECKING:`` count too (a circle hidden from the interpreter is still
a circle for the reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "blockstore"


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports; a subpackage (``testing/``) is one node,
    its files' imports together (``from ..base`` inside it names ``base``)."""
    files: dict[str, list[tuple[Path, int]]] = {}
    for p in PKG.glob("*.py"):
        if p.stem != "__init__":
            files[p.stem] = [(p, 1)]
    for d in PKG.iterdir():
        if d.is_dir() and (d / "__init__.py").exists():
            files[d.name] = [(p, 2) for p in sorted(d.glob("*.py"))]
    mods = set(files)
    graph: dict[str, set[str]] = {}
    for m, sources in files.items():
        deps: set[str] = set()
        for path, up in sources:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    if node.level == up and node.module:
                        deps.add(node.module.split(".")[0])
                    elif node.level == 0 and (node.module or "").startswith("blockstore."):
                        deps.add(node.module.split(".")[1])  # type: ignore[union-attr]
        graph[m] = (deps & mods) - {m}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_blockstore_modules_have_no_import_cycle() -> None:
    graph = _graph()
    assert "lease" in graph and "base" in graph["testing"] | graph["file"]
    assert "base" not in graph["lease"], "lease.py must name the store by its Protocol"
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
