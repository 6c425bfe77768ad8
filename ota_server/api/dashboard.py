"""A small read-only dashboard (viewer token as ``?token=`` or bearer header)."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from ota_server.api.common import services
from ota_server.errors import Forbidden
from ota_server.fleet import service
from ota_server.serving.auth import PrincipalKind, Role
from ota_server.storage import store as st

__all__ = ["bp"]

bp = Blueprint("dashboard", __name__, template_folder="../templates")


@bp.get("/dashboard")
def dashboard() -> str:
    """The dashboard page.

    Raises:
        Unauthorized: no token, or an unknown one. Forbidden: a token that is not a viewer's or higher.
    """
    s = services()
    header = request.headers.get("Authorization")
    if header is None and request.args.get("token"):
        header = f"Bearer {request.args['token']}"
    p = s.auth.authenticate(header, remote=request.remote_addr or "?")
    if p.kind is not PrincipalKind.API or p.role is None or not p.role.allows(Role.VIEWER):
        raise Forbidden("the dashboard needs an API token")
    with s.store.read() as conn:
        rollouts = [service.rollout_view(conn, r) for r in st.list_rollouts(conn)][-20:]
        releases = st.list_releases(conn)[-20:]
        groups = st.count_devices(conn)
        versions = st.running_versions(conn)
    return render_template(
        "dashboard.html",
        rollouts=list(reversed(rollouts)),
        releases=list(reversed(releases)),
        groups=groups,
        versions=versions,
    )
