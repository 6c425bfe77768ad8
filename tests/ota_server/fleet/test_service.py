"""Store + rollout services in-process, on SQLite and on PostgreSQL: publish, enroll, report, halt."""

from __future__ import annotations

import secrets
from pathlib import Path

from ota_server.config import ServerConfig
from ota_server.fleet import service
from ota_server.fleet.director import build_signed
from ota_server.fleet.ingest import ingest
from ota_server.rules import reports as rp
from ota_server.rules import rollouts as ro
from ota_server.services import build_services
from ota_server.serving.auth import token_digest
from ota_server.storage import store as st
from tests.bundles import make_bundle
from tests.live_server import bundle_tar
from tests.ota_server.fleet.issued import DIGEST, issue


def _device(i: int, group: str = "g") -> dict:
    return {
        "id": f"dev_{i:04d}",
        "token_digest": token_digest(secrets.token_hex(8)),
        "name": f"d{i}",
        "group_name": group,
        "tags": ["eu"] if i % 2 else [],
        "hardware": {"arch": "x86_64"},
        "hardware_class": "cpu-x86_64",
        "enrolled_at": st.utcnow(),
        "last_seen": None,
        "state": None,
        "running_name": None,
        "running_version": None,
        "running_release": None,
        "last_metrics": None,
    }


def _report(rid: str, state: str, rollout: dict, *, reason: str | None = None) -> rp.Report:
    return rp.parse_report(
        {
            "id": rid,
            "time": "2026-11-27T10:00:00Z",
            "type": "transition",
            "assignment_digest": DIGEST,
            "state": state,
            "rollout_id": rollout["id"],
            "release": rollout["release"],
            "reason_code": reason,
        },
        "r",
    )


def test_rollout_flow_in_the_store(initialized: tuple[ServerConfig, dict[str, str]], tmp_path: Path) -> None:
    config, _ = initialized
    s = build_services(config)
    for version in ("1.0.0", "1.1.0"):
        make_bundle(tmp_path / version, name="m", version=version)
        tar = tmp_path / f"{version}.tar"
        tar.write_bytes(bundle_tar(tmp_path / version))
        s.publisher.publish_tar(tar, actor="test")
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(i) for i in range(20)])
        gen0 = st.generation(conn)
        spec = ro.parse_rollout(
            {
                "model": "m",
                "version": "1.1.0",
                "group": "g",
                "tags": ["eu"],
                "stages": [10, 100],
                "max_failure_rate": 0.3,
                "min_devices_for_halt": 3,
            }
        )
        rollout = service.create_rollout(conn, spec, actor="test")
        issue(conn, rollout)
        assert st.generation(conn) > gen0
    with s.store.read() as conn:
        view = service.rollout_view(conn, rollout)
        assert view["selected_devices"] == 10  # the odd ones carry the "eu" tag
        first = [
            d
            for d in range(20)
            if ro.in_stage(ro.bucket(f"dev_{d:04d}", rollout["id"]), 10, rollout["floor_bucket"]) and d % 2
        ]
        assert view["progress"][0]["devices"] == len(first) >= 1
        signed = build_signed(conn, st.get_device(conn, f"dev_{first[0]:04d}"), "ab" * 16, ttl_s=60)
        assert signed["release"]["version"] == "1.1.0" and signed["rollout_id"] == rollout["id"]
        outsider = build_signed(conn, st.get_device(conn, "dev_0000"), "ab" * 16, ttl_s=60)
        assert outsider["target"] is None  # no tag, not selected
    with s.store.tx() as conn:
        for d in first:
            out = ingest(conn, f"dev_{d:04d}", [_report(f"ok{d}", "committed", rollout)])
            assert out["accepted"] == [f"ok{d}"]
        assert st.get_rollout(conn, rollout["id"])["stage"] == 1
        failing = [d for d in range(1, 20, 2) if d not in first][:3]
        for d in failing:
            ingest(conn, f"dev_{d:04d}", [_report(f"bad{d}", "failed", rollout, reason="LOW_AGREEMENT")])
        row = st.get_rollout(conn, rollout["id"])
        assert row["status"] == "halted" and "LOW_AGREEMENT" in row["halt_reason"]
        # replaying a report changes nothing
        dup = ingest(conn, f"dev_{failing[0]:04d}", [_report(f"bad{failing[0]}", "failed", rollout)])
        assert dup == {"accepted": [], "duplicates": [f"bad{failing[0]}"]}
        assert [e["kind"] for e in st.events(conn, rollout["id"])] == ["created", "stage-advanced", "halted"]
    s.store.dispose()


def _counted(conn, rollout: dict) -> ro.StageCounts:  # type: ignore[no-untyped-def]
    return ro.cumulative(service.stage_counts(conn, rollout))[-1]


def _timed(rid: str, state: str, rollout: dict, time: str, reason: str | None = None) -> rp.Report:
    return rp.parse_report(
        {
            "id": rid,
            "time": time,
            "type": "transition",
            "assignment_digest": DIGEST,
            "state": state,
            "rollout_id": rollout["id"],
            "release": rollout["release"],
            "reason_code": reason,
        },
        "r",
    )


