"""The layering, checked from the code's imports with ``ast``: packages import only downwards
(schemas, runtime, models, curation, training, pipeline, then the console command) and no module
imports itself back, directly or round a longer loop.

Every import of a project module counts, whether at the top of a file or inside a function:
a function-level import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; a package may import those on its own level or below. The entry-point
# package `humans300m` sits on top of everything.
LAYERS = [
    {"schemas"},
    {"runtime"},
    {"models"},  # the ViT/MAE and the exported-encoder format: curation's semantic dedup uses them
    {"curation"},
    {"training"},
    {"pipeline"},
    {"humans300m"},
]
LEVEL = {package: level for level, group in enumerate(LAYERS) for package in group}


def _modules() -> dict[str, Path]:
    found = {}
    for package in LEVEL:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (``a.b.func`` -> ``a.b``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, source: str, is_package: bool = False) -> set[str]:
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                targets.add(target)
    return targets


GRAPH = {
    module: _imports(module, path.read_text(), path.name == "__init__.py")
    for module, path in MODULES.items()
}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a longer loop
    (Tarjan's strongly connected components with more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def test_no_module_imports_itself_back_through_any_loop():
    assert not _cycles(GRAPH), _cycles(GRAPH)


def test_packages_import_only_downwards():
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if LEVEL[b.split(".")[0]] > LEVEL[a.split(".")[0]]
    )
    assert not upward, upward


def test_the_walker_sees_function_level_and_relative_imports():
    source = (
        "import os\n"
        "from . import reasons\n"
        "def f():\n"
        "    from runtime.storage import locate\n"
        "    import models.vit\n"
    )
    assert _imports("schemas.layout", source) == {
        "schemas",  # the package itself: `from . import x` runs its __init__
        "schemas.reasons",
        "runtime.storage",
        "models.vit",
    }


def test_the_cycle_finder_sees_long_loops():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
