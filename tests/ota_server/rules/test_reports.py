"""Reports, pure: reason codes are the enum, gate evidence is validated and bounded, field by field."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import ota_server
from models.reasons import ReasonCode
from models.stats import Verdict
from ota_server.client.ctl_render import REASON_HINTS, agreement_line, reason_hint
from ota_server.errors import BadRequest
from ota_server.rules import evidence as ev
from ota_server.rules import reports as rp
from tests.ota_server.evidence_cases import class_refusal_gate, refusal_gate, rollback_gate


def _report(**fields: Any) -> dict[str, Any]:
    base = {
        "id": secrets.token_hex(8),
        "time": "2026-11-27T10:00:00Z",
        "type": "gate",
        "state": "refused",
        "rollout_id": "ro_1",
        "release": 2,
        "reason_code": "LOW_AGREEMENT",
    }
    return {**base, **fields}


def test_gate_evidence_from_the_shared_kernel_is_kept_exactly_and_nothing_else() -> None:
    gate = refusal_gate()
    sent = copy.deepcopy(gate)
    sent["extra"] = "x" * 10_000  # not a field of the contract: dropped, not stored
    sent["agreement"]["history"] = [1.0] * 1000
    sent["timing"][0]["samples"] = [0.5] * 1000
    r = rp.parse_report(
        _report(
            gate=sent,
            variant="onnx-fp32",
            junk={"a": 1},
            metrics={"p95_ms": 9.5, "counter_x": 3, "fps": "fast"},
            running={"name": "m", "version": "1.0.0", "release": 1, "variant": "onnx-int8", "more": "x"},
        ),
        "reports[0]",
    )
    assert r.gate == gate and r.variant == "onnx-fp32" and r.reason_code is ReasonCode.LOW_AGREEMENT
    assert r.body["gate"] == gate and "junk" not in r.body
    assert r.body["metrics"] == {"p95_ms": 9.5}
    assert r.body["running"] == {"name": "m", "version": "1.0.0", "release": 1, "variant": "onnx-int8"}


def test_per_class_evidence_is_kept_exactly_with_why_and_baseline_variant() -> None:
    gate = class_refusal_gate()
    sent = copy.deepcopy(gate)
    sent["agreement"]["classes"][0]["history"] = [0.0] * 100  # not a field: dropped
    sent["agreement"]["overall"]["junk"] = "x"
    r = rp.parse_report(_report(gate=sent, variant="onnx-fp32"), "reports[0]")
    assert r.gate == gate
    agreement = r.body["gate"]["agreement"]
    assert (agreement["decided_by"], agreement["decided_class"]) == ("class", "c3")
    assert agreement["classes"][0]["label"] == "c3" and agreement["classes"][0]["decision"] == "refuse"
    assert len(agreement["classes"]) == ev.MAX_CLASS_ROWS and agreement["classes_tested"] == 12
    assert agreement["baseline_variant"] == "onnx-int8" and agreement["why"].startswith("expectation against")
    assert agreement["overall"]["decision"] == "continue"
    line = agreement_line(agreement)
    assert line is not None and line.startswith("refuse after 40 frames (99.9% confidence)")
    assert line.endswith("decided by class 'c3': 0.0% of its 4 frames (threshold 92.0%)")


def test_the_decisions_are_those_of_the_sequential_test() -> None:
    assert set(ev.DECISIONS) == {v.value for v in Verdict} | {"not-judged"}  # no camera, no test


@pytest.mark.parametrize("code", [c.value for c in ReasonCode])
def test_every_reason_code_parses_to_the_enum(code: str) -> None:
    assert rp.parse_report(_report(reason_code=code), "r").reason_code is ReasonCode(code)


def test_the_api_description_and_ota_ctl_know_every_code() -> None:
    spec = yaml.safe_load((Path(ota_server.__file__).parent / "openapi.yaml").read_text())
    assert spec["components"]["schemas"]["Report"]["properties"]["reason_code"]["enum"] == [c.value for c in ReasonCode]
    assert set(REASON_HINTS) == set(ReasonCode)
    assert reason_hint("NOT_ENOUGH_FRAMES") != reason_hint("LATENCY_OVER_BUDGET")
    assert reason_hint("UNKNOWN") == reason_hint(None) == "reported without a reason code"


def test_an_unknown_reason_code_is_a_400_naming_the_report() -> None:
    batch = [
        _report(reason_code=None),
        _report(),
        _report(reason_code="NOT_ENOUGH_FRAMES"),
        _report(reason_code="LATENCY"),
    ]
    with pytest.raises(BadRequest) as e:
        rp.parse_batch({"reports": batch})
    assert e.value.field == "reports[3].reason_code"
    assert "'LATENCY'" in e.value.message and "SOURCE_ENDED" in e.value.message  # what came, what is known
    with pytest.raises(BadRequest) as e:
        rp.parse_batch({"reports": [_report(reason_code="low_agreement")]})  # no case folding either
    assert e.value.field == "reports[0].reason_code"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the report: set the value at a dotted path (list indexes as numbers)."""

    def apply(report: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = report
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return apply


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(report: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = report
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return apply


ROW = {"active": "red", "candidate": "green", "count": 1}
CLASS_ROW = class_refusal_gate()["agreement"]["classes"][0]
TIMING = refusal_gate()["timing"][0]
BAD = [
    (_set("gate.agreement.confusion", [ROW] * 11), "gate.agreement.confusion"),
    (_set("gate.timing", [TIMING] * 9), "gate.timing"),
    (_set("gate.agreement.confusion.0.active", "r" * 129), "gate.agreement.confusion[0].active"),
    (_set("gate.agreement.confusion.1.candidate", "a\nb"), "gate.agreement.confusion[1].candidate"),
    (_set("gate.agreement.confusion.0.count", -1), "gate.agreement.confusion[0].count"),
    (_set("gate.agreement.confusion.0", ["red", "green", 1]), "gate.agreement.confusion[0]"),
    (_set("gate.agreement.decision", "maybe"), "gate.agreement.decision"),
    (_drop("gate.agreement.frames"), "gate.agreement.frames"),
    (_set("gate.agreement.frames", 12.5), "gate.agreement.frames"),
    (_set("gate.agreement.agreement", 1.5), "gate.agreement.agreement"),
    (_set("gate.agreement.confidence", True), "gate.agreement.confidence"),
    (_set("gate.agreement.llr", float("nan")), "gate.agreement.llr"),
    (_set("gate.agreement.agreement_ci95", [0.6, 0.2]), "gate.agreement.agreement_ci95"),
    (_set("gate.agreement.agreement_ci95", [0.1, 0.2, 0.3]), "gate.agreement.agreement_ci95"),
    (_set("gate.agreement.judged_against", "other"), "gate.agreement.judged_against"),
    (_set("gate.agreement.baseline", "b" * 129), "gate.agreement.baseline"),
    (_set("gate.agreement.baseline_variant", "Not An Id"), "gate.agreement.baseline_variant"),
    (_set("gate.agreement.why", 42), "gate.agreement.why"),
    (_set("gate.agreement", "refused"), "gate.agreement"),
    (_set("gate.variant", "x" * 65), "gate.variant"),
    (_set("gate.timing.0.speedup.low", 2.0), "gate.timing[0].speedup.low"),
    (_set("gate.timing.0.speedup", {"point": 1.0}), "gate.timing[0].speedup.low"),
    (_set("gate.timing.0.preferred", "yes"), "gate.timing[0].preferred"),
    (_set("gate.timing.0.metric", "gpu"), "gate.timing[0].metric"),
    (_set("gate.timing.0.queries", -3), "gate.timing[0].queries"),
    (_set("gate.timing", {"0": TIMING}), "gate.timing"),
    (_set("gate", ["refuse"]), "gate"),
    (_set("variant", "../model.onnx"), "variant"),
    (_set("variant", 3), "variant"),
    (_set("running", {"name": "m", "release": 1, "variant": "A B"}), "running.variant"),
    (_set("running", {"name": "m" * 65}), "running.name"),
    (_set("rollout_id", "ro_" + "x" * 40), "rollout_id"),
]
CLASS_BAD = [
    (_set("gate.agreement.decided_by", "class 'c3'"), "gate.agreement.decided_by"),
    (_set("gate.agreement.decided_class", "c" * 129), "gate.agreement.decided_class"),
    (_set("gate.agreement.decided_class", 3), "gate.agreement.decided_class"),
    (_set("gate.agreement.classes", [CLASS_ROW] * 11), "gate.agreement.classes"),
    (_set("gate.agreement.classes", {"c3": CLASS_ROW}), "gate.agreement.classes"),
    (_drop("gate.agreement.classes.0.label"), "gate.agreement.classes[0].label"),
    (_set("gate.agreement.classes.1.frames", -1), "gate.agreement.classes[1].frames"),
    (_set("gate.agreement.classes.0.p0", 2.0), "gate.agreement.classes[0].p0"),
    (_set("gate.agreement.classes.0.decision", "veto"), "gate.agreement.classes[0].decision"),
    (_set("gate.agreement.classes.2.agreement_ci95", [0.9, 0.1]), "gate.agreement.classes[2].agreement_ci95"),
    (_set("gate.agreement.overall", "continue"), "gate.agreement.overall"),
    (_drop("gate.agreement.overall.frames"), "gate.agreement.overall.frames"),
    (_set("gate.agreement.overall.llr", float("inf")), "gate.agreement.overall.llr"),
    (_set("gate.agreement.classes_tested", -2), "gate.agreement.classes_tested"),
    (_set("gate.agreement.classes_skipped", 1.5), "gate.agreement.classes_skipped"),
]


LATENCY_BAD = [
    (_set("gate.latency.metric", "gpu"), "gate.latency.metric"),
    (_set("gate.latency.slowdown.low", 9.0), "gate.latency.slowdown.low"),
    (_drop("gate.latency.slowdown"), "gate.latency.slowdown"),
    (_set("gate.latency.after", -1), "gate.latency.after"),
    (_set("gate.latency.regressed", "yes"), "gate.latency.regressed"),
    (_set("gate.latency", [1.0]), "gate.latency"),
]


def test_health_window_latency_evidence_is_kept_exactly() -> None:
    gate = rollback_gate()
    sent = copy.deepcopy(gate)
    sent["latency"]["samples"] = [1.0] * 1000  # not a field of the contract: dropped
    r = rp.parse_report(_report(gate=sent, reason_code="HEALTH_REGRESSION"), "reports[0]")
    assert r.gate == gate and r.reason_code is ReasonCode.HEALTH_REGRESSION


@pytest.mark.parametrize(("mutate", "field"), LATENCY_BAD, ids=[f for _, f in LATENCY_BAD])
def test_a_bad_latency_field_is_a_400_naming_it(mutate: Callable[[dict[str, Any]], None], field: str) -> None:
    report = _report(gate=rollback_gate(), reason_code="HEALTH_REGRESSION")
    mutate(report)
    with pytest.raises(BadRequest) as e:
        rp.parse_batch({"reports": [_report(), report]})
    assert e.value.field == f"reports[1].{field}", e.value.message


@pytest.mark.parametrize(("mutate", "field"), CLASS_BAD, ids=[f for _, f in CLASS_BAD])
def test_a_bad_or_oversized_per_class_field_is_a_400_naming_it(
    mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    report = _report(gate=class_refusal_gate(), variant="onnx-fp32")
    mutate(report)
    with pytest.raises(BadRequest) as e:
        rp.parse_batch({"reports": [_report(), report]})
    assert e.value.field == f"reports[1].{field}", e.value.message


@pytest.mark.parametrize(("mutate", "field"), BAD, ids=[f for _, f in BAD])
def test_a_bad_or_oversized_field_is_a_400_naming_it(mutate: Callable[[dict[str, Any]], None], field: str) -> None:
    report = _report(gate=refusal_gate(), variant="onnx-fp32")
    mutate(report)
    with pytest.raises(BadRequest) as e:
        rp.parse_batch({"reports": [_report(), report]})
    assert e.value.field == f"reports[1].{field}", e.value.message


def test_the_largest_evidence_allowed_is_accepted_and_prose_is_cut() -> None:
    gate = refusal_gate()
    gate["agreement"]["confusion"] = [dict(ROW, active="a" * 128)] * ev.MAX_CONFUSION
    gate["timing"] = [TIMING] * ev.MAX_TIMING
    assert rp.parse_report(_report(gate=gate), "r").gate == gate
    gate["agreement"]["why"] = "w" * 5000
    parsed = rp.parse_report(_report(gate=gate), "r").gate
    assert parsed is not None and parsed["agreement"]["why"] == "w" * ev.MAX_WHY


def test_a_headless_agent_reports_agreement_as_not_judged() -> None:
    gate = {
        "agreement": {
            "expected": 0.0,
            "baseline": "active",
            "baseline_variant": None,
            "judged_against": "active",
            "why": "no camera: agreement is not judged without live frames",
            "decision": "not-judged",
            "frames": 0,
        },
        "variant": "onnx-fp32",
    }
    parsed = rp.parse_report(_report(gate=gate), "r").gate
    assert parsed is not None and parsed["agreement"]["decision"] == "not-judged"
    assert "baseline_variant" not in parsed["agreement"]  # a null is not stored


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"release": 2**31}, "r.release"),
        ({"release": -1}, "r.release"),
        ({"release": 10**400}, "r.release"),
        ({"running": {"name": "m", "version": "1", "release": 2**63}}, "r.running.release"),
        ({"time": "2026-11-27T10:00:00." + "1" * 100_000 + "Z"}, "r.time"),
        ({"id": "i" * 1_000_000}, "r.id"),
        ({"type": "t" * 1_000_000}, "r.type"),
        ({"state": "s" * 1_000_000}, "r.state"),
    ],
)
def test_an_unbounded_report_field_is_a_400_naming_it_and_quoting_little(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as e:
        rp.parse_report(_report(**fields), "r")
    assert e.value.field == field and len(e.value.message) < 300


def test_what_is_stored_of_a_report_is_bounded_whatever_the_device_adds() -> None:
    import json

    junk = {
        "detail": "d" * 1_000_000,
        "metrics": {**{f"m{i}": float(i) for i in range(10_000)}, "p95_ms": 3.0},
        "extra_field": "x" * 1_000_000,
        "time": "2026-11-27T10:00:00.123456789Z",
    }
    stored = rp.parse_report(_report(**junk), "r").body
    assert len(json.dumps(stored)) < rp.MAX_DETAIL + 1000
    assert stored["metrics"] == {"p95_ms": 3.0} and "extra_field" not in stored
