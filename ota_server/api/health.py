"""``/healthz`` and ``/api/v1/openapi.yaml`` (public), ``/metrics`` (viewer).

The OpenAPI document is the packaged ``ota_server/openapi.yaml``, served as it is: no
templating, no per-caller view.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

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


@cache
def _openapi() -> bytes:
    return resources.files("ota_server").joinpath("openapi.yaml").read_bytes()


@bp.get("/api/v1/openapi.yaml")
def openapi() -> Response:
    """The API's OpenAPI 3 document (public: it holds no secret, and clients and fuzzers read it)."""
    return Response(_openapi(), mimetype="application/yaml")


@bp.get("/metrics")
@require_role(Role.VIEWER)
def metrics() -> Response:
    s = services()

    def fleet() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        with s.store.read() as conn:
            return st.count_devices(conn), st.rollout_counts(conn), st.running_versions(conn)

    return Response(s.metrics.render(fleet), mimetype="text/plain; version=0.0.4")
