"""The hot path of the director as a WSGI middleware: unchanged polls answered before Flask.

Almost every request a fleet makes is a device re-polling an assignment that has not changed.
When everything needed is already in this worker's memory — the device token in the
authenticator's cache, the signed assignment in the director's cache at the current fleet
generation — this middleware answers it (304, or the cached 200) without building a Flask
request. Anything else (a cache miss, a bad token, a bad nonce, another route) falls through to
the Flask app unchanged, which answers with the same bytes and headers, so the middleware is
an optimisation only: it never decides anything the Flask view would decide differently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from ota_server.app import Services

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PATH = re.compile(r"^/api/v1/devices/([A-Za-z0-9_]{1,40})/assignment$")
_NONCE = re.compile(r"^[0-9a-f]{16,128}$")
ROUTE = "/api/v1/devices/<device_id>/assignment"


class FastPoll:
    def __init__(self, app: WSGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.hits = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        m = _PATH.match(environ.get("PATH_INFO", ""))
        if m is None:
            return self.app(environ, start_response)
        start = time.perf_counter()
        answer = self._answer(m.group(1), environ)
        if answer is None:
            return self.app(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        self.hits += 1
        self.services.metrics.observe(ROUTE, "GET", int(status[:3]), time.perf_counter() - start)
        return [body]

    def _answer(self, device_id: str, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes] | None:
        s = self.services
        principal = s.auth.peek(environ.get("HTTP_AUTHORIZATION"))
        if principal is None or principal.device_id != device_id:
            return None
        nonces = parse_qs(environ.get("QUERY_STRING", "")).get("nonce")
        if not nonces or len(nonces) != 1 or not _NONCE.match(nonces[0]):
            return None
        signed = s.director.cached(device_id, nonces[0], s.store.generation())
        if signed is None:
            return None
        headers = [("ETag", signed.etag), ("Cache-Control", "no-cache")]
        inm = environ.get("HTTP_IF_NONE_MATCH")
        if inm and signed.etag in [t.strip() for t in inm.split(",")]:
            return "304 NOT MODIFIED", headers, b""
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(signed.body)))]
        return "200 OK", headers, signed.body
