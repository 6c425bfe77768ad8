"""models.runtime.decode: top-k, NMS against a brute-force reference, box and mask mapping."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import DecoderKind, DecoderSpec, InputSpec, OutputSpec, ResizeMode, TensorSpec
from models.preprocess import Preprocessor, Transform
from models.runtime.decode import (
    batched_nms,
    box_iou,
    decode_boxes,
    decode_mask,
    nms,
    pick_outputs,
    softmax,
    topk,
)


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: (-scores[j], j)):
        if all(box_iou(boxes[i : i + 1], boxes[k : k + 1])[0, 0] <= thr for k in keep):
            keep.append(i)
    return keep


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 80, size=(n, 2))
    wh = rng.uniform(5, 40, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_softmax_and_topk() -> None:
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]], atol=1e-6)
    best = topk(np.array([0.1, 3.0, 3.0, -1.0]), 3)
    assert [i for i, _ in best] == [1, 2, 0]  # ties break towards the lower index
    assert best[0][1] == pytest.approx(float(softmax(np.array([0.1, 3.0, 3.0, -1.0]))[1]))
    assert len(topk(np.array([1.0, 2.0]), 10)) == 2
    with pytest.raises(ValueError, match="at least one logit"):
        topk(np.array([]), 1)


def test_iou_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b)[0], [50 / 150, 0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed: int, thr: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 60)
    scores = rng.uniform(size=60).astype(np.float32)
    assert nms(boxes, scores, thr).tolist() == _reference_nms(boxes, scores, thr)


def test_batched_nms_never_suppresses_across_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_decode_boxes_threshold_limit_and_letterbox_mapping() -> None:
    spec = InputSpec(shape=(1, 3, 64, 64), resize=ResizeMode.LETTERBOX)
    pre = Preprocessor(spec)
    frame = np.zeros((100, 200, 3), np.uint8)  # scale 0.32, pad_y 16
    pre(frame)
    t = pre.last_transform
    frame_boxes = np.array([[20, 10, 60, 50], [100, 40, 180, 90], [10, 10, 20, 20]], np.float32)
    net_boxes = t.to_input(frame_boxes)
    scores = np.array([[0.9, 0.1], [0.2, 0.6], [0.25, 0.1]], np.float32)
    dec = DecoderSpec(kind=DecoderKind.BOXES, score_threshold=0.3, max_detections=1)
    dets = decode_boxes(net_boxes, scores, dec, t, (100, 200))
    assert len(dets) == 1 and dets.labels.tolist() == [0]
    np.testing.assert_allclose(dets.boxes[0], frame_boxes[0], atol=1e-3)
    dec = DecoderSpec(kind=DecoderKind.BOXES, score_threshold=0.3, max_detections=10)
    dets = decode_boxes(net_boxes, scores, dec, t, (100, 200))
    assert dets.labels.tolist() == [0, 1]
    np.testing.assert_allclose(dets.boxes, frame_boxes[:2], atol=1e-3)
    none = decode_boxes(net_boxes, scores * 0.1, dec, t, (100, 200))
    assert len(none) == 0 and none.boxes.shape == (0, 4)


def test_decode_boxes_clips_to_the_frame() -> None:
    dec = DecoderSpec(kind=DecoderKind.BOXES, score_threshold=0.1)
    dets = decode_boxes(
        np.array([[-5, -5, 70, 40]], np.float32), np.array([[0.9]]), dec, Transform(1.0, 1.0, 0.0, 0.0), (32, 64)
    )
    np.testing.assert_allclose(dets.boxes[0], [0, 0, 64, 32])


def test_decode_mask_undoes_letterbox() -> None:
    spec = InputSpec(shape=(1, 3, 32, 32), resize=ResizeMode.LETTERBOX)
    pre = Preprocessor(spec)
    pre(np.zeros((16, 32, 3), np.uint8))  # scale 1, pad_y 8: rows 8..23 are the frame
    logits = np.zeros((3, 32, 32), np.float32)
    logits[0] = 1.0
    logits[2, 8:24, 16:] = 5.0  # right half of the frame is class 2
    mask = decode_mask(logits, pre.last_transform, (16, 32))
    assert mask.shape == (16, 32) and mask.dtype == np.int32
    assert (mask[:, 16:] == 2).all() and (mask[:, :16] == 0).all()
    assert decode_mask(logits).shape == (32, 32)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        decode_mask(np.zeros((32, 32)))


def test_pick_outputs_by_meaning_name_and_position() -> None:
    out = OutputSpec(
        (TensorSpec("o1", (None, 4, 4), "boxes_xyxy"), TensorSpec("o2", (None, 4, 2), "scores")),
        DecoderSpec(kind=DecoderKind.BOXES),
    )
    got = pick_outputs({"o1": np.zeros(1), "o2": np.ones(1)}, out)
    assert got["boxes"][0] == 0 and got["scores"][0] == 1
    cls = OutputSpec((TensorSpec("out", (None, 3)),), DecoderSpec(kind=DecoderKind.TOPK))
    assert "logits" in pick_outputs({"out": np.zeros(3)}, cls)
    with pytest.raises(ValueError, match="needs output 'scores'"):
        pick_outputs({"o1": np.zeros(1)}, out)
