"""Report ingest in-process on SQLite, pinned down where mutation testing found it loose.

Signatures are checked report by report and every refusal names the report; a batch is stored
once (duplicates by id, within the batch or already stored, change nothing) with each column in
its place; the device row takes the latest state, running version and variant, merged metrics and
the newest gate; a transition counts in its rollout only with an issued assignment of the
rollout's release, and an older report never overwrites a newer one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.engine import Connection

from models.device_reports import sign_report
from ota_server.errors import RecordNotFound, Unauthorized
from ota_server.fleet import ingest as ig
from ota_server.rules import reports as rp
from ota_server.serving.auth import token_digest
from ota_server.storage import db, migrations
from ota_server.storage import store as st
from tests.ota_server.evidence_cases import refusal_gate, rollback_gate
from tests.ota_server.fleet.issued import DIGEST

RELEASE = 2


def _device(device_id: str, **over: Any) -> dict[str, Any]:
    return {
        "id": device_id,
        "token_digest": token_digest(secrets.token_hex(8)),
        "name": device_id,
        "group_name": "g",
        "tags": [],
        "hardware": {"arch": "x86_64"},
        "hardware_class": "cpu-x86_64",
        "enrolled_at": st.utcnow(),
        "last_seen": None,
        "state": None,
        "running_name": None,
        "running_version": None,
        "running_release": None,
        "last_metrics": None,
        **over,
    }


def _rollout(rollout_id: str, **over: Any) -> dict[str, Any]:
    now = st.utcnow()
    return {
        "id": rollout_id,
        "release": RELEASE,
        "model": "m",
        "group_name": "g",
        "tags": [],
        "hardware_classes": [],
        "stages": [100.0],
        "stage": 0,
        "status": "active",
        "max_failure_rate": 0.5,
        "success_quota": 1.0,
        "min_devices_for_halt": 1000,
        "floor_bucket": None,
        "gates": None,
        "halt_reason": None,
        "created_at": now,
        "created_by": "test",
        "updated_at": now,
        "seq": 1,
        **over,
    }


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    """A migrated SQLite database with devices d1, d2 of group g and one active rollout ro_1 (of
    release 2, every device in its only stage), its assignment issued to d1 only."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    migrations.migrate(engine)
    with engine.begin() as c:
        st.insert_devices(c, [_device("d1"), _device("d2")])
        st.insert_rollout(c, _rollout("ro_1"))
        st.record_issued(c, "d1", "ro_1", DIGEST)
        yield c
    engine.dispose()


def _r(rid: str, second: int = 0, **fields: Any) -> rp.Report:
    body = {"id": rid, "time": f"2026-11-27T10:00:{second:02d}Z", "type": "heartbeat", **fields}
    return rp.parse_report(body, "r")


def _t(rid: str, state: str, second: int = 0, **fields: Any) -> rp.Report:
    fields = {"rollout_id": "ro_1", "release": RELEASE, "assignment_digest": DIGEST, **fields}
    return _r(rid, second, type="transition", state=state, **fields)


def _outcome(conn: Connection, device_id: str = "d1") -> dict[str, Any] | None:
    row = st.device_outcome(conn, "ro_1", device_id)
    return None if row is None else dict(row)


def _counters(conn: Connection) -> dict[str, int]:
    return {r["key"]: r["n"] for r in st.counters(conn, "ro_1") if r["n"]}


def _rev(conn: Connection, device_id: str) -> int:
    c = db.devices.c
    return int(conn.execute(sa.select(c.assignment_rev).where(c.id == device_id)).scalar() or 0)


# ----------------------------------------------------------------------------- verify_signatures


def _key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def test_a_batch_signed_by_the_device_key_verifies() -> None:
    key, public = _key()
    raw = [sign_report(key, "d1", {"id": f"r{i}", "type": "heartbeat"}) for i in range(2)]
    ig.verify_signatures({"id": "d1", "public_key": public}, raw)


