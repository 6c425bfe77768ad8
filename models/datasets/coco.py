"""``coco``: images under ``root`` described by a COCO-format JSON (``ann_file``).

``ann_file`` may contain ``{split}`` (``annotations/instances_{split}.json``)
to name one file per split; otherwise images are split by a hash of their file
name with ``val_fraction``. Categories map to contiguous labels in
category-id order. Boxes (``[x, y, w, h]``) are converted to xyxy pixels,
clipped to the image (counted in ``clipped_boxes``); boxes left with no area
and crowd annotations are dropped (``dropped_boxes``). A malformed annotation
raises :class:`AnnotationError` naming its id. Unreadable images are skipped
and counted (``skipped``); all unreadable is an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets.errors import AnnotationError, DatasetError, EmptyDatasetError
from models.datasets.folder import in_val_split, read_image
from models.datasets.spec import Dataset, DatasetSpec, Sample, Split, sha256_json

__all__ = ["CocoDataset", "load_coco_json"]

log = logging.getLogger(__name__)


def load_coco_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DatasetError(f"COCO annotation file {path} does not exist") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"COCO annotation file {path} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"COCO annotation file {path}: expected an object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"COCO annotation file {path}: missing list field {key!r}")
    return data


def _bbox(ann: dict[str, Any]) -> tuple[float, float, float, float]:
    aid = ann.get("id")
    box = ann.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        or not all(math.isfinite(float(v)) for v in box)
    ):
        raise AnnotationError(
            f"annotation {aid!r}: bbox must be 4 finite numbers [x, y, w, h], got {box!r}",
            annotation_id=aid,
        )
    x, y, w, h = (float(v) for v in box)
    if w < 0 or h < 0:
        raise AnnotationError(f"annotation {aid!r}: bbox width/height must be >= 0, got {box!r}", annotation_id=aid)
    return x, y, x + w, y + h


class CocoDataset(Dataset):
    def __init__(self, spec: DatasetSpec, split: Split) -> None:
        ann_spec = str(spec.ann_file)
        explicit = "{split}" in ann_spec
        ann_path = Path(ann_spec.format(split=split.value) if explicit else ann_spec).expanduser()
        root = Path(str(spec.root).format(split=split.value)).expanduser()
        if not root.is_dir():
            raise DatasetError(f"COCO image root {root} does not exist or is not a directory")
        data = load_coco_json(ann_path)
        self.root, self.ann_path = root, ann_path
        cats = sorted(data["categories"], key=lambda c: c.get("id", 0))
        if not cats:
            raise EmptyDatasetError(f"COCO annotation file {ann_path} declares no categories")
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        self.labels = tuple(str(c.get("name", c["id"])) for c in cats)
        self.skipped = self.dropped_boxes = self.clipped_boxes = 0
        images = {}
        for im in data["images"]:
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise DatasetError(f"{ann_path}: every image needs 'id' and 'file_name', got {im!r}")
            if explicit or in_val_split(str(im["file_name"]), spec.val_fraction, spec.seed) == (split is Split.VAL):
                images[im["id"]] = im
        per_image: dict[Any, list[tuple[tuple[float, float, float, float], int]]] = {i: [] for i in images}
        for ann in data["annotations"]:
            if not isinstance(ann, dict):
                raise DatasetError(f"{ann_path}: every annotation must be an object, got {ann!r}")
            if ann.get("image_id") not in images:
                continue
            if ann.get("category_id") not in cat_index:
                raise AnnotationError(
                    f"annotation {ann.get('id')!r}: category_id {ann.get('category_id')!r} is not "
                    f"among the declared categories {sorted(cat_index)}",
                    annotation_id=ann.get("id"),
                )
            box = _bbox(ann)
            if ann.get("iscrowd"):
                self.dropped_boxes += 1
                continue
            per_image[ann["image_id"]].append((box, cat_index[ann["category_id"]]))
        self._items: list[tuple[Path, np.ndarray, np.ndarray]] = []
        for image_id in sorted(images, key=str):
            self._add(images[image_id], per_image[image_id])
        if not self._items:
            raise EmptyDatasetError(
                f"COCO {ann_path} ({split.value}): no readable image among {len(images)} "
                f"({self.skipped} could not be decoded)"
            )
        if self.skipped or self.dropped_boxes or self.clipped_boxes:
            log.warning(
                "COCO %s (%s): skipped %d unreadable image(s), clipped %d box(es), dropped %d",
                ann_path,
                split.value,
                self.skipped,
                self.clipped_boxes,
                self.dropped_boxes,
            )

    def _add(self, im: dict[str, Any], anns: list[tuple[tuple[float, float, float, float], int]]) -> None:
        path = self.root / str(im["file_name"])
        img = read_image(path)
        if img is None:
            self.skipped += 1
            return
        h, w = img.shape[:2]
        boxes, labels = [], []
        for (x1, y1, x2, y2), label in anns:
            c = (
                min(max(x1, 0.0), w),
                min(max(y1, 0.0), h),
                min(max(x2, 0.0), w),
                min(max(y2, 0.0), h),
            )
            if c != (x1, y1, x2, y2):
                self.clipped_boxes += 1
            if c[2] - c[0] < 1.0 or c[3] - c[1] < 1.0:
                self.dropped_boxes += 1
                continue
            boxes.append(c)
            labels.append(label)
        self._items.append((path, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        path, boxes, labels = self._items[self._check_index(index)]
        img = read_image(path)
        if img is None:
            raise DatasetError(f"image {path} became unreadable after the dataset was opened")
        return Sample(image=img, boxes=boxes.copy(), labels=labels.copy())

    def fingerprint(self) -> str:
        files = [[p.relative_to(self.root).as_posix(), os.path.getsize(p)] for p, _, _ in self._items]
        anns = [[b.round(2).tolist(), lab.tolist()] for _, b, lab in self._items]
        return sha256_json({"kind": "coco", "labels": list(self.labels), "files": files, "anns": anns})
