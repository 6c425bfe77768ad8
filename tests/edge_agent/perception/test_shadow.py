"""Shadow run gates on live frames from a real video: the sequential agreement test against an
expectation (or the bundle's own FP32) and its per-class tests, NaN, latency, load failures, timeouts
and ended sources."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_agent.perception import GateContext, GateResult, JudgedAgainst
from edge_agent.perception.agreement import (
    FlipCounter,
    choose_context,
    frame_agreement,
    frame_flips,
    match_boxes,
)
from edge_agent.perception.inference import LatencySamples, Outcome
from edge_agent.perception.serving import CameraPerception
from edge_agent.perception.shadow import ShadowRun, ShadowStats, agreement_test, judge_shadow
from models.bundle import (
    AgreementExpectation,
    ClassAgreement,
    Format,
    Gates,
    Manifest,
    Precision,
    Task,
    Variant,
    read_bundle,
    write_bundle,
)
from models.reasons import ReasonCode
from models.runtime import Detections
from models.stats import ClassAgreementTest, Verdict
from tests.bundles import LABELS, make_bundle, make_onnx
from tests.conftest import wait_until
from tests.edge_agent.media import write_video

GATES = Gates(latency_budget_ms=250.0, min_agreement=0.8, shadow_frames=20)


def _with_int8(directory: Path, *, version: str, fp32: str, int8: str, expect: float | None = 0.97) -> Manifest:
    """A two-variant bundle: ``onnx-fp32`` behaves as ``fp32``, ``onnx-int8`` as ``int8``, with the
    self expectation of the INT8 against the bundle's own FP32 (the optimizer always writes one)."""
    manifest = make_bundle(directory, version=version, behaviour=fp32)
    model = onnx.load_from_string(make_onnx(int8))
    model.doc_string = "int8 stand-in"  # other bytes than the FP32 file even when the behaviour is the same
    data = model.SerializeToString()
    (directory / "model-int8.onnx").write_bytes(data)
    int8_variant = Variant(
        id="onnx-int8",
        format=Format.ONNX,
        precision=Precision.INT8,
        file="model-int8.onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        requires=manifest.variants[0].requires,
    )
    expectations = (
        ()
        if expect is None
        else (
            AgreementExpectation(
                variant="onnx-int8",
                baseline=manifest.release,
                baseline_variant="onnx-fp32",
                baseline_sha256=manifest.variants[0].sha256,
                heldout=expect,
                heldout_frames=500,
            ),
        )
    )
    manifest = dataclasses.replace(manifest, variants=(*manifest.variants, int8_variant), expectations=expectations)
    write_bundle(directory, manifest)
    return manifest


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
    # judged against their own FP32: one consistent with it (though both disagree with the active model),
    # one whose INT8 is broken
    for key, fp32, int8 in (("own-consistent", "permuted", "permuted"), ("own-broken", "ok", "permuted")):
        out[key] = root / key
        _with_int8(out[key], version="2.0.0", fp32=fp32, int8=int8)
    return out


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]) -> Iterator[CameraPerception]:
    video = write_video(tmp_path_factory.mktemp("video") / "drive.avi", [("red", 30), ("green", 30), ("blue", 30)])
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
    assert GATES.min_shadow_frames <= result.metrics["frames"] <= GATES.shadow_frames
    assert result.metrics["p95_ms"] > 0  # within the budget: it passed the latency gate
    agreement = result.evidence["agreement"]
    assert agreement["decision"] == "accept" and agreement["judged_against"] == "active"
    assert agreement["expected"] == 0.8 and agreement["p0"] == 0.8  # no expectation: the floor
    assert "confusion" not in agreement
    assert serving.active_version() == "tiny@1.0.0"  # shadowing never changes what serves


