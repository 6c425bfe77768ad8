"""Real training checkpoints for optimizer tests: a few SGD steps on synthetic-signs.

Writes a run directory exactly as contract §1 describes it
(``checkpoints/best.pt`` loadable with ``weights_only=True`` + the
``best.json`` sidecar), so the optimizer is tested on what training hands it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.datasets import DatasetSpec, open_dataset
from models.preprocess import Preprocessor
from models.zoo import build_model, default_input_spec

# edge-optimize flags that keep a test run short (few samples, one calibration method, one thread)
FAST_OPTIMIZE = [
    "--eval-samples",
    "48",
    "--calib-samples",
    "16",
    "--calib-methods",
    "minmax",
    "--bench-queries",
    "5",
    "--bench-seconds",
    "0",
    "--threads",
    "1",
    "--quiet",
]


def dataset_spec(
    *, image_size: int = 64, train_size: int = 512, val_size: int = 256, cache_dir: str | None = None
) -> DatasetSpec:
    return DatasetSpec(
        name="synthetic-signs",
        seed=0,
        image_size=image_size,
        train_size=train_size,
        val_size=val_size,
        cache_dir=cache_dir,
    )


def train_classifier(
    arch: str,
    spec: DatasetSpec,
    *,
    steps: int,
    batch: int = 32,
    lr: float = 2e-3,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``arch`` for ``steps`` SGD steps; returns the model and its top-1 on the val split."""
    torch.manual_seed(seed)
    size = image_size or spec.image_size
    input_spec = default_input_spec(arch, "classification", size)
    train = open_dataset(spec, "train")
    model = build_model(arch, "classification", len(train.labels), image_size=size)
    pre = Preprocessor(input_spec)
    x = torch.from_numpy(pre.batch([train[i].image for i in range(len(train))]))
    y = torch.tensor([train[i].label for i in range(len(train))])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(train), size=batch, replace=False))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _recalibrate_batchnorm(model, x)
    model.eval()
    val = open_dataset(spec, "val")
    xv = torch.from_numpy(pre.batch([val[i].image for i in range(len(val))]))
    with torch.inference_mode():
        pred = model(xv).argmax(1).numpy()
    top1 = float(np.mean(pred == np.array([val[i].label for i in range(len(val))])))
    return model, {"top1": top1, "input": input_spec.to_dict(), "labels": list(train.labels)}


def _recalibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Exact BatchNorm statistics of the training images (torchvision's MobileNetV3
    uses momentum 0.01, far too slow for a short run)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, x.shape[0], 64):
            model(x[start : start + 64])


def write_run(run_dir: Path, arch: str, model: nn.Module, info: dict[str, Any], spec: DatasetSpec) -> Path:
    """Write ``run_dir/checkpoints/best.{pt,json}`` per contract §1; returns the run dir."""
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    pt = ckpt / "best.pt"
    torch.save({"model": model.state_dict(), "epoch": 1, "best_metric": info["top1"]}, pt)
    sidecar = {
        "format": "edgefleet.checkpoint/1",
        "arch": arch,
        "task": "classification",
        "num_classes": len(info["labels"]),
        "labels": info["labels"],
        "model_kwargs": {},
        "input": info["input"],
        "metrics": {"top1": info["top1"]},
        "main_metric": "top1",
        "epoch": 1,
        "dataset": {**spec.to_dict(), "fingerprint": "sha256:" + "0" * 64},
        "run": str(run_dir),
        "code_version": "0.1.0+test",
        "created_at": "2026-11-27T10:00:00Z",
        "checkpoint_sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
    }
    (ckpt / "best.json").write_text(json.dumps(sidecar, indent=2))
    return run_dir