@pytest.mark.parametrize("public", [None, ""])
def test_a_device_without_a_key_is_unauthorized(public: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        ig.verify_signatures({"id": "d1", "public_key": public}, [])
    assert (info.value.message, info.value.field) == (
        "device d1 has no key to verify its reports: re-enroll it",
        "reports",
    )


@pytest.mark.parametrize("second", [["x"], {"id": "r1"}, {"id": "r1", "signature": ""}])
def test_an_unsigned_report_is_unauthorized_naming_it(second: Any) -> None:
    key, public = _key()
    raw = [sign_report(key, "d1", {"id": "r0"}), second]
    with pytest.raises(Unauthorized) as info:
        ig.verify_signatures({"id": "d1", "public_key": public}, raw)
    assert (info.value.message, info.value.field) == (
        "the report is not signed by the device's key",
        "reports[1].signature",
    )


def test_a_report_signed_by_another_key_or_for_another_device_is_unauthorized_naming_it() -> None:
    key, public = _key()
    other, _ = _key()
    for raw in (
        [sign_report(key, "d1", {"id": "r0"}), sign_report(other, "d1", {"id": "r1"})],
        [sign_report(key, "d1", {"id": "r0"}), sign_report(key, "d2", {"id": "r1"})],
    ):
        with pytest.raises(Unauthorized) as info:
            ig.verify_signatures({"id": "d1", "public_key": public}, raw)
        assert (info.value.message, info.value.field) == (
            "the report's signature does not verify with the device's key",
            "reports[1].signature",
        )


# ----------------------------------------------------------------------------- storing a batch


def test_a_batch_is_stored_column_by_column(conn: Connection) -> None:
    r = _t("a", "failed", 5, reason_code="NAN_OUTPUT", detail="nan")
    assert ig.ingest(conn, "d1", [r]) == {"accepted": ["a"], "duplicates": []}
    row = dict(conn.execute(sa.select(db.reports).where(db.reports.c.id == "a")).mappings().one())
    received = row.pop("received_at")
    assert row == {
        "id": "a",
        "device_id": "d1",
        "time": "2026-11-27T10:00:05Z",
        "type": "transition",
        "state": "failed",
        "rollout_id": "ro_1",
        "release": RELEASE,
        "reason_code": "NAN_OUTPUT",
        "body": dict(r.body),
    }
    assert received.endswith("Z") and received != r.time  # the server's clock, not the report's


def test_duplicates_within_a_batch_and_already_stored_change_nothing(conn: Connection) -> None:
    assert ig.ingest(conn, "d1", [_r("a"), _r("b", 1), _r("a", 2)]) == {"accepted": ["a", "b"], "duplicates": ["a"]}
    assert ig.ingest(conn, "d1", [_r("b", 3, state="idle"), _r("c", 4)]) == {"accepted": ["c"], "duplicates": ["b"]}
    assert st.get_device(conn, "d1")["state"] is None  # the duplicate's state was not applied
    # ids are per device
    assert ig.ingest(conn, "d2", [_r("a")]) == {"accepted": ["a"], "duplicates": []}
    assert ig.ingest(conn, "d1", []) == {"accepted": [], "duplicates": []}


def test_an_unknown_device_is_record_not_found(conn: Connection) -> None:
    with pytest.raises(RecordNotFound):
        ig.ingest(conn, "nobody", [_r("a")])


# ----------------------------------------------------------------------------- the device row


def test_the_device_takes_the_latest_state_whatever_the_order_posted(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_r("b", 9, state="staging"), _r("a", 1, state="downloading"), _r("c", 5)])
    device = st.get_device(conn, "d1")
    assert device["state"] == "staging"
    assert device["last_seen"] is not None


