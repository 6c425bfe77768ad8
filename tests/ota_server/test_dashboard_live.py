"""The dashboard against the real server: no token in URLs, a login form and an HttpOnly,
SameSite=Strict cookie, and an access log that never holds a token."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.live_server import LiveServer, live_server

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("dashboard"), serve_args=["--access-log"]) as srv:
        yield srv


def _text(body: object) -> str:
    return body.decode() if isinstance(body, bytes) else str(body)


@pytest.mark.finding("L12")
def test_a_query_token_no_longer_authenticates(server: LiveServer) -> None:
    viewer = server.tokens["viewer"]
    status, body, _ = server.api("GET", f"/dashboard?token={viewer}")
    assert status == 401, body
    assert "edgefleet fleet" not in _text(body)
    assert 'method="post"' in _text(body) and "token=" not in _text(body)  # the login form, no token in it


@pytest.mark.finding("L12")
def test_the_login_form_sets_a_strict_httponly_cookie(server: LiveServer) -> None:
    viewer = server.tokens["viewer"]
    status, body, headers = server.api("POST", "/dashboard/login", data=f"token={quote(viewer)}".encode(), headers=FORM)
    assert status == 303, body
    assert headers["Location"].endswith("/dashboard") and viewer not in headers["Location"]
    cookie = headers["Set-Cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attrs and "samesite=strict" in cookie.lower(), cookie
    pair = cookie.split(";")[0]
    status, body, _ = server.api("GET", "/dashboard", headers={"Cookie": pair})
    assert status == 200 and "edgefleet fleet" in _text(body)
    # the page posts no token anywhere, and the cookie is for the dashboard only
    assert viewer not in _text(body)
    assert server.api("GET", "/api/v1/releases", headers={"Cookie": pair})[0] == 401
    # the Authorization header still works; logging out clears the cookie
    assert server.api("GET", "/dashboard", token=viewer)[0] == 200
    status, _, headers = server.api("POST", "/dashboard/logout", headers={"Cookie": pair})
    assert status == 303 and "Max-Age=0" in headers["Set-Cookie"], headers


@pytest.mark.finding("L12")
def test_bad_logins_set_no_cookie(server: LiveServer) -> None:
    device_like = "ef_api_" + "A" * 43
    for data in (f"token={device_like}".encode(), b"", f"token={server.enrollment_token}".encode()):
        status, body, headers = server.api("POST", "/dashboard/login", data=data, headers=FORM)
        assert status in (401, 403), body
        assert "Set-Cookie" not in headers
    # another site's form cannot log a browser in
    status, _, headers = server.api(
        "POST",
        "/dashboard/login",
        data=f"token={server.tokens['viewer']}".encode(),
        headers={**FORM, "Origin": "https://evil.example"},
    )
    assert status == 403 and "Set-Cookie" not in headers


@pytest.mark.finding("L12")
def test_the_access_log_never_holds_a_token(server: LiveServer) -> None:
    viewer = server.tokens["viewer"]
    server.api("GET", f"/dashboard?token={viewer}")  # an old bookmark: refused, and redacted in the log
    server.api("GET", f"/api/v1/releases?token={viewer}&x=1", token=viewer)
    server.api("POST", "/dashboard/login", data=f"token={viewer}".encode(), headers=FORM)
    server.api("GET", "/dashboard", token=viewer, headers={"Referer": f"http://x/dashboard?token={viewer}"})
    log = server.log_text()
    assert '"GET /dashboard' in log and "token=[redacted]" in log  # the access log is on
    assert viewer.split("_")[-1] not in log
