"""``/healthz`` (public) and ``/metrics`` (viewer)."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response

from ota_server.api.common import json_response, require_role, services
from ota_server.serving.auth import Role
from ota_server.storage import store as st

__all__ = ["bp"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    try:
        with services().store.read() as conn:
            conn.execute(sa.text("select 1"))
        return json_response({"status": "ok", "db": "ok"})
    except sa.exc.SQLAlchemyError as e:
        return json_response({"status": "degraded", "db": f"error: {type(e).__name__}"}, 503)


@bp.get("/metrics")
@require_role(Role.VIEWER)
def metrics() -> Response:
    s = services()

    def fleet() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        with s.store.read() as conn:
            return st.count_devices(conn), st.rollout_counts(conn), st.running_versions(conn)

    return Response(s.metrics.render(fleet), mimetype="text/plain; version=0.0.4")
