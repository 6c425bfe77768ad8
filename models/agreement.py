"""Agreement between two models' decoded outputs on the same frame: one definition for all stages.

The optimizer uses it to measure the *expected* agreement of a new release with
the one it replaces; the agent uses the very same functions on live frames, so
both sides of the gate count the same thing:

- classification: the two best classes are equal (1.0) or not (0.0);
- detection: matched-box F1 at IoU 0.5 — a candidate box matches an unmatched
  reference box of the same class with IoU >= 0.5 (greedy, highest score
  first); a frame where neither side saw a box agrees fully;
- segmentation: the share of pixels with the same class.

Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np

from models.runtime.decode import Detections, box_iou

__all__ = ["match_boxes", "box_f1", "detection_agreement", "mask_agreement", "class_agreement"]


def match_boxes(candidate: Detections, reference: Detections, *, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """``(true positives, false positives, misses)`` of candidate boxes against reference boxes."""
    n_c, n_r = len(candidate), len(reference)
    if n_c == 0 or n_r == 0:
        return 0, n_c, n_r
    iou = box_iou(candidate.boxes, reference.boxes)
    same_class = candidate.labels[:, None] == reference.labels[None, :]
    iou = np.where(same_class, iou, 0.0)
    taken = np.zeros(n_r, dtype=bool)
    tp = 0
    for i in np.argsort(-candidate.scores, kind="stable"):
        row = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_threshold:
            taken[j] = True
            tp += 1
    return tp, n_c - tp, n_r - tp


def box_f1(tp: int, fp: int, fn: int) -> float:
    """F1 of matched boxes; 1.0 when neither side has a box."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def detection_agreement(candidate: Detections, reference: Detections, *, iou_threshold: float = 0.5) -> float:
    """One frame's box-F1 agreement in [0, 1]."""
    return box_f1(*match_boxes(candidate, reference, iou_threshold=iou_threshold))


def mask_agreement(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Share of pixels with the same class; 0.0 when the shapes differ."""
    if candidate.shape != reference.shape:
        return 0.0
    return float(np.mean(candidate == reference))


def class_agreement(candidate: int | None, reference: int | None) -> float:
    """1.0 when both best classes are known and equal, else 0.0."""
    return float(candidate is not None and candidate == reference)
