"""torch ``Dataset`` wrappers over :mod:`models.datasets` readers.

Training augmentation works on the uint8 BGR image (and its boxes); then the
sample goes through :class:`models.preprocess.Preprocessor` — the very function
the runtimes use on camera frames, so the evaluation transform *is*
``Preprocessor(spec)``. Augmentation draws from a generator seeded by
``(seed, epoch, index)``, so an epoch replays identically after ``--resume``,
whatever the worker count.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.bundle import InputSpec
from models.datasets import Dataset as Reader
from models.datasets import Sample
from models.preprocess import Preprocessor

__all__ = [
    "AugmentConfig",
    "ClassificationData",
    "DetectionData",
    "augment_image",
    "detection_collate",
]


class AugmentConfig:
    """Augmentation strengths (all on the uint8 image)."""

    def __init__(self, *, enabled: bool = True, hflip: bool = False, crop_scale: float = 0.85) -> None:
        self.enabled = enabled
        self.hflip = hflip
        # smallest crop side as a fraction of the image (classification); not smaller,
        # or a crop could cut away the detail that separates classes (a sign's digits)
        self.crop_scale = crop_scale


def augment_image(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric jitter: brightness, contrast, saturation (HSV), all mild."""
    x = img.astype(np.float32)
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.25) + mean
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 1] *= rng.uniform(0.7, 1.3)
        out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    result: np.ndarray = out
    return result


def _random_crop(img: np.ndarray, rng: np.random.Generator, min_scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    s = rng.uniform(min_scale, 1.0)
    ch, cw = max(1, round(h * s)), max(1, round(w * s * rng.uniform(0.9, 1.1)))
    cw = min(cw, w)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return img[y0 : y0 + ch, x0 : x0 + cw]


class _Wrapped(Dataset[Any]):
    def __init__(self, reader: Reader, spec: InputSpec, *, train: bool, augment: AugmentConfig, seed: int) -> None:
        self.reader = reader
        self.preprocess = Preprocessor(spec)
        self.train = train
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation stream (call before iterating an epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, 0xA06])


class ClassificationData(_Wrapped):
    """``(CHW float32 tensor, label)``; train: crop + jitter (+ optional flip) before preprocessing."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample: Sample = self.reader[index]
        if sample.label is None:
            raise TypeError(f"sample {index} has no class label: is this a detection dataset?")
        img = sample.image
        if self.train and self.augment.enabled:
            rng = self.rng(index)
            img = augment_image(_random_crop(img, rng, self.augment.crop_scale), rng)
            if self.augment.hflip and rng.random() < 0.5:
                img = img[:, ::-1]
        return torch.from_numpy(self.preprocess(np.ascontiguousarray(img))), sample.label


class DetectionData(_Wrapped):
    """``(CHW tensor, {"boxes" in input pixels, "labels", "image_id", "scale"})``."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample: Sample = self.reader[index]
        if sample.boxes is None or sample.labels is None:
            raise TypeError(f"sample {index} has no boxes: is this a classification dataset?")
        img, boxes = sample.image, sample.boxes
        if self.train and self.augment.enabled:
            rng = self.rng(index)
            img = augment_image(img, rng)
            if self.augment.hflip and rng.random() < 0.5:
                w = img.shape[1]
                img = np.ascontiguousarray(img[:, ::-1])
                boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        x = self.preprocess(img)
        t = self.preprocess.last_transform
        target = {
            "boxes": torch.from_numpy(t.to_input(boxes.reshape(-1, 4))),
            "labels": torch.from_numpy(sample.labels.astype(np.int64)),
            "image_id": torch.tensor(index, dtype=torch.int64),
            # input pixels → frame pixels (for evaluation in the image's own coordinates)
            "transform": torch.tensor([t.scale_x, t.scale_y, t.pad_x, t.pad_y], dtype=torch.float64),
        }
        return torch.from_numpy(x), target


def detection_collate(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images; keep the per-image targets (different box counts) as a list."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
