"""The package's shape, read from its source: the import graph between its files has no ring, each layer imports
only the layers below it, and no file outgrows what one reader can hold.

Every ``import`` and ``from ... import`` counts, wherever it stands: at module level, inside functions, under
``if TYPE_CHECKING:``; relative imports are resolved. ``from package import name`` points at the submodule when
``name`` is one, else at the package's ``__init__``. (Python also runs a package's ``__init__`` before any of its
submodules; that implicit step is not an edge here, or every package would form a ring with its own files.)
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import resnet_inspect

PACKAGE_ROOT = Path(resnet_inspect.__file__).parent
PACKAGE = PACKAGE_ROOT.name
MAX_LINES = 700


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (module names) at ``line``; ``type_only`` under ``if TYPE_CHECKING:``."""

    source: str
    target: str
    line: int
    type_only: bool


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The package module that ``name`` (a module, or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, type_only: bool = False) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``tree``, each with whether it sits under ``if TYPE_CHECKING:``."""
    found = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append((child, type_only))
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                found += _imports(ast.Module(body=[statement], type_ignores=[]), True)
            for statement in child.orelse:
                found += _imports(ast.Module(body=[statement], type_ignores=[]), type_only)
        else:
            found += _imports(child, type_only)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """The package modules one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's own package, one level up per extra dot
            package = module if is_package else module.rpartition(".")[0]
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin for alias in node.names]
    owners = {_owner(name) for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}
    return {owner for owner in owners if owner is not None and owner != module}


def import_edges() -> list[Edge]:
    edges = []
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, type_only in _imports(tree):
            for target in sorted(_targets(node, module, is_package)):
                edges.append(Edge(module, target, node.lineno, type_only))
    return edges


EDGES = import_edges()


def _rings(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a ring of files importing each other."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    rings = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                rings.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return rings


def _layer(module: str) -> str:
    """The folder (or top-level file) a module belongs to: ``capture``, ``report``, ``records``, ``api`` ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


# What each layer must never import: data flows model -> capture -> records -> analyses (analysis/, ops/) ->
# report objects (report/) -> renderers (render/); pipeline/ orchestrates them, and cli/ and api.py sit on top.
TOP = {"cli", "api", "__main__"}
FORBIDDEN: dict[str, set[str]] = {
    "records": {"capture", "analysis", "ops", "report", "render", "pipeline", *TOP},
    "errors": {"capture", "analysis", "ops", "report", "render", "pipeline", "models", *TOP},
    "units": {"records", "errors", "capture", "analysis", "ops", "report", "render", "pipeline", "models", *TOP},
    "models": {"capture", "analysis", "ops", "report", "render", "pipeline", *TOP},
    "capture": {"analysis", "report", "render", "pipeline", *TOP},
    "analysis": {"report", "render", "pipeline", *TOP},
    "ops": {"capture", "analysis", "report", "render", "pipeline", *TOP},
    "report": {"pipeline", "models", *TOP},
    "render": {"capture", "analysis", "report", "pipeline", "models", *TOP},
    "pipeline": TOP,
}
# Report objects hold analysis results and may name their types, but only for the type checker: building the
# results (loading, capturing, analysing) is the pipeline's work.
TYPES_ONLY: dict[str, set[str]] = {"report": {"capture", "analysis"}}


# The front ends (the command line and the Python API) parse, call one orchestration, and pick a renderer: they
# import the pipeline, the report objects and the renderers, and the leaf modules every layer may read (the
# errors, the limits and defaults that help texts are built from, the name sanitiser); the records' types only
# for the type checker. Loading, capturing and analysing happen in the pipeline, once for both.
FRONT_ENDS = {"cli", "api"}
FRONT_END_MAY_IMPORT = {"pipeline", "report", "render", "errors", "limits", "names", *FRONT_ENDS}
FRONT_END_TYPES_ONLY = {"records"}


def front_end_violations(edges: list[Edge]) -> list[str]:
    """Every import of cli/ or api.py outside what a front end may import (see FRONT_END_MAY_IMPORT)."""
    violations = []
    for edge in edges:
        source, target = _layer(edge.source), _layer(edge.target)
        if source not in FRONT_ENDS or target in FRONT_END_MAY_IMPORT:
            continue
        if target in FRONT_END_TYPES_ONLY and edge.type_only:
            continue
        violations.append(f"{edge.source} imports {edge.target} (line {edge.line}): a front end calls the pipeline")
    return violations


def layer_violations(edges: list[Edge]) -> list[str]:
    violations = []
    for edge in edges:
        source, target = _layer(edge.source), _layer(edge.target)
        if target in FORBIDDEN.get(source, set()):
            violations.append(f"{edge.source} imports {edge.target} (line {edge.line}): {source} sits below {target}")
        elif target in TYPES_ONLY.get(source, set()) and not edge.type_only:
            violations.append(f"{edge.source} imports {edge.target} at run time (line {edge.line}): {source} may "
                              f"name {target}'s types only under `if TYPE_CHECKING:`")
    return violations


def test_the_import_walk_sees_the_whole_package() -> None:
    """The walk reads every layer and the imports inside functions and under TYPE_CHECKING, so the rules below
    cannot pass by seeing nothing."""
    assert {"capture", "analysis", "ops", "report", "render", "pipeline", "cli", "api", "records"} <= {
        _layer(module) for module in MODULES}
    assert any(edge.type_only for edge in EDGES)
    function_level = [edge for edge in EDGES if edge.source == f"{PACKAGE}.cli.inspect_cmd"
                      and edge.target == f"{PACKAGE}.pipeline.summary"]
    assert function_level, "cli/inspect_cmd imports the pipeline inside its command function"


def test_no_two_files_import_each_other_directly_or_in_a_ring() -> None:
    rings = _rings(EDGES)
    assert not rings, "files that import each other (in a ring):\n" + "\n".join(
        " <-> ".join(ring) for ring in rings)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    violations = layer_violations(EDGES)
    assert not violations, "imports against the data flow:\n" + "\n".join(violations)


def test_the_front_ends_import_only_the_pipeline_reports_renderers_and_leaf_modules() -> None:
    violations = front_end_violations(EDGES)
    assert not violations, "front ends reaching past the pipeline:\n" + "\n".join(violations)


def test_the_front_end_rule_sees_an_import_of_capture_or_analysis() -> None:
    """The rule lists such an import (it cannot pass by matching nothing): a made-up edge from each front end."""
    made_up = [Edge(f"{PACKAGE}.api", f"{PACKAGE}.capture.loader", 1, False),
               Edge(f"{PACKAGE}.cli.inspect_cmd", f"{PACKAGE}.analysis.timing", 2, False),
               Edge(f"{PACKAGE}.cli.common", f"{PACKAGE}.records", 3, False),
               Edge(f"{PACKAGE}.api", f"{PACKAGE}.records", 4, True)]
    assert front_end_violations(made_up) == [
        f"{PACKAGE}.api imports {PACKAGE}.capture.loader (line 1): a front end calls the pipeline",
        f"{PACKAGE}.cli.inspect_cmd imports {PACKAGE}.analysis.timing (line 2): a front end calls the pipeline",
        f"{PACKAGE}.cli.common imports {PACKAGE}.records (line 3): a front end calls the pipeline",
    ]


@pytest.mark.parametrize("path", sorted(PACKAGE_ROOT.rglob("*.py")), ids=lambda path: str(
    path.relative_to(PACKAGE_ROOT)))
def test_no_package_file_is_longer_than_700_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE_ROOT.parent)} has {lines} lines: split it by what it holds"
