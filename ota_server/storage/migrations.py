"""Schema versions: the database says which version it holds; numbered migrations bring it up.

The ``schema_version`` table holds one row, the version of the schema the database has (a table,
not SQLite's ``user_version``, so SQLite and PostgreSQL read it alike). :func:`migrate` runs in
``ota-server init`` and whenever an app starts (:func:`ota_server.services.build_services`):

* an empty database gets the latest schema (:mod:`ota_server.storage.db`) in one step;
* an older one gets each migration above its version, in order, in one transaction with the
  version row, so a failed upgrade leaves the database as it was;
* a database of a newer server is refused, since this server cannot know what it changed.

Version 1 is the first schema. A database from before schema versions has tables and no version
row: it is version 1, possibly with some later columns already (the server that made it added
the columns it knew), so every migration adds only what is missing. All migrations so far add
nullable columns, new tables or indexes, which rows already stored satisfy.

This module changes the schema only; rows are the business of :mod:`ota_server.storage.store`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ota_server.errors import SetupError
from ota_server.storage import db

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate", "schema_version", "upgrade"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """The step from ``version - 1`` to ``version``: tables to create, nullable columns to
    add and indexes to build, each as :mod:`ota_server.storage.db` defines it now."""

    version: int
    summary: str
    tables: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()  # (table, column)
    indexes: tuple[tuple[str, str], ...] = ()  # (table, index name), built after the columns

    def apply(self, conn: Connection) -> None:
        """Create the tables, add the columns and build the indexes this database lacks."""
        for name in self.tables:
            db.metadata.tables[name].create(conn, checkfirst=True)
        inspector = sa.inspect(conn)
        for table_name, column_name in self.columns:
            if column_name in {c["name"] for c in inspector.get_columns(table_name)}:
                continue
            column = db.metadata.tables[table_name].c[column_name]
            ddl = column.type.compile(dialect=conn.dialect)  # JSON, BIGINT, VARCHAR(64) as this dialect says
            conn.execute(sa.text(f"ALTER TABLE {table_name} ADD COLUMN {column_name} {ddl}"))
        for table_name, index_name in self.indexes:
            (index,) = (i for i in db.metadata.tables[table_name].indexes if i.name == index_name)
            index.create(conn, checkfirst=True)


MIGRATIONS = (
    # the rollout's counters are built on first use for a rollout that has none
    Migration(2, "per-stage rollout counters", tables=("rollout_counters",), columns=(("device_rollouts", "stage"),)),
    Migration(3, "rollout creation order", columns=(("rollouts", "seq"),)),
    Migration(
        4,
        "the variant each device serves and its gate evidence",
        columns=(
            ("devices", "running_variant"),
            ("devices", "last_gate"),
            ("device_rollouts", "variant"),
            ("device_rollouts", "gate"),
        ),
    ),
    Migration(
        5,
        "device keys, issued assignments, bound enrollment credentials, device approval",
        tables=("issued_assignments",),
        columns=(
            ("devices", "public_key"),
            ("devices", "status"),
            ("devices", "credential"),
            ("api_tokens", "group_name"),
            ("api_tokens", "tags"),
            ("api_tokens", "max_uses"),
            ("api_tokens", "uses"),
            ("api_tokens", "expires_at"),
            ("api_tokens", "approval"),
            ("api_tokens", "cred_id"),
        ),
    ),
    Migration(
        6,
        "report retention and per-device report quotas",
        tables=("report_quota",),
        columns=(("reports", "received_at"),),
        indexes=(("reports", "ix_reports_received_at"),),
    ),
    # the revocation epoch is row 2 of generation, made below on every database that lacks it
    Migration(7, "device revocation", columns=(("devices", "revoked_at"),)),
    Migration(8, "per-device assignment revision", columns=(("devices", "assignment_rev"),)),
    Migration(9, "releases awaiting the offline targets signature", columns=(("releases", "awaiting_signature"),)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(conn: Connection) -> int:
    """The version of the schema the database holds: 0 when it has no tables, 1 for one from
    before schema versions."""
    inspector = sa.inspect(conn)
    if inspector.has_table(db.schema_version.name):
        value = conn.execute(sa.select(db.schema_version.c.version).where(db.schema_version.c.id == 1)).scalar()
        if value is not None:
            return int(value)
    return 1 if inspector.has_table(db.devices.name) else 0


def migrate(engine: Engine) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it held before.

    Idempotent, and safe while other processes do the same: PostgreSQL takes an advisory lock,
    and on SQLite an engine made with ``immediate=True`` takes the write lock at BEGIN.

    Raises:
        SetupError: the database holds a newer schema than this server knows, or cannot be read
            or changed.
    """
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": "schema_version"})
            found = schema_version(conn)
            if found > SCHEMA_VERSION:
                raise SetupError(
                    f"the database at {engine.url!r} holds schema version {found}; this server "
                    f"knows versions up to {SCHEMA_VERSION}: upgrade the server"
                )
            if found == 0:
                db.metadata.create_all(conn)
            for step in MIGRATIONS:
                if 0 < found < step.version:
                    log.info("schema %d -> %d: %s", step.version - 1, step.version, step.summary)
                    step.apply(conn)
            if found < SCHEMA_VERSION:
                _write_version(conn)
            if conn.execute(sa.select(db.generation.c.value).where(db.generation.c.id == 1)).first() is None:
                conn.execute(db.generation.insert().values(id=1, value=1))
            if conn.execute(sa.select(db.generation.c.value).where(db.generation.c.id == 2)).first() is None:
                conn.execute(db.generation.insert().values(id=2, value=1))  # the revocation epoch
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"cannot migrate the schema at {engine.url!r}: {e}") from e
    return found


def _write_version(conn: Connection) -> None:
    db.schema_version.create(conn, checkfirst=True)
    if conn.execute(sa.select(db.schema_version.c.id).where(db.schema_version.c.id == 1)).first() is None:
        conn.execute(db.schema_version.insert().values(id=1, version=SCHEMA_VERSION))
    else:
        conn.execute(db.schema_version.update().where(db.schema_version.c.id == 1).values(version=SCHEMA_VERSION))


def upgrade(url: str) -> int:
    """:func:`migrate` on an engine of its own, disposed before returning, so no connection
    outlives the call (an app that gunicorn forks after it must hold none).

    Raises:
        SetupError: as :func:`migrate`, or the URL cannot be used (:func:`~ota_server.storage.db.make_engine`).
    """
    engine = db.make_engine(url, immediate=True)
    try:
        return migrate(engine)
    finally:
        engine.dispose()
