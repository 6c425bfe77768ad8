"""Accuracy of a model's raw outputs on a :class:`~optimize.data.SampleSet`.

Metrics go through the bundle's own decoders (:mod:`models.runtime.decode`),
so a gate measures what a device will decode:

- classification: top-1 (fraction correct);
- detection: mAP@0.5 (COCO-style 101-point interpolated AP, mean over classes
  with ground truth);
- segmentation: pixel agreement with the FP32 reference (the datasets carry no
  masks), so FP32 scores 1.0 by definition.

Pure numpy: runtimes are passed in as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from models.bundle import OutputSpec, Task
from models.runtime.decode import Detections, box_iou, decode_boxes, decode_mask, pick_outputs

__all__ = ["Score", "infer_all", "score_outputs", "metric_name", "average_precision", "map50"]

Outputs = dict[str, np.ndarray]
EVAL_SCORE_THRESHOLD = 0.05  # keep low-confidence boxes for AP, as COCO evaluation does


@dataclass(frozen=True)
class Score:
    metric: str  # "top1" | "map50" | "pixel_agreement"
    value: float  # fraction in [0, 1]


def metric_name(task: Task) -> str:
    return {Task.CLASSIFICATION: "top1", Task.DETECTION: "map50", Task.SEGMENTATION: "pixel_agreement"}[task]


def infer_all(run: Callable[[np.ndarray], Outputs], inputs: np.ndarray, *, batch_size: int = 32) -> Outputs:
    """Run ``inputs`` through ``run`` in batches and concatenate each output."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, inputs.shape[0], max(1, batch_size)):
        for name, value in run(inputs[start : start + batch_size]).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in parts.items()}


def average_precision(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    """AP from per-detection true-positive flags and scores, 101-point interpolation."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / n_gt
    precision = tps / np.maximum(tps + fps, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean(np.where(idx < precision.size, precision[np.minimum(idx, precision.size - 1)], 0.0)))


def map50(
    preds: Sequence[Detections],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    num_classes: int,
    *,
    iou: float = 0.5,
) -> float:
    """mAP at IoU ``iou`` over classes that have ground truth (0.0 when none has)."""
    aps = []
    for c in range(num_classes):
        tp_all, sc_all, n_gt = [], [], 0
        for det, gb, gl in zip(preds, gt_boxes, gt_labels, strict=True):
            g = np.asarray(gb, np.float32).reshape(-1, 4)[np.asarray(gl).reshape(-1) == c]
            n_gt += len(g)
            d = det.labels == c
            boxes, scores = det.boxes[d], det.scores[d]
            order = np.argsort(-scores, kind="stable")
            matched = np.zeros(len(g), bool)
            ious = box_iou(boxes[order], g) if len(g) else np.zeros((len(order), 0))
            for row in ious:
                j = int(np.argmax(row)) if row.size else -1
                hit = j >= 0 and row[j] >= iou and not matched[j]
                if hit:
                    matched[j] = True
                tp_all.append(hit)
            sc_all.extend(scores[order].tolist())
        ap = average_precision(np.asarray(tp_all, bool), np.asarray(sc_all, np.float32), n_gt)
        if not np.isnan(ap):
            aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def score_outputs(
    task: Task,
    outputs: Outputs,
    spec: OutputSpec,
    samples: Sequence[object],
    transforms: Sequence[object],
    sizes: Sequence[tuple[int, int]],
    *,
    num_classes: int,
    reference: Outputs | None = None,
) -> Score:
    """The task metric of ``outputs`` against the samples' labels (or ``reference`` for masks)."""
    picked = pick_outputs(outputs, spec)
    if task is Task.CLASSIFICATION:
        pred = np.argmax(picked["logits"], axis=1)
        labels = np.asarray([s.label for s in samples])  # type: ignore[attr-defined]
        return Score("top1", float(np.mean(pred == labels)))
    if task is Task.DETECTION:
        dec = replace(spec.decoder, score_threshold=min(spec.decoder.score_threshold, EVAL_SCORE_THRESHOLD))
        preds = [
            decode_boxes(picked["boxes"][i], picked["scores"][i], dec, transforms[i], sizes[i])  # type: ignore[arg-type]
            for i in range(len(samples))
        ]
        gb = [s.boxes if s.boxes is not None else np.zeros((0, 4)) for s in samples]  # type: ignore[attr-defined]
        gl = [s.labels if s.labels is not None else np.zeros(0) for s in samples]  # type: ignore[attr-defined]
        return Score("map50", map50(preds, gb, gl, num_classes))
    ref = pick_outputs(reference if reference is not None else outputs, spec)["mask_logits"]
    got = picked["mask_logits"]
    agree = [np.mean(decode_mask(got[i]) == decode_mask(ref[i])) for i in range(got.shape[0])]
    return Score("pixel_agreement", float(np.mean(agree)))
