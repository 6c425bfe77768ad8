"""Devices: enrollment, the director's assignment, reports, hardware; fleet views of devices."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, request

from models.bundle import BundleError
from models.hardware import HardwareProfile, hardware_class
from ota_server.api.common import (
    json_body,
    json_response,
    principal,
    require_device,
    require_role,
    services,
)
from ota_server.errors import BadRequest, Forbidden
from ota_server.fleet import service
from ota_server.fleet.ingest import ingest
from ota_server.rules import reports as rp
from ota_server.serving.auth import PrincipalKind, Role, new_token, token_digest
from ota_server.serving.fastpath import NONCE, etag_matches
from ota_server.storage import store as st

__all__ = ["bp", "device_view"]

bp = Blueprint("devices", __name__, url_prefix="/api/v1/devices")
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _profile(data: Any, field: str = "hardware") -> HardwareProfile:
    try:
        return HardwareProfile.from_dict(data, field)
    except BundleError as e:
        raise BadRequest(f"invalid hardware profile: {e}", field=e.field or field) from e


def _enrollment(body: Any) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("expected a JSON object", field="body")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise BadRequest(f"name must be a string of 1-128 characters, got {name!r}", field="name")
    group = body.get("group", "default")
    if not isinstance(group, str) or not _GROUP.match(group):
        raise BadRequest(f"group must match {_GROUP.pattern}, got {group!r}", field="group")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags):
        raise BadRequest(f"tags must be a list of short strings, got {tags!r}", field="tags")
    profile = _profile(body.get("hardware"))
    return {
        "name": name,
        "group_name": group,
        "tags": sorted(set(tags)),
        "hardware": profile.to_dict(),
        "hardware_class": hardware_class(profile),
    }


@bp.post("/enroll")
def enroll() -> Response:
    """Enroll a device; answers its id, its token (shown once) and what it must pin.

    Raises:
        Forbidden: the caller does not hold the enrollment token. BadRequest: a bad field.
    """
    p = principal()
    if p.kind is not PrincipalKind.ENROLL:
        raise Forbidden("enrollment needs the fleet enrollment token")
    fields = _enrollment(json_body())
    s = services()
    device_id = "dev_" + secrets.token_hex(8)
    token = new_token("dev")
    row = dict(
        fields,
        id=device_id,
        token_digest=token_digest(token),
        enrolled_at=st.utcnow(),
        last_seen=None,
        state=None,
        running_name=None,
        running_version=None,
        running_release=None,
        last_metrics=None,
    )
    with s.store.tx() as conn:
        st.insert_devices(conn, [row])
        service.on_enrolled(conn, row)
        st.audit(conn, p.actor, "device.enroll", device_id, {"name": fields["name"], "group": fields["group_name"]})
        st.bump_generation(conn)
    base = (s.config.public_url or request.host_url).rstrip("/")
    image_root = json.loads((s.config.metadata_dir / "1.root.json").read_bytes())
    return json_response(
        {
            "device_id": device_id,
            "device_token": token,
            "director_public_key": s.director_public,
            "image_root": image_root,
            "tuf": {"metadata_url": f"{base}/tuf/metadata/", "targets_url": f"{base}/tuf/targets/"},
        },
        201,
    )


@bp.get("/<device_id>/assignment")
def assignment(device_id: str) -> Response:
    """The device's signed assignment for ``?nonce=``; 304 when ``If-None-Match`` names it.

    Raises:
        Forbidden: the caller is not this device. BadRequest: the nonce is not 16-128 hex digits.
        RecordNotFound: no such device (answered as 404).
    """
    require_device(device_id)
    nonce = request.args.get("nonce", "")
    if not NONCE.match(nonce):
        raise BadRequest(f"nonce must be 16-128 lowercase hex digits, got {nonce[:140]!r}", field="nonce")
    s = services()
    gen = s.store.generation()  # read before building: a change after it bumps it again
    signed = s.director.cached(device_id, nonce, gen)
    if signed is None:
        with s.store.read() as conn:
            signed = s.director.sign(conn, st.get_device(conn, device_id), nonce, gen)
    headers = {"ETag": signed.etag, "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("If-None-Match"), signed.etag):
        return Response(status=304, headers=headers)
    return Response(signed.body, status=200, mimetype="application/json", headers=headers)


@bp.post("/<device_id>/reports")
def reports(device_id: str) -> Response:
    """Ingest a batch of the device's reports.

    Raises:
        Forbidden: the caller is not this device. BadRequest: a report's field, named.
    """
    require_device(device_id)
    batch = rp.parse_batch(json_body())
    with services().store.tx() as conn:
        result = ingest(conn, device_id, batch)
    return json_response(result)


@bp.put("/<device_id>/hardware")
def hardware(device_id: str) -> Response:
    """Replace the device's hardware profile.

    Raises:
        Forbidden: the caller is not this device. BadRequest: an invalid profile.
    """
    require_device(device_id)
    profile = _profile(json_body(), "body")
    with services().store.tx() as conn:
        st.update_device(
            conn, device_id, hardware=profile.to_dict(), hardware_class=hardware_class(profile), last_seen=st.utcnow()
        )
        st.bump_generation(conn)
    return json_response(
        {"device_id": device_id, "hardware": profile.to_dict(), "hardware_class": hardware_class(profile)}
    )


def device_view(row: Mapping[str, Any]) -> dict[str, Any]:
    running = None
    if row["running_name"]:
        running = {
            "name": row["running_name"],
            "version": row["running_version"],
            "release": row["running_release"],
            "variant": row["running_variant"],
        }
    return {
        "id": row["id"],
        "name": row["name"],
        "group": row["group_name"],
        "tags": row["tags"],
        "hardware_class": row["hardware_class"],
        "hardware": row["hardware"],
        "enrolled_at": row["enrolled_at"],
        "last_seen": row["last_seen"],
        "state": row["state"],
        "running": running,
        "metrics": row["last_metrics"],
        "gate": row["last_gate"],
    }


def _int_arg(name: str, default: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > hi:
        raise BadRequest(f"{name} must be an integer in [0, {hi}], got {raw!r}", field=name)
    return int(raw)


@bp.get("")
@require_role(Role.VIEWER)
def list_devices() -> Response:
    with services().store.read() as conn:
        rows = st.list_devices(
            conn,
            group=request.args.get("group") or None,
            model_version=request.args.get("model_version") or None,
            limit=_int_arg("limit", 1000, 10000),
            offset=_int_arg("offset", 0, 10**9),
        )
    return json_response({"devices": [device_view(r) for r in rows]})


@bp.get("/<device_id>")
def get_device(device_id: str) -> Response:
    """One device, for an API token or for the device itself.

    Raises:
        Forbidden: the caller is another device, or holds an enrollment token.
        RecordNotFound: no such device (answered as 404).
    """
    p = principal()
    if p.kind is PrincipalKind.DEVICE:
        require_device(device_id)
    elif p.kind is not PrincipalKind.API:
        raise Forbidden("this endpoint needs an API token")
    with services().store.read() as conn:
        return json_response(device_view(st.get_device(conn, device_id)))
