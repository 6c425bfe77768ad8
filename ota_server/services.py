"""The services one worker holds, built once from an initialized data directory.

:func:`build_services` opens the SQL store (after bringing its schema up to date), the TUF
repository and artifact store, the director with its key, the authenticator and the metrics;
:func:`ota_server.app.create_app` keeps them in ``app.extensions["edgefleet"]``; tests call it
directly to drive the fleet logic without HTTP. Nothing here knows Flask or serves a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ota_server.config import ServerConfig
from ota_server.errors import SetupError
from ota_server.fleet.director import Director
from ota_server.fleet.publish import Publisher
from ota_server.serving.auth import Authenticator, Principal, PrincipalKind, Role, parse_trusted_proxies
from ota_server.serving.metrics import Metrics
from ota_server.storage import store as st
from ota_server.storage.migrations import upgrade
from ota_server.storage.store import Store
from ota_server.trust.artifacts import ArtifactStore
from ota_server.trust.keys import director_public_json, load_private
from ota_server.trust.repository import Repository

__all__ = ["Services", "build_services"]


@dataclass
class Services:
    """What one worker serves with; the blueprints reach it through
    :func:`ota_server.api.common.services`."""

    config: ServerConfig
    store: Store
    repo: Repository
    artifacts: ArtifactStore
    publisher: Publisher
    director: Director
    director_public: dict[str, Any]
    auth: Authenticator
    metrics: Metrics


def build_services(config: ServerConfig) -> Services:
    """Open the database and key material of an initialized data directory, bringing the
    database's schema up to this server's version first (:func:`ota_server.storage.migrations.upgrade`).

    Raises:
        SetupError: the data directory is not initialized, its director key cannot be read, or
            its database cannot be used or migrated, or ``forwarded_allow_ips`` is malformed.
    """
    if not config.metadata_dir.joinpath("1.root.json").is_file():
        raise SetupError(f"{config.data_dir} is not an initialized data directory; run `ota-server init` first")
    upgrade(config.effective_db_url)
    store = Store(config.effective_db_url)
    repo = Repository(config)
    artifacts = ArtifactStore(config.artifacts_dir)
    director_key = load_private(config.keys_dir / "director.pem")
    try:
        trusted = parse_trusted_proxies(config.forwarded_allow_ips)
    except ValueError as e:
        raise SetupError(str(e)) from e

    def lookup(digest: str) -> Principal | None:
        with store.read() as conn:
            token = st.find_token(conn, digest)
            if token is not None:
                if token["kind"] == "enroll":
                    return Principal(PrincipalKind.ENROLL, token["name"])
                return Principal(PrincipalKind.API, token["name"], role=Role(token["role"]))
            device = st.device_by_token(conn, digest)
            if device is not None:
                return Principal(PrincipalKind.DEVICE, device["id"], device_id=device["id"])
        return None

    return Services(
        config=config,
        store=store,
        repo=repo,
        artifacts=artifacts,
        publisher=Publisher(store, repo, artifacts, config.tmp_dir, max_bytes=config.max_upload_bytes),
        director=Director(
            director_key,
            ttl_s=config.assignment_ttl_s,
            spool_dir=config.data_dir / "run" / "assignments",
            key_path=config.keys_dir / "director.pem",
        ),
        director_public=director_public_json(director_key.public_key()),
        auth=Authenticator(
            lookup,
            api_cache_s=config.token_cache_s,
            bad_per_minute=config.bad_auth_per_minute,
            revocation_epoch=store.revocations,
            trusted_proxies=trusted,
        ),
        metrics=Metrics(),
    )
