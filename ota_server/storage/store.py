"""The SQL store: every query of the server, on SQLAlchemy Core connections.

Callers open a transaction with :meth:`Store.tx` and pass the connection to the functions of
this module, so one request is one transaction. Rows come back as plain dicts. The statements
of the per-request paths (polls, reports) are built once, at import, with bound parameters:
building a SQLAlchemy statement and its cache key costs more CPU than SQLite takes to run it,
and a report holds the database's write lock while it runs about ten of them. A row
asked for by its key that does not exist is :class:`~ota_server.errors.RecordNotFound` (the app
answers it as a 404); other SQLAlchemy errors propagate, and integrity errors on unique keys are
turned into ``Conflict`` by the services.

This module holds no business rules (see :mod:`ota_server.rules.rollouts`,
:mod:`ota_server.fleet.director`) and knows nothing of HTTP.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from ota_server.errors import RecordNotFound
from ota_server.storage import db

__all__ = [
    "Row",
    "Store",
    "add_counters",
    "add_event",
    "audit",
    "audit_log",
    "bump_device_assignment",
    "bump_generation",
    "bump_revocations",
    "count_devices",
    "count_enrolled_since",
    "counters",
    "delete_reports_before",
    "device_by_token",
    "device_outcome",
    "device_outcomes",
    "enroll_credential",
    "devices_in_group",
    "devices_running",
    "events",
    "failed_devices",
    "find_token",
    "generation",
    "get_device",
    "get_release",
    "get_rollout",
    "has_counters",
    "insert_counters",
    "insert_devices",
    "insert_release",
    "insert_reports",
    "insert_rollout",
    "insert_token",
    "issued_digests",
    "known_report_ids",
    "latest_release",
    "list_credentials",
    "list_api_tokens",
    "list_devices",
    "list_releases",
    "list_rollouts",
    "lock",
    "next_counter",
    "next_rollout_seq",
    "pending_devices",
    "record_issued",
    "release_by_version",
    "release_files",
    "report_quota",
    "revoke_api_tokens",
    "revoke_credential",
    "revoke_device",
    "revocations",
    "rollout_counts",
    "running_versions",
    "set_device_stage",
    "update_device",
    "update_rollout",
    "use_credential",
    "utcnow",
    "variant_counts",
    "write_device_outcome",
    "write_report_quota",
]

Row = dict[str, Any]
log = logging.getLogger(__name__)


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
        """The fleet generation, read from the database on every call (every poll does this).

        Never from a copy kept in this process: a poll must see every change committed before
        it, by any worker or host, or it could answer 304 for an assignment that changed. So
        the read is made as cheap as a read can be: one statement on a connection of this
        thread's own, outside the pool, in autocommit — on PostgreSQL one round trip instead of
        the pool's three (pre-ping, the query, the rollback that resets a returned connection);
        on SQLite a WAL read that never blocks. A connection that fails is dropped and this
        read goes through the pool instead, which raises if the database is gone.
        """
        return self._read_counter(_GENERATION_SQL)

    def poll_version(self, device_id: str) -> tuple[int, int]:
        """The fleet generation and the device's assignment revision (:func:`bump_device_assignment`;
        0 for a device that has none, or no such device), in one statement read like
        :meth:`generation`: a cached assignment is valid while both are what it was signed at."""
        conn = getattr(self._local, "gen_conn", None)
        params = (device_id,)
        try:
            if conn is None:
                conn = self._local.gen_conn = self._connect_generation_reader()
            cur = conn.cursor()
            cur.execute(_POLL_SQL_SQLITE if self._sqlite_path else _POLL_SQL_PG, params)
            row = cur.fetchone()
            return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)
        except self.engine.dialect.loaded_dbapi.Error:
            self._drop_generation_reader()
        sql = _POLL_SQL_SQLITE if self.read_engine.dialect.paramstyle == "qmark" else _POLL_SQL_PG
        with self.read_engine.connect() as c:
            found = c.exec_driver_sql(sql, params).first()
            return (int(found[0] or 0), int(found[1] or 0)) if found else (0, 0)

    def revocations(self) -> int:
        """The revocation epoch (:func:`bump_revocations`), read like :meth:`generation`; each
        worker's authenticator reads it about twice a second and empties its cache when it changed."""
        return self._read_counter(_REVOCATIONS_SQL)

    def _read_counter(self, sql: str) -> int:
        conn = getattr(self._local, "gen_conn", None)
        try:
            if conn is None:
                conn = self._local.gen_conn = self._connect_generation_reader()
            cur = conn.cursor()
            cur.execute(sql)
            row = cur.fetchone()
            return int(row[0]) if row else 0
        except self.engine.dialect.loaded_dbapi.Error:
            self._drop_generation_reader()
        with self.read_engine.connect() as c:
            return int(c.exec_driver_sql(sql).scalar() or 0)

    def _connect_generation_reader(self) -> Any:
        """A DB-API connection in autocommit for :meth:`generation`, used by one thread only."""
        if self._sqlite_path:
            return sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=True, timeout=15)
        dialect = self.read_engine.dialect
        cargs, cparams = dialect.create_connect_args(self.read_engine.url)
        conn = dialect.loaded_dbapi.connect(*cargs, **cparams)
        conn.autocommit = True
        return conn

    def _drop_generation_reader(self) -> None:
        conn, self._local.gen_conn = getattr(self._local, "gen_conn", None), None
        if conn is not None:
            try:
                conn.close()
            except self.engine.dialect.loaded_dbapi.Error:  # it is dropped because it failed
                log.debug("closing a failed generation reader", exc_info=True)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.read_engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self._drop_generation_reader()  # this thread's; other threads' close when they end
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


