"""The product code's import graph has no cycle: not between modules, not between the top-level
packages (edge <- cloud <- hil, dashboards), not between the rooms of cloud/. Read from the source
with ast, so imports inside functions (lazy ones) count as much as those at the top."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "cloud", "hil", "dashboards")
IMPORT_ROOT = "tendril_transactive."  # the packages are imported through it (tendril_transactive/__init__.py)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> list[str]:
    """What the module at `path` imports (absolute imports only; the product has no relative ones)."""
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets += [f"{node.module}.{a.name}" for a in node.names]
    return targets


def _graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports, named by their folder (cloud.ingest.serve)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        for target in _imports(path):
            if target.startswith(IMPORT_ROOT):
                dep = _resolve(target.removeprefix(IMPORT_ROOT), modules)
                if dep is not None and dep != mod and not mod.startswith(dep + "."):
                    graph[mod].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _collapse(graph: dict[str, set[str]], depth: int, prefix: str = "") -> dict[str, set[str]]:
    def key(m: str) -> str:
        return ".".join(m.split(".")[:depth])

    out: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        if not mod.startswith(prefix):
            continue
        for dep in deps:
            if dep.startswith(prefix) and key(dep) != key(mod):
                out[key(mod)].add(key(dep))
    return out


def test_no_module_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_cycle_between_top_level_packages() -> None:
    assert _cycles(_collapse(_graph(), 1)) == []


def test_no_cycle_between_the_rooms_of_cloud() -> None:
    assert _cycles(_collapse(_graph(), 2, "cloud.")) == []


def test_the_graph_is_read() -> None:
    """Guards the three tests above against an empty graph passing for the wrong reason."""
    graph = _graph()
    assert "cloud.ingest.ingestor" in graph["cloud.ingest.serve"]
    assert "cloud.agent.dispatch" in graph["hil.bench"]


def test_every_import_goes_through_the_import_root() -> None:
    """`import cloud.x` would work in a checkout (its root is on the path) and load a second copy
    of the module beside tendril_transactive.cloud.x, with its own settings and state; in an
    installed wheel it fails. Product, tests and benches import through the root only."""
    bare = []
    for folder in (*PACKAGES, "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            bare += [f"{path.relative_to(ROOT)}: {t}" for t in _imports(path) if t.split(".")[0] in PACKAGES]
    assert bare == []