def test_running_is_recorded_and_a_stateless_report_keeps_the_state(conn: Connection) -> None:
    running = {"name": "m", "version": "1.0", "release": 5, "variant": "int8"}
    ig.ingest(conn, "d1", [_r("a", 1, state="idle"), _r("b", 2, running=running)])
    d = st.get_device(conn, "d1")
    assert (d["state"], d["running_name"], d["running_version"], d["running_release"], d["running_variant"]) == (
        "idle",
        "m",
        "1.0",
        5,
        "int8",
    )


def test_a_new_running_release_outside_every_rollout_invalidates_the_device_assignment(conn: Connection) -> None:
    st.insert_devices(conn, [_device("d3", group_name="other")])
    ig.ingest(conn, "d3", [_r("a", 1, running={"name": "m", "version": "0", "release": 1})])
    assert _rev(conn, "d3") == 1
    ig.ingest(conn, "d3", [_r("b", 2, running={"name": "m", "version": "0", "release": 1})])  # unchanged
    assert _rev(conn, "d3") == 1
    ig.ingest(conn, "d2", [_r("c", 1, running={"name": "m", "version": "0", "release": 1})])  # ro_1 assigns it
    assert (_rev(conn, "d2"), _rev(conn, "d1")) == (0, 0)


def test_a_new_running_release_of_a_reported_assigning_rollout_leaves_the_cache(conn: Connection) -> None:
    running = {"name": "m", "version": "2", "release": RELEASE}
    ig.ingest(conn, "d1", [_t("a", "committed", 1, running=running)])
    assert st.get_device(conn, "d1")["running_release"] == RELEASE
    assert _rev(conn, "d1") == 0


def test_the_served_variant_follows_running_then_the_commit_then_what_was_known(conn: Connection) -> None:
    def served(*reports: rp.Report) -> Any:
        ig.ingest(conn, "d1", list(reports))
        return st.get_device(conn, "d1")["running_variant"]

    running = {"name": "m", "version": "1", "release": 1}
    assert served(_r("a", 1, running={**running, "variant": "fp32"})) == "fp32"
    assert served(_r("b", 2, running=running)) == "fp32"  # same release: still known
    assert served(_r("c", 3, running={**running, "release": 3})) is None  # another release: unknown
    # a commit of the running release names the variant, with or without running
    assert served(_r("d", 4, state="committed", release=3, variant="int8", running={**running, "release": 3})) == "int8"
    assert served(_r("e", 5, state="committed", release=3, variant="fp16")) == "fp16"
    # a commit of another release, or a variant outside a commit, changes nothing
    assert served(_r("f", 6, state="committed", release=4, variant="int4")) == "fp16"
    assert served(_r("g", 7, state="swapping", release=3, variant="int4")) == "fp16"
    assert served(_r("h", 8, state="committed", release=4, variant="int4", running={**running, "release": 3})) == "fp16"
    assert served(_r("i", 9, state="swapping", release=3, variant="int4", running={**running, "release": 3})) == "fp16"


def test_metrics_merge_over_the_batch_and_earlier_ones_with_the_time_of_the_last(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_r("a", 1, metrics={"p50_ms": 1.0, "fps": 10.0}), _r("b", 2, metrics={"fps": 20.0})])
    assert st.get_device(conn, "d1")["last_metrics"] == {"p50_ms": 1.0, "fps": 20.0, "time": "2026-11-27T10:00:02Z"}
    ig.ingest(conn, "d1", [_r("c", 3, metrics={"p95_ms": 3.0}), _r("d", 4, metrics={})])
    assert st.get_device(conn, "d1")["last_metrics"] == {
        "p50_ms": 1.0,
        "fps": 20.0,
        "p95_ms": 3.0,
        "time": "2026-11-27T10:00:03Z",
    }


# ----------------------------------------------------------------------------- gate records


def _gate(**fields: Any) -> dict[str, Any]:
    return {**rollback_gate(), **fields}


