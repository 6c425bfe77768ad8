"""Fleet summary (viewer), the audit log (admin) and API token creation (admin)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from flask import Blueprint, Response, request

from ota_server.api.common import json_body, json_response, principal, require_role, services
from ota_server.errors import BadRequest
from ota_server.rules import rollouts as ro
from ota_server.serving.auth import Role, new_token, token_digest
from ota_server.storage import store as st

__all__ = ["bp"]

bp = Blueprint("fleet", __name__, url_prefix="/api/v1")


@bp.get("/fleet/summary")
@require_role(Role.VIEWER)
def summary() -> Response:
    with services().store.read() as conn:
        groups = st.count_devices(conn)
        versions = st.running_versions(conn)
        rollouts = st.rollout_counts(conn)
        active = [r["id"] for r in st.list_rollouts(conn, statuses=list(ro.BLOCKING))]
        states: Counter[str] = Counter(d["state"] or "unknown" for d in st.list_devices(conn, limit=10**9))
    return json_response(
        {
            "devices": sum(groups.values()),
            "groups": groups,
            "running": versions,
            "states": dict(states),
            "rollouts": rollouts,
            "active_rollouts": active,
        }
    )


@bp.get("/audit")
@require_role(Role.ADMIN)
def audit() -> Response:
    """The newest ``?limit=`` audit entries (admin).

    Raises:
        BadRequest: ``limit`` is not an integer in [1, 10000].
    """
    raw = request.args.get("limit", "500")
    if not raw.isdigit() or not 0 < int(raw) <= 10000:
        raise BadRequest(f"limit must be an integer in [1, 10000], got {raw!r}", field="limit")
    with services().store.read() as conn:
        return json_response({"audit": st.audit_log(conn, limit=int(raw))})


@bp.post("/tokens")
@require_role(Role.ADMIN)
def create_token() -> Response:
    """Create an API token (admin); shown once.

    Raises:
        BadRequest: the body is not ``{"role", "name"}`` with a known role and a 1-128 character name.
    """
    body = json_body()
    if not isinstance(body, Mapping):
        raise BadRequest("expected a JSON object", field="body")
    role, name = body.get("role"), body.get("name")
    if role not in [r.value for r in Role]:
        raise BadRequest(f"role must be one of {[r.value for r in Role]}, got {role!r}", field="role")
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise BadRequest(f"name must be a string of 1-128 characters, got {name!r}", field="name")
    token = new_token("api")
    with services().store.tx() as conn:
        st.insert_token(conn, digest=token_digest(token), kind="api", role=role, name=name)
        st.audit(conn, principal().actor, "token.create", name, {"role": role})
    return json_response({"token": token, "role": role, "name": name}, 201)
