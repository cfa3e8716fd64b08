"""The project's layout, read from the sources with ``ast``: every
import counts, at module level or inside a function, so a lazy import cannot hide a
dependency.

* the app packages (``fedvit``, ``client_app``, ``server_app``, ``strategies``) never import
  ``tools`` (the offline tools: report, experiments, simulation harness, deployment);
* ``server_app`` never imports ``client_app``;
* no import cycle among the project's modules;
* no ``.py`` file outside ``tests/`` is over 400 lines;
* every ``fedvit`` subpackage's ``__init__.py`` is empty (importing one module of it pays
  for no other: the ClientApp's cold start).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedvit", "client_app", "server_app", "strategies", "tools")
APP_PACKAGES = ("fedvit", "client_app", "server_app", "strategies")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


def _imported(module: str, path: Path) -> Iterator[str]:
    """The dotted names ``module`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield f"{base}.{alias.name}"  # a submodule, or a name in ``base``


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Each project module -> the project modules it imports (``from p import m`` counts
    as importing module ``p.m`` where that is a module, else ``p``)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported(name, path):
            if imported in modules:
                targets.add(imported)
            elif "." in imported and imported.rsplit(".", 1)[0] in modules:
                targets.add(imported.rsplit(".", 1)[0])
        graph[name] = frozenset(targets - {name})
    return graph


def _all_imports(module: str) -> set[str]:
    """Every dotted name ``module`` imports (project or not)."""
    return set(_imported(module, project_modules()[module]))


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_every_package_and_lazy_imports():
    graph = import_graph()
    assert {_top(m) for m in graph} == set(PACKAGES)
    # tools/experiments.py imports the report and the simulation harness inside main()
    assert {"tools.report.cli", "tools.simulate"} <= graph["tools.experiments"]
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}),
                   "d": frozenset({"a"})}) == [["a", "b", "c"]]


def test_no_app_package_imports_tools():
    offenders = {m: sorted(i for i in _all_imports(m) if _top(i) == "tools")
                 for m in project_modules() if _top(m) in APP_PACKAGES}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_server_app_does_not_import_client_app():
    offenders = {m: sorted(i for i in _all_imports(m) if _top(i) == "client_app")
                 for m in project_modules() if _top(m) == "server_app"}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_source_file_outside_tests_is_over_400_lines():
    long = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tests" or any(p.startswith(".") or p == "__pycache__"
                                          for p in rel.parts):
            continue
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long[str(rel)] = lines
    assert long == {}


def test_test_modules_have_unique_basenames():
    """tests/ has no packages, so pytest imports every test module by its basename: two
    tiers holding a module of the same name fail the whole collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_fedvit_subpackages_import_nothing_on_their_own() -> None:
    inits = sorted((ROOT / "fedvit").glob("*/__init__.py"))
    assert len(inits) >= 5
    assert [p for p in inits if p.read_text().strip()] == []
