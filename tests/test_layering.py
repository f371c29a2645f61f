"""Imports point one way: every import in builder/, grammar/ and cache/ (those inside functions
too) keeps to the table in README.md's "How it is built", and no two packages import each other,
directly or round a longer loop.

A unit is a package or module directly under `builder` (builder.solver, builder.convert, ...;
grammar/ and cache/ are installed as builder.grammar and builder.cache); `builder` itself is the
package's __init__, the public API.
"""

from __future__ import annotations

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = {"builder": "builder", "grammar": "builder.grammar", "cache": "builder.cache"}
TABLE_HEADER = re.compile(r"^\s+unit\s+may import\s*$")


def allowed_imports() -> dict[str, set[str]]:
    """The README's table: unit -> the units it may import."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if TABLE_HEADER.match(line))
    table: dict[str, set[str]] = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        words = re.sub(r"\(.*?\)", "", line).split()
        table[words[0]] = set(words[1:])
    return table


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "builder"


def _imported_modules(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target == "builder":  # `from builder import events`: the names are units (or the API)
        return [f"builder.{alias.name}" for alias in node.names]
    return [target]


def import_edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between two units."""
    edges = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            module = _module_name(path)
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                for target in _imported_modules(node, module, path.name == "__init__.py"):
                    if target.split(".")[0] != "builder":
                        continue
                    source, imported = unit_of(module), unit_of(target)
                    if imported != source:
                        where = f"{path.relative_to(REPO)}:{node.lineno}"
                        # a name that is no unit (`from builder import build`) is the API itself
                        edges.append((source, imported if imported in UNITS else "builder", where))
    return edges


def _units_in_tree() -> set[str]:
    units = {"builder"}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            units.add(unit_of(_module_name(path)))
    return units


UNITS = _units_in_tree()


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in GRAPH as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
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


def test_every_unit_has_a_row_in_the_readme_table():
    table = allowed_imports()
    assert sorted(UNITS - set(table)) == [], "place the new package in README.md's import table"
    assert sorted(set(table) - UNITS) == [], "the table names a package the tree does not have"
    for unit, allowed in table.items():
        assert allowed <= set(table), f"{unit} may import unknown units {sorted(allowed - set(table))}"


def test_the_table_itself_has_no_cycle():
    assert _cycle(allowed_imports()) is None


def test_every_import_keeps_to_the_table():
    table = allowed_imports()
    wrong = [f"{where}: {source} imports {imported}" for source, imported, where in import_edges()
             if imported not in table.get(source, set())]
    assert wrong == []


def test_no_two_packages_import_each_other():
    graph: dict[str, set[str]] = {}
    for source, imported, _ in import_edges():
        graph.setdefault(source, set()).add(imported)
    assert _cycle(graph) is None


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    tree = ast.parse("def f():\n    from builder.convert import convert\n    from ..llb import ops\n"
                     "    from . import fileops\n    import builder.errors\n")
    found = [t for node in ast.walk(tree) for t in _imported_modules(node, "builder.solver.mounts", False)]
    assert found == ["builder.convert", "builder.llb", "builder.solver", "builder.errors"]
    assert [unit_of(t) for t in found] == ["convert", "llb", "solver", "errors"]
