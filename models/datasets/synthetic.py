"""The synthetic datasets: ``synthetic-signs`` (one sign per image, a class
label) and ``synthetic-scenes`` (road scenes with signs and vehicles, boxes).

Every sample is a pure function of ``(seed, split, index)`` — a
``numpy.random.SeedSequence`` over those three numbers — so any process
(training, optimize's calibration, the agent's synthetic camera) draws the same
pixels, and train and val never share a stream. Samples are generated on the
fly; ``cache_dir`` stores them as ``.npz`` files (written atomically) so a
second epoch reads instead of drawing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from models.datasets import draw
from models.datasets.errors import DatasetError
from models.datasets.spec import Dataset, DatasetSpec, Sample, Split, sha256_json

__all__ = [
    "GENERATOR_VERSION",
    "SIGN_CLASSES",
    "SCENE_CLASSES",
    "SyntheticSigns",
    "SyntheticScenes",
]

GENERATOR_VERSION = 3  # bump when the drawing changes: it is part of the fingerprint

SIGN_CLASSES: tuple[str, ...] = draw.SIGN_KINDS
SCENE_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "stop",
    "yield",
    "speed_limit",
    "no_entry",
    "priority_road",
    "pedestrian_crossing",
    "mandatory_turn",
)
_SCENE_SIGNS = {
    "stop": ("stop",),
    "yield": ("yield",),
    "speed_limit": ("speed_limit_30", "speed_limit_50", "speed_limit_80"),
    "no_entry": ("no_entry",),
    "priority_road": ("priority_road",),
    "pedestrian_crossing": ("pedestrian_crossing",),
    "mandatory_turn": ("turn_left", "turn_right"),
}
_SPLIT_CODE = {Split.TRAIN: 1, Split.VAL: 2}
_KIND_CODE = {"synthetic-signs": 11, "synthetic-scenes": 12}


class _Synthetic(Dataset):
    def __init__(self, spec: DatasetSpec, split: Split) -> None:
        self.spec = spec
        self.split = split
        self._n = spec.train_size if split is Split.TRAIN else spec.val_size
        self._cache: Path | None = None
        if spec.cache_dir:
            self._cache = Path(spec.cache_dir) / self.fingerprint().split(":")[1][:16] / split.value
            try:
                self._cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DatasetError(f"cannot create cache directory {self._cache}: {e}") from e

    def __len__(self) -> int:
        return self._n

    def fingerprint(self) -> str:
        s = self.spec
        return sha256_json(
            {
                "generator": s.name,
                "version": GENERATOR_VERSION,
                "seed": s.seed,
                "split": self.split.value,
                "size": self._n,
                "image_size": s.image_size,
            }
        )

    def rng(self, index: int) -> np.random.Generator:
        seq = np.random.SeedSequence([self.spec.seed, _KIND_CODE[self.spec.name], _SPLIT_CODE[self.split], index])
        return np.random.default_rng(seq)

    def __getitem__(self, index: int) -> Sample:
        i = self._check_index(index)
        if self._cache is None:
            return self.generate(i)
        path = self._cache / f"{i:07d}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    return _unpack(z)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is regenerated below
        sample = self.generate(i)
        _atomic_savez(path, sample)
        return sample

    def generate(self, index: int) -> Sample:
        raise NotImplementedError


class SyntheticSigns(_Synthetic):
    """One road sign per image over a varied background; ``label`` is its class."""

    labels = SIGN_CLASSES

    def generate(self, index: int) -> Sample:
        rng = self.rng(index)
        n = self.spec.image_size
        label = int(rng.integers(0, len(SIGN_CLASSES)))
        img = draw.background(n, n, rng)
        patch, mask = draw.draw_sign(SIGN_CLASSES[label], 96, rng)
        # a classifier sees a detector's crop: the sign fills most of it and stays
        # inside the frame, so no part of its legend is cut off
        side = n * rng.uniform(0.55, 0.9)
        margin = side * 0.5
        cx = rng.uniform(margin, n - margin)
        cy = rng.uniform(margin, n - margin)
        quad = draw.quad_for(cx, cy, side, side, rng, rot_deg=12, persp=0.08)
        box = draw.paste(img, patch, mask, quad)
        if box is not None and rng.random() < 0.3:
            draw.occlude(img, box, rng, max_frac=0.25)
        img = draw.photometric(img, rng)
        return Sample(image=img, label=label)


class SyntheticScenes(_Synthetic):
    """Road scenes with vehicles and signs; ``boxes`` xyxy pixels + ``labels``."""

    labels = SCENE_CLASSES

    def generate(self, index: int) -> Sample:
        rng = self.rng(index)
        n = self.spec.image_size
        img, horizon = draw.road_background(n, n, rng)
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        placed: list[np.ndarray] = []
        n_vehicles, n_signs = int(rng.integers(0, 4)), int(rng.integers(1, 4))
        # far objects first so near ones are painted over them
        objects = [("vehicle", float(rng.uniform(horizon + 0.08 * n, n * 0.95))) for _ in range(n_vehicles)]
        objects += [("sign", float(rng.uniform(horizon - 0.15 * n, n * 0.8))) for _ in range(n_signs)]
        objects.sort(key=lambda o: o[1])
        for kind, bottom in objects:
            depth = (bottom - horizon + 0.2 * n) / (n - horizon + 0.2 * n)  # 0 far .. 1 near
            if kind == "vehicle":
                item = self._vehicle(img, rng, bottom, depth, placed)
            else:
                item = self._sign(img, rng, bottom, depth, placed)
            if item is not None:
                boxes.append(item[0])
                labels.append(item[1])
                placed.append(item[0])
        img = draw.photometric(img, rng, strength=0.7)
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        return Sample(image=img, boxes=b, labels=np.asarray(labels, np.int64))

    def _vehicle(
        self,
        img: np.ndarray,
        rng: np.random.Generator,
        bottom: float,
        depth: float,
        placed: list[np.ndarray],
    ) -> tuple[np.ndarray, int] | None:
        n = img.shape[0]
        truck = rng.random() < 0.35
        w = n * depth * (rng.uniform(0.28, 0.4) if truck else rng.uniform(0.22, 0.32))
        h = w * (rng.uniform(0.9, 1.15) if truck else rng.uniform(0.6, 0.8))
        if w < 8 or h < 6:
            return None
        for _ in range(8):
            cx = rng.uniform(w * 0.3, n - w * 0.3)
            box = np.array([cx - w / 2, bottom - h, cx + w / 2, bottom], np.float32)
            if _free(box, placed):
                break
        else:
            return None
        patch, mask = draw.draw_vehicle("truck" if truck else "car", max(8, int(w)), max(6, int(h)), rng)
        quad = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]], np.float32)
        got = draw.paste(img, patch, mask, quad)
        if got is None or not _big_enough(got):
            return None
        return _clip(got, n), SCENE_CLASSES.index("truck" if truck else "car")

    def _sign(
        self,
        img: np.ndarray,
        rng: np.random.Generator,
        bottom: float,
        depth: float,
        placed: list[np.ndarray],
    ) -> tuple[np.ndarray, int] | None:
        n = img.shape[0]
        cls = 2 + int(rng.integers(0, len(SCENE_CLASSES) - 2))
        variants = _SCENE_SIGNS[SCENE_CLASSES[cls]]
        kind = variants[int(rng.integers(0, len(variants)))]
        side = max(10.0, n * rng.uniform(0.1, 0.22) * (0.5 + depth))
        for _ in range(8):
            cx = rng.uniform(side * 0.6, n - side * 0.6)
            cy = min(bottom - side / 2, n - side * 0.6)
            approx = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
            if _free(approx, placed):
                break
        else:
            return None
        if rng.random() < 0.7:  # a pole below the sign
            grey = int(rng.integers(90, 170))
            x = int(cx)
            cv2.line(img, (x, int(cy)), (x, n), (grey, grey, grey), max(1, int(side / 10)), cv2.LINE_AA)
        patch, mask = draw.draw_sign(kind, 64, rng)
        quad = draw.quad_for(cx, cy, side, side, rng, rot_deg=6, persp=0.06)
        got = draw.paste(img, patch, mask, quad)
        if got is None or not _big_enough(got):
            return None
        if rng.random() < 0.15:
            draw.occlude(img, got, rng, max_frac=0.25)
        return _clip(got, n), cls


def _free(box: np.ndarray, placed: list[np.ndarray], max_iou: float = 0.25) -> bool:
    return all(_iou(box, other) <= max_iou for other in placed)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _big_enough(box: np.ndarray) -> bool:
    return bool(box[2] - box[0] >= 4 and box[3] - box[1] >= 4)


def _clip(box: np.ndarray, n: int) -> np.ndarray:
    out: np.ndarray = np.clip(box, 0, n).astype(np.float32)
    return out


def _unpack(z: np.lib.npyio.NpzFile) -> Sample:
    image = z["image"]
    if "label" in z:
        return Sample(image=image, label=int(z["label"]))
    return Sample(image=image, boxes=z["boxes"], labels=z["labels"])


def _atomic_savez(path: Path, sample: Sample) -> None:
    arrays: dict[str, np.ndarray] = {"image": sample.image}
    if sample.label is not None:
        arrays["label"] = np.asarray(sample.label)
    if sample.boxes is not None and sample.labels is not None:
        arrays["boxes"], arrays["labels"] = sample.boxes, sample.labels
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError:
        # a full disk or a read-only cache only costs speed, never a sample
        Path(tmp).unlink(missing_ok=True)