_GENERATION_SQL = "SELECT value FROM generation WHERE id = 1"
_REVOCATIONS_SQL = "SELECT value FROM generation WHERE id = 2"
_POLL_SQL = "SELECT (SELECT value FROM generation WHERE id = 1), (SELECT assignment_rev FROM devices WHERE id = {})"
_POLL_SQL_SQLITE = _POLL_SQL.format("?")  # sqlite3: qmark
_POLL_SQL_PG = _POLL_SQL.format("%s")  # psycopg: format


def lock(conn: Connection, name: str) -> None:
    """Serialize check-then-write sections across workers and hosts for this transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite needs none: write transactions
    start with BEGIN IMMEDIATE and so already run one at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})


def _one(conn: Connection, stmt: sa.Select[Any], params: Mapping[str, Any] | None = None) -> Row | None:
    row = conn.execute(stmt, params).mappings().first()
    return dict(row) if row is not None else None


# ---------------------------------------------------------------- generation


def generation(conn: Connection) -> int:
    value = conn.execute(sa.select(db.generation.c.value).where(db.generation.c.id == 1)).scalar()
    return int(value or 0)


def bump_generation(conn: Connection) -> None:
    conn.execute(db.generation.update().where(db.generation.c.id == 1).values(value=db.generation.c.value + 1))


def bump_device_assignment(conn: Connection, device_id: str) -> None:
    """Invalidate this one device's cached assignment (a change of its own, like its hardware),
    leaving every other device's valid; see :meth:`Store.poll_version`."""
    c = db.devices.c
    conn.execute(
        db.devices.update().where(c.id == device_id).values(assignment_rev=sa.func.coalesce(c.assignment_rev, 0) + 1)
    )


def revocations(conn: Connection) -> int:
    """The revocation epoch (row 2 of ``generation``)."""
    value = conn.execute(sa.select(db.generation.c.value).where(db.generation.c.id == 2)).scalar()
    return int(value or 0)


def bump_revocations(conn: Connection) -> None:
    """Tell every worker that a credential was revoked: they empty their credential caches
    (:class:`ota_server.serving.auth.Authenticator`) within a second of the commit."""
    g = db.generation
    if not conn.execute(g.update().where(g.c.id == 2).values(value=g.c.value + 1)).rowcount:
        conn.execute(g.insert().values(id=2, value=1))


# ---------------------------------------------------------------- tokens


def insert_token(conn: Connection, *, digest: str, kind: str, role: str, name: str, **bound: Any) -> None:
    """Store a token's digest; ``bound``: an enrollment credential's binding (group_name, tags,
    max_uses, uses, expires_at, approval, cred_id)."""
    conn.execute(
        db.api_tokens.insert().values(
            digest=digest, kind=kind, role=role, name=name, created_at=utcnow(), revoked=False, **bound
        )
    )


def enroll_credential(conn: Connection, digest: str) -> Row | None:
    """The enrollment credential with that digest, revoked or not, locked for this transaction
    on PostgreSQL (``FOR UPDATE``: two enrollments never both take its last use)."""
    stmt = sa.select(db.api_tokens).where(db.api_tokens.c.digest == digest, db.api_tokens.c.kind == "enroll")
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return _one(conn, stmt)