def test_a_label_permuted_candidate_is_refused_within_30_frames_with_its_confusion_table(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    gates = dataclasses.replace(GATES, shadow_frames=200)
    result = serving.shadow(bundles["permuted-1.2.0"], gates, timeout_s=20)
    assert (result.passed, result.reason_code) == (False, ReasonCode.LOW_AGREEMENT)
    agreement = result.evidence["agreement"]
    assert agreement["decision"] == "refuse" and agreement["confidence"] == 0.99
    assert agreement["frames"] <= 30 and agreement["frames"] == result.metrics["frames"]
    assert result.metrics["agreement"] < 0.8
    assert "agrees with the active model on" in result.detail and "at 99% confidence" in result.detail
    # the output classes rotate by one: red is read as green, green as blue, blue as "other"
    flips = {(row["active"], row["candidate"]) for row in agreement["confusion"]}
    assert flips <= {("red", "green"), ("green", "blue"), ("blue", "other")} and flips
    assert sum(row["count"] for row in agreement["confusion"]) == agreement["frames"]


def test_a_candidate_is_judged_against_its_expectation_for_the_running_release(
    serving: CameraPerception, bundles: dict[str, Path], tmp_path: Path
) -> None:
    running = read_bundle(bundles["ok-1.0.0"], verify=False)
    cand_dir = tmp_path / "expected"
    cand = make_bundle(cand_dir, version="1.6.0")
    cand = dataclasses.replace(
        cand,
        expectations=(
            AgreementExpectation(
                variant="onnx-fp32",
                baseline=running.release,
                baseline_variant="onnx-fp32",
                baseline_sha256=running.variants[0].sha256,
                heldout=0.96,
                heldout_frames=400,
                calib=0.93,
                calib_frames=120,
            ),
        ),
    )
    write_bundle(cand_dir, cand)
    gates = Gates(latency_budget_ms=250.0, shadow_frames=60)  # the default floor 0: only the expectation counts
    context = choose_context(
        cand, "onnx-fp32", running=running, running_variant="onnx-fp32", in_slot=lambda v: True, gates=gates
    )
    assert (context.judged_against, context.expected) == (JudgedAgainst.ACTIVE, 0.93)  # min(held-out, calib)
    result = serving.shadow(cand_dir, gates, timeout_s=20, context=context)
    assert result.passed, result.detail
    agreement = result.evidence["agreement"]
    assert agreement["decision"] == "accept" and agreement["p0"] == 0.88 and agreement["baseline"] == "tiny@1.0.0"


def test_without_an_expectation_for_the_running_release_it_is_judged_against_its_own_fp32(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    running = read_bundle(bundles["ok-1.0.0"], verify=False)
    gates = dataclasses.replace(GATES, min_agreement=0.0, shadow_frames=200)
    results = {}
    for key in ("own-consistent", "own-broken"):
        cand = read_bundle(bundles[key], verify=False)
        context = choose_context(
            cand,
            "onnx-int8",
            running=running,
            running_variant="onnx-fp32",
            in_slot=lambda v, d=bundles[key], m=cand: (d / m.variant(v).file).is_file(),
            gates=gates,
        )
        assert (context.judged_against, context.baseline_variant) == (JudgedAgainst.OWN_FP32, "onnx-fp32")
        assert "no expectation for the running release tiny@1.0.0" in context.why
        results[key] = serving.shadow(bundles[key], gates, timeout_s=20, context=context)
    # both INT8 models disagree with the active model on every frame: only the comparison with the
    # bundle's own FP32 tells the consistent one from the broken one
    consistent, broken = results["own-consistent"], results["own-broken"]
    assert consistent.passed, consistent.detail
    assert consistent.evidence["agreement"]["judged_against"] == "own-fp32"
    assert consistent.metrics["agreement"] == 1.0 and "its own onnx-fp32" in consistent.detail
    assert (broken.passed, broken.reason_code) == (False, ReasonCode.LOW_AGREEMENT)
    assert broken.evidence["agreement"]["judged_against"] == "own-fp32" and broken.metrics["frames"] <= 30
    assert broken.evidence["agreement"]["confusion"][0]["candidate"] in LABELS


def _claiming_classes(directory: Path, *, version: str, behaviour: str, running: Manifest) -> Manifest:
    """A candidate claiming the healthy model's expectation against ``running``, per class too."""
    cand = make_bundle(directory, version=version, behaviour=behaviour)
    cand = dataclasses.replace(
        cand,
        expectations=(
            AgreementExpectation(
                variant="onnx-fp32",
                baseline=running.release,
                baseline_variant="onnx-fp32",
                baseline_sha256=running.variants[0].sha256,
                heldout=0.97,
                heldout_frames=300,
                per_class=tuple(ClassAgreement(c, 0.97, 100) for c in ("red", "green", "blue")),
            ),
        ),
    )
    write_bundle(directory, cand)
    return cand


def test_a_candidate_that_never_predicts_one_class_is_refused_by_that_class_test(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    # one blue frame in seven: a model that reads blue as "other" still agrees on 86 % of the frames,
    # and the overall test (p0 0.92, p1 0.77) hardly moves: +1.06 per blue frame, -0.18 per other one
    video = write_video(tmp_path / "mixed.avi", [("red", 3), ("green", 3), ("blue", 1)] * 30)
    p = CameraPerception.from_options(str(video), loop=True, max_fps=150.0)
    p.start(bundles["ok-1.0.0"])
    running = read_bundle(bundles["ok-1.0.0"], verify=False)
    gates = Gates(latency_budget_ms=250.0)  # the defaults: at most 350 frames, class effect 0.5
    results = {}
    try:
        for behaviour, version in (("ok", "1.7.0"), ("no-blue", "1.8.0")):
            d = tmp_path / behaviour
            cand = _claiming_classes(d, version=version, behaviour=behaviour, running=running)
            context = choose_context(
                cand, "onnx-fp32", running=running, running_variant="onnx-fp32", in_slot=lambda v: True, gates=gates
            )
            assert context.per_class == cand.expectations[0].per_class
            results[behaviour] = p.shadow(d, gates, timeout_s=30, context=context)
    finally:
        p.stop()
    healthy, broken = results["ok"], results["no-blue"]
    assert healthy.passed, healthy.detail
    ok = healthy.evidence["agreement"]
    assert ok["decision"] == "accept" and ok["classes_tested"] == 3
    assert "accepted overall and on each of the 3 classes tested at 99% confidence" in healthy.detail
    assert {r["label"]: r["decision"] for r in ok["classes"]} == {"red": "accept", "green": "accept", "blue": "accept"}
    assert (broken.passed, broken.reason_code) == (False, ReasonCode.LOW_AGREEMENT)
    bad = broken.evidence["agreement"]
    assert (bad["decision"], bad["decided_by"], bad["decided_class"]) == ("refuse", "class", "blue")
    assert bad["overall"]["decision"] != "refuse"  # two disagreeing frames cannot move the overall test that far
    # alpha 0.01 / 3 a class: the third blue frame read as "other" crosses log(0.9967 / 0.0033) = 5.70
    blue = bad["classes"][0]
    assert (blue["label"], blue["decision"], blue["frames"], blue["agreement"]) == ("blue", "refuse", 3, 0.0)
    assert bad["frames"] == broken.metrics["frames"] >= GATES.min_shadow_frames and bad["agreement"] > 0.7
    assert {"active": "blue", "candidate": "other", "count": 3} in bad["confusion"]
    assert "class 'blue'" in broken.detail and "one of 3 class tests" in broken.detail


def test_a_nan_candidate_is_refused_with_nan_output(serving: CameraPerception, bundles: dict[str, Path]) -> None:
    result = serving.shadow(bundles["nan-1.3.0"], GATES, timeout_s=20)
    assert (result.passed, result.reason_code) == (False, ReasonCode.NAN_OUTPUT)


def test_a_slow_candidate_is_refused_over_budget(serving: CameraPerception, bundles: dict[str, Path]) -> None:
    gates = Gates(latency_budget_ms=1.0, min_agreement=0.8, shadow_frames=5)
    result = serving.shadow(bundles["slow-1.4.0"], gates, timeout_s=20)
    assert (result.passed, result.reason_code) == (False, ReasonCode.LATENCY_OVER_BUDGET)
    assert result.metrics["p95_ms"] > 1.0


def test_an_unloadable_candidate_is_refused_with_model_load_failed(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    result = serving.shadow(bundles["not-onnx-1.5.0"], GATES, timeout_s=5)
    assert (result.passed, result.reason_code) == (False, ReasonCode.MODEL_LOAD_FAILED)
    assert "model.onnx" in result.detail or "cannot load" in result.detail


def test_a_run_that_cannot_decide_before_the_timeout_is_not_enough_frames(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    gates = Gates(latency_budget_ms=250.0, min_agreement=0.8, min_shadow_frames=10_000, shadow_frames=10_000)
    result = serving.shadow(bundles["ok-1.1.0"], gates, timeout_s=1.0)
    assert (result.passed, result.reason_code) == (False, ReasonCode.NOT_ENOUGH_FRAMES)
    assert "before the timeout" in result.detail
    assert result.evidence["agreement"]["decision"] == "continue"


def test_a_source_that_ends_during_the_run_is_source_ended(bundles: dict[str, Path], tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", [("red", 60), ("green", 60)])
    p = CameraPerception.from_options(str(video), loop=False, max_fps=30.0)
    p.start(bundles["ok-1.0.0"])
    try:
        wait_until(lambda: p.counters()["inferred"] >= 3, timeout=20, what="three served frames")
        gates = Gates(latency_budget_ms=250.0, min_agreement=0.8, min_shadow_frames=1000, shadow_frames=1000)
        result = p.shadow(bundles["ok-1.1.0"], gates, timeout_s=30)
        assert (result.passed, result.reason_code) == (False, ReasonCode.SOURCE_ENDED)
        assert "ended during the shadow run" in result.detail and "short.avi" in result.detail
        again = p.shadow(bundles["ok-1.1.0"], gates, timeout_s=30)  # nothing left to shadow on
        assert (again.reason_code, "has ended" in again.detail) == (ReasonCode.SOURCE_ENDED, True)
    finally:
        p.stop()


def test_the_shadow_run_leaves_the_active_frame_rate_and_counters_intact(
    serving: CameraPerception, bundles: dict[str, Path]
) -> None:
    before = serving.counters()
    serving.shadow(bundles["ok-1.1.0"], GATES, timeout_s=20)
    after = serving.counters()
    assert after["inferred"] > before["inferred"]
    assert after["dropped"] == 0  # a file blocks, never drops, even with a shadow beside it


def test_judging_against_the_own_fp32_needs_the_reference_model(bundles: dict[str, Path]) -> None:
    from edge_agent.perception.inference import load_model

    candidate = load_model(bundles["ok-1.1.0"], warmup=0)
    try:
        own = GateContext(
            expected=0.97, baseline="tiny@1.1.0", judged_against=JudgedAgainst.OWN_FP32, baseline_variant="onnx-fp32"
        )
        with pytest.raises(ValueError, match="reference model"):
            ShadowRun(candidate, GATES, task=Task.CLASSIFICATION, context=own)
    finally:
        candidate.close()


# ----------------------------------------------------------------------------- the pure decision


def _stats(xs: list[float], *, gates: Gates = GATES, **kw: object) -> ShadowStats:
    test = agreement_test(gates, GateContext.floor(gates))
    for x in xs:
        test.add(x)
    frames = len(xs)
    ms = float(kw.pop("ms", 1.0))  # type: ignore[arg-type]
    return ShadowStats(test, frames=frames, latency=LatencySamples([ms] * frames, [ms] * frames), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stats", "code"),
    [
        (_stats([1.0] * 20), None),
        (_stats([1.0] * 20, errors=1, first_error="boom"), ReasonCode.RUNTIME_CRASHED),
        (_stats([1.0] * 20, nan_frames=1), ReasonCode.NAN_OUTPUT),
        (_stats([1.0] * 20, ms=300.0), ReasonCode.LATENCY_OVER_BUDGET),
        (_stats([1.0] * 3, offered=500), ReasonCode.NOT_ENOUGH_FRAMES),
        (_stats([1.0] * 3, source_ended="file road.avi"), ReasonCode.SOURCE_ENDED),
        (_stats([0.0] * 10), ReasonCode.LOW_AGREEMENT),
        (_stats([0.0] * 10, ms=300.0), ReasonCode.LATENCY_OVER_BUDGET),
    ],
)
def test_judge_shadow_decides_in_gate_order(stats: ShadowStats, code: ReasonCode | None) -> None:
    result = judge_shadow(stats, GATES, context=GateContext.floor(GATES))
    assert result.passed == (code is None)
    assert result.reason_code is code
    assert result.evidence["agreement"]["frames"] == stats.frames


def test_a_few_frames_delayed_by_a_busy_neighbour_do_not_fail_the_budget() -> None:
    """The budget holds against the p95's lower confidence bound, not its point estimate."""
    rng = np.random.default_rng(3)
    fast = list(rng.uniform(5.0, 20.0, size=95))
    stalled = fast + [400.0] * 9  # 9 of 104 frames waited out other processes' time slices
    stats = _stats([1.0] * 104)
    stats.latency = LatencySamples(stalled)
    result = judge_shadow(stats, GATES, context=GateContext.floor(GATES))
    assert result.metrics["p95_ms"] > GATES.latency_budget_ms  # the point estimate is over the budget
    assert result.passed, result.detail
    stats.latency = LatencySamples(fast[:60] + [400.0] * 44)  # most frames over: a slow model
    result = judge_shadow(stats, GATES, context=GateContext.floor(GATES))
    assert result.reason_code is ReasonCode.LATENCY_OVER_BUDGET
    assert "lower confidence bound is 400.00 ms" in result.detail


def test_judge_shadow_names_the_class_test_that_refused() -> None:
    context = GateContext(
        expected=0.97,
        baseline="tiny@1.0.0",
        per_class=(ClassAgreement("red", 0.97, 50), ClassAgreement("blue", 0.97, 50), ClassAgreement("rare", 0.97, 3)),
    )
    test = agreement_test(GATES, context)
    assert isinstance(test, ClassAgreementTest) and set(test.classes) == {"red", "blue"}  # "rare": 3 frames
    for i in range(30):
        test.add(0.0 if i % 3 == 2 else 1.0, "blue" if i % 3 == 2 else "red")
    stats = ShadowStats(test, frames=test.frames, latency=LatencySamples([1.0] * test.frames))
    result = judge_shadow(stats, GATES, context=context)
    assert (result.passed, result.reason_code) == (False, ReasonCode.LOW_AGREEMENT)
    assert result.evidence["agreement"]["decided_class"] == "blue"
    assert "class 'blue': candidate agrees with the active model on 0.0% of the 3 frames" in result.detail
    assert agreement_test(GATES, GateContext(expected=0.97)).__class__.__name__ == "AgreementTest"


def test_a_refusal_reports_the_most_flipped_classes_at_most_ten_rows() -> None:
    labels = tuple(f"c{i}" for i in range(12))
    flips = FlipCounter(Task.CLASSIFICATION, labels, labels)
    for i in range(12):
        for _ in range(i + 1):
            flips.add(_top1(i), _top1((i + 1) % 12))
    stats = _stats([0.0] * 10)
    stats.flips = flips
    result = judge_shadow(stats, GATES, context=GateContext.floor(GATES))
    table = result.evidence["agreement"]["confusion"]
    assert len(table) == 10 and table[0] == {"active": "c0", "candidate": "c11", "count": 12}
    assert [row["count"] for row in table] == sorted((row["count"] for row in table), reverse=True)
    assert "most flipped: c0 -> c11 x12" in result.detail


def test_an_unknown_or_missing_reason_code_is_an_error() -> None:
    with pytest.raises(TypeError, match="ReasonCode"):
        GateResult(False, "WHATEVER", "?")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ReasonCode"):
        GateResult(False, "LOW_AGREEMENT", "a plain string is not a code")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a reason code"):
        GateResult(False, None, "refused without saying why")
    with pytest.raises(ValueError, match="no reason code"):
        GateResult(True, ReasonCode.LOW_AGREEMENT)


# ----------------------------------------------------------------------------- what to judge against


def _manifest(tmp_path: Path, name: str, version: str, *, expect: float | None = 0.97) -> Manifest:
    return _with_int8(tmp_path / f"{name}-{version}", version=version, fp32="ok", int8="ok", expect=expect)


def test_choose_context_prefers_the_expectation_for_the_running_release(tmp_path: Path) -> None:
    running = _manifest(tmp_path, "tiny", "1.0.0")
    cand = _manifest(tmp_path, "tiny", "1.1.0")
    served = running.variant("onnx-int8").sha256
    cand = dataclasses.replace(
        cand,
        expectations=(
            *cand.expectations,
            AgreementExpectation(
                variant="onnx-int8",
                baseline=running.release,
                baseline_variant="onnx-int8",
                baseline_sha256=served,
                heldout=0.9,
                heldout_frames=300,
            ),
        ),
    )
    gates = Gates(latency_budget_ms=10.0)
    found = choose_context(
        cand, "onnx-int8", running=running, running_variant="onnx-int8", in_slot=lambda v: True, gates=gates
    )
    assert (found.judged_against, found.expected, found.baseline) == (JudgedAgainst.ACTIVE, 0.9, "tiny@1.0.0")
    # the same release serving another file (its FP32): the expectation does not apply
    other = choose_context(
        cand, "onnx-int8", running=running, running_variant="onnx-fp32", in_slot=lambda v: True, gates=gates
    )
    assert (other.judged_against, other.expected, other.baseline) == (JudgedAgainst.OWN_FP32, 0.97, "tiny@1.1.0")


@pytest.mark.parametrize(
    ("variant", "in_slot", "expect", "why"),
    [
        ("onnx-int8", False, 0.97, "its own onnx-fp32 is not in the slot"),
        ("onnx-fp32", True, 0.97, "the candidate is the bundle's own FP32"),
        ("onnx-int8", True, None, "none against its own FP32 either"),
    ],
)
def test_choose_context_falls_back_to_the_floor(
    tmp_path: Path, variant: str, in_slot: bool, expect: float | None, why: str
) -> None:
    running = _manifest(tmp_path, "tiny", "1.0.0")
    cand = _manifest(tmp_path, "tiny", "1.1.0", expect=expect)
    gates = Gates(latency_budget_ms=10.0, min_agreement=0.6)
    context = choose_context(
        cand, variant, running=running, running_variant="onnx-fp32", in_slot=lambda v: in_slot, gates=gates
    )
    assert (context.judged_against, context.expected, context.baseline) == (JudgedAgainst.ACTIVE, 0.6, "tiny@1.0.0")
    assert why in context.why and "floor min_agreement 60.0%" in context.why
    assert agreement_test(gates, context).p0 == 0.6


# ----------------------------------------------------------------------------- per-frame agreement


def _top1(c: int) -> Outcome:
    return Outcome(0, "m@1.0.0", 0.0, 0.0, {}, top_k=((c, 0.9),))


def _dets(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores or [0.9] * len(labels), np.float32),
        np.array(labels, np.int64),
    )


def _det(d: Detections) -> Outcome:
    return Outcome(0, "m@1.0.0", 0.0, 0.0, {}, detections=d)


def test_box_matching_counts_tp_fp_fn_at_iou_half() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    cand = _dets([[1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [1, 3, 1])
    # box 0 matches (IoU .81, same class); box 1 overlaps but has another class; box 2 matches nothing
    assert match_boxes(cand, ref) == (1, 2, 1)
    assert match_boxes(_dets([[0, 0, 10, 10]], [1]), _dets([[5, 5, 15, 15]], [1])) == (0, 1, 1)  # IoU 1/7


def test_detection_agreement_is_the_box_f1_of_each_frame() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    assert frame_agreement(Task.DETECTION, _det(ref), _det(ref)) == 1.0
    assert frame_agreement(Task.DETECTION, _det(_dets([[0, 0, 10, 10]], [1])), _det(ref)) == pytest.approx(2 / 3)
    empty = _det(Detections.empty())
    assert frame_agreement(Task.DETECTION, empty, empty) == 1.0  # neither saw a box
    assert frame_agreement(Task.DETECTION, empty, _det(ref)) == 0.0


def test_detection_flips_name_changed_labels_and_missed_boxes() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 2, 0])
    cand = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80]], [1, 3, 2])
    assert sorted(frame_flips(Task.DETECTION, _det(cand), _det(ref), num_classes=4)) == [
        (-1, 2, 1),
        (0, -1, 1),
        (2, 3, 1),
    ]
    counter = FlipCounter(Task.DETECTION, ("a", "b", "c", "d"), ("a", "b", "c", "d"))
    counter.add(_det(cand), _det(ref))
    assert {"active": "(none)", "candidate": "c", "count": 1} in counter.table()


def test_segmentation_agreement_and_flips_count_pixels() -> None:
    ref = np.zeros((4, 4), np.int64)
    cand = ref.copy()
    cand[0, :3] = 2
    a = Outcome(0, "m@1.0.0", 0.0, 0.0, {}, mask=cand)
    b = Outcome(0, "m@1.0.0", 0.0, 0.0, {}, mask=ref)
    assert frame_agreement(Task.SEGMENTATION, a, b) == pytest.approx(13 / 16)
    assert frame_flips(Task.SEGMENTATION, a, b, num_classes=3) == [(0, 2, 3)]


def test_classification_agreement_counts_failed_frames_as_disagreement() -> None:
    good, other = _top1(1), _top1(2)
    broken = Outcome(0, "b@1.0.0", 0.0, 0.0, {}, top_k=((1, float("nan")),), nan=True)
    scores = [frame_agreement(Task.CLASSIFICATION, c, good) for c in (good, other, broken, good)]
    assert scores == [1.0, 0.0, 0.0, 1.0]
    assert frame_flips(Task.CLASSIFICATION, broken, good, num_classes=4) == []
    assert agreement_test(GATES, GateContext.floor(GATES)).add(scores[0]) is Verdict.CONTINUE
