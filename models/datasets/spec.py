"""The dataset spec, the sample record and the reader interface (contracts §1).

Pure data: no image is read here. :func:`models.datasets.open_dataset` turns a
:class:`DatasetSpec` into a reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from models.datasets.errors import DatasetError

__all__ = ["DatasetName", "Split", "DatasetSpec", "Sample", "Dataset", "sha256_json"]


class DatasetName(str, Enum):
    SYNTHETIC_SIGNS = "synthetic-signs"
    SYNTHETIC_SCENES = "synthetic-scenes"
    IMAGEFOLDER = "imagefolder"
    COCO = "coco"


class Split(str, Enum):
    TRAIN = "train"
    VAL = "val"


_SYNTHETIC = (DatasetName.SYNTHETIC_SIGNS, DatasetName.SYNTHETIC_SCENES)
# keys a sidecar may carry next to the spec fields (ignored when rebuilding)
_IGNORED_KEYS = frozenset({"fingerprint", "train_fingerprint"})


@dataclass(frozen=True)
class DatasetSpec:
    """What data a run trains and evaluates on.

    ``image_size`` is the generated size for synthetic data (real images keep
    their size; the preprocessor resizes). ``train_size``/``val_size`` are the
    synthetic split lengths (images). ``val_fraction`` splits a real dataset
    that has no ``train/``+``val/`` folders (or no ``{split}`` in ``ann_file``)
    deterministically by file name. ``cache_dir`` caches generated samples on
    disk; it never changes what is generated.
    """

    name: str = DatasetName.SYNTHETIC_SIGNS.value
    root: str | None = None
    ann_file: str | None = None
    seed: int = 0
    image_size: int = 64  # pixels, synthetic only
    train_size: int = 5000  # images, synthetic only
    val_size: int = 1000  # images, synthetic only
    val_fraction: float = 0.2  # real data without explicit splits
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        allowed = [n.value for n in DatasetName]
        if self.name not in allowed:
            raise DatasetError(f"dataset name must be one of {allowed}, got {self.name!r}")
        for key in ("seed", "image_size", "train_size", "val_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DatasetError(f"{key} must be an int, got {value!r}")
        if self.image_size < 16:
            raise DatasetError(f"image_size must be >= 16, got {self.image_size}")
        if self.train_size < 0 or self.val_size < 0:
            raise DatasetError("train_size and val_size must be >= 0")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise DatasetError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.name in (DatasetName.IMAGEFOLDER.value, DatasetName.COCO.value) and not self.root:
            raise DatasetError(f"dataset {self.name!r} needs a root directory (root=...)")
        if self.name == DatasetName.COCO.value and not self.ann_file:
            raise DatasetError("dataset 'coco' needs an annotation file (ann_file=...)")

    @property
    def synthetic(self) -> bool:
        return self.name in (n.value for n in _SYNTHETIC)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        """Build from a dict (a sidecar's ``dataset`` object); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"dataset spec must be an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - _IGNORED_KEYS)
        if unknown:
            raise DatasetError(f"unknown dataset spec field(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Sample:
    """One image: uint8 BGR HxWx3 plus a class label or boxes (xyxy pixels) + labels."""

    image: np.ndarray
    label: int | None = None
    boxes: np.ndarray | None = None  # float32 [K, 4]
    labels: np.ndarray | None = None  # int64 [K]


class Dataset:
    """A random-access reader: ``len(ds)``, ``ds[i] -> Sample``, ``ds.labels``."""

    labels: tuple[str, ...] = ()
    skipped: int = 0  # unreadable images left out
    dropped_boxes: int = 0  # degenerate/outside boxes dropped
    clipped_boxes: int = 0  # boxes clipped to the image

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """``"sha256:<hex>"`` identifying exactly what this split yields."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        return i


def sha256_json(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()