def test_counters_are_incremental_latest_state_wins_and_idempotent(
    initialized: tuple[ServerConfig, dict[str, str]],
    tmp_path: Path,
) -> None:
    config, _ = initialized
    s = build_services(config)
    make_bundle(tmp_path / "b", name="m", version="1.0.0")
    (tmp_path / "b.tar").write_bytes(bundle_tar(tmp_path / "b"))
    s.publisher.publish_tar(tmp_path / "b.tar", actor="test")
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(i) for i in range(40)])
        spec = ro.parse_rollout(
            {
                "model": "m",
                "version": "1.0.0",
                "group": "g",
                "stages": [100],
                "max_failure_rate": 1.0,
                "success_quota": 1.0,
            }
        )
        rollout = service.create_rollout(conn, spec, actor="test")
        issue(conn, rollout)
        assert _counted(conn, rollout) == ro.StageCounts(40, 0, 0, 0, {})
    t = "2026-11-27T10:00:0{}Z"
    with s.store.tx() as conn:
        ingest(conn, "dev_0001", [_timed("a1", "downloading", rollout, t.format(1))])
        assert _counted(conn, rollout) == ro.StageCounts(40, 0, 0, 1, {})
        ingest(conn, "dev_0001", [_timed("a2", "failed", rollout, t.format(2), "NAN_OUTPUT")])
        ingest(conn, "dev_0002", [_timed("b1", "refused", rollout, t.format(2), "INCOMPATIBLE_HARDWARE")])
        assert _counted(conn, rollout) == ro.StageCounts(40, 0, 2, 0, {"NAN_OUTPUT": 1, "INCOMPATIBLE_HARDWARE": 1})
        # duplicates (same report ids) change nothing, in a batch or resent later
        out = ingest(conn, "dev_0001", [_timed("a2", "failed", rollout, t.format(2), "NAN_OUTPUT")] * 2)
        assert out["accepted"] == [] and _counted(conn, rollout).failure == 2
        # failed -> committed moves the device between counters exactly once
        ingest(conn, "dev_0001", [_timed("a3", "committed", rollout, t.format(3))])
        assert _counted(conn, rollout) == ro.StageCounts(40, 1, 1, 0, {"INCOMPATIBLE_HARDWARE": 1})
        ingest(conn, "dev_0001", [_timed("a4", "committed", rollout, t.format(4))])  # same outcome again
        # an older report arriving late never overrides the newer state
        ingest(conn, "dev_0001", [_timed("a0", "failed", rollout, t.format(0), "NAN_OUTPUT")])
        # a failure whose reason changes moves between reason counters
        ingest(conn, "dev_0002", [_timed("b2", "rolled-back", rollout, t.format(3), "HEALTH_REGRESSION")])
        assert _counted(conn, rollout) == ro.StageCounts(40, 1, 1, 0, {"HEALTH_REGRESSION": 1})
    with s.store.read() as conn:
        view = service.rollout_view(conn, rollout)
        assert view["totals"] == {"success": 1, "failure": 1, "pending": 0}
        assert view["failure_reasons"] == {"HEALTH_REGRESSION": 1} and view["failures"][0]["device_id"] == "dev_0002"
        # the counters agree with a full scan of the device rows
        rows = st.device_outcomes(conn, rollout["id"])
        scan = ro.count_stages(
            rollout["stages"],
            service.selected_buckets(conn, rollout),
            {r["device_id"]: r["outcome"] for r in rows},
            rollout["floor_bucket"],
            {r["device_id"]: r["reason_code"] for r in rows},
        )
        assert service.stage_counts(conn, rollout) == scan
    with s.store.tx() as conn:  # installing the rollout's own release changes no assignment: no bump
        gen = st.generation(conn)
        running = {"name": "m", "version": "1.0.0", "release": rollout["release"]}
        ingest(
            conn,
            "dev_0003",
            [rp.parse_report({"id": "h1", "time": t.format(5), "type": "heartbeat", "running": running}, "r")],
        )
        assert st.generation(conn) == gen and st.get_device(conn, "dev_0003")["running_release"] == rollout["release"]
    with s.store.tx() as conn:  # devices enrolled later join the counters of their stage
        row = _device(99)
        st.insert_devices(conn, [row])
        service.on_enrolled(conn, row)
        assert _counted(conn, rollout).devices == 41
    s.store.dispose()


def test_newest_rollout_wins_within_one_second(
    initialized: tuple[ServerConfig, dict[str, str]], tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Rollouts of different models to one group, created in the same second: the device gets the
    one created last, whatever their (random) ids sort as."""
    config, _ = initialized
    s = build_services(config)
    for name in ("base", "next", "third"):
        make_bundle(tmp_path / name, name=name, version="1.0.0")
        tar = tmp_path / f"{name}.tar"
        tar.write_bytes(bundle_tar(tmp_path / name))
        s.publisher.publish_tar(tar, actor="test")
    monkeypatch.setattr(st, "utcnow", lambda: "2026-11-27T10:00:00Z")
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(1)])
    created = []
    for name in ("base", "next", "third"):
        with s.store.tx() as conn:
            spec = ro.parse_rollout({"model": name, "version": "1.0.0", "group": "g", "stages": [100]})
            created.append(service.create_rollout(conn, spec, actor="test"))
        with s.store.read() as conn:
            signed = build_signed(conn, st.get_device(conn, "dev_0001"), "ab" * 16, ttl_s=60)
            assert signed["rollout_id"] == created[-1]["id"], (name, [r["id"] for r in created])
    with s.store.read() as conn:
        order = [r["id"] for r in st.list_rollouts(conn, group="g")]
    assert order == [r["id"] for r in created]
    assert [r["seq"] for r in created] == sorted({r["seq"] for r in created})
    s.store.dispose()
