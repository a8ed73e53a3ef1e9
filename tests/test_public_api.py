"""Each package's public surface (``__all__``) exists, and imports point one way only.

The import rule: blockstore imports nothing of ours; stages may import blockstore;
scheduler may import both; the CLI (``blockpoint``) and ``bench`` sit on top. It is checked
by reading the source files' import statements, so a lazy import inside a function counts
as much as one at the top.

An upward call needs no import: ``ray.get_actor(name).restore.remote(...)`` reaches the
scheduler from ``stages`` by name. So ``stages`` must not call, through ``.remote(``, any
method of the scheduler actor (``class Scheduler`` in ``scheduler/actor.py``); it calls the
hooks it defines itself (``stages/actors/hooks.py``), which ``scheduler/hooks.py`` implements.

Inside ``stages`` the same rule orders the three rooms: ``stages.errors`` <- ``checkpoint``
<- ``actors`` <- ``pipeline``. And no two modules of the project import each other, however
indirectly (a circle), lazy and ``TYPE_CHECKING`` imports included: a shared type lives
where both sides can import it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"blockstore", "stages", "scheduler", "blockpoint", "bench", "blockpoint_langgraph"}
ALLOWED = {
    "blockstore": set(),
    "stages": {"blockstore"},
    "scheduler": {"blockstore", "stages"},
    "blockpoint_langgraph": {"blockstore", "stages"},
}


def _landed(pkg: str) -> bool:
    return (ROOT / pkg / "__init__.py").exists()


def _imports(path: Path, pkg: str, root: Path = ROOT) -> set[str]:
    """Top-level package names of everything ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    depth = len(path.relative_to(root).parts) - 1  # package nesting of the module
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add((node.module or "").split(".")[0])
            elif node.level > depth:
                found.add("<relative import above the package>")
            else:
                found.add(pkg)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value).split(".")[0])
    return found


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_all_names_exist(pkg: str) -> None:
    if not _landed(pkg):
        pytest.skip(f"package {pkg} has not landed yet")
    mod = importlib.import_module(pkg)
    names = getattr(mod, "__all__", None)
    assert names, f"{pkg} does not declare __all__"
    assert len(set(names)) == len(names), f"{pkg}.__all__ repeats a name"
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{pkg}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_submodule_all_names_exist(pkg: str) -> None:
    if not _landed(pkg):
        pytest.skip(f"package {pkg} has not landed yet")
    for path in sorted((ROOT / pkg).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        modname = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mod = importlib.import_module(modname)
        missing = [n for n in getattr(mod, "__all__", []) if not hasattr(mod, n)]
        assert not missing, f"{modname}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_imports_point_one_way(pkg: str) -> None:
    if not _landed(pkg):
        pytest.skip(f"package {pkg} has not landed yet")
    forbidden = OURS - ALLOWED[pkg] - {pkg}
    bad = {}
    for path in sorted((ROOT / pkg).rglob("*.py")):
        wrong = _imports(path, pkg) & (forbidden | {"<relative import above the package>"})
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"{pkg} imports what it must not: {bad}"


def _scheduler_methods(root: Path = ROOT) -> set[str]:
    """Public method names of ``class Scheduler`` (the actor's remote methods)."""
    tree = ast.parse((root / "scheduler" / "actor.py").read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Scheduler")
    return {n.name for n in cls.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not n.name.startswith("_")}


def _remote_calls(path: Path) -> set[str]:
    """Names ``m`` of every ``<anything>.m.remote(...)`` call in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if (isinstance(func, ast.Attribute) and func.attr == "remote"
                and isinstance(func.value, ast.Attribute)):
            found.add(func.value.attr)
    return found


# Methods the stage actor has under the same name as one of the scheduler's: a call of
# these from stages addresses a stage (``stages/actors/actor.py``), never the scheduler.
_STAGE_METHODS = {"checkpoint", "ping", "info", "stop", "shutdown", "rollback",
                  "process_batch", "get_state", "registration"}


def test_stages_call_no_scheduler_method() -> None:
    if not (_landed("stages") and _landed("scheduler")):
        pytest.skip("stages or scheduler has not landed yet")
    methods = _scheduler_methods()
    assert {"register", "unregister", "restore", "handle_of", "stage"} <= methods
    bad = {}
    for path in sorted((ROOT / "stages").rglob("*.py")):
        wrong = (_remote_calls(path) & methods) - _STAGE_METHODS
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"stages calls scheduler methods by name (use stages/actors/hooks.py): {bad}"


def test_the_remote_scanner_sees_calls(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import ray\nray.get_actor('s').restore.remote('x')\n"
                     "def f(h):\n    return h.handle_of.remote('x'), h.rollback.remote(1)\n"
                     "g = ray.remote(object).remote()\n")
    assert _remote_calls(probe) == {"restore", "handle_of", "rollback"}


def test_the_scanner_sees_imports(tmp_path: Path) -> None:
    # The rule above is only as good as the scanner: it must see every form of import.
    probe = tmp_path / "blockstore" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("import stages.x\nfrom scheduler import y\nfrom . import z\n"
                     "def f():\n    from blockpoint.cli import main\n    __import__('bench.b')\n"
                     "from .. import escape\n")
    assert _imports(probe, "blockstore", tmp_path) == {
        "stages", "scheduler", "blockstore", "blockpoint", "bench",
        "<relative import above the package>"}


# -- rooms of stages, and circles -----------------------------------------------------------

ROOMS = ("checkpoint", "actors", "pipeline")


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Fully qualified names of the project modules ``path`` imports (relative ones resolved,
    ``from package import submodule`` counted as the submodule), lazy imports included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bases = [a.name for a in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - (node.level - 1)])
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            bases = [base]
            names = [a.name for a in node.names]
        else:
            continue
        for base in bases:
            if base.split(".")[0] not in OURS:
                continue
            subs = [f"{base}.{n}" for n in names if _is_module(f"{base}.{n}", root)]
            found.update(subs)
            if len(subs) < len(names) or not names:
                found.add(base)
    return {m for m in found if _is_module(m, root)}


def _graph(root: Path = ROOT) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for pkg in sorted(OURS):
        if not (root / pkg).is_dir():
            continue
        for path in sorted((root / pkg).rglob("*.py")):
            graph[_module_name(path, root)] = _imported_modules(path, root) - {_module_name(path, root)}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_circles() -> None:
    circles = _circles(_graph())
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_rooms_of_stages_point_one_way() -> None:
    bad = {}
    for i, room in enumerate(ROOMS):
        above = {f"stages.{r}" for r in ROOMS[i + 1:]} | {"stages"}
        for path in sorted((ROOT / "stages" / room).rglob("*.py")):
            wrong = {m for m in _imported_modules(path)
                     if m in above or any(m.startswith(a + ".") for a in above - {"stages"})}
            if wrong:
                bad[_module_name(path)] = sorted(wrong)
    errors_imports = _imported_modules(ROOT / "stages" / "errors.py")
    assert not {m for m in errors_imports if m.startswith("stages")}, errors_imports
    assert not bad, f"a room of stages imports a room above it (or the package root): {bad}"


def test_the_circle_finder_sees_circles(tmp_path: Path) -> None:
    pkg = tmp_path / "stages"
    (pkg / "actors").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "actors" / "__init__.py").write_text("")
    (pkg / "actors" / "a.py").write_text("from typing import TYPE_CHECKING\n"
                                          "if TYPE_CHECKING:\n    from .b import B\n")
    (pkg / "actors" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "actors" / "c.py").write_text("from stages.actors.a import A\n")
    (pkg / "actors" / "d.py").write_text("from ..actors import a\n")
    graph = _graph(tmp_path)
    assert graph["stages.actors.d"] == {"stages.actors.a"}
    assert _circles(graph) == [["stages.actors.a", "stages.actors.b", "stages.actors.c"]]
