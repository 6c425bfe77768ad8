"""Provisioning a server: initializing a data directory (keys, TUF metadata, schema, first
tokens) and managing tokens, for ``ota-server init``, ``ota-server token create|list|revoke`` and
``ota-server enroll-token create|list|revoke`` (enrollment credentials: each binds the group and
tags of the devices it enrolls, and may be limited in uses and time or ask for approval; the
one ``init`` makes binds group ``default`` with unlimited uses).

Directories are 0700, private keys and ``server.db`` 0600. With ``offline_root`` the root key is
written only to that path (for the operator to move to offline storage); the data directory then
holds no root key and re-signing root needs it back (``ota-server root resign``). With
``offline_targets`` the TUF targets key is written only to that path: the data directory holds no
``keys/targets.pem``, publishes stage their targets and ``ota-server targets sign`` signs them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from models.fsio import write_atomic
from ota_server.config import ServerConfig
from ota_server.errors import SetupError
from ota_server.serving.auth import TOKEN_RE, new_token, token_digest
from ota_server.settings import save_settings
from ota_server.storage import db, migrations
from ota_server.storage import store as st
from ota_server.trust.keys import director_public_json, generate_key
from ota_server.trust.repository import create_repository

__all__ = [
    "create_enroll_credential",
    "create_token",
    "init_data_dir",
    "list_enroll_credentials",
    "list_tokens",
    "parse_duration",
    "revoke_enroll_credential",
    "revoke_token",
]

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


def init_data_dir(
    config: ServerConfig,
    *,
    offline_root: Path | None = None,
    offline_targets: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Create everything a server needs; refuses an initialized directory unless ``force``.

    Raises:
        SetupError: the directory is initialized (without ``force``), ``offline_root`` or
            ``offline_targets`` exists or both name one file, or the database cannot be used.
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
    if offline_targets is not None and offline_targets.exists():
        raise SetupError(f"{offline_targets} already exists; refusing to overwrite a targets key")
    if offline_root is not None and offline_targets is not None and offline_root.resolve() == offline_targets.resolve():
        raise SetupError("--offline-root and --offline-targets must be two files: root and targets keys differ")
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.data_dir, 0o700)
    for d in (config.keys_dir, config.tmp_dir, config.locks_dir, config.artifacts_dir, config.data_dir / "run"):
        d.mkdir(mode=0o700, exist_ok=True)
    targets_key = offline_targets.resolve() if offline_targets else config.keys_dir / "targets.pem"
    generate_key(targets_key)
    for role in ("snapshot", "timestamp"):
        generate_key(config.keys_dir / f"{role}.pem")
    director = generate_key(config.keys_dir / "director.pem")
    root_key = offline_root.resolve() if offline_root else config.keys_dir / "root.pem"
    generate_key(root_key)
    create_repository(config, root_key_path=root_key, targets_key_path=targets_key)

    engine = db.make_engine(config.effective_db_url)
    try:
        migrations.migrate(engine)
        admin, enroll = new_token("api"), new_token("enroll")
        with engine.begin() as conn:
            st.insert_token(conn, digest=token_digest(admin), kind="api", role="admin", name="initial-admin")
            st.insert_token(
                conn,
                digest=token_digest(enroll),
                kind="enroll",
                role="enroll",
                name="fleet",
                **_binding(group="default", tags=(), uses=None, expires_s=None, approval=False),
            )
            detail = {"offline_root": bool(offline_root), "offline_targets": bool(offline_targets)}
            st.audit(conn, "cli:ota-server", "server.init", str(config.data_dir), detail)
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
        "targets_key": str(targets_key),
        "offline_targets": offline_targets is not None,
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


T = TypeVar("T")


def with_database(config: ServerConfig, work: Callable[[sa.Connection], T], *, fail: str, write: bool = False) -> T:
    """``work`` on one connection to the server's database (in one transaction when ``write``); the
    engine is disposed after, as a one-shot CLI command wants.

    Raises:
        SetupError: the database cannot be used (``fail``, then the driver's error).
    """
    engine = db.make_engine(config.effective_db_url)
    try:
        with engine.begin() if write else engine.connect() as conn:
            return work(conn)
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"{fail}: {e}") from e
    finally:
        engine.dispose()


def _binding(
    *, group: str, tags: Sequence[str], uses: int | None, expires_s: float | None, approval: bool
) -> dict[str, Any]:
    expires = None
    if expires_s is not None:
        expires = (datetime.now(timezone.utc) + timedelta(seconds=expires_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "group_name": group,
        "tags": sorted(set(tags)),
        "max_uses": uses,
        "uses": 0,
        "expires_at": expires,
        "approval": approval,
        "cred_id": "enr_" + secrets.token_hex(6),
    }


_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> float:
    """Seconds of ``30m``, ``12h``, ``7d`` (or ``90s``).

    Raises:
        SetupError: another form.
    """
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise SetupError(f"--expires must be a positive duration like 30m, 12h or 7d, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def create_enroll_credential(
    config: ServerConfig,
    *,
    name: str,
    group: str = "default",
    tags: Sequence[str] = (),
    uses: int | None = None,
    expires_s: float | None = None,
    approval: bool = False,
) -> dict[str, Any]:
    """Create an enrollment credential binding ``group`` and ``tags``: good for ``uses``
    enrollments (None: unlimited) until ``expires_s`` from now (None: no expiry); with
    ``approval`` its devices wait for an operator. Returns its id, token (shown once) and binding.

    Raises:
        SetupError: a bad group, tag, use count or expiry, or the database cannot be used.
    """
    if not _GROUP.match(group):
        raise SetupError(f"--group must match {_GROUP.pattern}, got {group!r}")
    if len(tags) > 32 or not all(0 < len(t) <= 64 for t in tags):
        raise SetupError(f"--tags must be at most 32 tags of 1-64 characters, got {list(tags)!r}")
    if uses is not None and uses < 1:
        raise SetupError(f"--uses must be >= 1, got {uses}")
    if expires_s is not None and expires_s <= 0:
        raise SetupError(f"--expires must be positive, got {expires_s}")
    token = new_token("enroll")
    bound = _binding(group=group, tags=tags, uses=uses, expires_s=expires_s, approval=approval)
    engine = db.make_engine(config.effective_db_url)
    try:
        with engine.begin() as conn:
            st.insert_token(conn, digest=token_digest(token), kind="enroll", role="enroll", name=name, **bound)
            detail = {k: bound[k] for k in ("group_name", "tags", "max_uses", "expires_at", "approval")}
            st.audit(conn, "cli:ota-server", "enroll-token.create", bound["cred_id"], detail)
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"cannot store the credential in {_redact(config.effective_db_url)}: {e}") from e
    finally:
        engine.dispose()
    return {"id": bound["cred_id"], "token": token, "name": name, **_public(bound)}


def _public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "group": row["group_name"] or "default",
        "tags": list(row["tags"] or []),
        "uses": row.get("uses") or 0,
        "max_uses": row["max_uses"],
        "expires_at": row["expires_at"],
        "approval": bool(row["approval"]),
    }


def list_enroll_credentials(config: ServerConfig) -> list[dict[str, Any]]:
    """Every enrollment credential (never its token): id, name, binding, uses, revoked.

    Raises:
        SetupError: the database cannot be used.
    """
    rows = with_database(config, st.list_credentials, fail=f"cannot read {_redact(config.effective_db_url)}")
    return [
        {
            "id": r["cred_id"],
            "name": r["name"],
            "created_at": r["created_at"],
            "revoked": bool(r["revoked"]),
            **_public(r),
        }
        for r in rows
    ]


def revoke_enroll_credential(config: ServerConfig, cred: str) -> None:
    """Revoke an enrollment credential by id (or name): it enrolls nothing more. Devices it
    enrolled keep their own tokens.

    Raises:
        SetupError: no credential has that id or name, or the database cannot be used.
    """
    engine = db.make_engine(config.effective_db_url)
    try:
        with engine.begin() as conn:
            if st.revoke_credential(conn, cred) == 0:
                raise SetupError(f"no enrollment credential {cred!r} (see `ota-server enroll-token list`)")
            st.audit(conn, "cli:ota-server", "enroll-token.revoke", cred, None)
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"cannot revoke in {_redact(config.effective_db_url)}: {e}") from e
    finally:
        engine.dispose()


def create_token(config: ServerConfig, *, role: str, name: str) -> str:
    """Create an API token (or, with role ``enroll``, a fleet enrollment token).

    Raises:
        SetupError: the database cannot be used or the token cannot be stored.
    """
    kind = "enroll" if role == "enroll" else "api"
    token = new_token(kind)
    bound: dict[str, Any] = {}
    if kind == "enroll":
        bound = _binding(group="default", tags=(), uses=None, expires_s=None, approval=False)
    engine = db.make_engine(config.effective_db_url)
    try:
        with engine.begin() as conn:
            st.insert_token(conn, digest=token_digest(token), kind=kind, role=role, name=name, **bound)
            st.audit(conn, "cli:ota-server", "token.create", name, {"role": role})
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"cannot store the token in {_redact(config.effective_db_url)}: {e}") from e
    finally:
        engine.dispose()
    return token


TOKEN_ID_CHARS = 12  # hex digits of a token's digest that ``token list`` shows as its id


def list_tokens(config: ServerConfig) -> list[dict[str, Any]]:
    """Every API token, never its secret: id (the first :data:`TOKEN_ID_CHARS` hex digits of its
    SHA-256 digest, which tells nothing of the token), name, role, created_at, revoked.

    Raises:
        SetupError: the database cannot be used.
    """
    rows = with_database(
        config, st.list_api_tokens, fail=f"cannot read the tokens in {_redact(config.effective_db_url)}"
    )
    return [
        {
            "id": r["digest"][:TOKEN_ID_CHARS],
            "name": r["name"],
            "role": r["role"],
            "created_at": r["created_at"],
            "revoked": bool(r["revoked"]),
        }
        for r in rows
    ]


_TOKEN_ID = re.compile(r"^[0-9a-f]{8,64}$")


def revoke_token(config: ServerConfig, ident: str) -> dict[str, Any]:
    """Revoke one API token, named by the id ``token list`` shows (or any unambiguous prefix of
    its digest of 8 or more hex digits), or by the token itself. Every worker refuses it within a
    second (the revocation epoch). Returns the token as :func:`list_tokens` shows it.

    Raises:
        SetupError: ``ident`` is neither an id nor a token, no API token or several match it, it
            is revoked already, or the database cannot be used.
    """
    if TOKEN_RE.match(ident):
        prefix = token_digest(ident)
    elif _TOKEN_ID.match(ident.lower()):
        prefix = ident.lower()
    else:
        raise SetupError(f"token id must be 8-64 hex digits (see `ota-server token list`) or a token, got {ident!r}")
    engine = db.make_engine(config.effective_db_url)
    try:
        with engine.begin() as conn:
            matches = [r for r in st.list_api_tokens(conn) if r["digest"].startswith(prefix)]
            if not matches:
                raise SetupError(f"no API token has id {prefix[:TOKEN_ID_CHARS]!r} (see `ota-server token list`)")
            if len(matches) > 1:
                raise SetupError(f"token id {ident!r} is ambiguous ({len(matches)} tokens); give more digits")
            (row,) = matches
            if row["revoked"]:
                raise SetupError(f"token {row['digest'][:TOKEN_ID_CHARS]} ({row['name']!r}) is revoked already")
            st.revoke_api_tokens(conn, [row["digest"]])
            st.bump_revocations(conn)
            st.audit(conn, "cli:ota-server", "token.revoke", row["name"], {"id": row["digest"][:TOKEN_ID_CHARS]})
    except sa.exc.SQLAlchemyError as e:
        raise SetupError(f"cannot revoke the token in {_redact(config.effective_db_url)}: {e}") from e
    finally:
        engine.dispose()
    return {
        "id": row["digest"][:TOKEN_ID_CHARS],
        "name": row["name"],
        "role": row["role"],
        "created_at": row["created_at"],
        "revoked": True,
    }
