"""Rollout lifecycle against the real server: reports drive stages, halt, pause/resume/abort, rollback."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from models.device_reports import assignment_digest
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    tmp = tmp_path_factory.mktemp("rollouts")
    with live_server(tmp) as srv:
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            make_bundle(tmp / f"b{version}", name="det", version=version)
            srv.publish(tmp / f"b{version}")
        yield srv


def _poll(server: LiveServer, dev: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = server.api(
        "GET", f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}", token=dev["device_token"]
    )
    assert status == 200, body
    return dict(body["signed"])


def _report(
    server: LiveServer,
    dev: dict[str, Any],
    state: str,
    signed: dict[str, Any],
    *,
    reason: str | None = None,
    time: str = "2026-11-27T10:00:00Z",
) -> dict[str, Any]:
    rep = {
        "id": str(uuid.uuid4()),
        "time": time,
        "type": "transition",
        "state": state,
        "rollout_id": signed["rollout_id"],
        "release": signed["release"]["counter"],
        "reason_code": reason,
        "detail": None,
        "metrics": {"p95_ms": 12.5, "fps": 30.0, "agreement": 0.97},
        "assignment_digest": assignment_digest(signed),
        "running": (
            {
                "name": signed["release"]["name"],
                "version": signed["release"]["version"],
                "release": signed["release"]["counter"],
            }
            if state == "committed"
            else None
        ),
    }
    status, body, _ = server.post_reports(dev, [rep])
    assert status == 200, body
    assert body["accepted"] == [rep["id"]]
    return rep


def test_stages_advance_on_success_and_complete(server: LiveServer) -> None:
    devs = [server.enroll(name=f"s{i}", group="stages") for i in range(6)]
    ro = server.create_rollout(model="det", version="1.1.0", group="stages", stages=[1, 50, 100])
    assert ro["selected_devices"] == 6
    assert ro["progress"][0]["devices"] >= 1  # the first stage of a small fleet is never empty
    for _ in range(10):
        state = server.rollout(ro["id"])
        if state["status"] == "completed":
            break
        stage_members = [d for d in devs if _poll(server, d)["rollout_id"] == ro["id"]]
        assert len(stage_members) == state["progress"][state["stage"]]["devices"]
        for d in stage_members:
            _report(server, d, "committed", _poll(server, d))
    final = server.rollout(ro["id"])
    assert final["status"] == "completed" and final["totals"]["success"] == 6
    kinds = [e["kind"] for e in final["events"]]
    assert kinds[0] == "created" and kinds[-1] == "completed"
    status, body, _ = server.api(
        "GET", "/api/v1/devices?group=stages&model_version=det@1.1.0", token=server.tokens["viewer"]
    )
    assert status == 200 and len(body["devices"]) == 6
    assert body["devices"][0]["metrics"]["p95_ms"] == 12.5


def test_failures_halt_the_rollout_and_rollback_repoints(server: LiveServer) -> None:
    devs = [server.enroll(name=f"h{i}", group="halt") for i in range(4)]
    # everyone on 1.1.0 first
    base = server.create_rollout(model="det", version="1.1.0", group="halt", stages=[100])
    for d in devs:
        _report(server, d, "committed", _poll(server, d))
    assert server.rollout(base["id"])["status"] == "completed"

    ro = server.create_rollout(
        model="det", version="1.2.0", group="halt", stages=[100], max_failure_rate=0.25, min_devices_for_halt=2
    )
    signed = [_poll(server, d) for d in devs]
    assert all(s["release"]["version"] == "1.2.0" for s in signed)
    _report(server, devs[0], "failed", signed[0], reason="LATENCY_OVER_BUDGET")
    assert server.rollout(ro["id"])["status"] == "active"  # below the minimum sample
    _report(server, devs[1], "rolled-back", signed[1], reason="NAN_OUTPUT")
    halted = server.rollout(ro["id"])
    assert halted["status"] == "halted", halted
    assert halted["failure_reasons"] == {"LATENCY_OVER_BUDGET": 1, "NAN_OUTPUT": 1}
    assert halted["progress"][0]["failure_reasons"] == {"LATENCY_OVER_BUDGET": 1, "NAN_OUTPUT": 1}
    assert "failure rate 2/2" in halted["halt_reason"]
    # halted: devices keep their last installed release (1.1.0)
    kept = _poll(server, devs[2])
    assert kept["rollout_id"] is None and kept["release"]["version"] == "1.1.0"

    # another rollout for det/halt is refused while this one is halted
    status, body, _ = server.api(
        "POST",
        "/api/v1/rollouts",
        token=server.tokens["operator"],
        json={"model": "det", "version": "1.2.0", "group": "halt"},
    )
    assert status == 409 and body["error"]["field"] == "group"

    status, body, _ = server.api(
        "POST", f"/api/v1/rollouts/{ro['id']}/rollback", token=server.tokens["operator"], json={"to_version": "1.1.0"}
    )
    assert status == 201, body
    new_release = body["release"]
    assert new_release["version"] == "1.1.0" and new_release["counter"] > signed[0]["release"]["counter"]
    assert new_release["rollback_of"] is not None
    after = _poll(server, devs[0])
    assert after["release"]["counter"] == new_release["counter"]
    assert after["target"]["hashes"] == kept["target"]["hashes"]  # the older artifact
    assert server.rollout(ro["id"])["status"] == "rolled-back"


def test_pause_resume_abort(server: LiveServer) -> None:
    devs = [server.enroll(name=f"p{i}", group="pause") for i in range(2)]
    ro = server.create_rollout(model="det", version="1.2.0", group="pause", stages=[100])
    op = server.tokens["operator"]
    assert server.api("POST", f"/api/v1/rollouts/{ro['id']}/pause", token=op)[1]["status"] == "paused"
    assert _poll(server, devs[0])["target"] is None  # paused: no new installs
    status, body, _ = server.api("POST", f"/api/v1/rollouts/{ro['id']}/pause", token=op)
    assert status == 409
    assert server.api("POST", f"/api/v1/rollouts/{ro['id']}/resume", token=op)[1]["status"] == "active"
    assert _poll(server, devs[0])["rollout_id"] == ro["id"]
    assert server.api("POST", f"/api/v1/rollouts/{ro['id']}/abort", token=op)[1]["status"] == "aborted"
    kinds = [e["kind"] for e in server.rollout(ro["id"])["events"]]
    assert kinds == ["created", "paused", "resumed", "aborted"]
    status, audit, _ = server.api("GET", "/api/v1/audit", token=server.tokens["admin"])
    assert status == 200
    actions = [(a["action"], a["target"]) for a in audit["audit"]]
    assert ("rollout.abort", ro["id"]) in actions and ("rollout.pause", ro["id"]) in actions


def test_reports_are_idempotent(server: LiveServer, tmp_path: Path) -> None:
    dev = server.enroll(name="idem", group="idem")
    rep = {"id": "r-1", "time": "2026-11-27T10:00:00Z", "type": "heartbeat", "state": None, "metrics": {"fps": 29.0}}
    first = server.post_reports(dev, [rep])[1]
    second = server.post_reports(dev, [rep, dict(rep, id="r-2")])[1]
    assert first == {"accepted": ["r-1"], "duplicates": []}
    assert second == {"accepted": ["r-2"], "duplicates": ["r-1"]}
    other = server.enroll(name="idem-2", group="idem")  # report ids are per device
    third = server.post_reports(other, [rep])[1]
    assert third == {"accepted": ["r-1"], "duplicates": []}
    status, body, _ = server.api("GET", f"/api/v1/devices/{dev['device_id']}", token=server.tokens["viewer"])
    assert status == 200 and body["metrics"]["fps"] == 29.0 and body["last_seen"]


def test_rollout_created_before_any_device_still_starts(server: LiveServer) -> None:
    ro = server.create_rollout(model="det", version="1.1.0", group="late", stages=[1, 100])
    assert ro["selected_devices"] == 0
    devs = [server.enroll(name=f"late{i}", group="late") for i in range(3)]
    state = server.rollout(ro["id"])
    assert state["progress"][0]["devices"] >= 1
    assert "first-device" in [e["kind"] for e in state["events"]]
    assert sum(_poll(server, d)["rollout_id"] == ro["id"] for d in devs) == state["progress"][0]["devices"]


def test_concurrent_publishes_and_reports_across_workers(server: LiveServer, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.live_server import bundle_tar

    tars = []
    for i in range(4):
        make_bundle(tmp_path / f"c{i}", name=f"conc{i}", version="1.0.0")
        tars.append(bundle_tar(tmp_path / f"c{i}"))
    devs = [server.enroll(name=f"c{i}", group="conc") for i in range(6)]

    def publish(tar: bytes) -> int:
        return server.api(
            "POST",
            "/api/v1/releases",
            data=tar,
            token=server.tokens["publisher"],
            headers={"Content-Type": "application/x-tar"},
        )[0]

    def heartbeat(dev: dict[str, Any]) -> int:
        reps = [
            {"id": str(uuid.uuid4()), "time": "2026-11-27T10:00:00Z", "type": "heartbeat", "metrics": {"fps": 1}}
            for _ in range(20)
        ]
        return server.post_reports(dev, reps)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        pubs = list(pool.map(publish, tars))
        beats = list(pool.map(heartbeat, devs * 2))
    assert pubs == [201] * 4 and beats == [200] * 12
    status, body, _ = server.api("GET", "/api/v1/releases", token=server.tokens["viewer"])
    counters = [r["counter"] for r in body["releases"]]
    assert counters == sorted(set(counters)) == list(range(1, len(counters) + 1))
    assert "Traceback" not in server.log_text()


def test_counters_stay_exact_under_concurrent_reports_across_workers(server: LiveServer, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    make_bundle(tmp_path / "cnt", name="cnt", version="1.0.0")
    server.publish(tmp_path / "cnt")
    devs = [server.enroll(name=f"cnt{i}", group="cnt") for i in range(12)]
    rollout = server.create_rollout(model="cnt", version="1.0.0", group="cnt", stages=[100], max_failure_rate=1.0)
    digests = {d["device_id"]: assignment_digest(_poll(server, d)) for d in devs}  # each is issued it

    def send(dev: dict[str, Any], rid: str, state: str, second: int, reason: str | None = None) -> int:
        rep = {
            "id": rid,
            "time": f"2026-11-27T10:00:{second:02d}Z",
            "type": "transition",
            "state": state,
            "rollout_id": rollout["id"],
            "release": rollout["release"],
            "reason_code": reason,
            "assignment_digest": digests[dev["device_id"]],
        }
        return server.post_reports(dev, [rep])[0]

    # every device fails first; the even ones then commit; every report is also sent twice
    jobs = [(d, f"f-{i}", "failed", 1, "NAN_OUTPUT") for i, d in enumerate(devs)]
    jobs += [(d, f"c-{i}", "committed", 2, None) for i, d in enumerate(devs) if i % 2 == 0]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(lambda j: send(*j), jobs[:12]))
        again = list(pool.map(lambda j: send(*j), jobs[12:] + jobs))
    assert first == [200] * 12 and again == [200] * len(again), again
    assert [send(*j) for j in jobs[:3]] == [200] * 3  # resent once more: duplicates, nothing changes
    view = server.rollout(rollout["id"])
    assert view["totals"] == {"success": 6, "failure": 6, "pending": 0}, view["totals"]
    assert view["failure_reasons"] == {"NAN_OUTPUT": 6}
    assert view["selected_devices"] == 12 and view["status"] == "completed"  # fully reported, 50 % <= 100 %
