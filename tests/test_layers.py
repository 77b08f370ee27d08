"""Lower floors never import upper floors (trainers and search spaces stand on ftsweep_common only),
and no import cycle joins any of ftsweep's own modules."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each package and the top-level packages of this project it must never import.
FORBIDDEN = {
    "trainers": {"orchestrator"},
    "search_spaces": {"orchestrator"},
    "ftsweep_common": {"orchestrator", "trainers", "search_spaces"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """The top-level package of every import in ``path`` (function-level imports included), with its line."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_floor_never_imports_an_upper_one(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for name, line in sorted(imported_packages(path))
        if name in FORBIDDEN[package]
    ]
    assert offenders == []


def test_the_check_sees_a_function_level_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from orchestrator.config import Sweep\n", encoding="utf-8")
    assert imported_packages(module) == {("orchestrator", 2)}


def test_the_orchestrator_still_offers_the_error_classes() -> None:
    import ftsweep_common.errors as ground
    import orchestrator.errors as orchestrator_errors

    for name in ground.__all__:
        assert getattr(orchestrator_errors, name) is getattr(ground, name)


#: ftsweep's own packages: an import cycle anywhere among their modules fails the test below.
PACKAGES = ("orchestrator", "trainers", "search_spaces", "ftsweep_common")


def module_name(path: Path, root: Path = ROOT) -> str:
    """``orchestrator/backends/__init__.py`` -> ``orchestrator.backends``."""
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def runtime_imports(path: Path, module: str) -> set[tuple[str, int]]:
    """Every module name ``path`` imports when it runs, with its line: module-level and function-level
    imports, relative ones resolved against ``module``; ``from package import name`` gives both
    ``package`` and ``package.name`` (the caller keeps the ones that are modules). Imports under
    ``if TYPE_CHECKING:`` are left out: they never run, and an annotation may name a module that
    imports this one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(test):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add((base, node.lineno))
            found.update((f"{base}.{alias.name}", node.lineno) for alias in node.names)
    return found


def import_graph(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> dict[str, dict[str, int]]:
    """For each module of ``packages``, the modules of ``packages`` it imports and the line of each import.

    A submodule's import of ``a.b.c`` also runs ``a/b/__init__.py``; that implicit edge is not
    counted (every submodule would otherwise be in a cycle with its package's ``__init__``).
    """
    paths = {module_name(path, root): path for package in packages for path in (root / package).rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for module, path in sorted(paths.items()):
        edges = graph[module] = {}
        for target, line in sorted(runtime_imports(path, module)):
            if target in paths and target != module:
                edges.setdefault(target, line)  # the first line that imports it
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return trail[trail.index(target) :] + [target]
            if target not in state:
                found = visit(target, trail + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]], root: Path = ROOT) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each step with the line that makes it."""

    def where(module: str) -> str:
        folder = root.joinpath(*module.split("."))
        path = folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")
        return str(path.relative_to(root))

    steps = [
        f"{source} ({where(source)}:{graph[source][target]})"
        for source, target in zip(cycle, cycle[1:], strict=False)
    ]
    return " -> ".join([*steps, cycle[-1]])


def test_no_import_cycle_among_ftsweeps_modules() -> None:
    # A cycle hidden in function-level imports still couples the two modules: data.py and
    # feature_cache.py had one, and so did orchestrator/tracking.py and _tracking_writer.py.
    graph = import_graph()
    assert len(graph) > 40, f"only {len(graph)} modules found under {', '.join(PACKAGES)}"
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe_cycle(cycle, graph)}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == ["p.a", "p.b", "p.c", "p.a"]


def test_the_cycle_check_reads_function_level_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "a.py").write_text("import os\nfrom pkg import b\n", encoding="utf-8")
    (package / "b.py").write_text("def f():\n    from . import c\n", encoding="utf-8")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\nimport pkg.a\n",
        encoding="utf-8",
    )
    graph = import_graph(("pkg",), tmp_path)
    assert graph["pkg.c"] == {"pkg.a": 4}  # the TYPE_CHECKING import never runs
    cycle = find_cycle(graph)
    assert cycle == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert describe_cycle(cycle, graph, tmp_path) == (
        "pkg.a (pkg/a.py:2) -> pkg.b (pkg/b.py:2) -> pkg.c (pkg/c.py:4) -> pkg.a"
    )
