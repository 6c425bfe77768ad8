"""Provisioning a server: initializing a data directory (keys, TUF metadata, schema, first
tokens) and creating tokens, for ``ota-server init`` and ``ota-server token create``.

Directories are 0700, private keys and ``server.db`` 0600. With ``offline_root`` the root key is
written only to that path (for the operator to move to offline storage); the data directory then
holds no root key and re-signing root needs it back (``ota-server root resign``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from models.fsio import write_atomic
from ota_server.config import ServerConfig
from ota_server.errors import SetupError
from ota_server.serving.auth import new_token, token_digest
from ota_server.settings import save_settings
from ota_server.storage import db, migrations
from ota_server.storage import store as st
from ota_server.trust.keys import director_public_json, generate_key
from ota_server.trust.repository import create_repository

__all__ = ["create_token", "init_data_dir"]

_OWNED = (
    "keys",
    "tuf",
    "artifacts",
    "tmp",
    "locks",
    "run",
    "provisioning",
    "server.db",
    "server.db-wal",
    "server.db-shm",
    "server.json",
)


def _is_initialized(config: ServerConfig) -> bool:
    return config.settings_file.exists() or (config.keys_dir).exists() or config.sqlite_path.exists()


def _wipe(config: ServerConfig) -> None:
    for name in _OWNED:
        path = config.data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if config.db_url:
        engine = db.make_engine(config.db_url)
        try:
            db.metadata.drop_all(engine)
        except sa.exc.SQLAlchemyError as e:
            raise SetupError(f"cannot drop the tables at {config.db_url}: {e}") from e
        finally:
            engine.dispose()


def init_data_dir(config: ServerConfig, *, offline_root: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Create everything a server needs; refuses an initialized directory unless ``force``.

    Raises:
        SetupError: the directory is initialized (without ``force``), ``offline_root`` exists,
            or the database cannot be used.
    """
    if _is_initialized(config):
        if not force:
            raise SetupError(
                f"{config.data_dir} is already initialized; pass --force to wipe it "
                "(this destroys its keys, repository and database)"
            )
        _wipe(config)
    if offline_root is not None and offline_root.exists():
        raise SetupError(f"{offline_root} already exists; refusing to overwrite a root key")
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.data_dir, 0o700)
    for d in (config.keys_dir, config.tmp_dir, config.locks_dir, config.artifacts_dir, config.data_dir / "run"):
        d.mkdir(mode=0o700, exist_ok=True)
    for role in ("targets", "snapshot", "timestamp"):
        generate_key(config.keys_dir / f"{role}.pem")
    director = generate_key(config.keys_dir / "director.pem")
    root_key = offline_root.resolve() if offline_root else config.keys_dir / "root.pem"
    generate_key(root_key)
    create_repository(config, root_key_path=root_key)

    engine = db.make_engine(config.effective_db_url)
    try:
        migrations.migrate(engine)
        admin, enroll = new_token("api"), new_token("enroll")
        with engine.begin() as conn:
            st.insert_token(conn, digest=token_digest(admin), kind="api", role="admin", name="initial-admin")
            st.insert_token(conn, digest=token_digest(enroll), kind="enroll", role="enroll", name="fleet")
            st.audit(conn, "cli:ota-server", "server.init", str(config.data_dir), {"offline_root": bool(offline_root)})
    finally:
        engine.dispose()
    if config.sqlite_path.exists() and config.db_url is None:
        os.chmod(config.sqlite_path, 0o600)

    public = _write_provisioning(config, director.public_key())
    save_settings(config)
    return {
        "data_dir": str(config.data_dir),
        "db_url": _redact(config.effective_db_url),
        "admin_token": admin,
        "enrollment_token": enroll,
        "provisioning_dir": str(config.provisioning_dir),
        "root_json": str(config.provisioning_dir / "root.json"),
        "director_public_key": str(config.provisioning_dir / "director.pub.json"),
        "director_keyid": public["keyid"],
        "root_key": str(root_key),
        "offline_root": offline_root is not None,
    }


def _write_provisioning(config: ServerConfig, director_public: Any) -> dict[str, Any]:
    """``provisioning/root.json`` and ``director.pub.json``: what every vehicle pins."""
    prov = config.provisioning_dir
    prov.mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(config.metadata_dir / "1.root.json", prov / "root.json")
    public = director_public_json(director_public)
    write_atomic(prov / "director.pub.json", json.dumps(public, indent=2).encode() + b"\n")
    return public


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def create_token(config: ServerConfig, *, role: str, name: str) -> str:
    """Create an API token (or, with role ``enroll``, a fleet enrollment token).

    Raises:
        SetupError: the database cannot be used or the token cannot be stored.
    """
    kind = "enroll" if role == "enroll" else "api"
    token = new_token(kind)
    engine = db.make_engine(config.effective_db_url)
    try:
        with engine.begin() as conn:
            st.insert_token(conn, digest=token_digest(token), kind=kind, role=role, name=name)
            st.audit(conn, "cli:ota-server", "token.create", name, {"role": role})
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"cannot store the token in {_redact(config.effective_db_url)}: {e}") from e
    finally:
        engine.dispose()
    return token
