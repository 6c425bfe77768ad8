"""Request helpers shared by the blueprints: services, authentication, bounded JSON bodies.

Not here: the routes themselves (one module per resource) and the error answers (:mod:`ota_server.app`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, request

from ota_server.errors import BadRequest, Forbidden
from ota_server.services import Services
from ota_server.serving.auth import Principal, PrincipalKind, Role

__all__ = ["MAX_JSON_DEPTH", "json_body", "json_response", "principal", "require_device", "require_role", "services"]

F = TypeVar("F", bound=Callable[..., Any])
MAX_JSON_DEPTH = 32  # nesting levels a JSON body may have (a report batch with gate evidence needs about 7)


def services() -> Services:
    return cast(Services, current_app.extensions["edgefleet"])


def principal() -> Principal:
    cached = g.get("principal")
    if cached is not None:
        return cast(Principal, cached)
    p = services().auth.authenticate(
        request.headers.get("Authorization"),
        remote=request.remote_addr or "?",
        forwarded_for=request.headers.get("X-Forwarded-For"),
    )
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

    The body's size is bounded by Flask's ``MAX_CONTENT_LENGTH`` (413 past it) and its nesting
    by :data:`MAX_JSON_DEPTH`: no request the API takes nests deeper, and a deeper one could
    exhaust the parser's recursion (or, stored, the encoder's when it is read back).

    Raises:
        BadRequest: the body is not JSON, or nests deeper than :data:`MAX_JSON_DEPTH`
            (``field="body"``).
    """
    data = request.get_data(cache=True)
    try:
        body = json.loads(data)
    except RecursionError:
        raise BadRequest(f"request body is nested deeper than {MAX_JSON_DEPTH} levels", field="body") from None
    except ValueError:  # UnicodeDecodeError included
        raise BadRequest("request body must be JSON", field="body") from None
    if body is None:
        raise BadRequest("request body must be JSON", field="body")
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise BadRequest(f"request body is nested deeper than {MAX_JSON_DEPTH} levels", field="body")
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests lists and objects more than ``limit`` deep; iterative."""
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json", headers=headers)