def test_the_gate_record_carries_evidence_of_the_same_rollout_and_release() -> None:
    previous = {"rollout_id": "ro_1", "release": 2, "agreement": {"a": 1}, "timing": {"t": 1}, "variant": "fp32"}
    r = _r(
        "a", 1, type="gate", state="refused", rollout_id="ro_1", release=2, reason_code="LOW_AGREEMENT", gate=_gate()
    )
    assert ig._gate_record(r, previous) == {
        "time": "2026-11-27T10:00:01Z",
        "rollout_id": "ro_1",
        "release": 2,
        "state": "refused",
        "reason_code": "LOW_AGREEMENT",
        "variant": "fp32",
        "agreement": {"a": 1},
        "timing": {"t": 1},
        "latency": dict(r.gate or {})["latency"],
    }
    for other in ({**previous, "release": 3}, {**previous, "rollout_id": "ro_2"}, "x", None):
        assert ig._gate_record(r, other) == {
            "time": "2026-11-27T10:00:01Z",
            "rollout_id": "ro_1",
            "release": 2,
            "state": "refused",
            "reason_code": "LOW_AGREEMENT",
            "variant": None,
            "latency": dict(r.gate or {})["latency"],
        }


def test_the_gate_record_variant_is_the_report_s_then_the_gate_s_then_the_kept_one() -> None:
    kept = {"rollout_id": None, "release": None, "variant": "fp32"}
    assert ig._gate_record(_r("a", variant="int8", gate={"variant": "fp16"}), kept)["variant"] == "int8"
    assert ig._gate_record(_r("a", gate={"variant": "fp16"}), kept)["variant"] == "fp16"
    assert ig._gate_record(_r("a", gate={}), kept)["variant"] == "fp32"
    assert ig._gate_record(_r("a"))["reason_code"] is None
    assert ig.EVIDENCE == ("agreement", "timing", "latency")


def test_the_device_keeps_the_newest_gate(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_r("b", 5, gate=_gate(variant="int8")), _r("a", 1, gate=_gate(variant="fp32"))])
    assert st.get_device(conn, "d1")["last_gate"]["variant"] == "int8"
    ig.ingest(conn, "d1", [_r("c", 3, gate=_gate(variant="fp16"))])  # older than the kept one
    assert st.get_device(conn, "d1")["last_gate"]["variant"] == "int8"
    ig.ingest(conn, "d1", [_r("d", 5, gate=_gate(variant="fp16"))])  # as new: replaces it
    assert st.get_device(conn, "d1")["last_gate"]["variant"] == "fp16"


# ----------------------------------------------------------------------------- counting in a rollout


def test_a_counted_transition_records_the_outcome_and_moves_the_counters(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_t("a", "downloading", 1)])
    assert _counters(conn) == {"devices": 2, "pending": 1}
    outcome = _outcome(conn)
    assert outcome is not None
    assert {k: outcome[k] for k in ("state", "outcome", "reason_code", "detail", "time", "stage")} == {
        "state": "downloading",
        "outcome": "pending",
        "reason_code": None,
        "detail": None,
        "time": "2026-11-27T10:00:01Z",
        "stage": 0,
    }
    ig.ingest(conn, "d1", [_t("b", "failed", 2, reason_code="NAN_OUTPUT", detail="nan")])
    outcome = _outcome(conn)
    assert outcome is not None
    assert (outcome["state"], outcome["outcome"], outcome["reason_code"], outcome["detail"]) == (
        "failed",
        "failure",
        "NAN_OUTPUT",
        "nan",
    )
    assert _counters(conn) == {"devices": 2, "failure": 1, "reason:NAN_OUTPUT": 1}


def test_a_finished_outcome_runs_the_rollout_rules(conn: Connection) -> None:
    st.record_issued(conn, "d2", "ro_1", DIGEST)
    ig.ingest(conn, "d1", [_t("a", "committed", 1)])
    assert st.get_rollout(conn, "ro_1")["status"] == "active"  # 1 of 2 at a 100 % quota
    ig.ingest(conn, "d2", [_t("b", "committed", 1)])
    assert st.get_rollout(conn, "ro_1")["status"] == "completed"
    assert _counters(conn) == {"devices": 2, "success": 2}


