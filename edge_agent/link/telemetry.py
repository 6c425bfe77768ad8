"""Telemetry outbox: reports persisted in SQLite, sent in order, each id once.

Every transition, gate result and heartbeat is written to ``outbox.sqlite``
(WAL, synchronous=FULL) before anyone tries to send it. :meth:`Outbox.flush`
posts the oldest unsent reports in batches; a report leaves the outbox only
when the server lists its id as accepted or duplicate, so a crash or an
unreachable server loses nothing and a resend is deduplicated by id. A server
that answers :class:`~edge_agent.errors.RateLimited` (429, the device is over
its report quota) is left alone for its ``retry_after_s``: flushes before then
send nothing and return 0, and the reports wait in the outbox. This module does
not know HTTP (the sender is a callable).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.errors import JournalError, RateLimited, ReasonCode

__all__ = ["Outbox", "make_report", "utc_now_iso"]

log = logging.getLogger(__name__)
Sender = Callable[[list[dict[str, Any]]], Mapping[str, Sequence[str]]]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_report(
    type_: str,
    *,
    state: str | None = None,
    rollout_id: str | None = None,
    release: int | None = None,
    reason_code: ReasonCode | None = None,
    detail: str | None = None,
    metrics: Mapping[str, float] | None = None,
    running: Mapping[str, Any] | None = None,
    variant: str | None = None,
    gate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A report in the contract §7 shape with a fresh uuid4 id.

    ``variant`` (the variant the device serves or chose) and ``gate`` (a gate's
    JSON-ready evidence) are optional and left out when None.
    """
    extra: dict[str, Any] = {}
    if variant is not None:
        extra["variant"] = variant
    if gate:
        extra["gate"] = dict(gate)
    return {
        "id": str(uuid.uuid4()),
        "time": utc_now_iso(),
        "type": type_,
        "state": state,
        "rollout_id": rollout_id,
        "release": release,
        "reason_code": reason_code.value if reason_code is not None else None,
        "detail": detail,
        "metrics": dict(metrics or {}),
        "running": dict(running) if running else None,
        **extra,
    }


class Outbox:
    """Persisted queue of reports; ``add`` is durable before it returns."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._hold_until = 0.0  # the clock's time before which the server asked not to be sent to
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS reports ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, body TEXT NOT NULL)"
            )
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the outbox {path}: {e}") from e

    def add(self, report: Mapping[str, Any]) -> None:
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO reports (id, body) VALUES (?, ?)", (str(report["id"]), json.dumps(report))
            )
        except sqlite3.Error as e:
            raise JournalError(f"cannot queue report {report.get('id')}: {e}") from e

    def pending(self, limit: int = 500) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT body FROM reports ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    def flush(self, send: Sender, *, batch: int = 500) -> int:
        """Send pending reports oldest first until empty; returns how many left the outbox.

        Whatever ``send`` raises (the server is down) propagates after the
        reports acknowledged so far were removed; the rest stay queued. After a
        :class:`~edge_agent.errors.RateLimited`, which also propagates, nothing is
        sent until its ``retry_after_s`` passed: those flushes return 0.
        """
        sent = 0
        while True:
            if self._clock() < self._hold_until:
                log.debug("the server asked for %.0f s without reports; %d wait", self.hold_s(), self.count())
                return sent
            reports = self.pending(batch)
            if not reports:
                return sent
            try:
                answer = send(reports)
            except RateLimited as e:
                self._hold_until = self._clock() + e.retry_after_s
                raise
            done = set(answer.get("accepted", ())) | set(answer.get("duplicates", ()))
            ids = [r["id"] for r in reports if r["id"] in done]
            if not ids:
                log.warning("server acknowledged none of %d reports; keeping them", len(reports))
                return sent
            self._db.executemany("DELETE FROM reports WHERE id = ?", [(i,) for i in ids])
            sent += len(ids)

    def hold_s(self) -> float:
        """Seconds until the server may be sent reports again (0: now)."""
        return max(0.0, self._hold_until - self._clock())

    def close(self) -> None:
        self._db.close()
