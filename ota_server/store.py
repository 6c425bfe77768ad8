"""The SQL store: every query of the server, on SQLAlchemy Core connections.

Callers open a transaction with :meth:`Store.tx` and pass the connection to the functions of
this module, so one request is one transaction. Rows come back as plain dicts. SQLAlchemy
errors are wrapped in :class:`~ota_server.errors.RepositoryError` only where a caller can act
on them; integrity errors on unique keys are turned into ``Conflict`` by the services.

This module holds no business rules (see :mod:`ota_server.rollouts`, :mod:`ota_server.director`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ota_server import db
from ota_server.errors import NotFound

Row = dict[str, Any]


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Owns the engine; hands out transactions."""

    def __init__(self, url: str) -> None:
        # SQLite: writers take the lock up front (BEGIN IMMEDIATE) so two workers never
        # deadlock upgrading a read lock; readers use a second engine with plain BEGIN (WAL).
        self.engine = db.make_engine(url, immediate=True)
        self.read_engine = db.make_engine(url) if url.startswith("sqlite") else self.engine
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._sqlite_path = sa.engine.make_url(url).database if self.is_sqlite else None
        self._local = threading.local()

    def generation(self) -> int:
        """The fleet generation, read as cheaply as the database allows (every poll does this).

        SQLite: a per-thread autocommit connection (WAL readers never block); others: one
        driver-level statement on a pooled connection.
        """
        if self._sqlite_path:
            conn = getattr(self._local, "gen_conn", None)
            if conn is None:
                conn = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=True, timeout=15)
                self._local.gen_conn = conn
            row = conn.execute("SELECT value FROM generation WHERE id = 1").fetchone()
            return int(row[0]) if row else 0
        with self.read_engine.connect() as c:
            return int(c.exec_driver_sql("SELECT value FROM generation WHERE id = 1").scalar() or 0)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.read_engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def lock(conn: Connection, name: str) -> None:
    """Serialize check-then-write sections across workers and hosts for this transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite needs none: write transactions
    start with BEGIN IMMEDIATE and so already run one at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})


def _one(conn: Connection, stmt: sa.Select[Any]) -> Row | None:
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row is not None else None


# ---------------------------------------------------------------- generation


def generation(conn: Connection) -> int:
    value = conn.execute(sa.select(db.generation.c.value).where(db.generation.c.id == 1)).scalar()
    return int(value or 0)


def bump_generation(conn: Connection) -> None:
    conn.execute(
        db.generation.update().where(db.generation.c.id == 1).values(value=db.generation.c.value + 1)
    )


# ---------------------------------------------------------------- tokens


def insert_token(conn: Connection, *, digest: str, kind: str, role: str, name: str) -> None:
    conn.execute(
        db.api_tokens.insert().values(
            digest=digest, kind=kind, role=role, name=name, created_at=utcnow(), revoked=False
        )
    )


def find_token(conn: Connection, digest: str) -> Row | None:
    return _one(
        conn,
        sa.select(db.api_tokens).where(db.api_tokens.c.digest == digest, db.api_tokens.c.revoked.is_(False)),
    )


# ---------------------------------------------------------------- devices


def insert_devices(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert device rows (enrollment, or bulk setup of a benchmark fleet)."""
    if rows:
        conn.execute(db.devices.insert(), [dict(r) for r in rows])


def get_device(conn: Connection, device_id: str) -> Row:
    row = _one(conn, sa.select(db.devices).where(db.devices.c.id == device_id))
    if row is None:
        raise NotFound(f"no device {device_id!r}", field="device_id")
    return row


def device_by_token(conn: Connection, digest: str) -> Row | None:
    return _one(conn, sa.select(db.devices).where(db.devices.c.token_digest == digest))


def list_devices(
    conn: Connection, *, group: str | None = None, model_version: str | None = None, limit: int = 1000,
    offset: int = 0,
) -> list[Row]:
    stmt = sa.select(db.devices).order_by(db.devices.c.id).limit(limit).offset(offset)
    if group:
        stmt = stmt.where(db.devices.c.group_name == group)
    if model_version:
        if "@" in model_version:
            name, version = model_version.split("@", 1)
            stmt = stmt.where(db.devices.c.running_name == name, db.devices.c.running_version == version)
        else:
            stmt = stmt.where(db.devices.c.running_version == model_version)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def devices_in_group(conn: Connection, group: str) -> list[Row]:
    cols = [db.devices.c.id, db.devices.c.tags, db.devices.c.hardware_class]
    stmt = sa.select(*cols).where(db.devices.c.group_name == group)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def update_device(conn: Connection, device_id: str, **values: Any) -> None:
    conn.execute(db.devices.update().where(db.devices.c.id == device_id).values(**values))


