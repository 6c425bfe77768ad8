"""Agreement between a candidate model and its reference on the same frames, and what to expect of it.

Pure, no I/O. There is no ground truth on a vehicle, so the reference is the
active model (or the candidate bundle's own FP32, see :func:`choose_context`)
and agreement measures how much the candidate would change what the vehicle
perceives. :func:`frame_agreement` scores one frame in [0, 1] with the
definitions of :mod:`models.agreement` (the optimizer measures its
expectations with the very same functions):

- classification: 1 when the two best classes are equal, else 0;
- detection: the frame's matched-box F1 at IoU 0.5 (same class; 1 when neither
  side saw a box);
- segmentation: the share of pixels with the same class.

A frame where either side failed or produced NaN scores 0. :class:`FlipCounter`
counts which classes turned into which, for the confusion table of a refusal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.perception.base import GateContext, JudgedAgainst
from edge_agent.perception.inference import Outcome
from models.agreement import class_agreement, detection_agreement, mask_agreement, match_boxes
from models.bundle import AgreementExpectation, Format, Gates, Manifest, Precision, Task
from models.runtime import Detections
from models.runtime.decode import box_iou

__all__ = ["match_boxes", "frame_agreement", "frame_flips", "FlipCounter", "choose_context", "NONE_LABEL"]

NONE_LABEL = "(none)"  # a box one side saw and the other did not
_NONE = -1


def frame_agreement(task: Task, candidate: Outcome, reference: Outcome, *, iou_threshold: float = 0.5) -> float:
    """One frame's agreement in [0, 1]; 0 when either side failed or gave NaN/inf."""
    if not candidate.ok or not reference.ok:
        return 0.0
    if task is Task.CLASSIFICATION:
        return class_agreement(candidate.top1, reference.top1)
    if task is Task.DETECTION:
        return detection_agreement(
            candidate.detections or Detections.empty(),
            reference.detections or Detections.empty(),
            iou_threshold=iou_threshold,
        )
    if candidate.mask is None or reference.mask is None:
        return 0.0
    return mask_agreement(candidate.mask, reference.mask)


