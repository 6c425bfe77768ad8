"""Evaluation metrics: top-1 accuracy and COCO mAP (pycocotools).

Pure functions over tensors/arrays; reduction across ranks is the caller's
(``engine.evaluate`` gathers predictions to every rank before calling
:func:`coco_map`, so all ranks agree on the number).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms

__all__ = ["top1_counts", "decode_detections", "coco_map"]


def top1_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) for one batch."""
    return int((logits.argmax(1) == labels).sum()), int(labels.numel())


def decode_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    *,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw ``boxes [N,A,4]`` + ``scores [N,A,C]`` → per image (boxes, scores, labels)
    after a score threshold and class-wise NMS (the ``boxes`` decoder of contracts §3)."""
    out = []
    num_classes = scores.shape[-1]
    for b, s in zip(boxes, scores, strict=True):
        flat = s.reshape(-1)
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if keep.numel() > 4 * max_detections:  # cap the NMS input, highest scores first
            keep = keep[flat[keep].topk(4 * max_detections).indices]
        anchor, label = keep // num_classes, keep % num_classes
        cand, cand_scores = b[anchor], flat[keep]
        chosen = batched_nms(cand, cand_scores, label, iou_threshold)[:max_detections]
        out.append(
            (
                cand[chosen].cpu().numpy().astype(np.float32),
                cand_scores[chosen].cpu().numpy().astype(np.float32),
                label[chosen].cpu().numpy().astype(np.int64),
            )
        )
    return out


def coco_map(
    ground_truth: Sequence[tuple[int, np.ndarray, np.ndarray]],
    predictions: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
) -> dict[str, float]:
    """``{"map": mAP@[.5:.95], "map50": mAP@0.5}`` from pycocotools.

    ``ground_truth``: (image_id, boxes xyxy [K,4], labels [K]);
    ``predictions``: (image_id, boxes xyxy, scores, labels).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id, boxes, labels in ground_truth:
        images.append({"id": int(image_id)})
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    dets: list[dict[str, Any]] = []
    for image_id, boxes, scores, labels in predictions:
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            dets.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    if not anns or not dets:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c} for c in range(num_classes)],
        }
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": max(0.0, float(ev.stats[0])), "map50": max(0.0, float(ev.stats[1]))}
