"""Rollouts: create (operator), list/show (viewer), pause/resume/abort/rollback (operator)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, request

from models.bundle import Manifest
from ota_server.api.common import json_body, json_response, principal, require_role, services
from ota_server.fleet import coverage, service
from ota_server.rules import rollouts as ro
from ota_server.serving.auth import Role
from ota_server.storage import store as st

__all__ = ["bp"]

bp = Blueprint("rollouts", __name__, url_prefix="/api/v1/rollouts")


@bp.post("")
@require_role(Role.OPERATOR)
def create() -> Response:
    spec = ro.parse_rollout(json_body())
    actor = principal().actor
    with services().store.tx() as conn:
        row = service.create_rollout(conn, spec, actor=actor)
        manifest = Manifest.from_dict(st.get_release(conn, row["release"])["manifest"])
        warnings = coverage.warnings(
            conn, manifest, group=spec.group, tags=spec.tags, hardware_classes=spec.hardware_classes
        )
        for w in warnings:  # on the timeline too: why its devices judge against the bundle's FP32
            st.add_event(conn, row["id"], "warning", w["message"], actor)
        view = service.rollout_view(conn, row)
    view["warnings"] = warnings
    return json_response(view, 201)


@bp.get("")
@require_role(Role.VIEWER)
def list_rollouts() -> Response:
    status = request.args.get("status")
    with services().store.read() as conn:
        rows = st.list_rollouts(
            conn,
            statuses=[status] if status else None,
            group=request.args.get("group") or None,
            model=request.args.get("model") or None,
        )
        out = [service.rollout_view(conn, r) for r in rows]
    return json_response({"rollouts": out})


@bp.get("/<rollout_id>")
@require_role(Role.VIEWER)
def get_rollout(rollout_id: str) -> Response:
    with services().store.read() as conn:
        return json_response(service.rollout_view(conn, st.get_rollout(conn, rollout_id)))


def _act(rollout_id: str, action: str) -> Response:
    with services().store.tx() as conn:
        row = service.act(conn, rollout_id, action, actor=principal().actor)
        return json_response(service.rollout_view(conn, row))


@bp.post("/<rollout_id>/pause")
@require_role(Role.OPERATOR)
def pause(rollout_id: str) -> Response:
    return _act(rollout_id, "pause")


@bp.post("/<rollout_id>/resume")
@require_role(Role.OPERATOR)
def resume(rollout_id: str) -> Response:
    return _act(rollout_id, "resume")


@bp.post("/<rollout_id>/abort")
@require_role(Role.OPERATOR)
def abort(rollout_id: str) -> Response:
    return _act(rollout_id, "abort")


@bp.post("/<rollout_id>/rollback")
@require_role(Role.OPERATOR)
def rollback(rollout_id: str) -> Response:
    body = json_body()
    s, created = services(), list[Path]()
    with s.repo.locked():  # the rollback re-signs its targets with the new counter
        try:
            with s.store.tx() as conn:
                result = service.rollback(conn, rollout_id, body, actor=principal().actor, repo=s.repo, created=created)
        except BaseException:
            if created:
                s.repo.discard(created)
            raise
    return json_response(result, 201)
