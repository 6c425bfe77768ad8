"""Fixtures for the OTA server tests: an initialized data dir on SQLite or on a fresh
PostgreSQL schema (dropped afterwards)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from ota_server.config import ServerConfig
from ota_server.provision import init_data_dir


@contextmanager
def pg_schema(postgres_url: str, prefix: str = "ota_test_") -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new, empty schema, dropped on exit."""
    schema = prefix + secrets.token_hex(6)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new, empty schema."""
    with pg_schema(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def initialized(tmp_path: Path, db_url: str | None) -> tuple[ServerConfig, dict[str, str]]:
    config = ServerConfig(data_dir=tmp_path / "data", db_url=db_url)
    result = init_data_dir(config)
    return config, result
