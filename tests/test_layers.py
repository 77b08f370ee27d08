"""Lower floors never import upper floors: trainers and search spaces stand on ftsweep_common only."""

from __future__ import annotations

import ast
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


def module_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``package``, the modules of the same package it imports (anywhere in it)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets.add(node.module)
        graph[name] = {target for target in targets if target.startswith(package + ".") and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order), or None."""
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


@pytest.mark.parametrize("package", ["trainers", "search_spaces", "ftsweep_common"])
def test_no_import_cycle_inside_a_package(package: str) -> None:
    # A cycle hidden in function-level imports still couples the two modules; data.py and
    # feature_cache.py had one (the shared-folder helpers now live in trainers.shared_folder).
    assert find_cycle(module_imports(package)) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == ["p.a", "p.b", "p.c", "p.a"]
