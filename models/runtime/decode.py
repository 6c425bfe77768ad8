"""Decoders: raw output tensors → classes, boxes or masks, driven by the manifest.

Pure numpy (+ OpenCV to warp masks), no runtime: the agent decodes camera
predictions with these, and the optimizer and training evaluate accuracy
(top-1, mAP) with the very same functions, so a gate measures what a device
will see. Contract: docs/contracts.md §3.

- ``topk``: ``[N, C]`` logits → softmax → the ``k`` best (class, probability);
- ``boxes``: ``boxes [N, A, 4]`` xyxy in network-input pixels and
  ``scores [N, A, C]`` probabilities → per-class score threshold, class-wise
  NMS, ``max_detections`` best, mapped back to frame pixels;
- ``masks``: ``[N, C, H, W]`` logits → argmax label map warped to the frame.

This module does not run models or preprocess frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.bundle import DecoderKind, DecoderSpec, OutputSpec
from models.preprocess import Transform

__all__ = [
    "Detections",
    "softmax",
    "topk",
    "box_iou",
    "nms",
    "batched_nms",
    "decode_boxes",
    "decode_mask",
    "pick_outputs",
]


@dataclass(frozen=True)
class Detections:
    """Boxes in frame pixels (``[K, 4]`` xyxy float32), scores ``[K]``, class indices ``[K]``."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (float32)."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    out: np.ndarray = e / np.sum(e, axis=axis, keepdims=True)
    return out


def topk(logits: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    """One row of logits ``[C]`` → the ``k`` best ``(class index, probability)``, best first.

    Ties break towards the lower class index, so the result is deterministic.
    """
    row = np.asarray(logits).reshape(-1)
    if row.size == 0:
        raise ValueError("topk needs at least one logit")
    probs = softmax(row)
    k = max(1, min(int(k), probs.size))
    order = np.argsort(-probs, kind="stable")[:k]
    return tuple((int(i), float(probs[i])) for i in order)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[M, 4]`` and ``[K, 4]`` xyxy boxes → ``[M, K]``."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression → indices kept, highest score first.

    Each step suppresses, in one vectorised IoU, every remaining box that
    overlaps the current best by more than ``iou_threshold``.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        ious = box_iou(boxes[best : best + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-wise NMS in one pass: boxes of different classes are shifted apart so they never overlap."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(np.max(boxes) - min(float(np.min(boxes)), 0.0)) + 1.0
    shifted = boxes + (np.asarray(classes, dtype=np.float32) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def decode_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    spec: DecoderSpec,
    transform: Transform | None = None,
    frame_hw: tuple[int, int] | None = None,
) -> Detections:
    """One image: ``boxes [A, 4]`` (network pixels), ``scores [A, C]`` → :class:`Detections`.

    Every (anchor, class) pair above ``spec.score_threshold`` is a candidate;
    class-wise NMS at ``spec.iou_threshold`` and the ``spec.max_detections``
    best remain. With ``transform`` the boxes are mapped back to frame pixels
    (and clipped to ``frame_hw`` when given).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    scores = scores.reshape(boxes.shape[0], -1)
    anchor, cls = np.nonzero(scores > spec.score_threshold)
    if anchor.size == 0:
        return Detections.empty()
    cand_boxes = boxes[anchor]
    cand_scores = scores[anchor, cls]
    keep = batched_nms(cand_boxes, cand_scores, cls, spec.iou_threshold)[: spec.max_detections]
    out_boxes = cand_boxes[keep]
    if transform is not None:
        out_boxes = transform.to_frame(out_boxes)
    if frame_hw is not None:
        h, w = frame_hw
        out_boxes[:, [0, 2]] = np.clip(out_boxes[:, [0, 2]], 0, w)
        out_boxes[:, [1, 3]] = np.clip(out_boxes[:, [1, 3]], 0, h)
    return Detections(
        boxes=out_boxes.astype(np.float32),
        scores=cand_scores[keep].astype(np.float32),
        labels=cls[keep].astype(np.int64),
    )


def decode_mask(
    logits: np.ndarray, transform: Transform | None = None, frame_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """One image: ``[C, H, W]`` logits → int32 label map, warped to ``frame_hw`` through ``transform``.

    The inverse of the preprocessing transform (``net = frame * scale + pad``)
    is applied with nearest-neighbour sampling, so letterbox padding is cut
    away and a center crop leaves the frame border as class 0.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"mask logits must be [C, H, W], got shape {list(logits.shape)}")
    labels: np.ndarray = np.argmax(logits, axis=0).astype(np.int32)
    if frame_hw is None:
        return labels
    h, w = frame_hw
    t = transform or Transform(w / labels.shape[1], h / labels.shape[0], 0.0, 0.0)
    # frame = (net - pad) / scale: an affine map from the network grid to the frame grid
    m = np.array(
        [[1.0 / t.scale_x, 0.0, -t.pad_x / t.scale_x], [0.0, 1.0 / t.scale_y, -t.pad_y / t.scale_y]],
        dtype=np.float64,
    )
    src = labels.astype(np.uint16) if labels.max(initial=0) < 65536 else labels.astype(np.float32)
    warped = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.asarray(warped).astype(np.int32)


def pick_outputs(outputs: Mapping[str, np.ndarray], spec: OutputSpec) -> dict[str, np.ndarray]:
    """The decoder's inputs by role (``logits`` | ``boxes`` + ``scores`` | ``mask_logits``).

    Tensors are found by the manifest's ``meaning`` first, then by name, then
    by position; a missing tensor raises ``ValueError`` naming it.
    """
    names = [t.name for t in spec.tensors]
    meaning = {t.meaning: t.name for t in spec.tensors if t.meaning}
    kind = spec.decoder.kind
    roles: Sequence[tuple[str, Sequence[str]]]
    if kind is DecoderKind.TOPK:
        roles = (("logits", ("logits",)),)
    elif kind is DecoderKind.BOXES:
        roles = (("boxes", ("boxes_xyxy", "boxes")), ("scores", ("scores",)))
    else:
        roles = (("mask_logits", ("mask_logits", "masks", "logits")),)
    picked: dict[str, np.ndarray] = {}
    for position, (role, aliases) in enumerate(roles):
        name = next((meaning[a] for a in aliases if a in meaning), None)
        if name is None:
            name = next((a for a in aliases if a in outputs), None)
        if name is None and position < len(names):
            name = names[position]
        if name is None or name not in outputs:
            raise ValueError(f"decoder {kind.value!r} needs output {role!r}; the model produced {sorted(outputs)}")
        picked[role] = np.asarray(outputs[name])
    return picked