def frame_flips(
    task: Task, candidate: Outcome, reference: Outcome, *, num_classes: int, iou_threshold: float = 0.5
) -> list[tuple[int, int, int]]:
    """``(reference class, candidate class, count)`` of one frame's disagreements; -1 = no box.

    Classification: the two best classes. Detection: boxes matched by IoU
    regardless of class (a changed label is a flip, an unmatched box flips
    to or from -1). Segmentation: pixels, counted per class pair.
    """
    if not candidate.ok or not reference.ok:
        return []
    if task is Task.CLASSIFICATION:
        c, r = candidate.top1, reference.top1
        return [] if c is None or r is None or c == r else [(r, c, 1)]
    if task is Task.DETECTION:
        return _box_flips(
            candidate.detections or Detections.empty(), reference.detections or Detections.empty(), iou_threshold
        )
    a, b = candidate.mask, reference.mask
    if a is None or b is None or a.shape != b.shape:
        return []
    differ = a != b
    k = max(num_classes, int(max(a.max(initial=0), b.max(initial=0))) + 1)
    pairs = np.bincount(b[differ].astype(np.int64) * k + a[differ].astype(np.int64), minlength=k * k)
    return [(int(i) // k, int(i) % k, int(pairs[i])) for i in np.flatnonzero(pairs)]


def _box_flips(cand: Detections, ref: Detections, iou_threshold: float) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    taken = np.zeros(len(cand), dtype=bool)
    iou = box_iou(cand.boxes, ref.boxes) if len(cand) and len(ref) else np.zeros((len(cand), len(ref)))
    for j in np.argsort(-ref.scores, kind="stable"):
        row = np.where(taken, -1.0, iou[:, j]) if len(cand) else np.zeros(0)
        i = int(np.argmax(row)) if row.size else -1
        if i >= 0 and row[i] >= iou_threshold:
            taken[i] = True
            if int(cand.labels[i]) != int(ref.labels[j]):
                out.append((int(ref.labels[j]), int(cand.labels[i]), 1))
        else:
            out.append((int(ref.labels[j]), _NONE, 1))
    out += [(_NONE, int(cand.labels[i]), 1) for i in np.flatnonzero(~taken)]
    return out


@dataclass
class FlipCounter:
    """Which reference classes the candidate turned into which, over a shadow run."""

    task: Task
    reference_labels: Sequence[str]
    candidate_labels: Sequence[str]
    counts: Counter[tuple[int, int]] = field(default_factory=Counter)

    def add(self, candidate: Outcome, reference: Outcome) -> None:
        n = max(len(self.reference_labels), len(self.candidate_labels))
        for r, c, count in frame_flips(self.task, candidate, reference, num_classes=n):
            self.counts[(r, c)] += count

    def table(self, rows: int = 10) -> list[dict[str, Any]]:
        """The ``rows`` most frequent flips: ``{"active": label, "candidate": label, "count": n}``."""
        return [
            {"active": _name(self.reference_labels, r), "candidate": _name(self.candidate_labels, c), "count": n}
            for (r, c), n in self.counts.most_common(rows)
        ]


def _name(labels: Sequence[str], index: int) -> str:
    if index == _NONE:
        return NONE_LABEL
    return labels[index] if 0 <= index < len(labels) else f"class {index}"


def choose_context(
    candidate: Manifest,
    candidate_variant: str,
    *,
    running: Manifest,
    running_variant: str | None,
    in_slot: Callable[[str], bool],
    gates: Gates,
) -> GateContext:
    """What the shadow run judges ``candidate_variant`` against, and the agreement to expect.

    1. The candidate's expectation for the release the device runs (its
       ``name@version`` and the sha256 of the variant it serves): compare with
       the active model.
    2. Else the bundle's own FP32 (its self expectation), when that file is in
       the candidate's slot (``in_slot(variant_id)``) and is not the candidate
       itself: the shadow run runs both on the same live frames.
    3. Else the active model, expecting only the floor ``gates.min_agreement``.
    """
    served = _sha(running, running_variant)
    if served is not None:
        e = candidate.expectation(candidate_variant, baseline=running.release, baseline_sha256=served)
        if e is not None:
            return GateContext(
                expected=e.expected,
                baseline=running.release,
                baseline_variant=running_variant,
                judged_against=JudgedAgainst.ACTIVE,
                candidate_variant=candidate_variant,
                why=f"expectation against {running.release}/{running_variant}: {_measured(e)}",
                per_class=e.per_class,
            )
    missing = (
        f"no expectation for the running release {running.release}{f'/{running_variant}' if running_variant else ''}"
    )
    own = [
        e
        for e in candidate.expectations
        if e.variant == candidate_variant
        and e.baseline == candidate.release
        and e.baseline_variant != candidate_variant
    ]
    own.sort(key=lambda e: e.baseline_variant != _fp32_id(candidate))
    for e in own:
        if _sha(candidate, e.baseline_variant) == e.baseline_sha256 and in_slot(e.baseline_variant):
            return GateContext(
                expected=e.expected,
                baseline=candidate.release,
                baseline_variant=e.baseline_variant,
                judged_against=JudgedAgainst.OWN_FP32,
                candidate_variant=candidate_variant,
                why=f"{missing}; judged against its own {e.baseline_variant}: {_measured(e)}",
                per_class=e.per_class,
            )
    if candidate_variant == _fp32_id(candidate):
        reason = "the candidate is the bundle's own FP32"
    elif own:
        reason = f"its own {own[0].baseline_variant} is not in the slot"
    else:
        reason = "none against its own FP32 either"
    return GateContext(
        expected=gates.min_agreement,
        baseline=running.release,
        baseline_variant=running_variant,
        judged_against=JudgedAgainst.ACTIVE,
        candidate_variant=candidate_variant,
        why=f"{missing}, and {reason}: judged against the active model with the floor "
        f"min_agreement {gates.min_agreement:.1%}",
    )


def _sha(manifest: Manifest, variant_id: str | None) -> str | None:
    return next((v.sha256 for v in manifest.variants if v.id == variant_id), None)


def _fp32_id(manifest: Manifest) -> str | None:
    """The bundle's FP32 ONNX variant (``onnx-fp32`` by convention)."""
    ids = [v.id for v in manifest.variants if v.precision is Precision.FP32 and v.format is Format.ONNX]
    return "onnx-fp32" if "onnx-fp32" in ids else (ids[0] if ids else None)


def _measured(e: AgreementExpectation) -> str:
    calib = f", {e.calib:.1%} on {e.calib_frames} calibration frames" if e.calib is not None else ""
    classes = f"; {len(e.per_class)} classes measured" if e.per_class else ""
    return f"expected {e.expected:.1%} ({e.heldout:.1%} on {e.heldout_frames} held-out frames{calib}{classes})"
