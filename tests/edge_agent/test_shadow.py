"""Shadow run gates on live frames from a real video: agreement, NaN, latency, load failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agreement import AgreementTracker, match_boxes
from edge_agent.inference import Outcome
from edge_agent.serving import CameraPerception
from edge_agent.shadow import ShadowStats, judge_shadow
from models.bundle import Gates, Task
from models.runtime import Detections
from tests.bundles import make_bundle
from tests.edge_agent.media import write_video

GATES = Gates(latency_budget_ms=250.0, min_agreement=0.8, shadow_frames=20)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for behaviour, version in (
        ("ok", "1.0.0"),
        ("ok", "1.1.0"),
        ("permuted", "1.2.0"),
        ("nan", "1.3.0"),
        ("slow", "1.4.0"),
        ("not-onnx", "1.5.0"),
    ):
        d = root / f"{behaviour}-{version}"
        make_bundle(d, behaviour=behaviour, version=version)
        out[f"{behaviour}-{version}"] = d
    return out


@pytest.fixture(scope="module")
def serving(
    tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]
) -> Iterator[CameraPerception]:
    video = write_video(
        tmp_path_factory.mktemp("video") / "drive.avi", [("red", 30), ("green", 30), ("blue", 30)]
    )
    p = CameraPerception.from_options(str(video), loop=True, max_fps=150.0)
    p.start(bundles["ok-1.0.0"])
    yield p
    p.stop()


def test_an_agreeing_candidate_passes_with_its_measurements(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    result = serving.shadow(bundles["ok-1.1.0"], GATES, timeout_s=20)
    assert result.passed, result.detail
    assert result.reason_code is None
    assert result.metrics["agreement"] == 1.0
    assert result.metrics["frames"] >= 20
    assert 0 < result.metrics["p95_ms"] < GATES.latency_budget_ms
    assert serving.active_version() == "tiny@1.0.0"  # shadowing never changes what serves


def test_a_disagreeing_candidate_is_refused_with_low_agreement(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    result = serving.shadow(bundles["permuted-1.2.0"], GATES, timeout_s=20)
    assert not result.passed
    assert result.reason_code == "LOW_AGREEMENT"
    assert result.metrics["agreement"] < 0.8
    assert "agrees with the active model on" in result.detail


def test_a_nan_candidate_is_refused_with_nan_output(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    result = serving.shadow(bundles["nan-1.3.0"], GATES, timeout_s=20)
    assert (result.passed, result.reason_code) == (False, "NAN_OUTPUT")


def test_a_slow_candidate_is_refused_over_budget(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    gates = Gates(latency_budget_ms=1.0, min_agreement=0.8, shadow_frames=5)
    result = serving.shadow(bundles["slow-1.4.0"], gates, timeout_s=20)
    assert (result.passed, result.reason_code) == (False, "LATENCY_OVER_BUDGET")
    assert result.metrics["p95_ms"] > 1.0


def test_an_unloadable_candidate_is_refused_with_model_load_failed(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    result = serving.shadow(bundles["not-onnx-1.5.0"], GATES, timeout_s=5)
    assert (result.passed, result.reason_code) == (False, "MODEL_LOAD_FAILED")
    assert "model.onnx" in result.detail or "cannot load" in result.detail


def test_the_shadow_run_leaves_the_active_frame_rate_and_counters_intact(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    before = serving.counters()
    serving.shadow(bundles["ok-1.1.0"], GATES, timeout_s=20)
    after = serving.counters()
    assert after["inferred"] > before["inferred"]
    assert after["dropped"] == 0  # a file blocks, never drops, even with a shadow beside it


@pytest.mark.parametrize(
    ("stats", "code"),
    [
        (ShadowStats(frames=20, infer_ms=[1.0] * 20, agreement=1.0), None),
        (
            ShadowStats(frames=20, errors=1, infer_ms=[1.0] * 20, first_error="boom"),
            "RUNTIME_CRASHED",
        ),
        (ShadowStats(frames=20, nan_frames=1, infer_ms=[1.0] * 20), "NAN_OUTPUT"),
        (ShadowStats(frames=20, infer_ms=[300.0] * 20), "LATENCY_OVER_BUDGET"),
        (ShadowStats(frames=3, infer_ms=[1.0] * 3, offered=500), "LATENCY_OVER_BUDGET"),
        (ShadowStats(frames=20, infer_ms=[1.0] * 20, agreement=0.5), "LOW_AGREEMENT"),
    ],
)
def test_judge_shadow_decides_in_gate_order(stats: ShadowStats, code: str | None) -> None:
    result = judge_shadow(stats, GATES)
    assert result.passed == (code is None)
    assert result.reason_code == code


def _dets(
    boxes: list[list[float]], labels: list[int], scores: list[float] | None = None
) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores or [0.9] * len(labels), np.float32),
        np.array(labels, np.int64),
    )


def test_box_matching_counts_tp_fp_fn_at_iou_half() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    cand = _dets([[1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [1, 3, 1])
    # box 0 matches (IoU .81, same class); box 1 overlaps but has another class; box 2 matches nothing
    assert match_boxes(cand, ref) == (1, 2, 1)
    assert match_boxes(_dets([[0, 0, 10, 10]], [1]), _dets([[5, 5, 15, 15]], [1])) == (
        0,
        1,
        1,
    )  # IoU 1/7


def test_detection_agreement_is_f1_over_frames() -> None:
    def outcome(d: Detections) -> Outcome:
        return Outcome(0, "m@1.0.0", 0.0, 0.0, {}, detections=d)

    tracker = AgreementTracker(Task.DETECTION)
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    tracker.add(outcome(ref), outcome(ref))  # 2 TP
    tracker.add(outcome(_dets([[0, 0, 10, 10]], [1])), outcome(ref))  # 1 TP, 1 FN
    assert tracker.value == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    assert AgreementTracker(Task.DETECTION).value == 1.0


def test_classification_agreement_counts_failed_frames_as_disagreement() -> None:
    tracker = AgreementTracker(Task.CLASSIFICATION)
    good = Outcome(0, "a@1.0.0", 0.0, 0.0, {}, top_k=((1, 0.9),))
    other = Outcome(0, "b@1.0.0", 0.0, 0.0, {}, top_k=((2, 0.9),))
    broken = Outcome(0, "b@1.0.0", 0.0, 0.0, {}, top_k=((1, float("nan")),), nan=True)
    for cand in (good, other, broken, good):
        tracker.add(cand, good)
    assert tracker.value == 0.5
