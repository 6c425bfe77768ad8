"""Report ingest on SQLite and PostgreSQL: gate evidence and reason codes are stored, kept
across the transitions of one update, and shown in the rollout and device views."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ota_server.api.devices import device_view
from ota_server.client.ctl_render import gate_lines
from ota_server.config import ServerConfig
from ota_server.fleet import service
from ota_server.fleet.ingest import ingest
from ota_server.rules import reports as rp
from ota_server.rules import rollouts as ro
from ota_server.services import build_services
from ota_server.serving.auth import token_digest
from ota_server.storage import db
from ota_server.storage import store as st
from tests.bundles import make_bundle
from tests.live_server import bundle_tar
from tests.ota_server.evidence_cases import refusal_gate, rollback_gate
from tests.ota_server.fleet.issued import DIGEST, issue
from tests.ota_server.rules.test_reports import _report


def _device(i: int) -> dict[str, Any]:
    return {
        "id": f"dev_{i}",
        "token_digest": token_digest(secrets.token_hex(8)),
        "name": f"d{i}",
        "group_name": "g",
        "tags": [],
        "hardware": {"arch": "x86_64", "accelerator": "cpu"},
        "hardware_class": "cpu-x86_64",
        "enrolled_at": st.utcnow(),
        "last_seen": None,
        "state": None,
        "running_name": None,
        "running_version": None,
        "running_release": None,
        "last_metrics": None,
    }


def _transition(rollout: dict[str, Any], state: str, second: int, **fields: Any) -> rp.Report:
    return rp.parse_report(
        _report(
            id=f"{state}-{second}-{secrets.token_hex(4)}",
            type="transition",
            assignment_digest=DIGEST,
            state=state,
            time=f"2026-11-27T10:00:{second:02d}Z",
            rollout_id=rollout["id"],
            release=rollout["release"],
            **fields,
        ),
        "r",
    )


def test_evidence_and_reason_codes_are_stored_and_shown(
    initialized: tuple[ServerConfig, dict[str, str]], tmp_path: Path
) -> None:
    config, _ = initialized
    s = build_services(config)
    make_bundle(tmp_path / "b", name="m", version="1.0.0")
    (tmp_path / "b.tar").write_bytes(bundle_tar(tmp_path / "b"))
    s.publisher.publish_tar(tmp_path / "b.tar", actor="test")
    gate = refusal_gate()
    with s.store.tx() as conn:
        st.insert_devices(conn, [_device(i) for i in range(5)])
        spec = ro.parse_rollout(
            {"model": "m", "version": "1.0.0", "group": "g", "stages": [100], "max_failure_rate": 1.0}
        )
        rollout = service.create_rollout(conn, spec, actor="test")
        issue(conn, rollout)
    with s.store.tx() as conn:
        ingest(
            conn,
            "dev_0",
            [
                _transition(rollout, "benchmarking", 1, reason_code=None),
                _transition(rollout, "refused", 2, reason_code="LOW_AGREEMENT", gate=gate, variant="onnx-fp32"),
            ],
        )
        passed = dict(gate, agreement=dict(gate["agreement"], decision="accept", confusion=[]))
        running = {"name": "m", "version": "1.0.0", "release": rollout["release"]}
        ingest(
            conn,
            "dev_1",
            [
                _transition(rollout, "benchmarking", 1, reason_code=None, gate=passed, variant="onnx-fp32"),
                _transition(rollout, "committed", 3, reason_code=None, running=running),
            ],
        )
        ingest(conn, "dev_2", [_transition(rollout, "failed", 2, reason_code="NOT_ENOUGH_FRAMES")])
        ingest(conn, "dev_3", [_transition(rollout, "failed", 2, reason_code="SOURCE_ENDED")])
        ingest(
            conn,
            "dev_4",
            [
                _transition(rollout, "benchmarking", 1, reason_code=None, gate=passed, variant="onnx-fp32"),
                _transition(rollout, "rolled-back", 4, reason_code="HEALTH_REGRESSION", gate=rollback_gate()),
            ],
        )
    with s.store.read() as conn:
        view = service.rollout_view(conn, rollout)
        refused = device_view(st.get_device(conn, "dev_0"))
        committed = device_view(st.get_device(conn, "dev_1"))
        stored = conn.execute(
            sa.select(db.reports.c.body).where(db.reports.c.device_id == "dev_0", db.reports.c.state == "refused")
        ).scalar_one()
    assert view["failure_reasons"] == {
        "LOW_AGREEMENT": 1,
        "NOT_ENOUGH_FRAMES": 1,
        "SOURCE_ENDED": 1,
        "HEALTH_REGRESSION": 1,
    }
    assert view["variants"] == {"onnx-fp32": 3}
    # the health window's latency evidence joins the shadow run's for the same release
    rolled = next(f for f in view["failures"] if f["device_id"] == "dev_4")
    assert rolled["gate"]["latency"] == rollback_gate()["latency"] and rolled["variant"] == "onnx-fp32"
    assert rolled["gate"]["agreement"]["decision"] == "accept" and rolled["gate"]["state"] == "rolled-back"
    assert "regressed" in "\n".join(gate_lines(rolled["gate"]))
    failure = next(f for f in view["failures"] if f["device_id"] == "dev_0")
    assert failure["variant"] == "onnx-fp32" and failure["reason_code"] == "LOW_AGREEMENT"
    assert failure["gate"]["agreement"] == gate["agreement"] and failure["gate"]["timing"] == gate["timing"]
    assert refused["gate"]["agreement"]["confusion"][0] == {"active": "red", "candidate": "green", "count": 7}
    assert refused["gate"]["state"] == "refused" and refused["gate"]["reason_code"] == "LOW_AGREEMENT"
    # the committed report carried no evidence: the gate's evidence and variant stay, and the
    # device serves the variant it chose for the release it now runs
    assert committed["gate"]["agreement"]["decision"] == "accept"
    assert committed["running"] == dict(running, variant="onnx-fp32")
    assert stored["gate"] == gate and stored["reason_code"] == "LOW_AGREEMENT"
    s.store.dispose()
