"""``imagefolder``: ``root/<class>/*.jpg`` (or ``root/train/<class>``, ``root/val/<class>``).

Class names are the sorted folder names. Without ``train/`` and ``val/``
folders, each image goes to val when a hash of its relative path falls under
``val_fraction`` — stable across runs and machines. Every image is decoded
once at open: an unreadable one is skipped and counted in ``skipped``; a class
with no readable image, or a split with none at all, is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from models.datasets.errors import DatasetError, EmptyDatasetError
from models.datasets.spec import Dataset, DatasetSpec, Sample, Split, sha256_json

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "read_image", "in_val_split"]

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to uint8 BGR HxWx3, or None when it cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        return None
    return img


def in_val_split(rel_path: str, val_fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{rel_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


class ImageFolder(Dataset):
    def __init__(self, spec: DatasetSpec, split: Split) -> None:
        root = Path(str(spec.root)).expanduser()
        if not root.is_dir():
            raise DatasetError(f"imagefolder root {root} does not exist or is not a directory")
        explicit = (root / "train").is_dir() and (root / "val").is_dir()
        base = root / split.value if explicit else root
        classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DatasetError(f"imagefolder {base} has no class folders (expected {base}/<class>/*.jpg)")
        self.root = root
        self.labels = tuple(classes)
        self.skipped = 0
        self.skipped_files: list[str] = []
        self._items: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            files = sorted(p for p in (base / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not explicit:
                want_val = split is Split.VAL
                files = [
                    p
                    for p in files
                    if in_val_split(p.relative_to(root).as_posix(), spec.val_fraction, spec.seed) == want_val
                ]
            if not files:
                raise EmptyDatasetError(
                    f"class folder {base / name} has no images for split {split.value!r} "
                    f"(looked for {sorted(IMAGE_EXTENSIONS)})"
                )
            self._add_readable(files, label)
        if not self._items:
            raise EmptyDatasetError(f"imagefolder {base}: none of the {self.skipped} images could be decoded")
        counts = np.bincount([lab for _, lab in self._items], minlength=len(classes))
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise EmptyDatasetError(f"imagefolder {base}: class(es) {empty} have no readable image")
        if self.skipped:
            log.warning(
                "imagefolder %s (%s): skipped %d unreadable image(s), e.g. %s",
                base,
                split.value,
                self.skipped,
                self.skipped_files[:3],
            )

    def _add_readable(self, files: list[Path], label: int) -> None:
        for path in files:
            # decode once now so a corrupt file is found at open, not mid-epoch
            if read_image(path) is None:
                self.skipped += 1
                self.skipped_files.append(str(path))
            else:
                self._items.append((path, label))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        path, label = self._items[self._check_index(index)]
        img = read_image(path)
        if img is None:
            raise DatasetError(f"image {path} became unreadable after the dataset was opened")
        return Sample(image=img, label=label)

    def fingerprint(self) -> str:
        files = [[p.relative_to(self.root).as_posix(), os.path.getsize(p), lab] for p, lab in self._items]
        return sha256_json({"kind": "imagefolder", "labels": list(self.labels), "files": files})
