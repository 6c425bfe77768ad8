"""Store + rollout services in-process, on SQLite and on PostgreSQL: publish, enroll, report, halt."""

from __future__ import annotations

import secrets
from pathlib import Path

from ota_server import reports as rp
from ota_server import rollouts as ro
from ota_server import service
from ota_server import store as st
from ota_server.app import build_services
from ota_server.auth import token_digest
from ota_server.config import ServerConfig
from ota_server.director import build_signed
from tests.bundles import make_bundle
from tests.live_server import bundle_tar


def _device(i: int, group: str = "g") -> dict:
    return {"id": f"dev_{i:04d}", "token_digest": token_digest(secrets.token_hex(8)), "name": f"d{i}",
            "group_name": group, "tags": ["eu"] if i % 2 else [], "hardware": {"arch": "x86_64"},
            "hardware_class": "cpu-x86_64", "enrolled_at": st.utcnow(), "last_seen": None, "state": None,
            "running_name": None, "running_version": None, "running_release": None, "last_metrics": None}


def _report(rid: str, state: str, rollout: dict, *, reason: str | None = None) -> rp.Report:
    return rp.parse_report({"id": rid, "time": "2026-11-27T10:00:00Z", "type": "transition", "state": state,
                            "rollout_id": rollout["id"], "release": rollout["release"], "reason_code": reason}, "r")


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
        spec = ro.parse_rollout({"model": "m", "version": "1.1.0", "group": "g", "tags": ["eu"],
                                 "stages": [10, 100], "max_failure_rate": 0.3, "min_devices_for_halt": 3})
        rollout = service.create_rollout(conn, spec, actor="test")
        assert st.generation(conn) > gen0
    with s.store.read() as conn:
        view = service.rollout_view(conn, rollout)
        assert view["selected_devices"] == 10  # the odd ones carry the "eu" tag
        first = [d for d in range(20) if ro.in_stage(ro.bucket(f"dev_{d:04d}", rollout["id"]), 10,
                                                     rollout["floor_bucket"]) and d % 2]
        assert view["progress"][0]["devices"] == len(first) >= 1
        signed = build_signed(conn, st.get_device(conn, f"dev_{first[0]:04d}"), "ab" * 16, ttl_s=60)
        assert signed["release"]["version"] == "1.1.0" and signed["rollout_id"] == rollout["id"]
        outsider = build_signed(conn, st.get_device(conn, "dev_0000"), "ab" * 16, ttl_s=60)
        assert outsider["target"] is None  # no tag, not selected
    with s.store.tx() as conn:
        for d in first:
            out = rp.ingest(conn, f"dev_{d:04d}", [_report(f"ok{d}", "committed", rollout)])
            assert out["accepted"] == [f"ok{d}"]
        assert st.get_rollout(conn, rollout["id"])["stage"] == 1
        failing = [d for d in range(1, 20, 2) if d not in first][:3]
        for d in failing:
            rp.ingest(conn, f"dev_{d:04d}", [_report(f"bad{d}", "failed", rollout, reason="LOW_AGREEMENT")])
        row = st.get_rollout(conn, rollout["id"])
        assert row["status"] == "halted" and "LOW_AGREEMENT" in row["halt_reason"]
        # replaying a report changes nothing
        dup = rp.ingest(conn, f"dev_{failing[0]:04d}", [_report(f"bad{failing[0]}", "failed", rollout)])
        assert dup == {"accepted": [], "duplicates": [f"bad{failing[0]}"]}
        assert [e["kind"] for e in st.events(conn, rollout["id"])] == ["created", "stage-advanced", "halted"]
    s.store.dispose()
