"""Request helpers shared by the blueprints: services, authentication, JSON bodies."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, request

from ota_server.errors import BadRequest, Forbidden
from ota_server.services import Services
from ota_server.serving.auth import Principal, PrincipalKind, Role

__all__ = ["json_body", "json_response", "principal", "require_device", "require_role", "services"]

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    return cast(Services, current_app.extensions["edgefleet"])


def principal() -> Principal:
    cached = g.get("principal")
    if cached is not None:
        return cast(Principal, cached)
    p = services().auth.authenticate(request.headers.get("Authorization"), remote=request.remote_addr or "?")
    g.principal = p
    return p


def require_role(role: Role) -> Callable[[F], F]:
    """Decorator: an API token whose role is at least ``role``.

    Raises (from the wrapped view):
        Forbidden: the caller holds no API token, or one of a lower role.
    """

    def deco(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            p = principal()
            if p.kind is not PrincipalKind.API or p.role is None:
                raise Forbidden(f"this endpoint needs an API token with role {role.value} or higher")
            if not p.role.allows(role):
                raise Forbidden(f"role {p.role.value} may not do this; it needs {role.value} or higher")
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    return deco


def require_device(device_id: str) -> Principal:
    """The caller must be the device ``device_id`` itself.

    Raises:
        Forbidden: the caller is not a device, or another device.
    """
    p = principal()
    if p.kind is not PrincipalKind.DEVICE:
        raise Forbidden("this endpoint needs a device token")
    if p.device_id != device_id:
        raise Forbidden(f"device {p.device_id} may not act for device {device_id}", field="device_id")
    return p


def json_body() -> Any:
    """The request's body parsed as JSON, whatever its Content-Type.

    Raises:
        BadRequest: the body is not JSON (``field="body"``).
    """
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise BadRequest("request body must be JSON", field="body")
    return body


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    import json

    return Response(json.dumps(obj), status=status, mimetype="application/json", headers=headers)
