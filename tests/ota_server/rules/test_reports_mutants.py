"""Report validation, pinned down where mutation testing found it loose.

Every bound is inclusive where the contract says so (ids of 64 characters, rollout ids of 40, a
release counter up to an INTEGER's maximum, 500 reports a batch); every error names its field and
says exactly what came, quoting a bounded part of it; what is stored is the checked fields, each in
its place, and nothing of what fails a check.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from models.reasons import ReasonCode
from ota_server.errors import BadRequest
from ota_server.rules import reports as rp

DIGEST = "ab" * 32
SIGNATURE = "cd" * 64


def report(**fields: Any) -> dict[str, Any]:
    return {"id": "r1", "time": "2026-11-27T10:00:00Z", "type": "heartbeat", **fields}


def bad(r: Any, where: str = "reports[0]") -> BadRequest:
    with pytest.raises(BadRequest) as info:
        rp.parse_report(r, where)
    return info.value


def bad_batch(body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        rp.parse_batch(body)
    return info.value


# ----------------------------------------------------------------------------- the whole report


def test_a_full_report_is_kept_field_by_field() -> None:
    r = rp.parse_report(
        report(
            type="gate",
            state="refused",
            rollout_id="ro_1",
            release=7,
            reason_code="LOW_AGREEMENT",
            detail="why",
            metrics={"p50_ms": 1.5, "fps": 30},
            running={"name": "m", "version": "1", "release": 6, "variant": "fp32"},
            variant="int8",
            assignment_digest=DIGEST,
            signature=SIGNATURE,
        ),
        "reports[0]",
    )
    body = {
        "id": "r1",
        "time": "2026-11-27T10:00:00Z",
        "type": "gate",
        "state": "refused",
        "rollout_id": "ro_1",
        "release": 7,
        "reason_code": "LOW_AGREEMENT",
        "detail": "why",
        "metrics": {"p50_ms": 1.5, "fps": 30},
        "running": {"name": "m", "version": "1", "release": 6, "variant": "fp32"},
        "variant": "int8",
        "gate": None,
        "assignment_digest": DIGEST,
        "signature": SIGNATURE,
    }
    assert r == rp.Report(
        id="r1",
        time="2026-11-27T10:00:00Z",
        type="gate",
        state="refused",
        rollout_id="ro_1",
        release=7,
        reason_code=ReasonCode.LOW_AGREEMENT,
        detail="why",
        metrics={"p50_ms": 1.5, "fps": 30},
        running={"name": "m", "version": "1", "release": 6, "variant": "fp32"},
        variant="int8",
        gate=None,
        body=body,
        assignment_digest=DIGEST,
    )
    assert dict(r.body) == body


def test_a_bare_report_stores_null_for_every_optional_field() -> None:
    r = rp.parse_report(report(), "reports[0]")
    assert dict(r.body) == {
        "id": "r1",
        "time": "2026-11-27T10:00:00Z",
        "type": "heartbeat",
        "state": None,
        "rollout_id": None,
        "release": None,
        "reason_code": None,
        "detail": None,
        "metrics": None,
        "running": None,
        "variant": None,
        "gate": None,
        "assignment_digest": None,
        "signature": None,
    }
    assert (r.state, r.rollout_id, r.release, r.reason_code, r.detail, r.metrics, r.running, r.variant) == (None,) * 8
    assert r.assignment_digest is None


@pytest.mark.parametrize("kind", rp.TYPES)
def test_every_report_type_is_accepted(kind: str) -> None:
    assert rp.parse_report(report(type=kind), "r").type == kind


def test_the_report_types_and_states_are_those_of_the_contract() -> None:
    assert rp.TYPES == ("transition", "gate", "benchmark", "heartbeat")
    assert rp.STATES == (
        "idle",
        "checking",
        "downloading",
        "verifying",
        "staging",
        "preparing",
        "benchmarking",
        "swapping",
        "health-watch",
        "committed",
        "failed",
        "rolled-back",
        "refused",
    )


@pytest.mark.parametrize("state", rp.STATES)
def test_every_state_is_accepted(state: str) -> None:
    assert rp.parse_report(report(state=state), "r").state == state


# ----------------------------------------------------------------------------- id, time, type, state


def test_a_report_that_is_not_an_object_is_a_400_naming_where_it_is() -> None:
    e = bad(["id"], "reports[3]")
    assert (e.message, e.field) == ("expected an object", "reports[3]")


@pytest.mark.parametrize("rid", ["a", "A" * 64, "aZ09_.:-"])
def test_an_id_of_1_to_64_allowed_characters_is_accepted(rid: str) -> None:
    assert rp.parse_report(report(id=rid), "r").id == rid


@pytest.mark.parametrize("rid", ["", "A" * 65, "a b", "a/b", 7, None])
def test_a_bad_id_is_a_400_naming_it(rid: Any) -> None:
    e = bad(report(id=rid))
    assert e.field == "reports[0].id"
    assert e.message == f"id must be 1-64 characters of [A-Za-z0-9_.:-], got {str(rid)[:80]!r}"


def test_a_bad_id_is_quoted_80_characters_at_most() -> None:
    e = bad(report(id="x" * 79 + "/" + "y" * 200))
    assert e.message == f"id must be 1-64 characters of [A-Za-z0-9_.:-], got {'x' * 79 + '/'!r}"


@pytest.mark.parametrize(
    "time",
    [
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:00:00.5Z",
        "2026-11-27T10:00:00.123456789+01:00",
        "2026-11-27T10:00:00-05:30",
    ],
)
def test_an_iso_time_is_accepted(time: str) -> None:
    assert rp.parse_report(report(time=time), "r").time == time


@pytest.mark.parametrize(
    "time",
    [
        "2026-11-27 10:00:00Z",
        "2026-11-27T10:00:00",
        "2026-11-27T10:00:00.Z",
        "2026-11-27T10:00:00.1234567890Z",
        "x2026-11-27T10:00:00Z",
        "2026-11-27T10:00:00Zx",
        1700000000,
        None,
    ],
)
def test_a_bad_time_is_a_400_naming_it(time: Any) -> None:
    e = bad(report(time=time))
    assert e.field == "reports[0].time"
    assert e.message == f"time must be ISO-8601 like 2026-11-27T10:00:00Z, got {str(time)[:80]!r}"


def test_a_bad_time_is_quoted_80_characters_at_most() -> None:
    e = bad(report(time="t" * 300))
    assert e.message == f"time must be ISO-8601 like 2026-11-27T10:00:00Z, got {'t' * 80!r}"


@pytest.mark.parametrize("kind", ["Gate", "", None, "x" * 300])
def test_a_bad_type_is_a_400_naming_it(kind: Any) -> None:
    e = bad(report(type=kind))
    assert e.field == "reports[0].type"
    assert e.message == f"type must be one of {list(rp.TYPES)}, got {str(kind)[:80]!r}"


@pytest.mark.parametrize("state", ["Idle", "", "s" * 300])
def test_an_unknown_state_is_a_400_naming_it(state: str) -> None:
    e = bad(report(state=state))
    assert e.field == "reports[0].state"
    assert e.message == f"state must be one of {list(rp.STATES)} or null, got {state[:80]!r}"


@pytest.mark.parametrize(
    ("value", "kind"), [(1, "int"), (True, "bool"), (["idle"], "list"), ({"a": 1}, "dict"), (1.5, "float")]
)
def test_a_state_of_the_wrong_type_is_a_400_saying_what_came(value: Any, kind: str) -> None:
    e = bad(report(state=value))
    assert (e.message, e.field) == (f"expected str or null, got {kind}", "reports[0].state")


# ----------------------------------------------------------------------------- rollout, release, reason


@pytest.mark.parametrize("rollout_id", ["r", "R" * 40, "aZ09_.:-"])
def test_a_rollout_id_of_1_to_40_allowed_characters_is_accepted(rollout_id: str) -> None:
    assert rp.parse_report(report(rollout_id=rollout_id), "r").rollout_id == rollout_id


@pytest.mark.parametrize("rollout_id", ["", "R" * 41, "a b", "R" * 300])
def test_a_bad_rollout_id_is_a_400_naming_it(rollout_id: str) -> None:
    e = bad(report(rollout_id=rollout_id))
    assert e.field == "reports[0].rollout_id"
    assert e.message == f"rollout_id must be 1-40 characters of [A-Za-z0-9_.:-], got {rollout_id[:80]!r}"


def test_a_rollout_id_that_is_not_a_string_is_a_400_naming_it() -> None:
    e = bad(report(rollout_id=5))
    assert (e.message, e.field) == ("expected str or null, got int", "reports[0].rollout_id")


@pytest.mark.parametrize("release", [0, 1, rp.MAX_RELEASE])
def test_a_release_within_the_integer_column_is_accepted(release: int) -> None:
    r = rp.parse_report(report(release=release), "r")
    assert r.release == release
    assert type(r.release) is int


def test_the_largest_release_is_that_of_an_integer_column() -> None:
    assert rp.MAX_RELEASE == 2_147_483_647


@pytest.mark.parametrize("release", [-1, rp.MAX_RELEASE + 1, 10**60])
def test_a_release_out_of_range_is_a_400_quoting_40_digits_at_most(release: int) -> None:
    e = bad(report(release=release))
    assert e.field == "reports[0].release"
    assert e.message == f"expected a release counter within [0, 2147483647], got {str(release)[:40]}"


@pytest.mark.parametrize(("value", "kind"), [(True, "bool"), (False, "bool"), ("2", "str"), (2.0, "float")])
def test_a_release_that_is_not_an_integer_is_a_400(value: Any, kind: str) -> None:
    e = bad(report(release=value))
    assert (e.message, e.field) == (f"expected int or null, got {kind}", "reports[0].release")


def test_an_unknown_reason_code_is_a_400_naming_it() -> None:
    e = bad(report(reason_code="NOPE"))
    assert e.field == "reports[0].reason_code"
    assert e.message.startswith("unknown reason code 'NOPE'")


def test_a_reason_code_that_is_not_a_string_is_a_400() -> None:
    e = bad(report(reason_code=3))
    assert (e.message, e.field) == ("expected str or null, got int", "reports[0].reason_code")


# ----------------------------------------------------------------------------- detail, metrics, running


def test_detail_is_cut_at_max_detail_characters() -> None:
    assert rp.MAX_DETAIL == 2000
    r = rp.parse_report(report(detail="d" * 1999 + "e" + "f" * 500), "r")
    assert r.detail == "d" * 1999 + "e"
    assert r.body["detail"] == r.detail


def test_an_empty_detail_is_stored_as_null() -> None:
    assert rp.parse_report(report(detail=""), "r").detail is None


def test_a_detail_that_is_not_a_string_is_a_400() -> None:
    e = bad(report(detail=["x"]))
    assert (e.message, e.field) == ("expected str or null, got list", "reports[0].detail")


def test_every_known_metric_is_kept() -> None:
    metrics = {k: float(i) for i, k in enumerate(rp.METRIC_KEYS)}
    assert rp.parse_report(report(metrics=metrics), "r").metrics == metrics
    assert rp.METRIC_KEYS == (
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "fps",
        "agreement",
        "nan_frames",
        "frames_captured",
        "frames_dropped",
        "swap_ms",
    )


def test_only_known_finite_numeric_metrics_are_kept() -> None:
    metrics = {
        "p50_ms": 1,
        "p95_ms": 2.5,
        "p99_ms": True,
        "fps": math.nan,
        "agreement": math.inf,
        "nan_frames": "3",
        "frames_captured": None,
        "frames_dropped": -math.inf,
        "unknown": 4.0,
    }
    assert rp.parse_report(report(metrics=metrics), "r").metrics == {"p50_ms": 1, "p95_ms": 2.5}


def test_metrics_that_are_not_an_object_are_a_400() -> None:
    e = bad(report(metrics=[1]))
    assert (e.message, e.field) == ("expected dict or null, got list", "reports[0].metrics")


def test_running_keeps_name_version_release_and_variant_only() -> None:
    running = {"name": "n" * 64, "version": "v", "release": 0, "variant": "int8", "extra": 1}
    r = rp.parse_report(report(running=running), "r")
    assert r.running == {"name": "n" * 64, "version": "v", "release": 0, "variant": "int8"}


def test_running_without_fields_is_all_null_and_has_no_variant() -> None:
    assert rp.parse_report(report(running={}), "r").running == {"name": None, "version": None, "release": None}


@pytest.mark.parametrize("key", ["name", "version"])
@pytest.mark.parametrize("length", [0, 65])
def test_a_running_name_or_version_out_of_1_to_64_characters_is_a_400(key: str, length: int) -> None:
    e = bad(report(running={key: "x" * length}))
    assert (e.message, e.field) == (f"expected 1-64 characters, got {length}", f"reports[0].running.{key}")


@pytest.mark.parametrize("key", ["name", "version"])
def test_a_running_name_or_version_that_is_not_a_string_is_a_400(key: str) -> None:
    e = bad(report(running={key: 5}))
    assert (e.message, e.field) == ("expected str or null, got int", f"reports[0].running.{key}")


def test_a_running_release_out_of_range_is_a_400_naming_it() -> None:
    e = bad(report(running={"release": -1}))
    assert e.field == "reports[0].running.release"
    assert e.message == "expected a release counter within [0, 2147483647], got -1"


def test_a_bad_running_variant_is_a_400_naming_it() -> None:
    assert bad(report(running={"variant": "no such/variant"})).field == "reports[0].running.variant"


def test_running_that_is_not_an_object_is_a_400() -> None:
    e = bad(report(running="m"))
    assert (e.message, e.field) == ("expected dict or null, got str", "reports[0].running")


# ----------------------------------------------------------------------------- variant, gate, digest, signature


def test_a_bad_variant_or_gate_is_a_400_naming_it() -> None:
    assert bad(report(variant="no such/variant")).field == "reports[0].variant"
    assert str(bad(report(gate="x")).field).startswith("reports[0].gate")


@pytest.mark.parametrize("digest", ["AB" * 32, "ab" * 31, "ab" * 32 + "a", "g" * 64, "a" * 300])
def test_a_bad_assignment_digest_is_a_400_naming_it(digest: str) -> None:
    e = bad(report(assignment_digest=digest))
    assert e.field == "reports[0].assignment_digest"
    assert e.message == f"assignment_digest must be 64 lowercase hex digits, got {digest[:80]!r}"


def test_an_assignment_digest_that_is_not_a_string_is_a_400() -> None:
    e = bad(report(assignment_digest=1))
    assert (e.message, e.field) == ("expected str or null, got int", "reports[0].assignment_digest")


@pytest.mark.parametrize("signature", ["CD" * 64, "cd" * 63, 5, ["cd" * 64]])
def test_a_signature_that_is_not_128_lowercase_hex_digits_is_not_stored(signature: Any) -> None:
    assert rp.parse_report(report(signature=signature), "r").body["signature"] is None


# ----------------------------------------------------------------------------- batches


def test_a_batch_of_max_reports_is_accepted_each_named_by_its_place() -> None:
    assert rp.MAX_REPORTS == 500
    items = [report(id=f"r{i}") for i in range(rp.MAX_REPORTS)]
    assert [r.id for r in rp.parse_batch({"reports": items})] == [f"r{i}" for i in range(rp.MAX_REPORTS)]
    items[3]["time"] = "later"
    assert bad_batch({"reports": items}).field == "reports[3].time"


def test_an_empty_batch_is_accepted() -> None:
    assert rp.parse_batch({"reports": []}) == []


def test_a_batch_over_max_reports_is_a_400() -> None:
    e = bad_batch({"reports": [report(id=f"r{i}") for i in range(rp.MAX_REPORTS + 1)]})
    assert (e.message, e.field) == ("at most 500 reports per request, got 501", "reports")


@pytest.mark.parametrize("body", [[], None, {"reports": {}}, {"reports": None}, {"report": []}])
def test_a_body_of_the_wrong_shape_is_a_400(body: Any) -> None:
    e = bad_batch(body)
    assert (e.message, e.field) == ('body must be {"reports": [...]}', "reports")
