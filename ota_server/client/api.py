"""The one HTTP client of the OTA server's API: :class:`OtaClient`.

``ota-ctl``, the fleet simulator, the demo and the tests all talk to the server through it:
one keep-alive ``urllib3`` pool (thread-safe), JSON in and out, a typed method per documented
endpoint (docs/contracts.md §7–§8; shapes in :mod:`ota_server.client.schema`), the server's
error body turned into :class:`~ota_server.client.errors.Refused`. :meth:`OtaClient.request`
is the raw form, for tests that check statuses and headers.

It speaks only HTTP: it imports nothing of the server, decides nothing about rollouts, and
does not verify what it downloads or the director's signatures (the agent and the simulator
do). Retries, when asked for, cover only idempotent requests that got no answer.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast
from urllib.parse import quote, urlencode

import urllib3

from ota_server.client.errors import BadAnswer, Refused, Unreachable
from ota_server.client.schema import (
    AssignmentPoll,
    AuditEntry,
    CreatedRollout,
    Device,
    Enrollment,
    FleetSummary,
    Health,
    PublishResult,
    Release,
    ReleaseDetail,
    Report,
    ReportsResult,
    Rollback,
    Rollout,
    RolloutRequest,
    SignedAssignment,
)

__all__ = ["Body", "OtaClient", "Response"]

Body = bytes | IO[bytes] | io.RawIOBase  # a request body: bytes, or a stream urllib3 reads in chunks


@dataclass(frozen=True)
class Response:
    """An answer as it came: status, headers (case-insensitive) and body bytes."""

    status: int
    headers: Mapping[str, str]
    data: bytes

    def json(self, what: str = "the request") -> Any:
        """The body decoded as JSON; raises :class:`BadAnswer` when it is not JSON."""
        try:
            return json.loads(self.data)
        except ValueError as e:
            raise BadAnswer(what, f"the body is not JSON ({e}): {self.data[:200]!r}") from e


class OtaClient:
    """Typed calls to one OTA server.

    ``token`` is the API token (role viewer < publisher < operator < admin) sent with every
    call that has none of its own; device calls take the device's token, enrollment the fleet
    enrollment token. ``pool_size`` connections are kept alive; with ``pool_block`` a thread
    waits for a free one instead of opening an extra. ``retries`` retries an idempotent request
    that got no answer (connection refused, reset); a server's error status is never retried.

    Every call raises :class:`~ota_server.client.errors.Unreachable` without an answer,
    :class:`~ota_server.client.errors.Refused` on an error status, and
    :class:`~ota_server.client.errors.BadAnswer` when a success is not the documented shape.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        retries: int = 0,
        pool_size: int = 1,
        pool_block: bool = False,
        _http: urllib3.PoolManager | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        retry: urllib3.Retry | bool = False
        if retries > 0:
            retry = urllib3.Retry(
                total=retries,
                connect=retries,
                read=0,
                status=0,
                other=0,
                redirect=False,
                backoff_factor=0.2,
                raise_on_status=False,
            )
        self._http = _http or urllib3.PoolManager(
            maxsize=pool_size,
            block=pool_block,
            retries=retry,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=timeout_s),
        )

    def with_token(self, token: str | None) -> OtaClient:
        """The same server and connection pool with another token (close the original)."""
        return OtaClient(self.base_url, token, _http=self._http)

    def close(self) -> None:
        """Close the kept-alive connections (a server then stops at once)."""
        self._http.clear()

    def __enter__(self) -> OtaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ raw

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> Response:
        """One request, whatever the status; raises :class:`Unreachable` without an answer.

        ``token`` overrides the client's own; ``json_body`` is sent as JSON, ``body`` as is.
        """
        hdrs = dict(headers or {})
        auth = token or self.token
        if auth:
            hdrs["Authorization"] = f"Bearer {auth}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            resp = self._http.request(
                method, self.base_url + path, body=cast(Any, body), headers=hdrs, redirect=False, preload_content=True
            )
        except urllib3.exceptions.HTTPError as e:
            reason = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason else e
            raise Unreachable(self.base_url, str(reason)) from e
        return Response(resp.status, resp.headers, resp.data)

    def _call(self, method: str, path: str, *, ok: Sequence[int] = (200, 201), **kwargs: Any) -> Response:
        resp = self.request(method, path, **kwargs)
        if resp.status not in ok:
            try:
                decoded: Any = json.loads(resp.data) if resp.data else None
            except ValueError:
                decoded = resp.data
            raise Refused.from_body(resp.status, decoded)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        what = f"{method} {path}"
        data = self._call(method, path, **kwargs).json(what)
        if not isinstance(data, dict):
            raise BadAnswer(what, f"expected a JSON object, got {type(data).__name__}")
        return data

    def _listed(self, path: str, key: str) -> Any:
        data = self._json("GET", path)
        if not isinstance(data.get(key), list):
            raise BadAnswer(f"GET {path}", f"expected a list under {key!r}, got keys {sorted(data)}")
        return data[key]

    # ------------------------------------------------------------------ public

    def health(self) -> Health:
        """``GET /healthz``; a degraded server is a :class:`Refused` with status 503."""
        return cast(Health, self._json("GET", "/healthz"))

    def metrics(self) -> str:
        """``GET /metrics`` (viewer): Prometheus text."""
        return self._call("GET", "/metrics").data.decode()

    # ------------------------------------------------------------------ releases

    def publish(self, tar: Body, *, length: int | None = None) -> PublishResult:
        """``POST /api/v1/releases`` (publisher): ``tar`` is the bundle directory as an uncompressed
        tar (:func:`ota_server.client.bundle.make_tar`); a stream needs its ``length`` in bytes."""
        headers = {"Content-Type": "application/x-tar"}
        if length is not None:
            headers["Content-Length"] = str(length)
        return cast(PublishResult, self._json("POST", "/api/v1/releases", body=tar, headers=headers))

    def releases(self, *, name: str | None = None) -> list[Release]:
        """``GET /api/v1/releases`` (viewer), oldest first; only model ``name`` if given."""
        return cast(list[Release], self._listed("/api/v1/releases" + _query(name=name), "releases"))

    def release(self, name: str, version: str) -> ReleaseDetail:
        """``GET /api/v1/releases/<name>/<version>`` (viewer), with its manifest."""
        return cast(ReleaseDetail, self._json("GET", f"/api/v1/releases/{_seg(name)}/{_seg(version)}"))

    # ------------------------------------------------------------------ rollouts

    def create_rollout(self, spec: RolloutRequest) -> CreatedRollout:
        """``POST /api/v1/rollouts`` (operator): the new rollout and its selection's warnings."""
        return cast(CreatedRollout, self._json("POST", "/api/v1/rollouts", json_body=spec.to_body()))

    def rollouts(self, *, status: str | None = None) -> list[Rollout]:
        """``GET /api/v1/rollouts`` (viewer); only those in ``status`` if given."""
        return cast(list[Rollout], self._listed("/api/v1/rollouts" + _query(status=status), "rollouts"))

    def rollout(self, rollout_id: str) -> Rollout:
        """``GET /api/v1/rollouts/<id>`` (viewer): progress, failures, timeline."""
        return cast(Rollout, self._json("GET", f"/api/v1/rollouts/{_seg(rollout_id)}"))

    def pause_rollout(self, rollout_id: str) -> Rollout:
        """``POST /api/v1/rollouts/<id>/pause`` (operator)."""
        return self._act(rollout_id, "pause")

    def resume_rollout(self, rollout_id: str) -> Rollout:
        """``POST /api/v1/rollouts/<id>/resume`` (operator)."""
        return self._act(rollout_id, "resume")

    def abort_rollout(self, rollout_id: str) -> Rollout:
        """``POST /api/v1/rollouts/<id>/abort`` (operator)."""
        return self._act(rollout_id, "abort")

    def _act(self, rollout_id: str, action: str) -> Rollout:
        return cast(Rollout, self._json("POST", f"/api/v1/rollouts/{_seg(rollout_id)}/{action}", json_body={}))

    def rollback(self, rollout_id: str, *, to_version: str) -> Rollback:
        """``POST /api/v1/rollouts/<id>/rollback`` (operator): a new release of ``to_version``
        (higher counter) rolled out to the same selection."""
        return cast(
            Rollback,
            self._json("POST", f"/api/v1/rollouts/{_seg(rollout_id)}/rollback", json_body={"to_version": to_version}),
        )

    # ------------------------------------------------------------------ devices and fleet

    def devices(
        self,
        *,
        group: str | None = None,
        model_version: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Device]:
        """``GET /api/v1/devices`` (viewer); ``model_version`` is ``VERSION`` or ``MODEL@VERSION``;
        the server answers at most ``limit`` (default 1000)."""
        query = _query(group=group, model_version=model_version, limit=limit, offset=offset)
        return cast(list[Device], self._listed("/api/v1/devices" + query, "devices"))

    def device(self, device_id: str) -> Device:
        """``GET /api/v1/devices/<id>`` (viewer): what it runs, its metrics, its last gate."""
        return cast(Device, self._json("GET", f"/api/v1/devices/{_seg(device_id)}"))

    def fleet_summary(self) -> FleetSummary:
        """``GET /api/v1/fleet/summary`` (viewer)."""
        return cast(FleetSummary, self._json("GET", "/api/v1/fleet/summary"))

    def audit(self, *, limit: int = 500) -> list[AuditEntry]:
        """``GET /api/v1/audit`` (admin), newest first."""
        return cast(list[AuditEntry], self._listed("/api/v1/audit" + _query(limit=limit), "audit"))

    # ------------------------------------------------------------------ the device side

    def enroll(
        self,
        enroll_token: str,
        *,
        name: str,
        hardware: Mapping[str, Any],
        public_key: str,
        group: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> Enrollment:
        """``POST /api/v1/devices/enroll`` with an enrollment credential; ``hardware`` is a
        hardware profile (docs/contracts.md §6), ``public_key`` the device's Ed25519 public key
        (hex; :func:`models.device_reports.public_key_hex`). ``group`` and ``tags``, when given,
        must be what the credential binds; left out, the device gets what it binds."""
        body: dict[str, Any] = {"name": name, "hardware": dict(hardware), "public_key": public_key}
        if group is not None:
            body["group"] = group
        if tags is not None:
            body["tags"] = list(tags)
        return cast(Enrollment, self._json("POST", "/api/v1/devices/enroll", json_body=body, token=enroll_token))

    def assignment(self, device_id: str, *, token: str, nonce: str, etag: str | None = None) -> AssignmentPoll:
        """``GET /api/v1/devices/<id>/assignment?nonce=`` with ``If-None-Match: etag``: the signed
        assignment (not verified here) with its ETag, or a 304."""
        path = f"/api/v1/devices/{_seg(device_id)}/assignment" + _query(nonce=nonce)
        resp = self._call("GET", path, ok=(200, 304), token=token, headers={"If-None-Match": etag} if etag else None)
        if resp.status == 304:
            return AssignmentPoll(304, etag, None)
        body = resp.json(f"GET {path}")
        if not isinstance(body, dict) or not isinstance(body.get("signed"), dict):
            raise BadAnswer(f"GET {path}", "expected a signed assignment ({'signed': ..., 'signatures': ...})")
        return AssignmentPoll(200, resp.headers.get("ETag"), cast(SignedAssignment, body))

    def post_reports(self, device_id: str, reports: Sequence[Report], *, token: str) -> ReportsResult:
        """``POST /api/v1/devices/<id>/reports`` (≤ 500 per call; idempotent per report id)."""
        return cast(
            ReportsResult,
            self._json(
                "POST", f"/api/v1/devices/{_seg(device_id)}/reports", json_body={"reports": list(reports)}, token=token
            ),
        )

    def approve_device(self, device_id: str) -> Device:
        """``POST /api/v1/devices/<id>/approve`` (operator): accept a device pending approval."""
        return cast(Device, self._json("POST", f"/api/v1/devices/{_seg(device_id)}/approve"))

    def revoke_device(self, device_id: str, *, reason: str | None = None) -> Device:
        """``POST /api/v1/devices/<id>/revoke`` (operator): decommission the device; the server
        refuses its token within a second. ``reason`` (at most 200 characters) goes to the audit log."""
        body = {"reason": reason} if reason is not None else {}
        return cast(Device, self._json("POST", f"/api/v1/devices/{_seg(device_id)}/revoke", json_body=body))

    def put_hardware(self, device_id: str, hardware: Mapping[str, Any], *, token: str) -> dict[str, Any]:
        """``PUT /api/v1/devices/<id>/hardware``: the device's new hardware profile."""
        return dict(
            self._json("PUT", f"/api/v1/devices/{_seg(device_id)}/hardware", json_body=dict(hardware), token=token)
        )

    def download_target(self, path: str, sha256: str) -> bytes:
        """The bytes of TUF target ``path`` (``<name>/<version>/<file>``) by its consistent-snapshot
        name; neither length nor hash is checked here."""
        directory, _, filename = path.rpartition("/")
        return self._call("GET", f"/tuf/targets/{directory}/{sha256}.{filename}", ok=(200,)).data


def _seg(value: str) -> str:
    """``value`` as one path segment."""
    return quote(value, safe="@")


def _query(**params: object) -> str:
    """``?k=v&...`` of the parameters that are not None (empty when none are)."""
    given = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return "?" + urlencode(given) if given else ""