def use_credential(conn: Connection, digest: str) -> None:
    """Count one enrollment against a credential."""
    t = db.api_tokens
    conn.execute(t.update().where(t.c.digest == digest).values(uses=sa.func.coalesce(t.c.uses, 0) + 1))


def list_credentials(conn: Connection) -> list[Row]:
    """Every enrollment credential, oldest first (digests included: callers drop them)."""
    t = db.api_tokens
    stmt = sa.select(t).where(t.c.kind == "enroll").order_by(t.c.created_at, t.c.name)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def revoke_credential(conn: Connection, cred: str) -> int:
    """Revoke the enrollment credential with id (or name) ``cred``; returns how many were."""
    t = db.api_tokens
    stmt = t.update().where(t.c.kind == "enroll", (t.c.cred_id == cred) | (t.c.name == cred)).values(revoked=True)
    return int(conn.execute(stmt).rowcount or 0)


def find_token(conn: Connection, digest: str) -> Row | None:
    return _one(
        conn,
        sa.select(db.api_tokens).where(db.api_tokens.c.digest == digest, db.api_tokens.c.revoked.is_(False)),
    )


def list_api_tokens(conn: Connection) -> list[Row]:
    """Every API token (kind ``api``), oldest first: digest, role, name, created_at, revoked."""
    t = db.api_tokens
    stmt = sa.select(t.c.digest, t.c.role, t.c.name, t.c.created_at, t.c.revoked).where(t.c.kind == "api")
    return [dict(r) for r in conn.execute(stmt.order_by(t.c.created_at, t.c.name)).mappings()]


def revoke_api_tokens(conn: Connection, digests: Sequence[str]) -> int:
    """Revoke the API tokens with these digests; returns how many were not revoked before."""
    t = db.api_tokens
    stmt = t.update().where(t.c.kind == "api", t.c.digest.in_(list(digests)), t.c.revoked.is_(False))
    return int(conn.execute(stmt.values(revoked=True)).rowcount or 0)


# ---------------------------------------------------------------- devices


