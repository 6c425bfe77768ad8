"""Agreement between a candidate model and the active one on the same frames.

Pure numpy, no I/O. The active model's output is the reference (there is no
ground truth on a vehicle), so agreement measures how much the candidate
would change what the vehicle perceives:

- classification: top-1 agreement (fraction of frames with the same best class);
- detection: matched-box F1 at IoU 0.5 — a candidate box matches an unmatched
  reference box of the same class with IoU >= 0.5 (greedy, highest score
  first); true/false positives and misses are summed over all frames;
- segmentation: pixel agreement of the two label maps.

A frame where either side failed or produced NaN counts as a disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.inference import Outcome
from models.bundle import Task
from models.runtime import Detections
from models.runtime.decode import box_iou

__all__ = ["match_boxes", "AgreementTracker"]


def match_boxes(
    candidate: Detections, reference: Detections, *, iou_threshold: float = 0.5
) -> tuple[int, int, int]:
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


@dataclass
class AgreementTracker:
    """Accumulates agreement over frames for one task."""

    task: Task
    iou_threshold: float = 0.5
    frames: int = 0
    agreed: float = 0.0  # classification: frames agreeing; segmentation: sum of pixel agreement
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, candidate: Outcome, reference: Outcome) -> None:
        self.frames += 1
        if not candidate.ok or not reference.ok:
            if self.task is Task.DETECTION:  # count the reference boxes as missed
                self.fn += len(reference.detections) if reference.detections is not None else 1
            return
        if self.task is Task.CLASSIFICATION:
            self.agreed += float(candidate.top1 == reference.top1)
        elif self.task is Task.DETECTION:
            tp, fp, fn = match_boxes(
                candidate.detections or Detections.empty(),
                reference.detections or Detections.empty(),
                iou_threshold=self.iou_threshold,
            )
            self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        else:
            a, b = candidate.mask, reference.mask
            if a is not None and b is not None and a.shape == b.shape:
                self.agreed += float(np.mean(a == b))

    @property
    def value(self) -> float:
        """Agreement in [0, 1]; 1.0 before any frame, and for detection when neither side saw a box."""
        if self.frames == 0:
            return 1.0
        if self.task is Task.DETECTION:
            denom = 2 * self.tp + self.fp + self.fn
            return 1.0 if denom == 0 else 2 * self.tp / denom
        return self.agreed / self.frames
