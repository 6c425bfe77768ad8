"""The report quota and the report retention on SQLite and PostgreSQL: the buckets are shared
through the database, and the server deletes what it received longer ago than the retention."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.device_reports import public_key_hex, sign_report
from ota_server.app import create_app
from ota_server.cli import build_parser, with_report_limits
from ota_server.config import ServerConfig
from ota_server.errors import SetupError
from ota_server.fleet import telemetry
from ota_server.rules.quota import Quota
from ota_server.storage import db
from ota_server.storage import store as st
from ota_server.storage.store import Store

Q = Quota(reports_per_s=1.0, report_burst=10.0, bytes_per_s=100.0, byte_burst=1000.0)


def test_the_quota_is_one_bucket_for_every_connection(initialized: tuple[ServerConfig, dict[str, str]]) -> None:
    config, _ = initialized
    stores = [Store(config.effective_db_url), Store(config.effective_db_url)]  # two workers
    try:
        with stores[0].read() as conn:
            assert telemetry.peek(conn, Q, "dev_a", 1000, now=0.0) == 0
        with stores[0].tx() as conn:
            assert telemetry.charge(conn, Q, "dev_a", 6, 600, now=0.0) == 0
        with stores[1].tx() as conn:
            assert telemetry.charge(conn, Q, "dev_a", 4, 500, now=0.0) == 1  # 100 bytes short, at 100/s
        with stores[1].tx() as conn:
            assert telemetry.charge(conn, Q, "dev_a", 4, 400, now=0.0) == 0
            assert telemetry.charge(conn, Q, "dev_b", 10, 1000, now=0.0) == 0  # another device, its own
        with stores[0].read() as conn:
            assert telemetry.peek(conn, Q, "dev_a", 1, now=0.0) == 1
            assert telemetry.peek(conn, Q, "dev_a", 500, now=5.0) == 0
        with stores[0].tx() as conn:
            assert telemetry.charge(conn, Q, "dev_a", 1, 1, now=0.5) == 1  # no report left until t=1
    finally:
        for s in stores:
            s.dispose()


def _row(device: str, rid: str, *, received: str | None, time: str = "2026-11-27T10:00:00Z") -> dict[str, Any]:
    return {
        "device_id": device,
        "id": rid,
        "time": time,
        "type": "heartbeat",
        "state": None,
        "rollout_id": None,
        "release": None,
        "reason_code": None,
        "body": {"id": rid},
        "received_at": received,
    }


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_retention_deletes_by_when_the_server_received_a_report(
    initialized: tuple[ServerConfig, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = initialized
    store = Store(config.effective_db_url)
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    try:
        with store.tx() as conn:
            st.insert_reports(
                conn,
                [
                    _row("d", "old", received=_iso(now - timedelta(days=3))),
                    # the device's own time says nothing: a report from the "future" still expires
                    _row("d", "future", received=_iso(now - timedelta(days=3)), time="2099-01-01T00:00:00Z"),
                    _row("d", "fresh", received=_iso(now - timedelta(hours=1)), time="2000-01-01T00:00:00Z"),
                    _row("d", "legacy-old", received=None, time="2026-11-01T00:00:00Z"),
                    _row("d", "legacy-new", received=None, time=_iso(now)),
                ]
                + [_row("e", f"bulk{i}", received=_iso(now - timedelta(days=9))) for i in range(25)],
            )
        monkeypatch.setattr(telemetry, "PRUNE_CHUNK", 10)  # several chunks, one transaction each
        assert telemetry.Retention(store, 2.0).prune(now=now) == 28
        with store.read() as conn:
            left = set(conn.execute(sa.select(db.reports.c.id)).scalars())
        assert left == {"fresh", "legacy-new"}
        assert telemetry.Retention(store, 0.0).maybe_prune() is None  # 0 keeps everything
    finally:
        store.dispose()


def test_the_server_applies_the_retention_on_the_report_path(
    initialized: tuple[ServerConfig, dict[str, str]],
) -> None:
    config, result = initialized
    app = create_app(config.with_overrides(report_retention_days=1.0, testing=True))
    client = app.test_client()
    key = Ed25519PrivateKey.generate()
    answer = client.post(
        "/api/v1/devices/enroll",
        json={"name": "d", "hardware": {"arch": "x86_64"}, "public_key": public_key_hex(key)},
        headers={"Authorization": f"Bearer {result['enrollment_token']}"},
    )
    assert answer.status_code == 201, answer.get_json()
    device, token = answer.get_json()["device_id"], answer.get_json()["device_token"]
    store = app.extensions["edgefleet"].store
    old = _iso(datetime.now(timezone.utc) - timedelta(days=2))
    with store.tx() as conn:
        st.insert_reports(conn, [_row(device, f"old{i}", received=old) for i in range(5)])
    report = sign_report(key, device, {"id": str(uuid.uuid4()), "time": "2026-11-27T10:00:00Z", "type": "heartbeat"})
    answer = client.post(
        f"/api/v1/devices/{device}/reports", json={"reports": [report]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.get_json()
    with store.read() as conn:
        rows = conn.execute(sa.select(db.reports.c.id, db.reports.c.received_at)).all()
    assert [r.id for r in rows] == [report["id"]] and rows[0].received_at is not None


def test_serve_takes_the_retention_and_the_quota_from_its_flags(tmp_path: Path) -> None:
    base = ServerConfig(data_dir=tmp_path)
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path)])
    assert with_report_limits(base, args) == base  # the defaults are the config's
    args = build_parser().parse_args(
        [
            "serve",
            "--data-dir",
            str(tmp_path),
            "--report-retention-days",
            "7",
            "--report-rate",
            "0.5",
            "--report-burst",
            "600",
            "--report-kib-per-s",
            "2",
            "--report-burst-kib",
            "3072",
        ]
    )
    config = with_report_limits(base, args)
    assert (
        config.report_retention_days,
        config.report_rate_per_s,
        config.report_burst,
        config.report_bytes_per_s,
        config.report_burst_bytes,
    ) == (7.0, 0.5, 600, 2048.0, 3 * 1024 * 1024)
    for flags in (
        ["--report-burst", "10"],
        ["--report-burst-kib", "1"],
        ["--report-rate", "0"],
        ["--report-retention-days", "-1"],
    ):
        with pytest.raises(SetupError):
            with_report_limits(base, build_parser().parse_args(["serve", "--data-dir", str(tmp_path), *flags]))
