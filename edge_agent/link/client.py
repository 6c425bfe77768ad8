"""HTTP adapter to the OTA server's device API (docs/contracts.md §7).

One ``urllib3.PoolManager``; every call maps connection errors and 5xx to
:class:`~edge_agent.errors.ServerUnreachable` (retry later) and other error
statuses to :class:`~edge_agent.errors.ServerError` with the server's error
code and message. No retries here: the daemon owns back-off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import urllib3

from edge_agent.errors import ServerError, ServerUnreachable

__all__ = ["Polled", "ServerClient"]


@dataclass(frozen=True)
class Polled:
    """An assignment poll: ``envelope`` None on 304 Not Modified."""

    status: int
    envelope: Any
    etag: str | None


class ServerClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self.pool = pool or urllib3.PoolManager(num_pools=4, maxsize=4)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        hdrs = {"Accept": "application/json", **(headers or {})}
        bearer = token or self.token
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        url = self.base_url + path
        try:
            resp = self.pool.request(
                method, url, body=data, headers=hdrs, timeout=self.timeout, retries=False, redirect=False
            )
        except urllib3.exceptions.HTTPError as e:
            raise ServerUnreachable(f"{method} {url}: {e}") from e
        if resp.status >= 500:
            raise ServerUnreachable(f"{method} {url}: HTTP {resp.status}", status=resp.status)
        if resp.status >= 400:
            raise ServerError(f"{method} {url}: HTTP {resp.status}: {_error_text(resp.data)}", status=resp.status)
        return resp

    def enroll(self, enrollment_token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        resp = self._request("POST", "/api/v1/devices/enroll", body=body, token=enrollment_token)
        return cast(dict[str, Any], _json(resp))

    def assignment(self, device_id: str, nonce: str, *, etag: str | None) -> Polled:
        headers = {"If-None-Match": etag} if etag else {}
        resp = self._request("GET", f"/api/v1/devices/{device_id}/assignment?nonce={nonce}", headers=headers)
        if resp.status == 304:
            return Polled(304, None, etag)
        return Polled(resp.status, _json(resp), resp.headers.get("ETag"))

    def post_reports(self, device_id: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
        answer = _json(self._request("POST", f"/api/v1/devices/{device_id}/reports", body={"reports": reports}))
        return cast(dict[str, Any], answer)

    def put_hardware(self, device_id: str, profile: Mapping[str, Any]) -> None:
        self._request("PUT", f"/api/v1/devices/{device_id}/hardware", body=dict(profile))


def _json(resp: urllib3.BaseHTTPResponse) -> Any:
    try:
        return json.loads(resp.data)
    except ValueError as e:
        raise ServerError(f"server answered HTTP {resp.status} with invalid JSON: {e}", status=resp.status) from e


def _error_text(data: bytes) -> str:
    try:
        err = json.loads(data)["error"]
        return f"{err.get('code')}: {err.get('message')}"
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")