def count_devices(conn: Connection) -> dict[str, int]:
    stmt = sa.select(db.devices.c.group_name, sa.func.count()).group_by(db.devices.c.group_name)
    return {str(g): int(n) for g, n in conn.execute(stmt)}


def running_versions(conn: Connection) -> dict[str, int]:
    stmt = sa.select(db.devices.c.running_name, db.devices.c.running_version, sa.func.count()).group_by(
        db.devices.c.running_name, db.devices.c.running_version
    )
    return {(f"{n}@{v}" if n else "none"): int(c) for n, v, c in conn.execute(stmt)}


# ---------------------------------------------------------------- releases


def latest_release(conn: Connection, name: str) -> Row | None:
    stmt = (
        sa.select(db.releases)
        .where(db.releases.c.name == name, db.releases.c.rollback_of.is_(None))
        .order_by(db.releases.c.counter.desc())
        .limit(1)
    )
    return _one(conn, stmt)


def release_by_version(conn: Connection, name: str, version: str) -> Row | None:
    stmt = (
        sa.select(db.releases)
        .where(db.releases.c.name == name, db.releases.c.version == version, db.releases.c.rollback_of.is_(None))
        .limit(1)
    )
    return _one(conn, stmt)


def get_release(conn: Connection, counter: int) -> Row:
    row = _one(conn, sa.select(db.releases).where(db.releases.c.counter == counter))
    if row is None:
        raise NotFound(f"no release with counter {counter}", field="release")
    return row


def next_counter(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.max(db.releases.c.counter))).scalar() or 0) + 1


def insert_release(conn: Connection, release: Mapping[str, Any], files: Iterable[Mapping[str, Any]]) -> None:
    conn.execute(db.releases.insert().values(**release))
    rows = [dict(f, release=release["counter"]) for f in files]
    if rows:
        conn.execute(db.release_files.insert(), rows)


def list_releases(conn: Connection, *, name: str | None = None) -> list[Row]:
    stmt = sa.select(db.releases).order_by(db.releases.c.counter)
    if name:
        stmt = stmt.where(db.releases.c.name == name)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def release_files(conn: Connection, counter: int) -> list[Row]:
    stmt = sa.select(db.release_files).where(db.release_files.c.release == counter)
    return [dict(r) for r in conn.execute(stmt.order_by(db.release_files.c.path)).mappings()]


# ---------------------------------------------------------------- rollouts


def insert_rollout(conn: Connection, row: Mapping[str, Any]) -> None:
    conn.execute(db.rollouts.insert().values(**row))


def next_rollout_seq(conn: Connection) -> int:
    """The next creation number; call under the ``rollouts:seq`` lock (see :func:`lock`)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(db.rollouts.c.seq), 0))).scalar() or 0) + 1


def get_rollout(conn: Connection, rollout_id: str) -> Row:
    row = _one(conn, sa.select(db.rollouts).where(db.rollouts.c.id == rollout_id))
    if row is None:
        raise NotFound(f"no rollout {rollout_id!r}", field="rollout_id")
    return row


def list_rollouts(conn: Connection, *, statuses: Sequence[str] | None = None, group: str | None = None,
                  model: str | None = None) -> list[Row]:
    c = db.rollouts.c
    stmt = sa.select(db.rollouts).order_by(sa.func.coalesce(c.seq, 0), c.created_at, c.id)
    if statuses:
        stmt = stmt.where(db.rollouts.c.status.in_(list(statuses)))
    if group:
        stmt = stmt.where(db.rollouts.c.group_name == group)
    if model:
        stmt = stmt.where(db.rollouts.c.model == model)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def update_rollout(conn: Connection, rollout_id: str, **values: Any) -> None:
    values.setdefault("updated_at", utcnow())
    conn.execute(db.rollouts.update().where(db.rollouts.c.id == rollout_id).values(**values))


def add_event(conn: Connection, rollout_id: str, kind: str, detail: str | None, actor: str | None) -> None:
    conn.execute(
        db.rollout_events.insert().values(
            rollout_id=rollout_id, time=utcnow(), kind=kind, detail=detail, actor=actor
        )
    )


def events(conn: Connection, rollout_id: str) -> list[Row]:
    stmt = sa.select(db.rollout_events).where(db.rollout_events.c.rollout_id == rollout_id)
    return [dict(r) for r in conn.execute(stmt.order_by(db.rollout_events.c.id)).mappings()]


def device_outcomes(conn: Connection, rollout_id: str) -> list[Row]:
    stmt = sa.select(db.device_rollouts).where(db.device_rollouts.c.rollout_id == rollout_id)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def device_outcome(conn: Connection, rollout_id: str, device_id: str) -> Row | None:
    key = (db.device_rollouts.c.rollout_id == rollout_id) & (db.device_rollouts.c.device_id == device_id)
    return _one(conn, sa.select(db.device_rollouts).where(key))


def write_device_outcome(conn: Connection, row: Mapping[str, Any], *, exists: bool) -> None:
    """Insert or replace a device's latest state in a rollout (its ``stage`` is kept once set)."""
    if not exists:
        conn.execute(db.device_rollouts.insert().values(**row))
        return
    key = (db.device_rollouts.c.rollout_id == row["rollout_id"]) & (
        db.device_rollouts.c.device_id == row["device_id"]
    )
    conn.execute(db.device_rollouts.update().where(key).values(**{k: v for k, v in row.items() if k != "stage"}))


