"""Telemetry cannot fill the disk: one device posting the largest batches it may, as fast as it
can, against the real server (gunicorn, two workers, SQLite), is held to its report quota —
answered 429 with ``Retry-After`` — and the reports table grows by no more than the quota; what
a device says of itself (its hardware profile) is bounded field by field."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.device_reports import public_key_hex, sign_report
from ota_server.config import ServerConfig
from ota_server.rules import reports as rp
from tests.live_server import LiveServer, live_server

DEFAULTS = ServerConfig(data_dir=Path("."))


class Device:
    """An enrolled device with its report key."""

    def __init__(self, srv: LiveServer, name: str) -> None:
        self.key = Ed25519PrivateKey.generate()
        hardware = {"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2"]}
        status, body, _ = srv.api(
            "POST",
            "/api/v1/devices/enroll",
            json={"name": name, "hardware": hardware, "public_key": public_key_hex(self.key)},
            token=srv.enrollment_token,
        )
        assert status == 201, body
        self.id, self.token = str(body["device_id"]), str(body["device_token"])

    def batch(self, n: int = rp.MAX_REPORTS) -> list[dict[str, Any]]:
        """The largest batch a device may send: 500 reports with the longest detail kept."""
        report = {
            "time": "2026-11-27T10:00:00Z",
            "type": "heartbeat",
            "detail": "x" * rp.MAX_DETAIL,
            "metrics": {"p50_ms": 1.0, "p95_ms": 2.0, "fps": 30.0},
        }
        return [sign_report(self.key, self.id, {"id": str(uuid.uuid4()), **report}) for _ in range(n)]


def _stored(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        n, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM reports").fetchone()
    return int(n), int(size)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("quota")) as server:
        yield server


@pytest.mark.finding("M5")
def test_one_device_flooding_reports_is_held_to_its_quota(srv: LiveServer) -> None:
    dev = Device(srv, "flood")
    path = f"/api/v1/devices/{dev.id}/reports"
    db = srv.data_dir / "server.db"
    before = _stored(db)
    start = time.monotonic()
    statuses: list[int] = []
    refusals: list[tuple[Any, dict[str, str]]] = []
    while time.monotonic() - start < 4.0:
        status, body, headers = srv.api("POST", path, json={"reports": dev.batch()}, token=dev.token)
        statuses.append(status)
        if status == 429:
            refusals.append((body, headers))
        else:
            assert status == 200, body
    elapsed = time.monotonic() - start
    rows, size = (a - b for a, b in zip(_stored(db), before, strict=True))
    # the quota: at most the burst plus the sustained rate over the time of the flood
    assert rows <= DEFAULTS.report_burst + DEFAULTS.report_rate_per_s * elapsed, (rows, statuses)
    assert size <= DEFAULTS.report_burst_bytes + DEFAULTS.report_bytes_per_s * elapsed, (size, statuses)
    assert refusals, statuses
    body, headers = refusals[0]
    assert body["error"]["code"] == "TOO_MANY_REQUESTS" and body["error"]["field"] == "reports"
    assert int(headers["Retry-After"]) >= 1
    # the device itself still works: its other endpoints are not rate limited
    status, _, _ = srv.api("GET", f"/api/v1/devices/{dev.id}", token=dev.token)
    assert status == 200
    # and another device has a quota of its own
    other = Device(srv, "quiet")
    status, body, _ = srv.api(
        "POST", f"/api/v1/devices/{other.id}/reports", json={"reports": other.batch(3)}, token=other.token
    )
    assert status == 200 and len(body["accepted"]) == 3


@pytest.mark.finding("M5")
@pytest.mark.parametrize(
    ("hardware", "field"),
    [
        ({"board": "b" * 100_000}, "board"),
        ({"cpu_features": ["f"] * 10_000}, "cpu_features"),
        ({"extra": {f"k{i}": "v" for i in range(1000)}}, "extra"),
        ({"extra": {"blob": {"deep": ["x"] * 1000}}}, "extra.blob"),
    ],
)
def test_an_oversized_hardware_field_is_a_400_naming_it(srv: LiveServer, hardware: dict[str, Any], field: str) -> None:
    dev = Device(srv, "hw")
    profile = {"arch": "x86_64", "accelerator": "cpu", **hardware}
    status, body, _ = srv.api("PUT", f"/api/v1/devices/{dev.id}/hardware", json=profile, token=dev.token)
    assert status == 400 and body["error"]["field"] == f"body.{field}", body
    key = Ed25519PrivateKey.generate()
    status, body, _ = srv.api(
        "POST",
        "/api/v1/devices/enroll",
        json={"name": "big", "hardware": profile, "public_key": public_key_hex(key)},
        token=srv.enrollment_token,
    )
    assert status == 400 and body["error"]["field"] == f"hardware.{field}", body
