"""Releases: publish a bundle tar (publisher), list and show (viewer)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request

from models.bundle import Manifest
from ota_server.api.common import json_response, principal, require_role, services
from ota_server.errors import BadRequest, NotFound
from ota_server.fleet import coverage
from ota_server.fleet.publish import receive, release_view
from ota_server.serving.auth import Role
from ota_server.storage import store as st

__all__ = ["bp"]

bp = Blueprint("releases", __name__, url_prefix="/api/v1/releases")
log = logging.getLogger(__name__)


@bp.post("")
@require_role(Role.PUBLISHER)
def publish() -> Response:
    """Publish a bundle tar (publisher); answers the release and coverage warnings.

    Raises:
        BadRequest: not a tar, or an invalid bundle. PayloadTooLarge: over the upload limit.
        Conflict: the release exists, or its version is not above the model's latest.
    """
    s = services()
    ctype = (request.content_type or "").split(";")[0].strip()
    if ctype not in ("application/x-tar", "application/octet-stream"):
        raise BadRequest(f"Content-Type must be application/x-tar, got {ctype or 'none'!r}", field="Content-Type")
    request.max_content_length = s.config.max_upload_bytes
    tar_path = receive(
        request.stream, content_length=request.content_length, limit=s.config.max_upload_bytes, tmp_dir=s.config.tmp_dir
    )
    release = s.publisher.publish_tar(tar_path, actor=principal().actor)
    with s.store.read() as conn:
        manifest = Manifest.from_dict(st.get_release(conn, release["counter"])["manifest"])
        warnings = coverage.warnings(conn, manifest)
    for w in warnings:
        log.warning("published %s@%s: %s", release["name"], release["version"], w["message"])
    return json_response({"release": release, "warnings": warnings}, 201)


@bp.get("")
@require_role(Role.VIEWER)
def list_releases() -> Response:
    with services().store.read() as conn:
        rows = st.list_releases(conn, name=request.args.get("name") or None)
        out = [release_view(r, st.release_files(conn, r["counter"])) for r in rows]
    return json_response({"releases": out})


@bp.get("/<name>/<version>")
@require_role(Role.VIEWER)
def get_release(name: str, version: str) -> Response:
    """One release of ``name`` with its manifest (viewer).

    Raises:
        NotFound: no release ``name@version``.
    """
    with services().store.read() as conn:
        row = st.release_by_version(conn, name, version)
        if row is None:
            raise NotFound(f"no release {name}@{version}", field="version")
        view = release_view(row, st.release_files(conn, row["counter"]))
        view["manifest"] = row["manifest"]
    return json_response(view)
