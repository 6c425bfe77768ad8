"""The one dependency rule (ARCHITECTURE.md): stages import only models/, the
agent/server never pull in the heavy frameworks, and the API client
(``ota_server.client``) loads nothing of the server at all."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("training", "optimize", "edge_agent", "ota_server")
FORBIDDEN = {
    "edge_agent": ("torch", "torchvision", "flask", "sqlalchemy", "training", "optimize", "ota_server"),
    "ota_server": ("torch", "torchvision", "training", "optimize", "edge_agent"),
}


# what a laptop with only `pip install '.[ctl]'` does not have
CLIENT_FORBIDDEN = (
    "flask",
    "sqlalchemy",
    "psycopg",
    "gunicorn",
    "prometheus_client",
    "torch",
    "torchvision",
    "onnxruntime",
    "numpy",
    "tuf",
    "edge_agent",
    "training",
    "optimize",
)
CLIENT_RUNS = {
    "import": "import ota_server.client\n",
    "every-module": (
        "import importlib, pkgutil\n"
        "import ota_server.client as pkg\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
    ),
    "ota-ctl --help": "from ota_server.client.ctl import main\nassert main(['--help']) == 0\n",
    "edge-fleet-sim --help": (
        "from ota_server.client.simulate import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
    ),
}


def _modules_after(code: str) -> set[str]:
    """``sys.modules`` after running ``code`` in a fresh interpreter (the worktree first on the path)."""
    out = subprocess.run(
        [sys.executable, "-c", code + "import json, sys\nprint(json.dumps(sorted(sys.modules)))\n"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _modules_after_import(package: str) -> set[str]:
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if m.name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_runtime_packages_do_not_import_heavy_frameworks(package: str) -> None:
    loaded = _modules_after_import(package)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[package]))
    assert not bad, f"importing every module of {package} pulled in {bad[:10]}"


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage: str) -> None:
    offenders = []
    for path in sorted((ROOT / stage).rglob("*.py")):
        others = _imported_top_levels(path) & (set(STAGES) - {stage})
        if others:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(others)}")
    assert not offenders, "\n".join(offenders)


def test_models_package_never_imports_a_stage() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "models").rglob("*.py"))
        if _imported_top_levels(p) & set(STAGES)
    ]
    assert not offenders, offenders


def test_bundle_module_is_stdlib_only() -> None:
    allowed = set(sys.stdlib_module_names) | {"models", "__future__"}
    extra = _imported_top_levels(ROOT / "models" / "bundle.py") - allowed
    assert not extra, f"models/bundle.py must be stdlib only, imports {sorted(extra)}"


@pytest.mark.parametrize("run", sorted(CLIENT_RUNS))
def test_client_loads_nothing_of_the_server(run: str) -> None:
    loaded = _modules_after(CLIENT_RUNS[run])
    heavy = sorted(m for m in loaded if m.split(".")[0] in CLIENT_FORBIDDEN)
    server = sorted(
        m
        for m in loaded
        if m.startswith("ota_server.") and m != "ota_server.client" and not m.startswith("ota_server.client.")
    )
    assert not heavy, f"{run} pulled in {heavy[:10]}"
    assert not server, f"{run} loaded modules of the server: {server[:10]}"
