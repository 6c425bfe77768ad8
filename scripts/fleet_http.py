"""A small HTTP client for the OTA server's API (docs/contracts.md §7–§8).

Used by the fleet simulation, the rollout benchmark and the demo's report: one
keep-alive ``urllib3`` connection pool, JSON in and out, the server's error
body turned into :class:`ApiError`. It speaks only the documented HTTP API;
it imports nothing of ``ota_server`` or ``edge_agent``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import urllib3

from models.bundle import canonical_json

# rollout statuses after which nothing more happens on their own
TERMINAL_STATUSES = frozenset({"completed", "halted", "aborted", "rolled-back", "superseded"})


class ApiError(RuntimeError):
    """The server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{method} {path} -> {status or 'no answer'}: {message}")


class FleetClient:
    """Keep-alive JSON client; thread-safe (urllib3 pools are)."""

    def __init__(self, base_url: str, *, pool_size: int = 16, timeout_s: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.http = urllib3.PoolManager(
            maxsize=pool_size, block=True, retries=False,
            timeout=urllib3.Timeout(connect=5.0, read=timeout_s),
        )

    def request(self, method: str, path: str, *, token: str | None = None, body: Any = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201)) -> urllib3.BaseHTTPResponse:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            resp = self.http.request(method, self.base + path, body=data, headers=hdrs)
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(method, path, 0, str(e)) from e
        if resp.status not in ok:
            raise ApiError(method, path, resp.status, _error_message(resp.data))
        return resp

    def get_json(self, path: str, token: str | None = None) -> Any:
        return json.loads(self.request("GET", path, token=token).data)

    def post_json(self, path: str, body: Any, token: str | None = None) -> Any:
        resp = self.request("POST", path, token=token, body=body)
        return json.loads(resp.data) if resp.data else {}

    # ---- device API
    def enroll(self, enroll_token: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.post_json("/api/v1/devices/enroll", body, enroll_token))

    def assignment(self, device_id: str, token: str, nonce: str,
                   etag: str | None) -> tuple[int, str | None, dict[str, Any] | None]:
        headers = {"If-None-Match": etag} if etag else None
        resp = self.request("GET", f"/api/v1/devices/{device_id}/assignment?nonce={nonce}",
                            token=token, headers=headers, ok=(200, 304))
        if resp.status == 304:
            return 304, etag, None
        return 200, resp.headers.get("ETag"), json.loads(resp.data)

    def post_reports(self, device_id: str, token: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self.post_json(f"/api/v1/devices/{device_id}/reports", {"reports": reports}, token))

    def download_target(self, path: str, sha256: str) -> bytes:
        directory, _, filename = path.rpartition("/")
        return bytes(self.request("GET", f"/tuf/targets/{directory}/{sha256}.{filename}").data)

    # ---- admin API
    def create_rollout(self, api_token: str, body: dict[str, Any]) -> dict[str, Any]:
        data = self.post_json("/api/v1/rollouts", body, api_token)
        return dict(data.get("rollout", data))

    def rollout(self, api_token: str, rollout_id: str) -> dict[str, Any]:
        data = self.get_json(f"/api/v1/rollouts/{rollout_id}", api_token)
        return dict(data.get("rollout", data))

    def devices(self, api_token: str) -> list[dict[str, Any]]:
        data = self.get_json("/api/v1/devices", api_token)
        return list(data.get("devices", data) if isinstance(data, dict) else data)


def _error_message(data: bytes) -> str:
    try:
        err = json.loads(data)["error"]
        field = f" (field {err['field']})" if err.get("field") else ""
        return f"{err.get('code')}: {err.get('message')}{field}"
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")


def verify_assignment(body: dict[str, Any], public_hex: str, *, device_id: str, nonce: str) -> str | None:
    """Check signature, device id and nonce of a signed assignment; returns the problem or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    signed = body.get("signed") or {}
    if signed.get("device_id") != device_id:
        return f"WRONG_DEVICE: assignment for {signed.get('device_id')!r}"
    if signed.get("nonce") != nonce:
        return "NONCE_MISMATCH"
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    for sig in body.get("signatures") or []:
        try:
            key.verify(bytes.fromhex(sig["sig"]), canonical_json(signed))
            return None
        except (InvalidSignature, ValueError, KeyError):
            continue
    return "SIGNATURE_INVALID"


def rollout_status(rollout: dict[str, Any]) -> str:
    return str(rollout.get("status") or rollout.get("state") or "unknown")


def rollout_stage(rollout: dict[str, Any]) -> Any:
    for key in ("current_stage", "stage_index", "stage"):
        if key in rollout:
            return rollout[key]
    return None


class RolloutWatcher(threading.Thread):
    """Polls one rollout and records every change of status or stage with its time."""

    def __init__(self, client: FleetClient, api_token: str, rollout_id: str, *, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True, name=f"watch-{rollout_id}")
        self.client, self.token, self.rollout_id, self.interval_s = client, api_token, rollout_id, interval_s
        self.timeline: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {"id": rollout_id, "ended": False}
        self.finished = threading.Event()
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        last: tuple[str, Any] | None = None
        while not self._halt.is_set():
            try:
                r = self.client.rollout(self.token, self.rollout_id)
            except ApiError as e:
                self.timeline.append({"t": round(time.monotonic() - self._t0, 2), "event": f"watch error: {e}"})
                self._halt.wait(self.interval_s)
                continue
            now = (rollout_status(r), rollout_stage(r))
            if now != last:
                self.timeline.append({"t": round(time.monotonic() - self._t0, 2),
                                      "event": f"status={now[0]} stage={now[1]}", "status": now[0],
                                      "stage": now[1]})
                last = now
            self.final = {**r, "ended": now[0] in TERMINAL_STATUSES}
            if now[0] in TERMINAL_STATUSES:
                self.finished.set()
                return
            self._halt.wait(self.interval_s)

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)
