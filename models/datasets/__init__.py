"""Torch-free dataset readers shared by every stage (contracts §1).

``open_dataset(DatasetSpec(...), split="val")`` returns a random-access reader
of :class:`Sample` records (uint8 BGR images plus a class label or boxes).
Synthetic generators (``synthetic-signs``, ``synthetic-scenes``) draw with
OpenCV, deterministically from ``(seed, split, index)``; ``imagefolder`` and
``coco`` read users' data. numpy + OpenCV only: no torch, no augmentation
(training augments on top of these).
"""

from __future__ import annotations

from models.datasets.coco import CocoDataset
from models.datasets.errors import AnnotationError, DatasetError, EmptyDatasetError
from models.datasets.folder import ImageFolder
from models.datasets.spec import Dataset, DatasetName, DatasetSpec, Sample, Split
from models.datasets.synthetic import (
    GENERATOR_VERSION,
    SCENE_CLASSES,
    SIGN_CLASSES,
    SyntheticScenes,
    SyntheticSigns,
)

__all__ = [
    "AnnotationError",
    "CocoDataset",
    "Dataset",
    "DatasetError",
    "DatasetName",
    "DatasetSpec",
    "EmptyDatasetError",
    "GENERATOR_VERSION",
    "ImageFolder",
    "SCENE_CLASSES",
    "SIGN_CLASSES",
    "Sample",
    "Split",
    "SyntheticScenes",
    "SyntheticSigns",
    "dataset_task",
    "open_dataset",
]


def open_dataset(spec: DatasetSpec, split: str | Split = Split.VAL) -> Dataset:
    """Open one split (``"train"`` or ``"val"``) of the dataset ``spec`` describes.

    Raises :class:`DatasetError` (a missing directory, no classes, nothing
    readable, a malformed annotation) with a message naming the culprit.
    """
    try:
        sp = Split(split)
    except ValueError as e:
        raise DatasetError(f"split must be one of {[s.value for s in Split]}, got {split!r}") from e
    name = DatasetName(spec.name)
    if name is DatasetName.SYNTHETIC_SIGNS:
        return SyntheticSigns(spec, sp)
    if name is DatasetName.SYNTHETIC_SCENES:
        return SyntheticScenes(spec, sp)
    if name is DatasetName.IMAGEFOLDER:
        return ImageFolder(spec, sp)
    return CocoDataset(spec, sp)


def dataset_task(spec: DatasetSpec) -> str:
    """The task a dataset's samples serve: ``classification`` or ``detection``."""
    name = DatasetName(spec.name)
    if name in (DatasetName.SYNTHETIC_SIGNS, DatasetName.IMAGEFOLDER):
        return "classification"
    return "detection"
