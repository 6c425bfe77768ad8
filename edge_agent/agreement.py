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
from models.agreement import box_f1, match_boxes
from models.bundle import Task
from models.runtime import Detections

__all__ = ["match_boxes", "AgreementTracker"]


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
            return box_f1(self.tp, self.fp, self.fn)
        return self.agreed / self.frames
