"""HTTP adapter to the OTA server's device API (docs/contracts.md §7).

Every call maps connection errors, 5xx and a missed deadline to
:class:`~edge_agent.errors.ServerUnreachable` (retry later), a reply the API
does not allow to :class:`~edge_agent.errors.ProtocolViolation`, and other
error statuses to :class:`~edge_agent.errors.ServerError` with the server's
error code and message. No retries here: the daemon owns back-off.

Every reply is bounded: each request has one overall deadline (``timeout_s``,
from connecting to the last body byte: a timer shuts the socket when it
passes, so a reply dripped a byte at a time cannot hold a poll), each endpoint
a body cap (:data:`BODY_LIMITS`, checked against ``Content-Length`` and while
reading), and the agent asks for, and accepts, only the ``identity`` content
encoding, so nothing is ever decompressed. Each request opens its own
connection and closes it: a half-read reply never goes back to a pool.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util import parse_url

from edge_agent.errors import ConfigError, ProtocolViolation, RateLimited, ServerError, ServerUnreachable
from models.device_reports import sign_report

__all__ = ["BODY_LIMITS", "ERROR_BODY_LIMIT", "Polled", "Reply", "ServerClient"]

KiB = 1024
# the most body bytes each endpoint's reply may have (an honest one is a few KiB)
BODY_LIMITS: Mapping[str, int] = {
    "enroll": 1024 * KiB,  # identity, director key, the pinned TUF root
    "assignment": 256 * KiB,  # a signed assignment with at most 8 alternates
    "reports": 256 * KiB,  # the accepted/duplicate ids of one batch
    "hardware": 64 * KiB,
}
ERROR_BODY_LIMIT = 64 * KiB  # an error reply is read this far for its message, the rest is dropped
_CHUNK = 64 * KiB


@dataclass(frozen=True)
class Polled:
    """An assignment poll: ``envelope`` None on 304 Not Modified."""

    status: int
    envelope: Any
    etag: str | None


@dataclass(frozen=True)
class Reply:
    """A complete, bounded reply: status, headers and the raw body bytes."""

    status: int
    headers: Mapping[str, str]
    data: bytes


class _Deadline:
    """Shuts ``conn``'s socket down when ``seconds`` pass, cutting any read or write short."""

    def __init__(self, conn: HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing left to cut
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class ServerClient:
    """The device API. Raises ConfigError when ``base_url`` is not an http(s) URL."""

    device_key: Ed25519PrivateKey | None = None  # signs every posted report (set once enrolled)

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s  # the overall deadline of each request
        try:
            url = parse_url(self.base_url)
        except urllib3.exceptions.LocationParseError as e:
            raise ConfigError(f"server URL {base_url!r} does not parse: {e}") from e
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"server URL must be http(s)://host[:port][/path], got {base_url!r}")
        self._scheme, self._host, self._port = url.scheme, url.host, url.port
        self._prefix = (url.path or "").rstrip("/")

    def _connection(self, timeout: float) -> HTTPConnection:
        if self._scheme == "https":
            return HTTPSConnection(self._host, self._port, timeout=timeout)
        return HTTPConnection(self._host, self._port, timeout=timeout)

    def _request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        body: Any = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request, bounded by the deadline and ``BODY_LIMITS[endpoint]``.

        Raises ServerUnreachable (no connection, 5xx, the deadline passed), ProtocolViolation
        (a reply over the cap or content-encoded), ServerError (another 4xx).
        """
        hdrs = {"Accept": "application/json", "Accept-Encoding": "identity", **(headers or {})}
        bearer = token or self.token
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        url = self.base_url + path
        what = f"{method} {url}"
        deadline = time.monotonic() + self.timeout_s
        conn = self._connection(self.timeout_s)
        guard: _Deadline | None = None
        try:
            conn.connect()
            guard = _Deadline(conn, deadline - time.monotonic())
            conn.request(method, self._prefix + path, body=data, headers=hdrs, preload_content=False)
            resp = conn.getresponse()
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise ProtocolViolation(
                    f"{what}: Content-Encoding {encoding[:40]!r} refused (the agent asks for identity only)",
                    status=resp.status,
                )
            limit = BODY_LIMITS[endpoint] if resp.status < 400 else ERROR_BODY_LIMIT
            raw = _read_capped(resp, limit, what, strict=resp.status < 400)
            if guard.fired:
                raise ServerUnreachable(f"{what}: no complete reply within the {self.timeout_s:g} s deadline")
            reply = Reply(resp.status, resp.headers, raw)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            if guard is not None and guard.fired:
                raise ServerUnreachable(f"{what}: no complete reply within the {self.timeout_s:g} s deadline") from e
            raise ServerUnreachable(f"{what}: {e}") from e
        finally:
            if guard is not None:
                guard.cancel()
            conn.close()
        if reply.status >= 500:
            raise ServerUnreachable(f"{what}: HTTP {reply.status}", status=reply.status)
        if reply.status == 429:
            wait = _retry_after(reply.headers.get("Retry-After"))
            raise RateLimited(f"{what}: HTTP 429: {_error_text(reply.data)}", retry_after_s=wait)
        if reply.status >= 400:
            raise ServerError(f"{what}: HTTP {reply.status}: {_error_text(reply.data)}", status=reply.status)
        return reply

    def enroll(self, enrollment_token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        resp = self._request("POST", "/api/v1/devices/enroll", endpoint="enroll", body=body, token=enrollment_token)
        return cast(dict[str, Any], _json(resp))

    def assignment(self, device_id: str, nonce: str, *, etag: str | None) -> Polled:
        headers = {"If-None-Match": etag} if etag else {}
        resp = self._request(
            "GET", f"/api/v1/devices/{device_id}/assignment?nonce={nonce}", endpoint="assignment", headers=headers
        )
        if resp.status == 304:  # the ETag it names, if any: the caller checks it is the one it sent
            return Polled(304, None, resp.headers.get("ETag"))
        return Polled(resp.status, _json(resp), resp.headers.get("ETag"))

    def post_reports(self, device_id: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
        """Post reports, each signed with :attr:`device_key` (the server counts only signed ones)."""
        if self.device_key is not None:
            reports = [sign_report(self.device_key, device_id, r) for r in reports]
        resp = self._request(
            "POST", f"/api/v1/devices/{device_id}/reports", endpoint="reports", body={"reports": reports}
        )
        answer = _json(resp)
        return cast(dict[str, Any], answer)

    def put_hardware(self, device_id: str, profile: Mapping[str, Any]) -> None:
        self._request("PUT", f"/api/v1/devices/{device_id}/hardware", endpoint="hardware", body=dict(profile))


def _read_capped(resp: urllib3.BaseHTTPResponse, limit: int, what: str, *, strict: bool) -> bytes:
    """The raw body, at most ``limit`` bytes: more raises ProtocolViolation (``strict``) or is dropped."""
    declared = resp.headers.get("Content-Length", "").strip()
    if strict and declared.isdigit() and int(declared) > limit:
        raise ProtocolViolation(f"{what}: reply of {declared} bytes, more than the {limit} allowed", status=resp.status)
    buf = bytearray()
    while len(buf) <= limit:
        chunk = resp.read1(min(_CHUNK, limit + 1 - len(buf)), decode_content=False)
        if not chunk:
            return bytes(buf)
        buf += chunk
    if strict:
        raise ProtocolViolation(f"{what}: reply of more than the {limit} bytes allowed", status=resp.status)
    return bytes(buf[:limit])


def _json(resp: Reply) -> Any:
    try:
        return json.loads(resp.data)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser's stack
        raise ServerError(
            f"server answered HTTP {resp.status} with invalid JSON: {type(e).__name__}: {str(e)[:200]}",
            status=resp.status,
        ) from e


def _retry_after(value: str | None, *, default_s: float = 60.0, max_s: float = 3600.0) -> float:
    """A ``Retry-After`` in seconds, within [1, ``max_s``]; ``default_s`` when absent or not a
    number of seconds (the server sends seconds, never an HTTP date)."""
    try:
        seconds = float(value) if value is not None else default_s
    except ValueError:
        seconds = default_s
    return min(max(seconds, 1.0), max_s) if seconds == seconds else default_s


def _error_text(data: bytes) -> str:
    try:
        err = json.loads(data)["error"]
        return f"{err.get('code')}: {err.get('message')}"
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")