def test_pending_states_do_not_run_the_rollout_rules(conn: Connection) -> None:
    st.update_rollout(conn, "ro_1", success_quota=0.0)
    ig.ingest(conn, "d1", [_t("a", "downloading", 1)])
    assert st.get_rollout(conn, "ro_1")["status"] == "active"
    ig.ingest(conn, "d1", [_t("b", "failed", 2)])
    assert st.get_rollout(conn, "ro_1")["status"] == "completed"


def test_a_transition_without_an_issued_assignment_is_stored_not_counted(conn: Connection) -> None:
    answer = ig.ingest(conn, "d2", [_t("a", "committed", 1), _t("b", "failed", 2, assignment_digest="b2" * 32)])
    assert answer == {"accepted": ["a", "b"], "duplicates": [], "not_counted": ["a", "b"]}
    assert _outcome(conn, "d2") is None
    assert st.get_device(conn, "d2")["state"] == "failed"  # the device row still follows its reports
    answer = ig.ingest(conn, "d1", [_t("c", "committed", 1, assignment_digest="b2" * 32), _t("d", "staging", 2)])
    assert answer == {"accepted": ["c", "d"], "duplicates": [], "not_counted": ["c"]}
    outcome = _outcome(conn)
    assert outcome is not None and outcome["state"] == "staging"


def test_reports_that_are_not_transitions_of_a_known_rollout_are_not_counted(conn: Connection) -> None:
    answer = ig.ingest(
        conn,
        "d1",
        [
            _t("a", "committed", 1, rollout_id="ro_none"),
            _r("b", 2, type="gate", state="refused", rollout_id="ro_1", release=RELEASE, assignment_digest=DIGEST),
            _r("c", 3, type="transition", state="committed"),
            _r("d", 4, type="transition", rollout_id="ro_1", release=RELEASE, assignment_digest=DIGEST),
        ],
    )
    assert answer == {"accepted": ["a", "b", "c", "d"], "duplicates": []}
    assert _outcome(conn) is None
    assert st.counters(conn, "ro_1") == []  # no counted report: the rollout was not even read


def test_a_transition_of_another_release_is_not_counted(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_t("a", "committed", 1, release=RELEASE + 1)])
    assert _outcome(conn) is None
    ig.ingest(conn, "d1", [_t("b", "committed", 2, release=None)])  # no release named: the rollout's
    outcome = _outcome(conn)
    assert outcome is not None and outcome["state"] == "committed"


def test_an_older_report_never_overwrites_a_newer_one(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_t("b", "failed", 5)])
    ig.ingest(conn, "d1", [_t("a", "committed", 3), _t("c", "failed", 5, reason_code="NAN_OUTPUT")])
    outcome = _outcome(conn)
    assert outcome is not None
    assert (outcome["state"], outcome["reason_code"]) == ("failed", "NAN_OUTPUT")  # same time: the later one
    assert _counters(conn) == {"devices": 2, "failure": 1, "reason:NAN_OUTPUT": 1}


def test_the_gate_and_variant_are_kept_across_the_transitions_of_one_update(conn: Connection) -> None:
    gate = _gate(variant="int8")
    ig.ingest(conn, "d1", [_t("a", "benchmarking", 1, gate=gate)])
    outcome = _outcome(conn)
    assert outcome is not None and (outcome["variant"], outcome["gate"]["variant"]) == ("int8", "int8")
    first = outcome["gate"]
    ig.ingest(conn, "d1", [_t("b", "swapping", 2)])
    outcome = _outcome(conn)
    assert outcome is not None and (outcome["variant"], outcome["gate"]) == ("int8", first)
    ig.ingest(conn, "d1", [_t("c", "committed", 3, variant="fp16")])
    outcome = _outcome(conn)
    assert outcome is not None and (outcome["variant"], outcome["gate"]) == ("fp16", None)


