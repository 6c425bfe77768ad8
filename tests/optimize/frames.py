"""Camera-like frames on disk for ``--calib-data`` tests: images of a run's val split written as PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from models.datasets import DatasetSpec, open_dataset


def _val(run: Path) -> list[np.ndarray]:
    side = json.loads((run / "checkpoints" / "best.json").read_text())
    ds = open_dataset(DatasetSpec.from_dict(side["dataset"]), "val")
    return [ds[i].image for i in range(len(ds))]


def write_frames(run: Path, root: Path, *, n: int, layout: str) -> Path:
    """``n`` frames from the run's val split: flat (``root/*.png``) or ImageFolder (``root/train/<class>/``),
    plus one file that is not an image."""
    images = _val(run)[:n]
    for i, img in enumerate(images):
        d = root if layout == "flat" else root / "train" / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"frame{i:03d}.png"), img)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    if layout != "flat":
        (root / "val" / "x").mkdir(parents=True)
        cv2.imwrite(str(root / "val" / "x" / "held.png"), images[0])  # beside train/: not for calibration
    return root
