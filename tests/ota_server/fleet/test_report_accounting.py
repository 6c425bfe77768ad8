"""Report ingestion's bookkeeping in-process, on SQLite and PostgreSQL: counter updates in one
statement, and when a report must invalidate cached assignments (the fleet generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ota_server.config import ServerConfig
from ota_server.fleet import service
from ota_server.fleet.director import build_signed
from ota_server.fleet.ingest import ingest
from ota_server.rules import reports as rp
from ota_server.rules import rollouts as ro
from ota_server.services import Services, build_services
from ota_server.storage import store as st
from tests.bundles import make_bundle
from tests.live_server import bundle_tar
from tests.ota_server.fleet.issued import DIGEST, issue
from tests.ota_server.fleet.test_service import _device


def _counters(conn: Any, rollout_id: str) -> dict[tuple[int, str], int]:
    return {(r["stage"], r["key"]): r["n"] for r in st.counters(conn, rollout_id)}


def test_add_counters_moves_several_keys_at_once_and_creates_missing_ones(
    initialized: tuple[ServerConfig, dict[str, str]],
) -> None:
    config, _ = initialized
    s = build_services(config)
    with s.store.tx() as conn:
        st.insert_counters(
            conn,
            [
                {"rollout_id": "ro_x", "stage": k, "key": key, "n": 5}
                for k in (0, 1)
                for key in ("devices", "pending", "failure")
            ],
        )
        st.add_counters(conn, "ro_x", 1, {"pending": -1, "failure": 1, "reason:NAN_OUTPUT": 1})
        st.add_counters(conn, "ro_x", 1, {"reason:NAN_OUTPUT": 2, "devices": 1})
        st.add_counters(conn, "ro_x", 0, {})
        assert _counters(conn, "ro_x") == {
            (0, "devices"): 5,
            (0, "pending"): 5,
            (0, "failure"): 5,  # another stage is left alone
            (1, "devices"): 6,
            (1, "pending"): 4,
            (1, "failure"): 6,
            (1, "reason:NAN_OUTPUT"): 3,
        }
    s.store.dispose()


def _publish(s: Services, tmp_path: Path, version: str) -> int:
    make_bundle(tmp_path / version, name="m", version=version)
    tar = tmp_path / f"{version}.tar"
    tar.write_bytes(bundle_tar(tmp_path / version))
    return int(s.publisher.publish_tar(tar, actor="test")["counter"])


def _target(s: Services, device_id: str) -> tuple[Any, Any]:
    with s.store.read() as conn:
        signed = build_signed(conn, st.get_device(conn, device_id), "ab" * 16, ttl_s=60)
    return signed["rollout_id"], (signed["release"] or {}).get("counter")


@pytest.mark.parametrize(
    ("case", "bumps"),
    [
        ("in-stage device installs its rollout's release", False),
        ("device outside the stage reports the release it runs", True),
        ("in-stage device of a paused rollout installs the release", True),
    ],
)
def test_a_report_bumps_the_generation_exactly_when_the_assignment_changes(
    initialized: tuple[ServerConfig, dict[str, str]],
    tmp_path: Path,
    case: str,
    bumps: bool,
) -> None:
    """A changed assignment must never be answered from a cache as unchanged, so a report that
    changes what the director would sign for its device invalidates that device's cached
    assignment (its revision); a rollout's own commits must not, and no report bumps the fleet
    generation (every cached assignment of the fleet would be re-signed, one commit at a time)."""
    config, _ = initialized
    s = build_services(config)
    old, new = _publish(s, tmp_path, "1.0.0"), _publish(s, tmp_path, "1.1.0")
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(i) for i in range(30)])
        # a first stage of about 15 devices: one commit does not advance it (which would bump)
        spec = ro.parse_rollout({"model": "m", "version": "1.1.0", "group": "g", "stages": [50, 100]})
        rollout = service.create_rollout(conn, spec, actor="test")
        issue(conn, rollout)
        devices = {d["id"]: d for d in st.devices_in_group(conn, "g")}
    inside = sorted(d for d in devices if ro.in_stage(ro.bucket(d, rollout["id"]), 50, rollout["floor_bucket"]))
    assert len(inside) >= 2
    outside = sorted(d for d in devices if d not in inside)
    device_id, release = (outside[0], old) if "outside" in case else (inside[0], new)
    if "paused" in case:
        with s.store.tx() as conn:
            service.act(conn, rollout["id"], "pause", actor="test")
    before = _target(s, device_id)
    with s.store.tx() as conn:
        gen, rev = st.generation(conn), _assignment_rev(conn, device_id)
        report = {
            "id": "r1",
            "time": "2026-11-27T10:00:00Z",
            "type": "transition",
            "assignment_digest": DIGEST,
            "state": "committed",
            "rollout_id": rollout["id"],
            "release": new,
            "running": {"name": "m", "version": "?", "release": release},
        }
        ingest(conn, device_id, [rp.parse_report(report, "r")])
        fleet_bumped = st.generation(conn) != gen
        bumped = fleet_bumped or _assignment_rev(conn, device_id) != rev
    assert bumped is bumps, case
    assert not fleet_bumped, "a report changes one device's assignment at most: the fleet's caches stay valid"
    assert bumped or _target(s, device_id) == before, "an assignment changed without invalidating its cache"
    s.store.dispose()


def _assignment_rev(conn: Any, device_id: str) -> int:
    return int(st.get_device(conn, device_id)["assignment_rev"] or 0)


def _targets(s: Services, device_ids: list[str]) -> dict[str, tuple[Any, Any]]:
    return {d: _target(s, d) for d in device_ids}


@pytest.mark.parametrize(
    ("stages", "state", "decision", "bumps"),
    [
        ([50, 100], "committed", "advance", True),
        ([100], "committed", "complete", False),  # the last stage completes in place: nothing to re-sign
        ([100], "failed", "halt", True),  # a halted rollout stops handing out its release
    ],
)
def test_a_rollout_decision_bumps_the_generation_exactly_when_assignments_change(
    initialized: tuple[ServerConfig, dict[str, str]],
    tmp_path: Path,
    stages: list[int],
    state: str,
    decision: str,
    bumps: bool,
) -> None:
    config, _ = initialized
    s = build_services(config)
    _publish(s, tmp_path, "1.0.0")
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(i) for i in range(12)])
        spec = ro.parse_rollout(
            {
                "model": "m",
                "version": "1.0.0",
                "group": "g",
                "stages": stages,
                "max_failure_rate": 0.05,
                "min_devices_for_halt": 1,
            }
        )
        rollout = service.create_rollout(conn, spec, actor="test")
        issue(conn, rollout)
    ids = sorted(d["id"] for d in _devices(s))
    first = [d for d in ids if ro.in_stage(ro.bucket(d, rollout["id"]), stages[0], rollout["floor_bucket"])]
    with s.store.tx() as conn:  # all but one device of the first stage report; the last one decides
        for d in first[:-1]:
            ingest(
                conn,
                d,
                [
                    rp.parse_report(
                        {
                            "id": f"ok-{d}",
                            "time": "2026-11-27T10:00:00Z",
                            "type": "transition",
                            "assignment_digest": DIGEST,
                            "state": "committed",
                            "rollout_id": rollout["id"],
                            "release": rollout["release"],
                        },
                        "r",
                    )
                ],
            )
    before = _targets(s, ids)
    with s.store.tx() as conn:
        gen = st.generation(conn)
        ingest(
            conn,
            first[-1],
            [
                rp.parse_report(
                    {
                        "id": "last",
                        "time": "2026-11-27T10:00:01Z",
                        "type": "transition",
                        "assignment_digest": DIGEST,
                        "state": state,
                        "rollout_id": rollout["id"],
                        "release": rollout["release"],
                        "reason_code": "LOW_AGREEMENT" if state == "failed" else None,
                    },
                    "r",
                )
            ],
        )
        kinds = [e["kind"] for e in st.events(conn, rollout["id"])]
        bumped = st.generation(conn) != gen
    assert kinds[-1] == {"advance": "stage-advanced", "complete": "completed", "halt": "halted"}[decision], kinds
    assert bumped is bumps
    assert bumped or _targets(s, ids) == before, "an assignment changed without a generation bump"
    s.store.dispose()


def _devices(s: Services) -> list[dict[str, Any]]:
    with s.store.read() as conn:
        return st.devices_in_group(conn, "g")


def test_the_halt_reason_shows_a_rate_just_over_the_limit_as_over_it() -> None:
    """3 failures of 55 finished devices halt a 5 % rollout: the reason must not read "5% exceeds 5%"."""
    counts = [ro.StageCounts(devices=100, success=52, failure=3, pending=0, reasons={"LOW_AGREEMENT": 3})]
    result = ro.evaluate_counts(
        status="active",
        stage=0,
        stages=[100.0],
        counts=counts,
        success_quota=0.9,
        max_failure_rate=0.05,
        min_devices_for_halt=50,
    )
    assert result.decision is ro.Decision.HALT
    assert result.detail == "failure rate 3/55 = 5.45% exceeds 5% (LOW_AGREEMENT x3)"


def test_a_revoked_device_leaves_the_rollout_and_the_stage_goes_on_without_it(
    initialized: tuple[ServerConfig, dict[str, str]], tmp_path: Path
) -> None:
    """A decommissioned vehicle that never reports would hold its stage below the success quota
    for ever, and a failure of one that was revoked would keep counting towards a halt."""
    config, _ = initialized
    s = build_services(config)
    new = _publish(s, tmp_path, "1.0.0")
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(i) for i in range(4)])
        spec = ro.parse_rollout({"model": "m", "version": "1.0.0", "group": "g", "stages": [100], "success_quota": 1.0})
        rollout = service.create_rollout(conn, spec, actor="test")
        issue(conn, rollout)
        ids = sorted(d["id"] for d in st.devices_in_group(conn, "g"))
        for n, device_id in enumerate(ids[:3]):
            report = {
                "id": f"r{n}",
                "time": f"2026-11-27T10:00:0{n}Z",
                "type": "transition",
                "assignment_digest": DIGEST,
                "state": "committed",
                "rollout_id": rollout["id"],
                "release": new,
            }
            ingest(conn, device_id, [rp.parse_report(report, "r")])
    with s.store.read() as conn:
        assert st.get_rollout(conn, rollout["id"])["status"] == "active"  # 3 of 4: the quota is 100 %
        assert _counters(conn, rollout["id"])[(0, "devices")] == 4
    with s.store.tx() as conn:
        assert st.revoke_device(conn, ids[3])
        left = service.on_revoked(conn, st.get_device(conn, ids[3]), actor="test")
    with s.store.read() as conn:
        assert left == [rollout["id"]]
        assert _counters(conn, rollout["id"])[(0, "devices")] == 3
        assert st.get_rollout(conn, rollout["id"])["status"] == "completed"
        assert ids[3] not in {d["id"] for d in st.devices_in_group(conn, "g")}  # later rollouts skip it too
    s.store.dispose()