def set_device_stage(conn: Connection, rollout_id: str, device_id: str, stage: int | None) -> None:
    key = (db.device_rollouts.c.rollout_id == rollout_id) & (db.device_rollouts.c.device_id == device_id)
    conn.execute(db.device_rollouts.update().where(key).values(stage=stage))


def failed_devices(conn: Connection, rollout_id: str, *, limit: int = 100) -> list[Row]:
    c = db.device_rollouts.c
    stmt = sa.select(db.device_rollouts).where(c.rollout_id == rollout_id, c.outcome == "failure")
    return [dict(r) for r in conn.execute(stmt.order_by(c.time, c.device_id).limit(limit)).mappings()]


def has_counters(conn: Connection, rollout_id: str) -> bool:
    c = db.rollout_counters.c
    stmt = sa.select(c.n).where(c.rollout_id == rollout_id, c.stage == 0, c.key == "devices")
    return conn.execute(stmt).first() is not None


def counters(conn: Connection, rollout_id: str) -> list[Row]:
    stmt = sa.select(db.rollout_counters).where(db.rollout_counters.c.rollout_id == rollout_id)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def insert_counters(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(db.rollout_counters.insert(), [dict(r) for r in rows])


def add_counter(conn: Connection, rollout_id: str, stage: int, key: str, delta: int) -> None:
    """``n = n + delta`` in one atomic UPDATE (a row lock on PostgreSQL); the row is created when
    missing — callers hold the rollout's lock (:func:`lock`), so two never create it at once."""
    c = db.rollout_counters.c
    where = (c.rollout_id == rollout_id) & (c.stage == stage) & (c.key == key)
    done = conn.execute(db.rollout_counters.update().where(where).values(n=c.n + delta))
    if done.rowcount == 0:
        conn.execute(db.rollout_counters.insert().values(rollout_id=rollout_id, stage=stage, key=key, n=delta))


# ---------------------------------------------------------------- reports


def known_report_ids(conn: Connection, device_id: str, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    stmt = sa.select(db.reports.c.id).where(db.reports.c.device_id == device_id, db.reports.c.id.in_(list(ids)))
    return {str(r) for r in conn.execute(stmt).scalars()}


def insert_reports(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(db.reports.insert(), [dict(r) for r in rows])


# ---------------------------------------------------------------- audit


def audit(conn: Connection, actor: str, action: str, target: str | None, detail: Any = None) -> None:
    conn.execute(db.audit.insert().values(time=utcnow(), actor=actor, action=action, target=target,
                                          detail=detail))


def audit_log(conn: Connection, *, limit: int = 500) -> list[Row]:
    stmt = sa.select(db.audit).order_by(db.audit.c.id.desc()).limit(limit)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def rollout_counts(conn: Connection) -> dict[str, int]:
    stmt = sa.select(db.rollouts.c.status, sa.func.count()).group_by(db.rollouts.c.status)
    return {str(s): int(n) for s, n in conn.execute(stmt)}
