"""The layers of ``ota_server`` (its package docstring): no import cycle between its modules,
and each sub-package imports only what its layer may. Read from the source with ``ast``, every
import counted: at module level, inside functions and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ota_server"

# sub-package -> what none of its modules may import (ota_server modules and third-party names)
FORBIDDEN = {
    "rules": (
        "ota_server.storage",
        "ota_server.serving",
        "ota_server.api",
        "ota_server.fleet",
        "ota_server.trust",
        "ota_server.app",
        "ota_server.services",
        "flask",
        "werkzeug",
        "sqlalchemy",
        "gunicorn",
    ),
    "storage": (
        "ota_server.api",
        "ota_server.serving",
        "ota_server.fleet",
        "ota_server.app",
        "ota_server.services",
        "flask",
        "werkzeug",
        "gunicorn",
    ),
    "trust": (
        "ota_server.storage",
        "ota_server.fleet",
        "ota_server.api",
        "ota_server.serving",
        "ota_server.app",
        "ota_server.services",
        "flask",
        "werkzeug",
        "sqlalchemy",
    ),
    "fleet": (
        "ota_server.api",
        "ota_server.serving",
        "ota_server.app",
        "ota_server.services",
        "flask",
        "werkzeug",
        "gunicorn",
    ),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every name ``name`` imports: a module of the package when it is one, else the dotted name."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                out.add(child if child in MODULES else base)
    return out


GRAPH = {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle between the package's modules, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_the_imports_it_must() -> None:
    assert "ota_server.services" in GRAPH["ota_server.app"]
    assert "ota_server.fleet.service" in GRAPH["ota_server.fleet.ingest"]  # from ota_server.fleet import service
    assert "ota_server.app" in GRAPH["ota_server.serving.gunicorn_app"]  # inside a function
    assert "ota_server.services" in GRAPH["ota_server.serving.fastpath"]  # under TYPE_CHECKING


def test_no_import_cycle_between_server_modules() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    offenders = []
    for name in sorted(MODULES):
        if name == f"ota_server.{layer}" or name.startswith(f"ota_server.{layer}."):
            bad = sorted(m for m in _imports(name) for f in FORBIDDEN[layer] if m == f or m.startswith(f + "."))
            if bad:
                offenders.append(f"{name} imports {bad}")
    assert not offenders, "\n".join(offenders)


def test_the_client_imports_nothing_of_the_server() -> None:
    offenders = [
        f"{name} imports {sorted(bad)}"
        for name in sorted(MODULES)
        if name.startswith("ota_server.client")
        if (bad := {m for m in _imports(name) if m.startswith("ota_server") and not m.startswith("ota_server.client")})
    ]
    assert not offenders, "\n".join(offenders)
