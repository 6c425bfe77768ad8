"""training.metrics: top-1, the boxes decoder and COCO mAP via pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.metrics import coco_map, decode_detections, top1_counts


def test_top1_counts() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_counts(logits, torch.tensor([1, 1, 1])) == (2, 3)


def _gt() -> list[tuple[int, np.ndarray, np.ndarray]]:
    return [
        (0, np.array([[10, 10, 50, 40], [60, 60, 90, 100]], np.float32), np.array([0, 2])),
        (1, np.array([[5, 5, 30, 30]], np.float32), np.array([1])),
    ]


def test_coco_map_perfect_partial_and_empty() -> None:
    gt = _gt()
    perfect = [(i, b, np.ones(len(b), np.float32), lab) for i, b, lab in gt]
    assert coco_map(gt, perfect, 3) == pytest.approx({"map": 1.0, "map50": 1.0})
    shifted = [(i, b + 6.0, np.ones(len(b), np.float32), lab) for i, b, lab in gt]
    r = coco_map(gt, shifted, 3)
    assert r["map"] < r["map50"] <= 1.0 and r["map"] < 0.9
    wrong_class = [(i, b, np.ones(len(b), np.float32), (lab + 1) % 3) for i, b, lab in gt]
    assert coco_map(gt, wrong_class, 3)["map50"] == 0.0
    assert coco_map(gt, [], 3) == {"map": 0.0, "map50": 0.0}


def test_decode_detections_thresholds_and_suppresses_per_class() -> None:
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]], dtype=torch.float32)
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.7], [0.01, 0.6]]])
    [(b, s, lab)] = decode_detections(boxes, scores, score_threshold=0.05, iou_threshold=0.5)
    # box 1 class 0 is suppressed by box 0; box 1 class 1 survives (other class); 0.01 dropped
    order = np.argsort(-s)
    assert lab[order].tolist() == [0, 1, 1]
    np.testing.assert_allclose(s[order], [0.9, 0.7, 0.6], rtol=1e-6)
    assert b.dtype == np.float32 and b.shape == (3, 4)
