"""Schema versions on SQLite and PostgreSQL: an empty database gets the latest schema, an older
one gains the new columns through the numbered migrations, a newer one is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ota_server.errors import SetupError
from ota_server.storage import db, migrations
from ota_server.storage import store as st
from tests.ota_server.fleet.test_ingest import _device


@pytest.fixture
def engine(tmp_path: Path, db_url: str | None) -> Iterator[Engine]:
    engine = db.make_engine(db_url or f"sqlite:///{tmp_path / 'server.db'}", immediate=True)
    yield engine
    engine.dispose()


def _columns(engine: Engine) -> dict[str, set[str]]:
    inspector = sa.inspect(engine)
    return {name: {c["name"] for c in inspector.get_columns(name)} for name in inspector.get_table_names()}


def _downgrade(engine: Engine, version: int) -> None:
    """Take a database of the latest schema back to ``version``: without what later migrations
    add; version 1 as a server before schema versions left it, with no version row at all."""
    with engine.begin() as conn:
        for step in migrations.MIGRATIONS:
            if step.version > version:
                for _table, index in step.indexes:
                    conn.execute(sa.text(f"DROP INDEX {index}"))
                for table, column in step.columns:
                    conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
                for table in step.tables:
                    db.metadata.tables[table].drop(conn)
        if version == 1:
            db.schema_version.drop(conn)
        else:
            conn.execute(db.schema_version.update().values(version=version))


def test_an_empty_database_gets_the_latest_schema_in_one_step(engine: Engine) -> None:
    assert migrations.migrate(engine) == 0
    with engine.connect() as conn:
        assert migrations.schema_version(conn) == migrations.SCHEMA_VERSION
        assert st.generation(conn) == 1
    assert set(_columns(engine)) == set(db.metadata.tables)
    assert migrations.migrate(engine) == migrations.SCHEMA_VERSION  # idempotent


def test_the_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(range(2, migrations.SCHEMA_VERSION + 1))


@pytest.mark.parametrize("start", [1, 2, 3])
def test_the_schema_of_an_older_server_gains_the_new_columns(engine: Engine, start: int) -> None:
    migrations.migrate(engine)
    latest = _columns(engine)
    _downgrade(engine, start)
    assert "last_gate" not in _columns(engine)["devices"]
    with engine.connect() as conn:
        assert migrations.schema_version(conn) == start
    assert migrations.migrate(engine) == start
    assert migrations.migrate(engine) == migrations.SCHEMA_VERSION  # idempotent
    assert _columns(engine) == latest  # the same schema as an empty database gets
    assert "ix_reports_received_at" in {i["name"] for i in sa.inspect(engine).get_indexes("reports")}
    with engine.begin() as conn:  # and the JSON column takes JSON
        assert migrations.schema_version(conn) == migrations.SCHEMA_VERSION
        st.insert_devices(conn, [dict(_device(9), last_gate={"agreement": {"frames": 3}})])
        assert st.get_device(conn, "dev_9")["last_gate"] == {"agreement": {"frames": 3}}


def test_a_database_of_a_newer_server_is_refused(engine: Engine) -> None:
    migrations.migrate(engine)
    with engine.begin() as conn:
        conn.execute(db.schema_version.update().values(version=migrations.SCHEMA_VERSION + 1))
    with pytest.raises(SetupError, match=f"schema version {migrations.SCHEMA_VERSION + 1}"):
        migrations.migrate(engine)
