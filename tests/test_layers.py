"""The package layout holds (STYLE.md rule 15): no import runs in a circle between tokend's
modules, lazy imports inside functions included, and the core (login, policy, signing) reaches
no module that imports ``twisted.web`` or ``klein``. Read from the sources with ``ast``; imports
under ``if TYPE_CHECKING:`` never run and are left out."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tokend"

# Cycles there are today; #22 removes them. A cycle not listed here fails the test, and so does
# a listed one that is gone (take it off the list).
KNOWN_CYCLES: set[frozenset[str]] = set()

CORE = ("tokend.login", "tokend.policy", "tokend.signing")
WEB = ("twisted.web", "klein")
# Imports from the core into a module that imports twisted.web; none left (the metrics
# exposition left tokend.metrics.instruments). Any path to the web fails the test.
KNOWN_WEB_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, function bodies included, except what sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imported(name: str, path: Path) -> set[str]:
    """The absolute names of the modules ``path`` imports (``from a import b``: ``a.b`` when
    that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Edges between tokend's modules, and every module each one imports directly."""
    known = modules()
    direct = {name: imported(name, path) for name, path in known.items()}
    edges = {name: {m for m in names if m in known and m != name} for name, names in direct.items()}
    return edges, direct


def cycles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_imports_and_not_type_only_ones() -> None:
    edges, _ = graph()
    assert "tokend.web.health" in edges["tokend.daemon.worker_process"]  # inside a method
    assert "tokend.tap" in edges
    assert len(edges) > 60


def test_no_import_cycles_beyond_the_known_ones() -> None:
    found = cycles(graph()[0])
    assert sorted(map(sorted, found - KNOWN_CYCLES)) == [], "new import cycle"
    assert sorted(map(sorted, KNOWN_CYCLES - found)) == [], "gone: take it off KNOWN_CYCLES"


def test_login_policy_and_signing_reach_no_web_module() -> None:
    edges, direct = graph()
    assert sorted(edge for edge in KNOWN_WEB_EDGES if edge[1] not in edges[edge[0]]) == []
    for importer, module in KNOWN_WEB_EDGES:
        edges[importer] = edges[importer] - {module}
    reaching: list[str] = []
    for start in sorted(name for name in edges if name.startswith(CORE)):
        seen = {start: [start]}
        todo = [start]
        while todo:
            name = todo.pop()
            for web in sorted(m for m in direct[name] if m.startswith(WEB)):
                reaching.append(" -> ".join([*seen[name], web]))
            for successor in sorted(edges[name] - seen.keys()):
                seen[successor] = [*seen[name], successor]
                todo.append(successor)
    assert reaching == []


def package_of(module: str) -> str:
    """``tokend.login.ldap.client`` -> ``tokend.login``: the first level under tokend."""
    return ".".join(module.split(".")[:2])


def test_no_two_packages_import_each_other() -> None:
    """Modules apart can still tie two packages in a circle (settings/table.py imported by
    login/ldap, while settings/options.py imported login's declarations): a folder should
    stand above or below another, never both."""
    edges, _ = graph()
    packages: dict[str, set[str]] = {}
    for name, imports in edges.items():
        mine = package_of(name)
        packages.setdefault(mine, set()).update(package_of(m) for m in imports)
    for name in packages:
        packages[name].discard(name)
    assert sorted(map(sorted, cycles(packages))) == []


def test_test_modules_have_unique_names() -> None:
    """Test folders carry no __init__.py: pytest imports each module by its bare name, so two
    test files of one name in two folders stop the whole suite at collection."""
    names = [path.name for path in (PACKAGE.parent / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
