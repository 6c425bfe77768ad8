"""One device's change re-signs that device's assignment only (real server, SQLite and PostgreSQL).

A device's ``PUT /hardware`` and a new enrollment change no other device's assignment, so every
other device's next poll is still answered from the caches: no new signature, the same ETag. A
rollout change still invalidates what it affects. Signatures are counted by
``edgefleet_assignment_signatures_total`` in ``/metrics`` (summed over the workers).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server

_SIGNED = re.compile(r"^edgefleet_assignment_signatures_total(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


@pytest.fixture
def server(tmp_path: Path, db_url: str | None) -> Iterator[LiveServer]:
    with live_server(tmp_path, db_url=db_url) as srv:
        make_bundle(tmp_path / "b", name="scope", version="1.0.0")
        srv.publish(tmp_path / "b")
        yield srv


def _signatures(server: LiveServer) -> float:
    status, body, _ = server.api("GET", "/metrics", token=server.tokens["viewer"])
    assert status == 200
    return sum(float(v) for v in _SIGNED.findall(body.decode() if isinstance(body, bytes) else str(body)))


class Device:
    def __init__(self, server: LiveServer, name: str) -> None:
        self.server = server
        self.enrolled = server.enroll(name=name)
        self.id = self.enrolled["device_id"]
        self.nonce = secrets.token_hex(16)
        self.etag: str | None = None

    def poll(self) -> int:
        headers = {"If-None-Match": self.etag} if self.etag else None
        status, body, answer = self.server.api(
            "GET",
            f"/api/v1/devices/{self.id}/assignment?nonce={self.nonce}",
            token=self.enrolled["device_token"],
            headers=headers,
        )
        assert status in (200, 304), body
        assert self.etag is None or answer["ETag"] == self.etag or status == 200
        self.etag = answer["ETag"]
        return status

    def put_hardware(self, hardware: dict[str, Any]) -> None:
        status, body, _ = self.server.api(
            "PUT", f"/api/v1/devices/{self.id}/hardware", json=hardware, token=self.enrolled["device_token"]
        )
        assert status == 200, body


@pytest.mark.finding("L15")
def test_a_devices_own_change_resigns_only_its_assignment(server: LiveServer) -> None:
    server.create_rollout(model="scope", version="1.0.0", group="default", stages=[100])
    a, b = Device(server, "a"), Device(server, "b")
    assert a.poll() == 200 and b.poll() == 200
    for _ in range(2):  # both polls land on either worker: the spool answers on the other
        assert a.poll() == 304 and b.poll() == 304
    base = _signatures(server)
    assert base >= 2

    a.put_hardware({"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2", "avx512f"]})
    for _ in range(2):
        assert b.poll() == 304
    assert _signatures(server) == base  # B's assignment is still the cached one
    a.poll()
    assert _signatures(server) == base + 1  # A's is signed afresh, for its new hardware
    detail = server.api("GET", f"/api/v1/devices/{a.id}", token=server.tokens["viewer"])[1]
    assert "avx512f" in detail["hardware"]["cpu_features"]

    Device(server, "c")  # an enrollment changes nobody else's assignment
    for _ in range(2):
        assert a.poll() == 304 and b.poll() == 304
    assert _signatures(server) == base + 1

    # a rollout change still re-signs what it affects
    (rollout,) = server.api("GET", "/api/v1/rollouts", token=server.tokens["viewer"])[1]["rollouts"]
    status, body, _ = server.api("POST", f"/api/v1/rollouts/{rollout['id']}/pause", token=server.tokens["operator"])
    assert status == 200, body
    assert a.poll() == 200 and b.poll() == 200  # paused: no target any more
    assert _signatures(server) == base + 3