def test_a_first_transition_without_a_gate_records_no_variant(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_t("a", "downloading", 1)])
    outcome = _outcome(conn)
    assert outcome is not None and (outcome["variant"], outcome["gate"]) == (None, None)


def test_the_commit_of_the_rollout_release_serves_the_variant_its_gate_chose(conn: Connection) -> None:
    running = {"name": "m", "version": "2", "release": RELEASE}
    ig.ingest(conn, "d1", [_t("a", "benchmarking", 1, gate=_gate(variant="int8"))])
    ig.ingest(conn, "d1", [_t("b", "committed", 2, running=running)])
    assert st.get_device(conn, "d1")["running_variant"] == "int8"


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "swapping", "running": {"name": "m", "version": "2", "release": RELEASE}},
        {"running": {"name": "m", "version": "2", "release": RELEASE, "variant": "fp32"}},
        {"running": {"name": "m", "version": "2", "release": RELEASE + 1}},
        {"running": None},
    ],
)
def test_the_gate_s_variant_is_not_served_unless_the_rollout_release_is_committed_without_one(
    conn: Connection, fields: dict[str, Any]
) -> None:
    ig.ingest(conn, "d1", [_t("a", "benchmarking", 1, gate=_gate(variant="int8"))])
    fields = dict(fields)
    ig.ingest(conn, "d1", [_t("b", fields.pop("state", "committed"), 2, **fields)])
    assert st.get_device(conn, "d1")["running_variant"] != "int8"


def test_a_device_the_rollout_does_not_select_is_recorded_without_a_stage(conn: Connection) -> None:
    st.insert_devices(conn, [_device("d3", group_name="other")])
    st.record_issued(conn, "d3", "ro_1", DIGEST)
    ig.ingest(conn, "d3", [_t("a", "failed", 1)])
    outcome = _outcome(conn, "d3")
    assert outcome is not None and outcome["stage"] is None
    assert _counters(conn) == {"devices": 2}


def test_each_counted_rollout_is_locked_once_in_id_order_before_it_is_read(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    st.insert_rollout(conn, _rollout("ro_0", seq=2, group_name="other"))
    st.record_issued(conn, "d1", "ro_0", DIGEST)
    seen: list[str] = []
    lock, get = st.lock, st.get_rollout

    def locking(c: Connection, name: str) -> None:
        seen.append(f"lock {name}")
        lock(c, name)

    def reading(c: Connection, rollout_id: str) -> Any:
        seen.append(f"read {rollout_id}")
        return get(c, rollout_id)

    monkeypatch.setattr(st, "lock", locking)
    monkeypatch.setattr(st, "get_rollout", reading)
    ig.ingest(
        conn,
        "d1",
        [_t("a", "staging", 1), _t("b", "staging", 2, rollout_id="ro_0"), _t("c", "failed", 3), _r("d", 4)],
    )
    assert seen[:4] == ["lock rollout:ro_0", "read ro_0", "lock rollout:ro_1", "read ro_1"]


def test_reports_not_counted_are_logged_naming_five_at_most(conn: Connection, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger=ig.__name__):
        ig.ingest(conn, "d2", [_t(f"r{i}", "staging", i) for i in range(7)])
    (record,) = [r for r in caplog.records if r.name == ig.__name__]
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "device d2: 7 report(s) not counted: no issued assignment of their rollout named (r0, r1, r2, r3, r4)"
    )


def test_counted_reports_log_nothing(conn: Connection, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger=ig.__name__):
        ig.ingest(conn, "d1", [_t("a", "staging", 1)])
    assert [r for r in caplog.records if r.name == ig.__name__] == []


def test_a_kept_gate_without_a_time_is_replaced(conn: Connection) -> None:
    st.update_device(conn, "d1", last_gate={"variant": "old"})
    ig.ingest(conn, "d1", [_r("a", 1, gate=_gate(variant="int8"))])
    assert st.get_device(conn, "d1")["last_gate"]["variant"] == "int8"


