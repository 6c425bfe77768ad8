"""The fleet simulator's own mechanics, without a server: how it schedules devices when the
server is slower than the fleet, and how it turns a rollout's timeline into per-stage figures.

The live behaviour (real server, real rollouts) is tested in ``tests/e2e/test_fleet_sim.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from ota_server.client.schema import AssignmentPoll, Report, ReportsResult
from ota_server.client.simulator import SimConfig, Simulator, build_devices
from ota_server.client.watch import format_stage_table, stage_metrics


class SlowDirector:
    """The device API of a server that answers each poll after ``poll_s``: one device (``target``)
    has a release to install, every other poll is a 304. Reports are recorded with their time."""

    def __init__(self, *, poll_s: float, target: str) -> None:
        self.poll_s = poll_s
        self.target = target
        self.polled: set[str] = set()
        self.reports: list[tuple[float, str, str]] = []  # (monotonic time, device id, state)
        self._lock = threading.Lock()

    def assignment(self, device_id: str, *, token: str, nonce: str, etag: str | None = None) -> AssignmentPoll:
        time.sleep(self.poll_s)
        with self._lock:
            self.polled.add(device_id)
        if device_id != self.target:
            return AssignmentPoll(304, etag, None)
        signed = {
            "device_id": device_id,
            "nonce": nonce,
            "rollout_id": "ro_1",
            "release": {"counter": 7, "name": "m", "version": "1.0.0"},
            "target": {"path": "m/1.0.0/model.onnx", "length": 1, "hashes": {"sha256": "0" * 64}},
        }
        return AssignmentPoll(200, '"a7"', {"signed": signed, "signatures": []})

    def post_reports(self, device_id: str, reports: Sequence[Report], *, token: str) -> ReportsResult:
        with self._lock:
            self.reports += [(time.monotonic(), device_id, r["state"]) for r in reports]
        return {"accepted": [r["id"] for r in reports], "duplicates": []}

    def download_target(self, path: str, sha256: str) -> bytes:
        raise AssertionError("the test runs without downloads")


def test_an_update_does_not_wait_behind_a_round_of_overdue_polls() -> None:
    """40 devices on one connection, each poll 30 ms, polls due every millisecond: the server is
    far slower than the fleet wants, so every poll is overdue. The device that accepted an
    assignment still reports ``committed`` about ``apply_delay_s`` later, not after the other
    39 devices' polls (≥ 1.17 s), and the others keep being polled meanwhile."""
    cfg = SimConfig(
        server="http://fake",
        enroll_token="unused",
        devices=40,
        workers=1,
        poll_interval_s=0.001,
        apply_delay_s=0.05,
        download=False,
        verify=False,
    )
    devices = build_devices(cfg)
    for d in devices:
        d.device_id, d.nonce = f"dev_{d.index:02d}", "ab" * 16
    server = SlowDirector(poll_s=0.03, target="dev_05")
    sim = Simulator(cfg, server, devices)
    worker = threading.Thread(target=sim.worker, args=(devices, 0), daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    while sim.stats.snapshot().get("committed", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    while len(server.polled) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.stop.set()
    worker.join(timeout=5)
    times = {state: t for t, dev, state in server.reports if dev == "dev_05"}
    assert set(times) == {"downloading", "committed"}, server.reports
    assert times["committed"] - times["downloading"] < 0.5
    assert devices[5].version == "1.0.0"
    assert len(server.polled) == 40, "polls of the other devices go on"


def _mark(t: float, status: str, stage: int, polls: int, reports: int) -> dict[str, Any]:
    return {
        "t": t,
        "event": f"status={status} stage={stage}",
        "status": status,
        "stage": stage,
        "counts": {"polls": polls, "reports": reports},
    }


ROLLOUT = {
    "stages": [1.0, 10.0, 50.0, 100.0],
    "progress": [{"stage": k, "devices": n, "succeeded": 0} for k, n in enumerate((10, 100, 500, 1000))],
}


@pytest.mark.parametrize(
    ("timeline", "end", "expected"),
    [
        pytest.param(  # every stage seen; the last one completes
            [
                _mark(0, "active", 0, 0, 0),
                _mark(10, "active", 1, 1000, 20),
                _mark(30, "active", 2, 3000, 220),
                _mark(70, "active", 3, 7000, 1020),
                _mark(150, "completed", 3, 15000, 2020),
            ],
            {"t": 151, "counts": {"polls": 15100, "reports": 2020}},
            [
                (10.0, 100.0, 2.0, "advanced"),
                (20.0, 100.0, 10.0, "advanced"),
                (40.0, 100.0, 20.0, "advanced"),
                (80.0, 100.0, 12.5, "completed"),
            ],
            id="completed",
        ),
        pytest.param(  # stage 1 passed between two observations; the watch ended in stage 3
            [_mark(0, "active", 0, 0, 0), _mark(10, "active", 2, 500, 40), _mark(20, "active", 3, 1500, 60)],
            {"t": 30, "counts": {"polls": 2000, "reports": 90}},
            [
                (10.0, 50.0, 4.0, "advanced"),
                (None, None, None, None),
                (10.0, 100.0, 2.0, "advanced"),
                (10.0, 50.0, 3.0, None),
            ],
            id="skipped-and-unfinished",
        ),
        pytest.param(
            [_mark(0, "active", 0, 0, 0), _mark(5, "halted", 0, 100, 30)],
            {"t": 6, "counts": {"polls": 110, "reports": 30}},
            [(5.0, 20.0, 6.0, "halted"), (None, None, None, None), (None, None, None, None), (None, None, None, None)],
            id="halted",
        ),
    ],
)
def test_stage_metrics(
    timeline: list[dict[str, Any]],
    end: dict[str, Any],
    expected: list[tuple[float | None, float | None, float | None, str | None]],
) -> None:
    rows = stage_metrics(timeline, ROLLOUT, end)
    assert [(r["advance_s"], r["polls_per_s"], r["reports_per_s"], r["left_as"]) for r in rows] == expected
    assert [r["devices"] for r in rows] == [10, 100, 500, 1000]
    table = format_stage_table(rows).splitlines()
    assert len(table) == 5 and "time to advance" in table[0] and "reports/s" in table[0]
