"""``pip install '.[ctl]'`` into a fresh venv: ``ota-ctl`` and ``edge-fleet-sim`` work, and nothing
of the server came with them (no Flask, SQLAlchemy, PostgreSQL driver, torch, ONNX Runtime).

The project is copied first (its packages, ``pyproject.toml``, ``README.md``) so that the build
leaves no ``build/`` or ``*.egg-info`` in the checkout. Needs PyPI (or a configured index): it
installs urllib3, tqdm, PyYAML, NumPy and setuptools for the build; a minute or two.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[3]
SERVER_ONLY = (
    "flask",
    "gunicorn",
    "sqlalchemy",
    "psycopg",
    "psycopg-binary",
    "prometheus-client",
    "torch",
    "torchvision",
    "onnxruntime",
    "onnx",
    "tuf",
    "opencv-python-headless",
)


def _copy_project(dest: Path) -> Path:
    """The files a wheel is built from, without caches or build outputs."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        top = pattern.rstrip("*")
        if (ROOT / top).is_dir():
            shutil.copytree(ROOT / top, dest / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _run(argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ctl_extra_installs_the_client_alone(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "src")
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    installed = _run([*pip, "install", "--quiet", "--no-cache-dir", f"{project}[ctl]"], timeout=900)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-4000:]

    listed = _run([*pip, "list", "--format=freeze"], timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.splitlines() if line}
    assert {"edgefleet", "urllib3", "tqdm", "pyyaml"} <= names, sorted(names)
    assert not names & set(SERVER_ONLY), f"the ctl extra pulled in {sorted(names & set(SERVER_ONLY))}"

    for cli in ("ota-ctl", "edge-fleet-sim"):
        out = _run([str(venv / "bin" / cli), "--help"], timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.lower().startswith("usage:") and "Exit codes" in out.stdout, out.stdout[:300]
