"""What reports may cost the server: the per-device report quota and the report retention.

The quota (:mod:`ota_server.rules.quota`) is kept in the ``report_quota`` table and charged in
the transaction that stores the batch, under the device's ``quota:`` lock (PostgreSQL advisory
lock; SQLite writers are serial), so every worker and host draws on the same buckets: a hard
bound, not a per-worker estimate. :func:`peek` is the cheap look before a body is parsed, on a
read connection: a device whose buckets cannot hold its body is refused without parsing it.

Retention deletes the reports the server received more than ``report_retention_days`` ago.
:class:`Retention` runs it from the report path, at most once per :data:`PRUNE_EVERY_S` in each
worker and never in two of a worker's threads at once, in chunks of :data:`PRUNE_CHUNK` rows, one
transaction each, so no prune holds the write lock long.

Knows nothing of Flask: the 429 and its ``Retry-After`` are :mod:`ota_server.api.devices`.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Connection

from ota_server.config import ServerConfig
from ota_server.rules.quota import Level, Quota, take
from ota_server.storage import store as st
from ota_server.storage.store import Store

__all__ = ["PRUNE_CHUNK", "PRUNE_EVERY_S", "Retention", "charge", "peek", "quota_of"]

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0  # seconds between two prunes in one worker
PRUNE_CHUNK = 10_000  # reports deleted per transaction
PRUNE_MAX_CHUNKS = 100  # chunks per prune; what is left waits for the next one


def quota_of(config: ServerConfig) -> Quota:
    return Quota(
        reports_per_s=config.report_rate_per_s,
        report_burst=float(config.report_burst),
        bytes_per_s=config.report_bytes_per_s,
        byte_burst=float(config.report_burst_bytes),
    )


def _level(conn: Connection, device_id: str) -> Level | None:
    row = st.report_quota(conn, device_id)
    return Level(row["reports"], row["bytes"], row["at"]) if row is not None else None


def peek(conn: Connection, quota: Quota, device_id: str, nbytes: int, *, now: float | None = None) -> int:
    """Seconds until the device's byte bucket could hold a body of ``nbytes`` (0: it can now);
    reads only, takes nothing."""
    _, wait = take(quota, _level(conn, device_id), time.time() if now is None else now, 0, nbytes)
    return wait


def charge(
    conn: Connection, quota: Quota, device_id: str, reports: int, nbytes: int, *, now: float | None = None
) -> int:
    """Take a batch of ``reports`` in ``nbytes`` from the device's buckets, in the caller's
    transaction, before anything of the batch is stored; returns 0 when taken, else the seconds
    (at least 1) to wait, and stores nothing."""
    st.lock(conn, f"quota:{device_id}")
    level = _level(conn, device_id)
    after, wait = take(quota, level, time.time() if now is None else now, reports, nbytes)
    if wait == 0:
        st.write_report_quota(
            conn, device_id, reports=after.reports, nbytes=after.bytes, at=after.at, exists=level is not None
        )
    return wait


class Retention:
    """Deletes reports older than ``days`` (0: keeps them all), from the report path of one worker."""

    def __init__(self, store: Store, days: float, *, every_s: float = PRUNE_EVERY_S) -> None:
        self.store = store
        self.days = days
        self.every_s = every_s
        self._due = 0.0  # monotonic time of the next prune; the first request prunes
        self._running = threading.Lock()

    def maybe_prune(self) -> int | None:
        """Prune when due and no other thread of this worker is pruning; returns how many
        reports were deleted, None when it did not run."""
        if not self.days or time.monotonic() < self._due or not self._running.acquire(blocking=False):
            return None
        try:
            self._due = time.monotonic() + self.every_s
            return self.prune()
        finally:
            self._running.release()

    def prune(self, *, now: datetime | None = None) -> int:
        """Delete every report received more than ``days`` before ``now`` (up to
        :data:`PRUNE_MAX_CHUNKS` chunks); returns how many were deleted."""
        moment = now or datetime.now(timezone.utc)
        cutoff = (moment - timedelta(days=self.days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        deleted = 0
        for _ in range(PRUNE_MAX_CHUNKS):
            with self.store.tx() as conn:
                n = st.delete_reports_before(conn, cutoff, limit=PRUNE_CHUNK)
            deleted += n
            if n < PRUNE_CHUNK:
                break
        if deleted:
            log.info("report retention: deleted %d reports received before %s", deleted, cutoff)
        return deleted
