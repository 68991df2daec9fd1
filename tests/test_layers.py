"""The layers of the code base and the one rule between them (docs/architecture.md): imports point down.

    cli, console, cli_types          the command line (presentation)
    synthaug.apps                    applications: sweep, evaluate, demo, pregenerate
    synthaug library                 config, errors, data, text, ldm, generate, mix, metrics, ...
    classifiers                      3D classifiers, training, metrics; knows nothing of synthaug

Every import counts, at module level or inside a function (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESENTATION = ("synthaug.cli", "synthaug.cli_types", "synthaug.console", "synthaug.__main__")


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("synthaug", "classifiers"):
        for file in (ROOT / package).rglob("*.py"):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = file
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module an imported name lives in (``synthaug.mix.cache.SyntheticCache`` -> ``synthaug.mix.cache``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import nodes under ``if TYPE_CHECKING:`` (names for annotations, never imported at run time)."""
    guarded = [node for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test)]
    return {inner for node in guarded for stmt in node.body for inner in ast.walk(stmt)}


def imports_of(module: str, source: str | None = None, *, annotations: bool = True) -> set[str]:
    """The first-party modules ``module`` imports anywhere in its code (its own parent packages excluded);
    ``annotations`` False leaves out imports made only for type checking."""
    tree = ast.parse(source if source is not None else MODULES[module].read_text(encoding="utf-8"))
    skipped = set() if annotations else _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            owner = _owner(name) if name.split(".")[0] in ("synthaug", "classifiers") else None
            if owner and owner != module and not module.startswith(owner + "."):
                found.add(owner)
    return found


def layer(module: str) -> int:
    """0 classifiers, 1 the synthaug library, 2 applications, 3 the command line."""
    if module.split(".")[0] == "classifiers":
        return 0
    if module.startswith(PRESENTATION):
        return 3
    return 2 if module.startswith("synthaug.apps") else 1


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in MODULES}


def test_imports_point_down(graph):
    assert upward_imports(graph) == []


def test_no_import_cycles():
    """At run time: a module may name a lower one's types for annotations (``if TYPE_CHECKING:``)."""
    assert cycles({module: imports_of(module, annotations=False) for module in MODULES}) == []


def test_classifiers_stand_alone(graph):
    assert not [f"{m} -> {d}" for m, deps in graph.items() if layer(m) == 0 for d in deps if layer(d) != 0]


def test_the_checks_catch_what_they_guard():
    """An upward import (library -> application, lazy) and a circle are both found."""
    lazy = "def f():\n    from synthaug.apps.sweep import run_sweep\n"
    graph = {"synthaug.mix.dataset": imports_of("synthaug.mix.dataset", lazy)}
    assert upward_imports(graph) == ["synthaug.mix.dataset -> synthaug.apps.sweep"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from synthaug.config import DataConfig\n"
    assert imports_of("synthaug.data.io", typed) == {"synthaug.config"}
    assert imports_of("synthaug.data.io", typed, annotations=False) == set()
