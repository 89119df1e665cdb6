"""The training package's imports run one way: no cycle among its files, counting imports
inside functions too (ARCHITECTURE.md: no file imports a file that imports it back)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "runtime", "models", "curation", "training", "pipeline", "humans300m")


def _module_file(name: str, root: Path) -> Path | None:
    path = root.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(file: Path, root: Path) -> set[Path]:
    """The project files ``file`` imports, anywhere in it (TYPE_CHECKING blocks included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
    found = {_module_file(n, root) for n in names if n.split(".")[0] in PACKAGES}
    return {f for f in found if f is not None and f != file}


def _cycles(files: list[Path], root: Path = ROOT) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan)."""
    graph = {f: _imports(f, root) for f in files}
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    found: list[list[str]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(str(w.relative_to(root)))
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for f in graph:
        if f not in index:
            visit(f)
    return found


def test_training_files_import_in_one_direction():
    files = sorted((ROOT / "training").rglob("*.py"))
    assert len(files) > 30
    assert _cycles(files) == []


def test_the_check_sees_a_cycle(tmp_path):
    """The walk follows ``from package import module`` and imports inside functions."""
    package = tmp_path / "training"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from training import b\n")
    (package / "b.py").write_text("from training.a import f\n")
    (package / "c.py").write_text("import training.b\n")
    assert _cycles(sorted(package.rglob("*.py")), tmp_path) == [["training/a.py", "training/b.py"]]
