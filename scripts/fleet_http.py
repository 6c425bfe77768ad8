"""A small HTTP client for the OTA server's API (docs/contracts.md §7–§8).

Used by the fleet simulation, the rollout benchmark and the demo's report: one
keep-alive ``urllib3`` connection pool, JSON in and out, the server's error
body turned into :class:`ApiError`; a :class:`RolloutWatcher` that records when
a rollout changes stage, and :func:`stage_metrics` that turns its timeline into
per-stage figures. It speaks only the documented HTTP API; it imports nothing
of ``ota_server`` or ``edge_agent``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import urllib3

from models.bundle import canonical_json

# rollout statuses after which nothing more happens on their own
TERMINAL_STATUSES = frozenset({"completed", "halted", "aborted", "rolled-back", "superseded"})


class ApiError(RuntimeError):
    """The server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{method} {path} -> {status or 'no answer'}: {message}")


class DeviceApi(Protocol):
    """The device side of the API, as the fleet simulation uses it: :class:`FleetClient` over
    HTTP, or a fake in tests."""

    def assignment(self, device_id: str, token: str, nonce: str,
                   etag: str | None) -> tuple[int, str | None, dict[str, Any] | None]: ...

    def post_reports(self, device_id: str, token: str, reports: list[dict[str, Any]]) -> dict[str, Any]: ...

    def download_target(self, path: str, sha256: str) -> bytes: ...


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
    """Polls one rollout and records every change of status or stage with its time.

    Give it a client of its own: behind a pool that the simulated devices keep busy, it would
    see each change only after waiting for a connection. ``probe`` (the simulator's counters)
    is sampled with every recorded change, so :func:`stage_metrics` can tell what the fleet
    did during each stage.
    """

    def __init__(self, client: FleetClient, api_token: str, rollout_id: str, *, interval_s: float = 0.5,
                 probe: Callable[[], Mapping[str, int]] | None = None) -> None:
        super().__init__(daemon=True, name=f"watch-{rollout_id}")
        self.client, self.token, self.rollout_id, self.interval_s = client, api_token, rollout_id, interval_s
        self.probe = probe
        self.timeline: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {"id": rollout_id, "ended": False}
        self.finished = threading.Event()
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the watcher was created (right after the rollout, by its callers)."""
        return time.monotonic() - self._t0

    def run(self) -> None:
        last: tuple[str, Any] | None = None
        while not self._halt.is_set():
            try:
                r = self.client.rollout(self.token, self.rollout_id)
            except ApiError as e:
                self.timeline.append({"t": round(self.elapsed(), 2), "event": f"watch error: {e}"})
                self._halt.wait(self.interval_s)
                continue
            now = (rollout_status(r), rollout_stage(r))
            if now != last:
                entry: dict[str, Any] = {"t": round(self.elapsed(), 2), "event": f"status={now[0]} stage={now[1]}",
                                         "status": now[0], "stage": now[1]}
                if self.probe is not None:
                    entry["counts"] = dict(self.probe())
                self.timeline.append(entry)
                last = now
            self.final = {**r, "ended": now[0] in TERMINAL_STATUSES}
            if now[0] in TERMINAL_STATUSES:
                self.finished.set()
                return
            self._halt.wait(self.interval_s)

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def stage_metrics(timeline: Sequence[Mapping[str, Any]], rollout: Mapping[str, Any],
                  end: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per stage of ``rollout``: its devices (cumulative cohort), when it became the current stage,
    how long the rollout stayed there (``advance_s``: until it advanced, completed or halted) and
    the polls and reports per second the simulator made meanwhile.

    ``timeline`` is a :class:`RolloutWatcher`'s, with counters; ``end`` (``t`` and ``counts``)
    closes a stage the rollout was still in when the watch ended. A stage the rollout passed
    between two observations has no times (``entered_s`` None).
    """
    marks = [e for e in timeline if "counts" in e and "stage" in e]
    progress = {p.get("stage"): p for p in rollout.get("progress") or []}
    rows: list[dict[str, Any]] = []
    for k, pct in enumerate(rollout.get("stages") or []):
        first = next((i for i, e in enumerate(marks)
                      if e["stage"] == k and e["status"] not in TERMINAL_STATUSES), None)
        row: dict[str, Any] = {"stage": k, "percent": pct, "devices": progress.get(k, {}).get("devices"),
                               "succeeded": progress.get(k, {}).get("succeeded"), "entered_s": None,
                               "advance_s": None, "left_as": None, "polls_per_s": None, "reports_per_s": None}
        if first is not None:
            enter = marks[first]
            leave = next((e for e in marks[first + 1:]
                          if e["stage"] != k or e["status"] in TERMINAL_STATUSES), None)
            stop = leave or end
            span = max(float(stop["t"]) - float(enter["t"]), 1e-9)
            row.update(
                entered_s=enter["t"], advance_s=round(span, 1),
                left_as=("advanced" if leave["stage"] != k else leave["status"]) if leave else None,
                polls_per_s=round((stop["counts"].get("polls", 0) - enter["counts"].get("polls", 0)) / span, 1),
                reports_per_s=round((stop["counts"].get("reports", 0) - enter["counts"].get("reports", 0)) / span, 1),
            )
        rows.append(row)
    return rows


def format_stage_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`stage_metrics` as a text table; ``-`` where a stage was never observed."""
    cols = (("stage", 5, "d"), ("percent", 7, "g"), ("devices", 7, "d"), ("advance_s", 17, ".1f"),
            ("polls_per_s", 7, ".1f"), ("reports_per_s", 9, ".1f"), ("left_as", 9, ""))
    titles = ("stage", "percent", "devices", "time to advance s", "polls/s", "reports/s", "then")
    lines = ["  ".join(f"{t:>{w}}" for t, (_, w, _) in zip(titles, cols, strict=True))]
    for r in rows:
        cells = []
        for name, width, spec in cols:
            value = r.get(name)
            cells.append(f"{'-' if value is None else format(value, spec):>{width}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)
