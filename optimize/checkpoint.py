"""Read a training checkpoint + sidecar (contract §1) and rebuild the torch model.

Accepts a run directory (``checkpoints/best.pt``, else ``last.pt``), a
``.pt`` file or its ``.json`` sidecar. The weights load with
``torch.load(..., weights_only=True)``: no pickle ever executes. A sidecar
that does not describe the weights (other arch, class count) is an
:class:`~optimize.errors.InputError` naming the mismatched keys.

This module does not export or evaluate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.bundle import BundleError, InputSpec, Task, sha256_file
from optimize.errors import InputError

__all__ = ["Checkpoint", "locate_checkpoint", "read_checkpoint", "build_torch_model", "SIDECAR_FORMAT"]

log = logging.getLogger(__name__)
SIDECAR_FORMAT = "edgefleet.checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file and what its sidecar says about it."""

    pt_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    arch: str
    task: Task
    num_classes: int
    labels: tuple[str, ...]
    model_kwargs: dict[str, Any]
    input_spec: InputSpec
    dataset: dict[str, Any]
    sha256: str  # of the .pt file


def locate_checkpoint(source: str | Path) -> tuple[Path, Path]:
    """``(checkpoint.pt, sidecar.json)`` for a run dir, a ``.pt`` or a ``.json``."""
    src = Path(source)
    if src.is_dir():
        for stem in ("best", "last"):
            pt = src / "checkpoints" / f"{stem}.pt"
            if pt.is_file():
                return pt, pt.with_suffix(".json")
        raise InputError(f"{src} is a directory without checkpoints/best.pt or checkpoints/last.pt")
    if not src.exists():
        raise InputError(f"{src} does not exist (expected a run directory or a checkpoint .pt)")
    if src.suffix == ".json":
        return src.with_suffix(".pt"), src
    if src.suffix != ".pt":
        raise InputError(f"{src} is not a checkpoint: expected a run directory, a .pt file or its .json sidecar")
    return src, src.with_suffix(".json")


def _require(side: dict[str, Any], key: str, types: tuple[type, ...], where: Path) -> Any:
    value = side.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, types):
        raise InputError(f"{where}: field {key!r} must be a {types[0].__name__}, got {value!r}")
    return value


def read_checkpoint(source: str | Path) -> Checkpoint:
    """Locate and validate a checkpoint and its sidecar. Raises :class:`InputError`."""
    pt, sc = locate_checkpoint(source)
    if not pt.is_file():
        raise InputError(f"checkpoint file {pt} does not exist (sidecar {sc})")
    if not sc.is_file():
        raise InputError(f"sidecar {sc} next to {pt} does not exist; optimize needs it to rebuild the model")
    try:
        side = json.loads(sc.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"sidecar {sc} is not valid JSON: {e}") from e
    if not isinstance(side, dict):
        raise InputError(f"sidecar {sc} must hold a JSON object")
    if side.get("format") != SIDECAR_FORMAT:
        raise InputError(f"sidecar {sc}: format must be {SIDECAR_FORMAT!r}, got {side.get('format')!r}")
    try:
        task = Task(_require(side, "task", (str,), sc))
    except ValueError as e:
        raise InputError(f"sidecar {sc}: task must be one of {[t.value for t in Task]}, got {side['task']!r}") from e
    labels = _require(side, "labels", (list,), sc)
    num_classes = _require(side, "num_classes", (int,), sc)
    if not labels or not all(isinstance(x, str) for x in labels):
        raise InputError(f"sidecar {sc}: labels must be a non-empty list of strings")
    try:
        spec = InputSpec.from_dict(_require(side, "input", (dict,), sc))
    except BundleError as e:
        raise InputError(f"sidecar {sc}: {e}") from e
    digest = sha256_file(pt)
    want = side.get("checkpoint_sha256")
    if want and str(want).removeprefix("sha256:") != digest:
        raise InputError(f"{pt} has sha256 {digest} but its sidecar says {want}: they do not belong together")
    return Checkpoint(
        pt_path=pt,
        sidecar_path=sc,
        sidecar=side,
        arch=_require(side, "arch", (str,), sc),
        task=task,
        num_classes=num_classes,
        labels=tuple(labels),
        model_kwargs=dict(side.get("model_kwargs") or {}),
        input_spec=spec,
        dataset=dict(side.get("dataset") or {}),
        sha256=digest,
    )


def _state_dict(pt: Path) -> dict[str, torch.Tensor]:
    try:
        blob = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises pickle, zip and runtime errors here
        raise InputError(f"{pt} is not a readable checkpoint (torch.load weights_only): {e}") from e
    state = blob.get("model") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state:
        raise InputError(
            f"{pt} has no 'model' state_dict "
            f"(keys: {sorted(blob)[:8] if isinstance(blob, dict) else type(blob).__name__})"
        )
    # DDP checkpoints may carry the "module." prefix
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_torch_model(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the module with ``models.zoo`` and load the weights strictly (eval mode)."""
    from models.zoo import ZooError, build_model

    kwargs = dict(ckpt.model_kwargs)
    kwargs.setdefault("image_size", ckpt.input_spec.height or None)
    try:
        model = build_model(ckpt.arch, ckpt.task.value, ckpt.num_classes, **kwargs)
    except ZooError as e:
        raise InputError(f"sidecar {ckpt.sidecar_path}: {e}") from e
    state = _state_dict(ckpt.pt_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:4]
        raise InputError(
            f"the weights in {ckpt.pt_path} do not match arch {ckpt.arch!r} with {ckpt.num_classes} classes "
            f"from the sidecar: {' '.join(first)}"
        ) from e
    return model.eval()