def test_within_one_batch_the_variant_known_from_an_earlier_report_carries_over(conn: Connection) -> None:
    running = {"name": "m", "version": "1", "release": 1}
    ig.ingest(conn, "d1", [_r("a", 1, running={**running, "variant": "fp32"}), _r("b", 2, running=running)])
    assert st.get_device(conn, "d1")["running_variant"] == "fp32"
    ig.ingest(
        conn, "d1", [_r("c", 3, running={**running, "release": 4}), _r("d", 4, running={**running, "release": 4})]
    )
    assert st.get_device(conn, "d1")["running_variant"] is None  # the same release, no variant known: unknown


def test_a_report_that_is_not_recorded_does_not_run_the_rollout_rules(conn: Connection) -> None:
    st.update_rollout(conn, "ro_1", success_quota=0.0)
    ig.ingest(conn, "d1", [_t("a", "committed", 1, release=RELEASE + 1)])  # another release
    assert st.get_rollout(conn, "ro_1")["status"] == "active"
    ig.ingest(conn, "d1", [_t("b", "staging", 5)])
    ig.ingest(conn, "d1", [_t("c", "failed", 3)])  # older than the one recorded
    assert st.get_rollout(conn, "ro_1")["status"] == "active"
    assert _counters(conn) == {"devices": 2, "pending": 1}


def test_a_device_s_stage_in_a_rollout_is_fixed_at_its_first_report(conn: Connection) -> None:
    ig.ingest(conn, "d1", [_t("a", "staging", 1)])
    st.update_device(conn, "d1", group_name="other")  # the rollout would not select it now
    ig.ingest(conn, "d1", [_t("b", "failed", 2)])
    outcome = _outcome(conn)
    assert outcome is not None and (outcome["stage"], outcome["outcome"]) == (0, "failure")
    assert _counters(conn) == {"devices": 2, "failure": 1, "reason:UNKNOWN": 1}


def test_within_one_batch_a_commit_of_the_release_just_reported_running_names_the_variant(conn: Connection) -> None:
    running = {"name": "m", "version": "5", "release": 5}
    ig.ingest(conn, "d1", [_r("a", 1, running=running), _r("b", 2, state="committed", release=5, variant="int8")])
    assert st.get_device(conn, "d1")["running_variant"] == "int8"


def test_within_one_batch_gate_evidence_carries_over_to_the_next_gate(conn: Connection) -> None:
    same = {"type": "gate", "rollout_id": "ro_1", "release": RELEASE}
    refusal = refusal_gate()
    ig.ingest(conn, "d1", [_r("a", 1, gate=refusal, **same), _r("b", 2, gate=rollback_gate(), **same)])
    kept = st.get_device(conn, "d1")["last_gate"]
    assert (kept["time"], kept["agreement"], kept["timing"], kept["latency"]) == (
        "2026-11-27T10:00:02Z",
        refusal["agreement"],
        refusal["timing"],
        rollback_gate()["latency"],
    )
    assert kept["variant"] == refusal["variant"]


def test_an_unknown_rollout_does_not_stop_the_others_of_the_batch_from_counting(conn: Connection) -> None:
    answer = ig.ingest(conn, "d1", [_t("a", "staging", 1, rollout_id="ro_0"), _t("b", "staging", 2)])
    assert answer == {"accepted": ["a", "b"], "duplicates": []}
    outcome = _outcome(conn)
    assert outcome is not None and outcome["state"] == "staging"


def test_a_gate_report_of_a_counted_rollout_does_not_move_the_device_in_it(conn: Connection) -> None:
    gate = _r("b", 2, type="gate", state="refused", rollout_id="ro_1", release=RELEASE, assignment_digest=DIGEST)
    ig.ingest(conn, "d1", [_t("a", "staging", 1), gate])
    outcome = _outcome(conn)
    assert outcome is not None and (outcome["state"], outcome["outcome"]) == ("staging", "pending")