def insert_devices(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert device rows (enrollment, or bulk setup of a benchmark fleet)."""
    if rows:
        conn.execute(db.devices.insert(), [dict(r) for r in rows])


_DEVICE = sa.select(db.devices).where(db.devices.c.id == sa.bindparam("device_id"))
_DEVICE_BY_TOKEN = sa.select(db.devices).where(
    db.devices.c.token_digest == sa.bindparam("digest"), db.devices.c.revoked_at.is_(None)
)
# SET clause from the parameters' keys, so one statement serves any set of columns
_UPDATE_DEVICE = db.devices.update().where(db.devices.c.id == sa.bindparam("_device_id"))


def get_device(conn: Connection, device_id: str) -> Row:
    """The device row.

    Raises:
        RecordNotFound: no device has that id (``field="device_id"``).
    """
    row = _one(conn, _DEVICE, {"device_id": device_id})
    if row is None:
        raise RecordNotFound(f"no device {device_id!r}", field="device_id")
    return row


def device_by_token(conn: Connection, digest: str) -> Row | None:
    """The device whose token has that digest, unless it is revoked."""
    return _one(conn, _DEVICE_BY_TOKEN, {"digest": digest})


def revoke_device(conn: Connection, device_id: str) -> bool:
    """Decommission the device: its token stops working (see :func:`bump_revocations`). Returns
    False when it was revoked already.

    Raises:
        RecordNotFound: no device has that id (``field="device_id"``).
    """
    get_device(conn, device_id)
    c = db.devices.c
    stmt = db.devices.update().where(c.id == device_id, c.revoked_at.is_(None)).values(revoked_at=utcnow())
    return bool(conn.execute(stmt).rowcount)


def list_devices(
    conn: Connection,
    *,
    group: str | None = None,
    model_version: str | None = None,
    limit: int = 1000,
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
    """The devices of ``group`` that rollouts select from: not those pending approval, nor revoked ones."""
    c = db.devices.c
    stmt = sa.select(c.id, c.tags, c.hardware_class).where(
        c.group_name == group, sa.or_(c.status.is_(None), c.status != "pending"), c.revoked_at.is_(None)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def devices_running(conn: Connection, name: str, *, group: str | None = None) -> list[Row]:
    """Every device (of ``group``, or of the fleet) that runs a release of model ``name``: what it
    runs, and what a rollout selects it by."""
    c = db.devices.c
    stmt = (
        sa.select(c.id, c.group_name, c.tags, c.hardware_class, c.running_version, c.running_release, c.running_variant)
        .where(c.running_name == name)
        .order_by(c.id)
    )
    if group is not None:
        stmt = stmt.where(c.group_name == group)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def update_device(conn: Connection, device_id: str, **values: Any) -> None:
    conn.execute(_UPDATE_DEVICE, {"_device_id": device_id, **values})


def pending_devices(conn: Connection, *, limit: int = 1000) -> list[Row]:
    """Devices waiting for an operator's approval, oldest first."""
    stmt = sa.select(db.devices).where(db.devices.c.status == "pending").order_by(db.devices.c.enrolled_at)
    return [dict(r) for r in conn.execute(stmt.limit(limit)).mappings()]


def count_enrolled_since(conn: Connection, group: str, since: str) -> int:
    """How many devices of ``group`` enrolled at or after ``since``."""
    c = db.devices.c
    stmt = sa.select(sa.func.count()).where(c.group_name == group, c.enrolled_at >= since)
    return int(conn.execute(stmt).scalar() or 0)


_ISSUED = sa.select(db.issued_assignments.c.rollout_id, db.issued_assignments.c.digest).where(
    db.issued_assignments.c.device_id == sa.bindparam("device_id"),
    db.issued_assignments.c.rollout_id.in_(sa.bindparam("rollout_ids", expanding=True)),
)


def record_issued(conn: Connection, device_id: str, rollout_id: str, digest: str) -> None:
    """Record that the director issued the assignment ``digest`` of ``rollout_id`` to the device
    (once: a second record of the same one changes nothing)."""
    values = {"device_id": device_id, "rollout_id": rollout_id, "digest": digest, "issued_at": utcnow()}
    insert = pg_dialect.insert if conn.dialect.name == "postgresql" else sqlite_dialect.insert
    conn.execute(insert(db.issued_assignments).values(**values).on_conflict_do_nothing())


def issued_digests(conn: Connection, device_id: str, rollout_ids: Sequence[str]) -> set[tuple[str, str]]:
    """The (rollout id, digest) pairs of the rollouts' assignments issued to the device."""
    if not rollout_ids:
        return set()
    rows = conn.execute(_ISSUED, {"device_id": device_id, "rollout_ids": list(rollout_ids)})
    return {(str(r), str(d)) for r, d in rows}


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
    """The release row with that counter.

    Raises:
        RecordNotFound: no release has that counter (``field="release"``).
    """
    row = _one(conn, sa.select(db.releases).where(db.releases.c.counter == counter))
    if row is None:
        raise RecordNotFound(f"no release with counter {counter}", field="release")
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


def awaiting_releases(conn: Connection) -> list[Row]:
    """Releases whose TUF targets await the offline targets signature, oldest first."""
    stmt = sa.select(db.releases).where(db.releases.c.awaiting_signature.is_(True)).order_by(db.releases.c.counter)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def mark_releases_signed(conn: Connection, counters: Iterable[int]) -> None:
    """Releases ``counters`` no longer await the targets signature."""
    counters = list(counters)
    if counters:
        conn.execute(db.releases.update().where(db.releases.c.counter.in_(counters)).values(awaiting_signature=False))


def release_files(conn: Connection, counter: int) -> list[Row]:
    stmt = sa.select(db.release_files).where(db.release_files.c.release == counter)
    return [dict(r) for r in conn.execute(stmt.order_by(db.release_files.c.path)).mappings()]


# ---------------------------------------------------------------- rollouts


def insert_rollout(conn: Connection, row: Mapping[str, Any]) -> None:
    conn.execute(db.rollouts.insert().values(**row))


def next_rollout_seq(conn: Connection) -> int:
    """The next creation number; call under the ``rollouts:seq`` lock (see :func:`lock`)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(db.rollouts.c.seq), 0))).scalar() or 0) + 1


_ROLLOUT = sa.select(db.rollouts).where(db.rollouts.c.id == sa.bindparam("rollout_id"))


def get_rollout(conn: Connection, rollout_id: str) -> Row:
    """The rollout row.

    Raises:
        RecordNotFound: no rollout has that id (``field="rollout_id"``).
    """
    row = _one(conn, _ROLLOUT, {"rollout_id": rollout_id})
    if row is None:
        raise RecordNotFound(f"no rollout {rollout_id!r}", field="rollout_id")
    return row


def list_rollouts(
    conn: Connection, *, statuses: Sequence[str] | None = None, group: str | None = None, model: str | None = None
) -> list[Row]:
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
        db.rollout_events.insert().values(rollout_id=rollout_id, time=utcnow(), kind=kind, detail=detail, actor=actor)
    )


def events(conn: Connection, rollout_id: str) -> list[Row]:
    stmt = sa.select(db.rollout_events).where(db.rollout_events.c.rollout_id == rollout_id)
    return [dict(r) for r in conn.execute(stmt.order_by(db.rollout_events.c.id)).mappings()]


def device_outcomes(conn: Connection, rollout_id: str) -> list[Row]:
    stmt = sa.select(db.device_rollouts).where(db.device_rollouts.c.rollout_id == rollout_id)
    return [dict(r) for r in conn.execute(stmt).mappings()]


_DR = db.device_rollouts.c
_DEVICE_OUTCOME = sa.select(db.device_rollouts).where(
    _DR.rollout_id == sa.bindparam("_rollout_id"), _DR.device_id == sa.bindparam("_device_id")
)
_INSERT_DEVICE_OUTCOME = db.device_rollouts.insert()
_UPDATE_DEVICE_OUTCOME = db.device_rollouts.update().where(
    _DR.rollout_id == sa.bindparam("_rollout_id"), _DR.device_id == sa.bindparam("_device_id")
)


def device_outcome(conn: Connection, rollout_id: str, device_id: str) -> Row | None:
    return _one(conn, _DEVICE_OUTCOME, {"_rollout_id": rollout_id, "_device_id": device_id})


def write_device_outcome(conn: Connection, row: Mapping[str, Any], *, exists: bool) -> None:
    """Insert or replace a device's latest state in a rollout (its ``stage`` is kept once set)."""
    if not exists:
        conn.execute(_INSERT_DEVICE_OUTCOME, dict(row))
        return
    values = {k: v for k, v in row.items() if k not in ("stage", "rollout_id", "device_id")}
    conn.execute(_UPDATE_DEVICE_OUTCOME, {"_rollout_id": row["rollout_id"], "_device_id": row["device_id"], **values})


def variant_counts(conn: Connection, rollout_id: str) -> dict[str, int]:
    """How many of the rollout's devices chose each variant (devices that named one)."""
    c = db.device_rollouts.c
    stmt = (
        sa.select(c.variant, sa.func.count())
        .where(c.rollout_id == rollout_id, c.variant.is_not(None))
        .group_by(c.variant)
    )
    return {str(v): int(n) for v, n in conn.execute(stmt)}


def set_device_stage(conn: Connection, rollout_id: str, device_id: str, stage: int | None) -> None:
    key = (db.device_rollouts.c.rollout_id == rollout_id) & (db.device_rollouts.c.device_id == device_id)
    conn.execute(db.device_rollouts.update().where(key).values(stage=stage))


def failed_devices(conn: Connection, rollout_id: str, *, limit: int = 100) -> list[Row]:
    c = db.device_rollouts.c
    stmt = sa.select(db.device_rollouts).where(c.rollout_id == rollout_id, c.outcome == "failure")
    return [dict(r) for r in conn.execute(stmt.order_by(c.time, c.device_id).limit(limit)).mappings()]


_RC = db.rollout_counters.c
_HAS_COUNTERS = sa.select(_RC.n).where(
    _RC.rollout_id == sa.bindparam("rollout_id"), _RC.stage == 0, _RC.key == "devices"
)
_COUNTERS = sa.select(db.rollout_counters).where(_RC.rollout_id == sa.bindparam("rollout_id"))


def has_counters(conn: Connection, rollout_id: str) -> bool:
    return conn.execute(_HAS_COUNTERS, {"rollout_id": rollout_id}).first() is not None


def counters(conn: Connection, rollout_id: str) -> list[Row]:
    return [dict(r) for r in conn.execute(_COUNTERS, {"rollout_id": rollout_id}).mappings()]


def insert_counters(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(db.rollout_counters.insert(), [dict(r) for r in rows])


def add_counters(conn: Connection, rollout_id: str, stage: int, deltas: Mapping[str, int]) -> None:
    """``n = n + delta`` for each key of one stage in one atomic UPDATE (row locks on
    PostgreSQL); missing rows (a reason code seen for the first time) are created — callers hold
    the rollout's lock (:func:`lock`), so two never create one at once."""
    if not deltas:
        return
    update, present = _counter_statements(len(deltas))
    params: dict[str, Any] = {"_rollout_id": rollout_id, "_stage": stage}
    for i, (key, delta) in enumerate(deltas.items()):
        params[f"_k{i}"], params[f"_d{i}"] = key, delta
    if conn.execute(update, params).rowcount == len(deltas):
        return
    have = set(conn.execute(present, params).scalars())
    missing = [
        {"rollout_id": rollout_id, "stage": stage, "key": key, "n": delta}
        for key, delta in deltas.items()
        if key not in have
    ]
    conn.execute(db.rollout_counters.insert(), missing)


@functools.lru_cache(maxsize=8)
def _counter_statements(n: int) -> tuple[sa.Update, sa.Select[Any]]:
    """For ``n`` keys of one stage: ``n = n + CASE key WHEN k0 THEN d0 ... END`` and the select of
    which of the keys exist (parameters ``_rollout_id``, ``_stage``, ``_k<i>``, ``_d<i>``)."""
    keys = [sa.bindparam(f"_k{i}", type_=sa.String) for i in range(n)]
    where = (
        (_RC.rollout_id == sa.bindparam("_rollout_id")) & (_RC.stage == sa.bindparam("_stage")) & (_RC.key.in_(keys))
    )
    change = sa.case(*[(_RC.key == k, sa.bindparam(f"_d{i}", type_=sa.Integer)) for i, k in enumerate(keys)], else_=0)
    return db.rollout_counters.update().where(where).values(n=_RC.n + change), sa.select(_RC.key).where(where)


# ---------------------------------------------------------------- reports


_KNOWN_REPORTS = sa.select(db.reports.c.id).where(
    db.reports.c.device_id == sa.bindparam("device_id"), db.reports.c.id.in_(sa.bindparam("ids", expanding=True))
)


def known_report_ids(conn: Connection, device_id: str, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    return {str(r) for r in conn.execute(_KNOWN_REPORTS, {"device_id": device_id, "ids": list(ids)}).scalars()}


def insert_reports(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(db.reports.insert(), [dict(r) for r in rows])


def delete_reports_before(conn: Connection, cutoff: str, *, limit: int = 10_000) -> int:
    """Delete up to ``limit`` reports the server received before ``cutoff`` (ISO-8601 UTC, like
    :func:`utcnow`); rows stored before schema version 6 are judged by their own ``time``.
    Returns how many were deleted (fewer than ``limit``: none older is left)."""
    r = db.reports.c
    old = sa.or_(r.received_at < cutoff, sa.and_(r.received_at.is_(None), r.time < cutoff))
    doomed = sa.select(r.device_id, r.id).where(old).limit(limit)
    return int(conn.execute(db.reports.delete().where(sa.tuple_(r.device_id, r.id).in_(doomed))).rowcount)


_QUOTA = sa.select(db.report_quota).where(db.report_quota.c.device_id == sa.bindparam("device_id"))
_QUOTA_UPDATE = (
    db.report_quota.update()
    .where(db.report_quota.c.device_id == sa.bindparam("_device_id"))
    .values(reports=sa.bindparam("reports"), bytes=sa.bindparam("bytes"), at=sa.bindparam("at"))
)


def report_quota(conn: Connection, device_id: str) -> Row | None:
    """The device's report quota buckets (``reports``, ``bytes``, ``at``), None before its first batch."""
    row = conn.execute(_QUOTA, {"device_id": device_id}).mappings().first()
    return dict(row) if row is not None else None


def write_report_quota(
    conn: Connection, device_id: str, *, reports: float, nbytes: float, at: float, exists: bool
) -> None:
    """Store the device's buckets; ``exists`` says whether :func:`report_quota` found a row
    (the caller holds the device's ``quota:`` lock, so no other writer made one since)."""
    if exists:
        conn.execute(_QUOTA_UPDATE, {"_device_id": device_id, "reports": reports, "bytes": nbytes, "at": at})
    else:
        conn.execute(db.report_quota.insert().values(device_id=device_id, reports=reports, bytes=nbytes, at=at))


# ---------------------------------------------------------------- audit


def audit(conn: Connection, actor: str, action: str, target: str | None, detail: Any = None) -> None:
    conn.execute(db.audit.insert().values(time=utcnow(), actor=actor, action=action, target=target, detail=detail))


def audit_log(conn: Connection, *, limit: int = 500) -> list[Row]:
    stmt = sa.select(db.audit).order_by(db.audit.c.id.desc()).limit(limit)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def rollout_counts(conn: Connection) -> dict[str, int]:
    stmt = sa.select(db.rollouts.c.status, sa.func.count()).group_by(db.rollouts.c.status)
    return {str(s): int(n) for s, n in conn.execute(stmt)}
