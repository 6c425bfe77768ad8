"""Expected agreement, pinned down where mutation testing found it loose.

A batch decodes frame by frame with each frame's own transform and size, and a batch whose
transforms and sizes differ in number is refused; boxes are clipped to the frame; masks are warped
to frame pixels through the frame's own transform (letterbox padding cut away); a detection frame
is compared only with a detection frame; a reference class one past the labels is refused; every
expectation carries the baseline's file hash and its frame counts, rounded to 4 places, and falls
back to the held-out frames alone when the candidate was not run on calibration frames; a warning
after a passing expectation is still given.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import AgreementExpectation, ClassAgreement, DecoderKind, DecoderSpec, OutputSpec, Task, TensorSpec
from models.preprocess import Transform
from models.runtime.decode import Detections
from optimize.expect import (
    FrameSets,
    Reference,
    below_floor,
    class_agreements,
    decode_outputs,
    expectations,
    frame_agreement,
    mean_agreement,
)
from tests.optimize.test_expect import IDENTITY, LABELS, SHA, _dets  # the same frames and references


def test_a_batch_with_more_sizes_than_transforms_is_refused() -> None:
    spec = OutputSpec((TensorSpec("logits", (None, 3), "logits"),), DecoderSpec(DecoderKind.TOPK))
    logits = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="zip"):
        decode_outputs({"logits": logits}, spec, [IDENTITY] * 2, [(8, 8)] * 3)


def test_boxes_mapped_past_the_frame_are_clipped_to_it() -> None:
    spec = OutputSpec(
        (TensorSpec("boxes", (None, 1, 4), "boxes_xyxy"), TensorSpec("scores", (None, 1, 1), "scores")),
        DecoderSpec(DecoderKind.BOXES, score_threshold=0.3),
    )
    boxes = np.array([[[4, 4, 20, 20]]], np.float32)  # 8..40 in frame pixels: past the 32x32 frame
    scores = np.array([[[0.9]]], np.float32)
    (dets,) = decode_outputs({"boxes": boxes, "scores": scores}, spec, [Transform(0.5, 0.5, 0.0, 0.0)], [(32, 32)])
    assert isinstance(dets, Detections)
    np.testing.assert_allclose(dets.boxes, [[8, 8, 32, 32]])


def test_masks_are_warped_to_each_frame_through_its_own_transform() -> None:
    spec = OutputSpec((TensorSpec("mask_logits", (None, 2, 4, 4), "mask_logits"),), DecoderSpec(DecoderKind.MASKS))
    logits = np.zeros((2, 2, 4, 4), np.float32)
    logits[:, 1, 1:3, 0:2] = 1.0  # class 1 on network rows 1-2, columns 0-1, in both frames
    letterbox = Transform(0.5, 0.5, 0.0, 1.0)  # a 4x8 frame, halved, padded by one row above and below
    wide, square = decode_outputs({"mask_logits": logits}, spec, [letterbox, IDENTITY], [(4, 8), (4, 4)])
    assert isinstance(wide, np.ndarray) and wide.shape == (4, 8)
    assert (wide[:, :2] == 1).all() and (wide[:, 4:] == 0).all()  # every frame row: the padding rows are cut away
    expected_square = np.zeros((4, 4), np.int32)
    expected_square[1:3, 0:2] = 1
    np.testing.assert_array_equal(square, expected_square)


def test_a_missing_reference_agrees_with_nothing_and_a_detection_is_compared_only_with_a_detection() -> None:
    assert frame_agreement(Task.CLASSIFICATION, 1, None) == 0.0
    assert frame_agreement(Task.DETECTION, _dets(), None) == 0.0
    with pytest.raises(AssertionError):
        frame_agreement(Task.DETECTION, _dets((0, 0, 10, 10, 1)), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="same non-zero number of frames"):
        mean_agreement(Task.CLASSIFICATION, (), ())


def test_a_reference_class_one_past_the_labels_or_below_zero_is_refused() -> None:
    for k in (len(LABELS), -1):
        with pytest.raises(ValueError, match=f"reference class {k} is outside the 5 labels"):
            class_agreements(Task.CLASSIFICATION, FrameSets((0,)), FrameSets((k,)), LABELS)


def test_a_detection_expectation_names_the_baseline_file_and_its_frames_rounded_to_4_places() -> None:
    ref = FrameSets(
        (_dets((0, 0, 10, 10, 1), (20, 20, 30, 30, 2)), _dets(), _dets((0, 0, 10, 10, 0))),
        (_dets((0, 0, 10, 10, 1), (20, 20, 30, 30, 2)),),
    )
    cand = FrameSets(
        (_dets((1, 1, 10, 10, 1)), _dets(), _dets((0, 0, 10, 10, 1))),  # per frame 2/3, 1, 0
        (_dets((20, 20, 30, 30, 2)),),  # one of two: 2/3
    )
    (got,) = expectations(
        Task.DETECTION, {"onnx-int8": cand}, [Reference("dets@1.1.0", "onnx-fp32", SHA, ref)], labels=LABELS
    )
    assert got == AgreementExpectation(
        variant="onnx-int8",
        baseline="dets@1.1.0",
        baseline_variant="onnx-fp32",
        baseline_sha256=SHA,
        heldout=0.5556,
        heldout_frames=3,
        calib=0.6667,
        calib_frames=1,
        per_class=(),
    )


def test_a_candidate_without_calibration_frames_is_judged_on_the_heldout_frames_alone() -> None:
    heldout = (0,) * 10 + (1,) * 10
    ref = Reference("signs@1.1.0", "onnx-fp32", SHA, FrameSets(heldout, (0,) * 5))
    cand = FrameSets((0,) * 10 + (2,) * 10)  # never run on the calibration frames
    (got,) = expectations(Task.CLASSIFICATION, {"onnx-int8": cand}, [ref], labels=LABELS)
    assert (got.heldout, got.calib, got.calib_frames, got.heldout_frames) == (0.5, None, 0, 20)
    assert got.per_class == (ClassAgreement("stop", 1.0, 10), ClassAgreement("yield", 0.0, 10))


def test_a_warning_after_an_expectation_that_passes_is_still_given() -> None:
    def e(variant: str, expected: float) -> AgreementExpectation:
        return AgreementExpectation(
            variant=variant,
            baseline="signs@1.1.0",
            baseline_variant="onnx-fp32",
            baseline_sha256=SHA,
            heldout=expected,
            heldout_frames=100,
        )

    warnings = below_floor([e("onnx-fp32", 0.9), e("onnx-int8", 0.2)], release="signs@1.2.0", floor=0.5)
    assert len(warnings) == 1 and warnings[0].startswith("onnx-int8 is expected to agree 20.0%")
