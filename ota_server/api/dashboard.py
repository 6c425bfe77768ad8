"""A small read-only dashboard: a login form, a cookie, and the fleet's page.

A token never travels in a URL, where access logs, browser history and ``Referer`` headers
would keep it: ``GET /dashboard`` takes a viewer (or higher) API token from the
``Authorization`` header or from the ``edgefleet_dashboard`` cookie, which ``POST
/dashboard/login`` sets from a form field (``HttpOnly``, ``SameSite=Strict``, scoped to
``/dashboard``, ``Secure`` over HTTPS) and ``POST /dashboard/logout`` clears. Without either, the
page is the login form (401). A ``?token=`` query authenticates nothing. The cookie is read here
only: no API route accepts it, so it cannot carry a cross-site request anywhere else.

Not here: the API's own authentication (:mod:`ota_server.serving.auth`), the fleet data
(:mod:`ota_server.fleet.service`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from ota_server.api.common import services
from ota_server.errors import ApiError, Forbidden
from ota_server.fleet import service
from ota_server.serving.auth import Principal, PrincipalKind, Role
from ota_server.storage import store as st

__all__ = ["COOKIE", "bp"]

bp = Blueprint("dashboard", __name__, template_folder="../templates")
COOKIE = "edgefleet_dashboard"
_PATH = "/dashboard"
_MAX_TOKEN = 256  # characters of a token the form accepts; real ones are far shorter


def _viewer(header: str) -> Principal:
    """The principal of ``Bearer <token>`` if it is a viewer's or higher API token.

    Raises:
        Unauthorized: an unknown token. Forbidden: not an API token of a viewer or higher.
    """
    p = services().auth.authenticate(
        header, remote=request.remote_addr or "?", forwarded_for=request.headers.get("X-Forwarded-For")
    )
    if p.kind is not PrincipalKind.API or p.role is None or not p.role.allows(Role.VIEWER):
        raise Forbidden("the dashboard needs an API token")
    return p


def _login_page(status: int, message: str | None = None) -> Response:
    return Response(render_template("login.html", message=message), status=status, mimetype="text/html")


def _secure() -> bool:
    public = services().config.public_url or ""
    return request.is_secure or public.startswith("https://")


@bp.get("/dashboard")
def dashboard() -> Response:
    """The dashboard page, or the login form (401) without credentials.

    Raises:
        Unauthorized: an unknown token in the header. Forbidden: a token that is not a viewer's or higher.
    """
    header = request.headers.get("Authorization")
    if header is None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return _login_page(401)
        try:
            _viewer(f"Bearer {cookie}")
        except ApiError as e:
            page = _login_page(e.status, f"the saved token was refused: {e.message}")
            page.delete_cookie(COOKIE, path=_PATH)
            return page
    else:
        _viewer(header)
    s = services()
    with s.store.read() as conn:
        rollouts = [service.rollout_view(conn, r) for r in st.list_rollouts(conn)][-20:]
        releases = st.list_releases(conn)[-20:]
        groups = st.count_devices(conn)
        versions = st.running_versions(conn)
    html = render_template(
        "dashboard.html",
        rollouts=list(reversed(rollouts)),
        releases=list(reversed(releases)),
        groups=groups,
        versions=versions,
    )
    return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})


@bp.post("/dashboard/login")
def login() -> BaseResponse:
    """Check the form's ``token`` and keep it in the dashboard cookie; 303 to the dashboard.

    A refused token, or a form posted from another origin, is answered with the login page
    (401, 403 or 429) and sets no cookie; nothing is raised.
    """
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        return _login_page(403, "the login form must be posted from this server's own page")
    token = request.form.get("token", "").strip()
    if not token or len(token) > _MAX_TOKEN:
        return _login_page(401, "enter a viewer (or higher) API token")
    try:
        _viewer(f"Bearer {token}")
    except ApiError as e:
        return _login_page(e.status, e.message)
    answer = redirect(_PATH, code=303)
    answer.set_cookie(COOKIE, token, path=_PATH, httponly=True, samesite="Strict", secure=_secure())
    return answer


@bp.post("/dashboard/logout")
def logout() -> BaseResponse:
    """Clear the dashboard cookie; 303 to the (login) page."""
    answer = redirect(_PATH, code=303)
    answer.delete_cookie(COOKIE, path=_PATH, httponly=True, samesite="Strict", secure=_secure())
    return answer
