"""SQL schema and engine: SQLAlchemy Core tables, SQLite (WAL) by default, PostgreSQL by URL.

The tables here are the schema's latest version. Creating it, and bringing an older database up
to it, is :mod:`ota_server.storage.migrations`. This module owns connection setup only; queries
live in :mod:`ota_server.storage.store`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from ota_server.errors import SetupError

__all__ = [
    "api_tokens",
    "audit",
    "device_rollouts",
    "devices",
    "generation",
    "make_engine",
    "metadata",
    "release_files",
    "releases",
    "reports",
    "rollout_counters",
    "rollout_events",
    "rollouts",
    "schema_version",
]

metadata = sa.MetaData()

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # api | enroll
    sa.Column("role", sa.String(16), nullable=False),  # viewer..admin, or "enroll"
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("token_digest", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("group_name", sa.String(64), nullable=False, index=True),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("hardware", sa.JSON, nullable=False),
    sa.Column("hardware_class", sa.String(32), nullable=False),
    sa.Column("enrolled_at", sa.String(32), nullable=False),
    sa.Column("last_seen", sa.String(32), nullable=True),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("running_name", sa.String(64), nullable=True),
    sa.Column("running_version", sa.String(64), nullable=True),
    sa.Column("running_release", sa.Integer, nullable=True),
    sa.Column("last_metrics", sa.JSON, nullable=True),
    # the variant of the running release the device serves, when it said so (null: unknown, the
    # director's pick for its hardware); the latest gate evidence it reported
    sa.Column("running_variant", sa.String(64), nullable=True),
    sa.Column("last_gate", sa.JSON, nullable=True),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("counter", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("rollback_of", sa.Integer, nullable=True),  # a rollback release re-points this one
    sa.Column("manifest", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

release_files = sa.Table(
    "release_files",
    metadata,
    sa.Column("release", sa.Integer, primary_key=True),
    sa.Column("path", sa.String(300), primary_key=True),  # TUF target path
    sa.Column("kind", sa.String(16), nullable=False),  # manifest | variant
    sa.Column("variant", sa.String(64), nullable=True),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("custom", sa.JSON, nullable=False),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("release", sa.Integer, nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("hardware_classes", sa.JSON, nullable=False),
    sa.Column("stages", sa.JSON, nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("max_failure_rate", sa.Float, nullable=False),
    sa.Column("success_quota", sa.Float, nullable=False),
    sa.Column("min_devices_for_halt", sa.Integer, nullable=False),
    sa.Column("floor_bucket", sa.Float, nullable=True),
    sa.Column("gates", sa.JSON, nullable=True),
    sa.Column("halt_reason", sa.Text, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    # creation order, unique and increasing: "the newest rollout wins" must not depend on
    # timestamps (two rollouts can be created in the same second). Null only on rows written
    # before schema version 3, which sort before every numbered one.
    sa.Column("seq", sa.BigInteger, nullable=True),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.String(40), nullable=False, index=True),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("actor", sa.String(128), nullable=True),
)

device_rollouts = sa.Table(
    "device_rollouts",
    metadata,
    sa.Column("rollout_id", sa.String(40), primary_key=True),
    sa.Column("device_id", sa.String(40), primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # pending | success | failure
    sa.Column("reason_code", sa.String(64), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("time", sa.String(32), nullable=False),
    # the device's first stage in the rollout, fixed when its first report arrives; null when the
    # rollout does not select the device (its reports are kept but not counted)
    sa.Column("stage", sa.Integer, nullable=True),
    # the variant the device chose for the rollout's release and its gate's evidence
    sa.Column("variant", sa.String(64), nullable=True),
    sa.Column("gate", sa.JSON, nullable=True),
)

# Per rollout and first stage, counters updated in each report's transaction:
# key = devices | success | failure | pending | reason:<code> (failures by reason code).
rollout_counters = sa.Table(
    "rollout_counters",
    metadata,
    sa.Column("rollout_id", sa.String(40), primary_key=True),
    sa.Column("stage", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("device_id", sa.String(40), primary_key=True),  # ids are unique per device
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("state", sa.String(32), nullable=True),
    sa.Column("rollout_id", sa.String(40), nullable=True),
    sa.Column("release", sa.Integer, nullable=True),
    sa.Column("reason_code", sa.String(64), nullable=True),
    sa.Column("body", sa.JSON, nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("detail", sa.JSON, nullable=True),
)

# One row: bumped on every change that can alter an assignment, so workers can
# invalidate their cached signed assignments with one cheap read.
generation = sa.Table(
    "generation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# One row: the version of the schema this database holds (ota_server.storage.migrations).
schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see make_engine)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and, with ``immediate``,
    write transactions that take the database lock at BEGIN.

    A PostgreSQL schema can be chosen in the URL: ``...?options=-csearch_path%3Dmyschema``.

    Raises:
        SetupError: the URL is malformed or names a database driver that is not installed.
    """
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 15, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
            begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

            def _begin(conn: Any) -> None:
                conn.exec_driver_sql(begin)

            event.listen(engine, "begin", _begin)
            return engine
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise SetupError(f"cannot use database URL {url!r}: {e}") from e
