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
    "issued_assignments",
    "make_engine",
    "metadata",
    "release_files",
    "releases",
    "report_quota",
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
    # enrollment credentials (kind "enroll") bind what an enrollee gets; null on other tokens.
    # group_name null: an old unbound enrollment token, which binds the group "default", no tags
    sa.Column("group_name", sa.String(64), nullable=True),
    sa.Column("tags", sa.JSON, nullable=True),
    sa.Column("max_uses", sa.Integer, nullable=True),  # null: unlimited
    sa.Column("uses", sa.Integer, nullable=True),
    sa.Column("expires_at", sa.String(32), nullable=True),  # null: never
    sa.Column("approval", sa.Boolean, nullable=True),  # devices it enrolls wait for an operator
    sa.Column("cred_id", sa.String(40), nullable=True),  # the id `enroll-token list/revoke` name
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
    # the device's Ed25519 public key (hex), made at enrollment: every report is signed with it
    sa.Column("public_key", sa.String(64), nullable=True),
    # "pending" until an operator approves it (credentials with approval); null: active
    sa.Column("status", sa.String(16), nullable=True),
    sa.Column("credential", sa.String(40), nullable=True),  # the enrollment credential it used
    # when an operator revoked (decommissioned) it: its token is refused from then on; null: not revoked
    sa.Column("revoked_at", sa.String(32), nullable=True),
    # bumped on a change of this device alone that alters its assignment (its hardware): its
    # cached assignment is valid at one (fleet generation, this revision); null reads as 0
    sa.Column("assignment_rev", sa.Integer, nullable=True),
)

# The rollout assignments the director issued, by their digest (models.device_reports): a report
# counts for a rollout only when it names one issued to its device for that rollout.
issued_assignments = sa.Table(
    "issued_assignments",
    metadata,
    sa.Column("device_id", sa.String(40), primary_key=True),
    sa.Column("rollout_id", sa.String(40), primary_key=True),
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("issued_at", sa.String(32), nullable=False),
)

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("counter", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("rollback_of", sa.Integer, nullable=True),  # a rollback release re-points this one
    # its TUF targets are staged, not signed: the targets key is offline (NULL on older rows: signed)
    sa.Column("awaiting_signature", sa.Boolean, nullable=True),
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
    # when the server stored it (the device's ``time`` is the device's word): retention deletes
    # by it; null on rows stored before schema version 6, which retention judges by ``time``
    sa.Column("received_at", sa.String(32), nullable=True),
    sa.Index("ix_reports_received_at", "received_at"),
)

# One row per device that posted reports: its report quota's buckets (ota_server.rules.quota),
# shared by every worker and host, so the quota is one hard bound whatever serves the device.
report_quota = sa.Table(
    "report_quota",
    metadata,
    sa.Column("device_id", sa.String(40), primary_key=True),
    sa.Column("reports", sa.Float, nullable=False),
    sa.Column("bytes", sa.Float, nullable=False),
    sa.Column("at", sa.Float, nullable=False),  # seconds since the epoch
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

# Counters workers poll with one cheap read. Row 1, the fleet generation: bumped on every change
# that can alter an assignment (workers drop their cached signed assignments). Row 2, the
# revocation epoch: bumped on every revocation of a token or a device (workers drop their cached
# credentials).
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
