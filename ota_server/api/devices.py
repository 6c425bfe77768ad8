"""Devices: enrollment, the director's assignment, reports, hardware; fleet views of devices.

Enrollment takes an enrollment credential (``ota-server enroll-token create``): it binds the
device's group and tags, may be limited in uses and time, and may make the device wait for an
operator's approval (``POST /<id>/approve``); the device sends its Ed25519 public key, and every
report it posts must be signed with the private half (:mod:`models.device_reports`). An issued
rollout assignment is recorded by its digest, so only reports of devices that were issued it count.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, request

from models.bundle import BundleError
from models.device_reports import PUBLIC_KEY_RE
from models.hardware import HardwareProfile, hardware_class
from ota_server.api.common import (
    json_body,
    json_response,
    principal,
    require_device,
    require_role,
    services,
)
from ota_server.errors import BadRequest, Conflict, Forbidden, TooManyRequests
from ota_server.fleet import service, telemetry
from ota_server.fleet.ingest import ingest, verify_signatures
from ota_server.rules import devices as rd
from ota_server.rules import reports as rp
from ota_server.rules import rollouts as ro
from ota_server.serving.auth import PrincipalKind, Role, new_token, token_digest
from ota_server.serving.fastpath import NONCE, etag_matches
from ota_server.storage import store as st

__all__ = ["bp", "device_view"]

log = logging.getLogger(__name__)
bp = Blueprint("devices", __name__, url_prefix="/api/v1/devices")
MAX_TAGS = 32
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _profile(data: Any, field: str = "hardware") -> HardwareProfile:
    try:
        profile = HardwareProfile.from_dict(data, field)
    except BundleError as e:
        raise BadRequest(f"invalid hardware profile: {e}", field=e.field or field) from e
    return rd.check_profile(profile, field)


def _enrollment(body: Any) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("expected a JSON object", field="body")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise BadRequest(f"name must be a string of 1-128 characters, got {name!r}", field="name")
    group = body.get("group", "default")
    if not isinstance(group, str) or not _GROUP.match(group):
        raise BadRequest(f"group must match {_GROUP.pattern}, got {group!r}", field="group")
    tags = body.get("tags")
    if tags is not None and (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags)
    ):
        raise BadRequest(f"tags must be a list of at most {MAX_TAGS} short strings, got {tags!r}", field="tags")
    profile = _profile(body.get("hardware"))
    public_key = body.get("public_key")
    if not isinstance(public_key, str) or not PUBLIC_KEY_RE.match(public_key):
        raise BadRequest(
            "public_key must be the device's Ed25519 public key, 64 lowercase hex digits "
            f"(edge-agent enroll makes one), got {str(public_key)[:80]!r}",
            field="public_key",
        )
    return {
        "name": name,
        "group_name": group,
        "tags": None if tags is None else sorted(set(tags)),
        "hardware": profile.to_dict(),
        "hardware_class": hardware_class(profile),
        "public_key": public_key,
    }


def _bound(cred: Mapping[str, Any] | None, fields: dict[str, Any], asked_group: bool) -> dict[str, Any]:
    """The enrollment's fields with the group and tags the credential binds.

    Raises:
        Forbidden: the credential is unknown, revoked, expired or used up, or the body asks for
            another group or other tags than it binds.
    """
    if cred is None or cred["revoked"]:
        raise Forbidden("this enrollment credential is revoked or unknown", field="Authorization")
    if cred["expires_at"] and cred["expires_at"] <= st.utcnow():
        raise Forbidden(f"this enrollment credential expired at {cred['expires_at']}", field="Authorization")
    if cred["max_uses"] is not None and (cred["uses"] or 0) >= cred["max_uses"]:
        raise Forbidden(f"this enrollment credential is used up ({cred['max_uses']} uses)", field="Authorization")
    group = cred["group_name"] or "default"
    tags = sorted(set(cred["tags"] or []))
    if asked_group and fields["group_name"] != group:
        raise Forbidden(
            f"this enrollment credential binds group {group!r}; a device cannot choose {fields['group_name']!r}",
            field="group",
        )
    if fields["tags"] is not None and fields["tags"] != tags:
        raise Forbidden(f"this enrollment credential binds tags {tags}; got {fields['tags']}", field="tags")
    return dict(fields, group_name=group, tags=tags)


@bp.post("/enroll")
def enroll() -> Response:
    """Enroll a device; answers its id, its token (shown once) and what it must pin.

    Raises:
        Forbidden: the caller does not hold the enrollment token. BadRequest: a bad field.
    """
    p = principal()
    if p.kind is not PrincipalKind.ENROLL:
        raise Forbidden("enrollment needs an enrollment credential (ota-server enroll-token create)")
    body = json_body()
    fields = _enrollment(body)
    cred_digest = token_digest(request.headers.get("Authorization", "").partition(" ")[2].strip())
    s = services()
    device_id = "dev_" + secrets.token_hex(8)
    token = new_token("dev")
    with s.store.tx() as conn:
        st.lock(conn, f"enroll:{cred_digest}")
        cred = st.enroll_credential(conn, cred_digest)
        fields = _bound(cred, fields, asked_group="group" in body)
        assert cred is not None  # _bound refuses a missing one
        pending = bool(cred["approval"])
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
            status="pending" if pending else None,
            credential=cred["cred_id"] or cred["name"],
        )
        st.insert_devices(conn, [row])
        st.use_credential(conn, cred_digest)
        # a pending device joins rollouts when it is approved; a new device changes no other
        # device's assignment unless it pins a rollout's first stage
        if not pending and _joined(conn, row):
            st.bump_generation(conn)
        st.audit(
            conn,
            p.actor,
            "device.enroll",
            device_id,
            {"name": fields["name"], "group": fields["group_name"], "pending": pending},
        )
    base = (s.config.public_url or request.host_url).rstrip("/")
    image_root = json.loads((s.config.metadata_dir / "1.root.json").read_bytes())
    return json_response(
        {
            "device_id": device_id,
            "device_token": token,
            "status": "pending" if pending else "active",
            "group": fields["group_name"],
            "tags": fields["tags"],
            "director_public_key": s.director_public,
            "image_root": image_root,
            "tuf": {"metadata_url": f"{base}/tuf/metadata/", "targets_url": f"{base}/tuf/targets/"},
        },
        201,
    )


def _joined(conn: Any, row: Mapping[str, Any]) -> bool:
    """A device joins the fleet (enrolled, or approved): the rollouts that select it count it,
    and one that is active logs and counts the enrollment (a spike of them is suspicious).
    Whether a rollout changed for every device (its first stage pinned): bump the generation."""
    changed = service.on_enrolled(conn, row)
    for rollout in st.list_rollouts(conn, statuses=[ro.Status.ACTIVE.value], group=row["group_name"]):
        if service.stage_of(row, rollout) is not None:
            log.warning("device %s enrolled into the selection of active rollout %s", row["id"], rollout["id"])
            services().metrics.enrolled_during_rollout.inc()
    return changed


@bp.post("/<device_id>/approve")
@require_role(Role.OPERATOR)
def approve(device_id: str) -> Response:
    """Accept a device that waits for approval (its credential asks for one).

    Raises:
        RecordNotFound: no such device (answered as 404). Conflict: it is not pending.
    """
    with services().store.tx() as conn:
        row = st.get_device(conn, device_id)
        if row["status"] != "pending":
            raise Conflict(f"device {device_id} is not pending approval", field="device_id")
        st.update_device(conn, device_id, status=None)
        if _joined(conn, dict(row, status=None)):
            st.bump_generation(conn)
        st.audit(conn, principal().actor, "device.approve", device_id, None)
        st.bump_device_assignment(conn, device_id)
        row = st.get_device(conn, device_id)
    return json_response(device_view(row))


def _active(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The device row, if it is not waiting for approval.

    Raises:
        Forbidden: the device is pending an operator's approval.
    """
    if row["status"] == "pending":
        raise Forbidden(
            f"device {row['id']} is pending approval (ota-ctl devices approve {row['id']})", field="device_id"
        )
    return row


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
    gen, rev = s.store.poll_version(device_id)  # read before building: a change after it bumps one again
    signed = s.director.cached(device_id, nonce, gen, rev)
    if signed is None:
        with s.store.read() as conn:
            signed = s.director.sign(conn, _active(st.get_device(conn, device_id)), nonce, gen, rev)
        s.metrics.signatures.inc()
        # the issue of a rollout's assignment is recorded before the device can act on it: only
        # reports naming a recorded one count (ota_server.fleet.ingest)
        if (
            signed.rollout_id
            and signed.digest
            and not s.director.issue_recorded(device_id, signed.rollout_id, signed.digest)
        ):
            with s.store.tx() as conn:
                st.record_issued(conn, device_id, signed.rollout_id, signed.digest)
            s.director.remember_issue(device_id, signed.rollout_id, signed.digest)
    headers = {"ETag": signed.etag, "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("If-None-Match"), signed.etag):
        return Response(status=304, headers=headers)
    return Response(signed.body, status=200, mimetype="application/json", headers=headers)


@bp.post("/<device_id>/reports")
def reports(device_id: str) -> Response:
    """Ingest a batch of the device's reports; 429 with ``Retry-After`` (seconds) when the batch
    is over the device's report quota, which then stores nothing of it.

    Raises:
        Forbidden: the caller is not this device. BadRequest: a report's field, named.
    """
    require_device(device_id)
    s = services()
    # the report quota (ota_server.fleet.telemetry): a body the device's byte bucket cannot hold
    # is refused before it is parsed; the batch is charged in the transaction that stores it
    quota = telemetry.quota_of(s.config)
    nbytes = len(request.get_data(cache=True))
    with s.store.read() as conn:
        wait = telemetry.peek(conn, quota, device_id, nbytes)
    if wait:
        return _too_many(wait)
    body = json_body()
    batch = rp.parse_batch(body)
    with s.store.read() as conn:
        device = _active(st.get_device(conn, device_id))
    verify_signatures(device, body["reports"])  # parse_batch checked the shape
    with s.store.tx() as conn:
        wait = telemetry.charge(conn, quota, device_id, len(batch), nbytes)
        result = None if wait else ingest(conn, device_id, batch)
    if result is None:
        return _too_many(wait)
    _retention().maybe_prune()
    return json_response(result)


def _too_many(wait: int) -> Response:
    """The 429 of a device over its report quota, with ``Retry-After`` in seconds."""
    e = TooManyRequests(
        f"this device is over its report quota; retry in {wait} s (reports are kept on the device)", field="reports"
    )
    return json_response(e.to_dict(), e.status, headers={"Retry-After": str(wait)})


def _retention() -> telemetry.Retention:
    """This worker's report retention, made on first use."""
    found = current_app.extensions.get("edgefleet.retention")
    if not isinstance(found, telemetry.Retention):
        s = services()
        found = current_app.extensions.setdefault(
            "edgefleet.retention", telemetry.Retention(s.store, s.config.report_retention_days)
        )
    return found


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
        st.bump_device_assignment(conn, device_id)  # its own assignment only: no other device's changes
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
        "status": "revoked" if row.get("revoked_at") else (row.get("status") or "active"),
        "credential": row.get("credential"),
        "revoked_at": row.get("revoked_at"),
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


_MAX_REASON = 200


@bp.post("/<device_id>/revoke")
@require_role(Role.OPERATOR)
def revoke(device_id: str) -> Response:
    """Decommission a device (operator): its token is refused on every worker within a second,
    so it can neither poll nor report; it stays listed, as revoked. Revoking it again changes
    nothing. The body, optional, is ``{"reason": "..."}`` for the audit log.

    Raises:
        BadRequest: the body is not an object, or ``reason`` is not a string of at most 200
            characters. RecordNotFound: no such device (answered as 404).
    """
    reason = None
    if request.content_length:
        body = json_body()
        if not isinstance(body, Mapping):
            raise BadRequest("expected a JSON object", field="body")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > _MAX_REASON):
            raise BadRequest(f"reason must be a string of at most {_MAX_REASON} characters", field="reason")
    s = services()
    with s.store.tx() as conn:
        if st.revoke_device(conn, device_id):
            st.bump_revocations(conn)
            st.audit(conn, principal().actor, "device.revoke", device_id, {"reason": reason})
            service.on_revoked(conn, st.get_device(conn, device_id), actor=principal().actor)
        row = st.get_device(conn, device_id)
    return json_response(device_view(row))
