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
from tests.conftest import wait_until


class SlowDirector:
    """The device API of a server that answers each poll after ``poll_s``: one device (``target``)
    has a release to install, every other poll is a 304. Reports are recorded with their time."""

    def __init__(self, *, poll_s: float, target: str) -> None:
        self.poll_s = poll_s
        self.target = target
        self.polled: set[str] = set()
        self.reports: list[tuple[str, str | None]] = []  # (device id, state)
        self.events: list[tuple[str | None, str]] = []  # as the server answered: ("poll", id) / (state, id)
        self._lock = threading.Lock()

    def assignment(self, device_id: str, *, token: str, nonce: str, etag: str | None = None) -> AssignmentPoll:
        time.sleep(self.poll_s)
        with self._lock:
            self.polled.add(device_id)
            self.events.append(("poll", device_id))
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
            self.reports += [(device_id, r["state"]) for r in reports]
            self.events += [(r["state"], device_id) for r in reports]
        return {"accepted": [r["id"] for r in reports], "duplicates": []}

    def download_target(self, path: str, sha256: str) -> bytes:
        raise AssertionError("the test runs without downloads")


def test_an_update_does_not_wait_behind_a_round_of_overdue_polls() -> None:
    """40 devices on one connection, each poll 30 ms, polls due every millisecond: the server is
    far slower than the fleet wants, so every poll is overdue. The device that accepted an
    assignment still reports ``committed`` once its ``apply_delay_s`` is due, not after the other
    39 devices' polls, and the others keep being polled meanwhile."""
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
    try:
        wait_until(lambda: sim.stats.snapshot().get("committed", 0) > 0, timeout=30, what="the committed report")
        wait_until(lambda: len(server.polled) == 40, timeout=30, what="a poll of every device")
    finally:
        sim.stop.set()
        worker.join(timeout=5)
    states = [state for dev, state in server.reports if dev == "dev_05"]
    assert states == ["downloading", "committed"], server.reports
    # the final report was due apply_delay_s (55 ms at most) after the first, and every poll takes at least
    # 30 ms: at most two polls can end in between (a whole round would be 39), whatever the host's load
    first, final = server.events.index(("downloading", "dev_05")), server.events.index(("committed", "dev_05"))
    between = server.events[first + 1 : final]
    assert all(kind == "poll" for kind, _ in between) and len(between) <= 2, between
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
