"""optimize.expect: expected agreement from decoded frames (pure), the device's per-frame definitions."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import (
    AgreementExpectation,
    ClassAgreement,
    DecoderKind,
    DecoderSpec,
    OutputSpec,
    Task,
    TensorSpec,
)
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

SHA = "ab" * 32
LABELS = ("stop", "yield", "limit", "other", "turn")
IDENTITY = Transform(1.0, 1.0, 0.0, 0.0)


def _dets(*boxes: tuple[float, float, float, float, int]) -> Detections:
    if not boxes:
        return Detections.empty()
    a = np.array(boxes, dtype=np.float32)
    return Detections(a[:, :4], np.linspace(0.9, 0.5, len(boxes)).astype(np.float32), a[:, 4].astype(np.int64))


def test_classification_logits_decode_to_top1_and_nan_agrees_with_nothing() -> None:
    spec = OutputSpec((TensorSpec("logits", (None, 3), "logits"),), DecoderSpec(DecoderKind.TOPK, top_k=2))
    logits = np.array([[0.1, 2.0, 0.3], [np.nan, 0.0, 0.0], [5.0, 0.0, 0.0]], np.float32)
    got = decode_outputs({"logits": logits}, spec, [IDENTITY] * 3, [(8, 8)] * 3)
    assert got == (1, None, 0)
    assert [frame_agreement(Task.CLASSIFICATION, g, r) for g, r in zip(got, (1, 1, 2), strict=True)] == [1.0, 0.0, 0.0]
    assert mean_agreement(Task.CLASSIFICATION, got, (1, 1, 0)) == pytest.approx(2 / 3)


def test_detection_agreement_is_box_f1_per_frame() -> None:
    ref = [_dets((0, 0, 10, 10, 1), (20, 20, 30, 30, 2)), _dets(), _dets((0, 0, 10, 10, 0))]
    cand = [
        _dets((1, 1, 10, 10, 1)),  # one of two found: F1 2/3
        _dets(),  # neither saw a box: full agreement
        _dets((0, 0, 10, 10, 1)),
    ]  # right place, wrong class: 0
    per_frame = [frame_agreement(Task.DETECTION, c, r) for c, r in zip(cand, ref, strict=True)]
    assert per_frame == pytest.approx([2 / 3, 1.0, 0.0])
    assert mean_agreement(Task.DETECTION, cand, ref) == pytest.approx((2 / 3 + 1.0) / 3)


def test_masks_compare_pixels_and_lengths_must_match() -> None:
    a, b = np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32)
    b[0] = 1
    assert frame_agreement(Task.SEGMENTATION, a, b) == 0.75
    with pytest.raises(ValueError, match="same non-zero number of frames"):
        mean_agreement(Task.CLASSIFICATION, (1, 2), (1,))


def test_one_expectation_per_variant_and_reference_keyed_by_release_and_file() -> None:
    cands = {"onnx-fp32": FrameSets((1, 2, 3, 4), (1, 1)), "onnx-int8": FrameSets((1, 2, 0, 4), (0, 1))}
    own = Reference("signs@1.1.0", "onnx-fp32", SHA, cands["onnx-fp32"])
    old = Reference("signs@1.0.0", "onnx-int8", "cd" * 32, FrameSets((1, 0, 3, 4), ()))
    out = expectations(Task.CLASSIFICATION, cands, [own, old, own], labels=LABELS)  # named twice: kept once
    assert [(e.variant, e.baseline, e.baseline_variant) for e in out] == [
        ("onnx-fp32", "signs@1.1.0", "onnx-fp32"),
        ("onnx-int8", "signs@1.1.0", "onnx-fp32"),
        ("onnx-fp32", "signs@1.0.0", "onnx-int8"),
        ("onnx-int8", "signs@1.0.0", "onnx-int8"),
    ]
    int8_own = out[1]
    assert (int8_own.heldout, int8_own.calib, int8_own.calib_frames) == (0.75, 0.5, 2)
    assert int8_own.expected == 0.5  # the device must not expect more than the worse of the two
    no_calib = out[3]  # that reference was not run on calibration frames
    assert no_calib.calib is None and no_calib.calib_frames == 0 and no_calib.expected == no_calib.heldout == 0.5


def test_raw_box_outputs_decode_through_the_bundle_decoder_in_frame_pixels() -> None:
    spec = OutputSpec(
        (TensorSpec("boxes", (None, 2, 4), "boxes_xyxy"), TensorSpec("scores", (None, 2, 2), "scores")),
        DecoderSpec(DecoderKind.BOXES, score_threshold=0.3),
    )
    boxes = np.array([[[0, 0, 8, 8], [8, 8, 16, 16]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.1, 0.2]]], np.float32)  # the second anchor is under the threshold
    half = Transform(0.5, 0.5, 0.0, 0.0)  # the frame was twice the network input
    (dets,) = decode_outputs({"boxes": boxes, "scores": scores}, spec, [half], [(32, 32)])
    assert isinstance(dets, Detections) and len(dets) == 1
    np.testing.assert_allclose(dets.boxes[0], [0, 0, 16, 16])
    assert frame_agreement(Task.DETECTION, dets, _dets((0, 0, 16, 16, 0))) == 1.0


def test_per_class_agreement_is_keyed_by_the_reference_class_on_both_frame_sets() -> None:
    # the reference sees "stop" (0) on 12 frames, "yield" (1) on 10, "limit" (2) on 9, and NaN on one;
    # the candidate never predicts "yield" and gets "stop" wrong on one frame of the calibration set
    ref = FrameSets(heldout=(0,) * 8 + (1,) * 6 + (2,) * 9 + (None,), calib=(0,) * 4 + (1,) * 4)
    cand = FrameSets(heldout=(0,) * 8 + (3,) * 6 + (2,) * 9 + (2,), calib=(0,) * 3 + (4,) + (0,) * 4)
    got = class_agreements(Task.CLASSIFICATION, cand, ref, LABELS)
    assert got == (ClassAgreement("stop", round(11 / 12, 4), 12), ClassAgreement("yield", 0.0, 10))  # "limit": 9
    assert class_agreements(Task.CLASSIFICATION, cand, ref, LABELS, min_frames=9)[-1] == ClassAgreement("limit", 1.0, 9)
    assert class_agreements(Task.DETECTION, FrameSets((_dets(),) * 12), FrameSets((_dets(),) * 12), LABELS) == ()
    with pytest.raises(ValueError, match="outside the 5 labels"):
        class_agreements(Task.CLASSIFICATION, FrameSets((0,)), FrameSets((7,)), LABELS)
    with pytest.raises(ValueError, match="same frames"):
        class_agreements(Task.CLASSIFICATION, FrameSets((0,)), FrameSets((0, 0)), LABELS)


def test_every_expectation_carries_its_per_class_figures() -> None:
    frames = FrameSets((0,) * 10 + (1,) * 10, (0,) * 5)
    int8 = FrameSets((0,) * 10 + (2,) * 10, (0,) * 5)
    own = Reference("signs@1.1.0", "onnx-fp32", SHA, frames)
    no_calib = Reference("signs@1.0.0", "onnx-fp32", "cd" * 32, FrameSets(frames.heldout))
    out = expectations(Task.CLASSIFICATION, {"onnx-fp32": frames, "onnx-int8": int8}, [own, no_calib], labels=LABELS)
    by_key = {(e.variant, e.baseline): e.per_class for e in out}
    assert by_key[("onnx-fp32", "signs@1.1.0")] == (ClassAgreement("stop", 1.0, 15), ClassAgreement("yield", 1.0, 10))
    assert by_key[("onnx-int8", "signs@1.1.0")] == (ClassAgreement("stop", 1.0, 15), ClassAgreement("yield", 0.0, 10))
    # without calibration frames on the reference, the held-out frames alone
    assert by_key[("onnx-int8", "signs@1.0.0")] == (ClassAgreement("stop", 1.0, 10), ClassAgreement("yield", 0.0, 10))


def test_an_expectation_below_the_floor_is_a_warning_naming_who_will_refuse() -> None:
    def e(variant: str, baseline: str, expected: float) -> AgreementExpectation:
        return AgreementExpectation(
            variant=variant,
            baseline=baseline,
            baseline_variant="onnx-fp32",
            baseline_sha256=SHA,
            heldout=expected,
            heldout_frames=100,
        )

    warnings = below_floor(
        [
            e("onnx-fp32", "signs@1.1.0", 0.11),
            e("onnx-int8", "signs@1.2.0", 0.10),
            e("onnx-int8", "signs@1.1.0", 0.5),
            e("onnx-fp32", "signs@1.2.0", 1.0),
        ],
        release="signs@1.2.0",
        floor=0.5,
    )
    assert len(warnings) == 2
    assert warnings[0] == (
        "onnx-fp32 is expected to agree 11.0% with signs@1.1.0/onnx-fp32, below the floor "
        "min_agreement 50.0%: devices running signs@1.1.0/onnx-fp32 will refuse this bundle"
    )
    assert "a device judging it against its own onnx-fp32 will refuse" in warnings[1]
    assert below_floor([e("onnx-fp32", "signs@1.1.0", 0.11)], release="signs@1.2.0", floor=0.0) == []
