"""Checkpoints and their JSON sidecars, exactly as contracts §1 describes.

``<name>.pt`` is a plain dict of tensors/containers/primitives that loads with
``torch.load(..., weights_only=True)``; ``<name>.json`` is the sidecar optimize
reads to rebuild the model. Both are written to a temp file, fsynced and
``os.replace``d, the ``.pt`` first: a crash leaves either the old pair or a new
``.pt`` whose sidecar still names the old hash — which :func:`load_checkpoint`
detects — never a half-written file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.bundle import sha256_file
from models.fsio import write_atomic
from training.errors import CheckpointError

__all__ = [
    "SIDECAR_FORMAT",
    "code_version",
    "save_checkpoint",
    "load_checkpoint",
    "read_sidecar",
    "resolve_checkpoint",
]

SIDECAR_FORMAT = "edgefleet.checkpoint/1"
SIDECAR_KEYS = (
    "format", "arch", "task", "num_classes", "labels", "model_kwargs", "input", "metrics",
    "main_metric", "epoch", "dataset", "run", "code_version", "created_at", "checkpoint_sha256",
)  # fmt: skip


def code_version() -> str:
    """``<package version>+g<git sha>`` (or ``+unknown`` outside a git checkout)."""
    try:
        from importlib.metadata import version

        base = version("edgefleet")
    except Exception:  # noqa: BLE001 - an uninstalled tree still trains
        base = "0.1.0"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{base}+g{sha}" if sha else f"{base}+unknown"


def save_checkpoint(path: Path, state: Mapping[str, Any], sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``path`` (.pt) and its sidecar (.json) atomically; returns the sidecar written."""
    missing = [k for k in SIDECAR_KEYS if k not in sidecar and k not in ("format", "created_at", "checkpoint_sha256")]
    if missing:
        raise CheckpointError(f"sidecar for {path} lacks field(s) {missing}")
    try:
        write_atomic(path, lambda fh: torch.save(dict(state), fh))
        meta = dict(sidecar)
        meta["format"] = SIDECAR_FORMAT
        meta["created_at"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["checkpoint_sha256"] = sha256_file(path)
        text = json.dumps(meta, indent=2, sort_keys=True).encode()
        write_atomic(path.with_suffix(".json"), lambda fh: fh.write(text + b"\n"))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
    return meta


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of checkpoint ``path`` (``x.pt`` → ``x.json``), validated."""
    side = path.with_suffix(".json")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint sidecar {side} does not exist") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint sidecar {side} is not readable JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(
            f"{side}: format must be {SIDECAR_FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else meta!r}"
        )
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{side}: missing field(s) {missing}")
    return meta


def load_checkpoint(path: Path, *, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state, sidecar)``; the state with ``weights_only=True``.

    ``verify`` checks the file's sha256 against the sidecar first.
    """
    meta = read_sidecar(path)
    if verify and path.is_file() and sha256_file(path) != meta["checkpoint_sha256"]:
        raise CheckpointError(f"{path} does not match the sha256 in its sidecar (interrupted write?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unusable"
        raise CheckpointError(f"checkpoint {path} cannot be loaded with weights_only=True: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint (no 'model' entry)")
    return state, meta


def resolve_checkpoint(target: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``--resume`` target (a run directory or a ``.pt``) → (run dir, checkpoint path)."""
    p = Path(target)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise CheckpointError(f"cannot resume: {ckpt} does not exist (no epoch has finished yet?)")
        return p, ckpt
    if p.is_file() and p.suffix == ".pt":
        return p.parent.parent, p
    raise CheckpointError(f"cannot resume from {p}: expected a run directory or a .pt checkpoint")
