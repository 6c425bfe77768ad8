"""The hot path of the director: unchanged polls answered before Flask (and, under gunicorn, before WSGI).

Almost every request a fleet makes is a device re-polling an assignment that has not changed.
When everything needed is already in this worker's memory — the device token in the
authenticator's cache, the signed assignment in the director's cache at the current fleet
generation and device revision (one read, :meth:`ota_server.storage.store.Store.poll_version`)
— :meth:`FastPoll.answer` answers it (304, or the cached 200) from the path, the
query and two headers. It is reached in two ways:

* as a WSGI middleware around the Flask app, so any WSGI server (and the Flask test client)
  gets it;
* from :class:`ota_server.serving.gunicorn_app.PollWorker`, which calls it with gunicorn's parsed
  request and writes the answer itself, skipping the WSGI environ and gunicorn's response
  object, which cost more CPU than the answer does.

Anything else (a cache miss, a bad token, a bad nonce, another route) falls through to the Flask
app unchanged, which answers with the same bytes and headers, so the fast path is an
optimisation only: it never decides anything the Flask view would decide differently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from ota_server.services import Services

__all__ = ["NONCE", "ROUTE", "Answer", "FastPoll", "WSGIApp", "etag_matches", "query_nonce"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PATH = re.compile(r"^/api/v1/devices/([A-Za-z0-9_]{1,40})/assignment$")
NONCE = re.compile(r"^[0-9a-f]{16,128}$")  # the assignment view validates with the same pattern
ROUTE = "/api/v1/devices/<device_id>/assignment"
_STATUS = {200: "200 OK", 304: "304 NOT MODIFIED"}  # as Werkzeug spells them on the Flask path


@dataclass(frozen=True)
class Answer:
    """A poll answered from the caches: status, headers and body exactly as the Flask view sends them."""

    status: int  # 200 or 304
    headers: tuple[tuple[str, str], ...]
    body: bytes  # empty for 304

    @property
    def status_line(self) -> str:
        """The WSGI status string, e.g. ``"304 NOT MODIFIED"``."""
        return _STATUS[self.status]


def query_nonce(query: str) -> str | None:
    """The request's one ``nonce`` parameter if it is 16-128 lowercase hex digits, else None.

    The common query, ``nonce=<hex>`` alone, is read without parsing; anything else (other
    parameters, percent-escapes) goes through :func:`urllib.parse.parse_qs`, which reads it as
    Flask's ``request.args`` does. A repeated ``nonce`` is None (left to the view).
    """
    if query.startswith("nonce=") and "&" not in query and "%" not in query:
        value = query[6:]
    else:
        values = parse_qs(query).get("nonce")
        if not values or len(values) != 1:
            return None
        value = values[0]
    return value if NONCE.match(value) else None


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header value names ``etag`` (the view and the fast path
    both decide 304 with this, so they cannot disagree)."""
    if not if_none_match:
        return False
    return etag in [t.strip() for t in if_none_match.split(",")]


class FastPoll:
    """WSGI middleware around the Flask app; :meth:`answer` is the part both entry points share."""

    def __init__(self, app: WSGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.hits = 0  # polls answered here, by either entry point

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        answer = self.answer(
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            environ.get("HTTP_AUTHORIZATION"),
            environ.get("HTTP_IF_NONE_MATCH"),
        )
        if answer is None:
            return self.app(environ, start_response)
        start_response(answer.status_line, list(answer.headers))
        return [answer.body]

    def answer(self, path: str, query: str, authorization: str | None, if_none_match: str | None) -> Answer | None:
        """The answer to ``GET path?query`` from this worker's caches, or None to let Flask answer.

        ``path`` is the decoded path below the application root; the two headers are their
        raw values (None when absent).
        """
        m = _PATH.match(path)
        if m is None:
            return None
        start = time.perf_counter()
        device_id = m.group(1)
        s = self.services
        principal = s.auth.peek(authorization)
        if principal is None or principal.device_id != device_id:
            return None
        nonce = query_nonce(query)
        if nonce is None:
            return None
        signed = s.director.cached(device_id, nonce, *s.store.poll_version(device_id))
        if signed is None:
            return None
        if etag_matches(if_none_match, signed.etag):
            answer = Answer(304, (("ETag", signed.etag), ("Cache-Control", "no-cache")), b"")
        else:
            answer = Answer(
                200,
                (
                    ("ETag", signed.etag),
                    ("Cache-Control", "no-cache"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(signed.body))),
                ),
                signed.body,
            )
        self.hits += 1
        s.metrics.observe(ROUTE, "GET", answer.status, time.perf_counter() - start)
        return answer
