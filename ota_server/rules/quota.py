"""The per-device report quota, pure: two token buckets, one of reports and one of bytes.

Each device has a bucket of reports and a bucket of request bytes. A bucket refills at its rate,
up to its burst; a batch of ``n`` reports in a body of ``b`` bytes takes ``n`` and ``b`` tokens
and is accepted only when both buckets hold them. Otherwise it takes nothing and the answer says
how long until both would: the ``Retry-After`` of the 429. Over any window of ``T`` seconds a
device gets at most ``burst + rate * T`` reports and bytes accepted, which bounds how fast it
can grow the database.

No I/O and no clock: the caller passes the time, and keeps the level in the store
(:mod:`ota_server.fleet.telemetry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Level", "Quota", "take"]


@dataclass(frozen=True)
class Quota:
    """The rates (per second) and bursts of both buckets."""

    reports_per_s: float
    report_burst: float
    bytes_per_s: float
    byte_burst: float

    def full(self, now: float) -> Level:
        """A device's level before its first report: both buckets full."""
        return Level(self.report_burst, self.byte_burst, now)


@dataclass(frozen=True)
class Level:
    """What the buckets held at ``at`` (seconds since the epoch)."""

    reports: float
    bytes: float
    at: float


def _refilled(held: float, rate: float, burst: float, elapsed: float) -> float:
    return min(burst, held + elapsed * rate)


def take(quota: Quota, level: Level | None, now: float, reports: int, nbytes: int) -> tuple[Level, int]:
    """Take ``reports`` and ``nbytes`` tokens at ``now``.

    Returns the level after and 0 when the batch fits; else the refilled level, untouched by the
    batch, and the whole seconds (at least 1) until it would fit. A batch larger than a burst is
    charged the whole burst, so it waits for a full bucket instead of forever. A clock that went
    back refills nothing.
    """
    held = level or quota.full(now)
    elapsed = max(0.0, now - held.at)
    have_r = _refilled(held.reports, quota.reports_per_s, quota.report_burst, elapsed)
    have_b = _refilled(held.bytes, quota.bytes_per_s, quota.byte_burst, elapsed)
    need_r = min(float(reports), quota.report_burst)
    need_b = min(float(nbytes), quota.byte_burst)
    refilled = Level(have_r, have_b, max(now, held.at))
    if have_r >= need_r and have_b >= need_b:
        return Level(have_r - need_r, have_b - need_b, refilled.at), 0
    wait = max((need_r - have_r) / quota.reports_per_s, (need_b - have_b) / quota.bytes_per_s)
    return refilled, max(1, math.ceil(wait))
