"""The layout of ``edge_agent``, read from its source: the layer order, no import cycles, the whole error tree.

Every ``import`` anywhere in a module counts — at the top, inside functions,
under ``TYPE_CHECKING`` — so a lazy import cannot hide a layer violation or a
cycle. Layers (an arrow points from a layer to one it may import)::

    trust ← update → perception ← bench        update → link → trust

No import names a module the package lacks (a stale path after a move). The
shared modules at the top (``config``, ``errors``, ``stopping``, the package
itself) import no sub-package; ``__main__`` (the CLI) may import anything.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import edge_agent

PACKAGE = Path(edge_agent.__file__).resolve().parent
SHARED, CLI = "shared", "cli"
# what each layer may import (besides itself and the third-party world)
ALLOWED: Mapping[str, frozenset[str]] = {
    "trust": frozenset({SHARED}),
    "link": frozenset({SHARED, "trust"}),
    "perception": frozenset({SHARED}),
    "update": frozenset({SHARED, "trust", "link", "perception"}),
    "bench": frozenset({SHARED, "perception"}),
    SHARED: frozenset({SHARED}),
    CLI: frozenset({SHARED, CLI, "trust", "link", "perception", "update", "bench"}),
}


def _module_name(path: Path) -> str:
    parts = ["edge_agent", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return SHARED
    if parts[1] == "__main__":
        return CLI
    return parts[1] if parts[1] in ALLOWED and parts[1] not in (SHARED, CLI) else SHARED


def _resolve(name: str) -> str | None:
    """The edge_agent module ``name`` is, or the one it is an attribute of; None outside edge_agent."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _parents(module: str) -> Iterator[str]:
    """The packages Python imports before ``module`` (edge_agent.perception for edge_agent.perception.base)."""
    parts = module.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def imports_of(module: str, tree: ast.AST) -> set[str]:
    """Every edge_agent module that ``module`` imports, directly or by importing a name from it."""
    is_package = MODULES[module].name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            target = _resolve(name)
            if target is None:
                continue
            found.add(target)
            found.update(p for p in _parents(target) if p != "edge_agent")
    found.discard(module)
    return found


def unknown_imports() -> list[str]:
    """``from edge_agent.X import ...`` / ``import edge_agent.X`` naming no module of the package (a stale path)."""
    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            bad += [f"{module}: {n}" for n in names if n.split(".")[0] == "edge_agent" and n not in MODULES]
    return bad


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(m, ast.parse(p.read_text(), filename=str(p))) for m, p in MODULES.items()}


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (its first module repeated at the end), or None."""
    todo, open_, done = 0, 1, 2
    colour = dict.fromkeys(graph, todo)
    for start in sorted(graph):
        if colour[start] != todo:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        colour[start] = open_
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                colour[path.pop()] = done
            elif colour.get(nxt, done) == open_:
                return [*path[path.index(nxt) :], nxt]
            elif colour.get(nxt, done) == todo:
                colour[nxt] = open_
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_imports_it_checks(graph: dict[str, set[str]]) -> None:
    # a parser that found nothing would pass every rule below
    assert {"edge_agent.update.core", "edge_agent.trust.assignment", "edge_agent.perception"} <= graph[
        "edge_agent.update.controller"
    ] | graph["edge_agent.update.core"]
    assert "edge_agent.perception.engines" in graph["edge_agent.perception.runtimes"]
    assert "edge_agent.update.prepare" in graph["edge_agent.update.gate"]
    assert {"edge_agent.bench.hostinfo", "edge_agent.bench.plots"} <= graph["edge_agent.bench.cli"]
    assert "edge_agent.update.daemon" in graph["edge_agent.__main__"]  # imported inside a function only
    assert {layer_of(m) for m in graph} == {SHARED, CLI, "trust", "link", "perception", "update", "bench"}


def test_every_import_names_a_module_that_exists() -> None:
    assert unknown_imports() == []


def test_each_layer_imports_only_the_layers_below_it(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph) == []


def test_no_import_cycles_between_modules(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle or ())


def test_the_checks_catch_what_they_are_for(graph: dict[str, set[str]]) -> None:
    broken = {m: set(t) for m, t in graph.items()}
    broken["edge_agent.perception.serving"].add("edge_agent.update.slots")
    broken["edge_agent.trust.assignment"].add("edge_agent.update.core")
    assert layer_violations(broken) == [
        "edge_agent.perception.serving (perception) imports edge_agent.update.slots (update)",
        "edge_agent.trust.assignment (trust) imports edge_agent.update.core (update)",
    ]
    broken = {m: set(t) for m, t in graph.items()}
    broken["edge_agent.update.journal"].add("edge_agent.update.daemon")
    cycle = find_cycle(broken)
    assert cycle is not None and cycle[0] == cycle[-1] and "edge_agent.update.journal" in cycle


def _error_classes() -> dict[str, str]:
    """Every class deriving (transitively) from EdgeAgentError → the module file that defines it."""
    bases: dict[str, tuple[str, set[str]]] = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = {
                    b.id if isinstance(b, ast.Name) else b.attr
                    for b in node.bases
                    if isinstance(b, (ast.Name, ast.Attribute))
                }
                bases[node.name] = (str(path.relative_to(PACKAGE)), names)
    errors = {"EdgeAgentError"}
    while True:
        more = {name for name, (_, of) in bases.items() if of & errors} - errors
        if not more:
            return {name: bases[name][0] for name in errors}
        errors |= more


def test_the_errors_docstring_draws_every_error_with_its_module() -> None:
    tree = ast.get_docstring(ast.parse((PACKAGE / "errors.py").read_text())) or ""
    lines = {m.group(1): line for line in tree.splitlines() if (m := re.search(r"(?:├──|└──)\s+(\w+)", line))}
    lines["EdgeAgentError"] = next(line for line in tree.splitlines() if line.strip().startswith("EdgeAgentError"))
    classes = _error_classes()
    assert len(classes) > 10
    missing = sorted(set(classes) - set(lines))
    assert missing == [], f"not drawn in edge_agent/errors.py: {missing}"
    for name, where in classes.items():
        if where != "errors.py":
            assert where in lines[name], f"{name} is defined in {where}; the tree says {lines[name].strip()!r}"
