"""Device reports (contract §7): validation, idempotent storage, and what they drive.

A report batch updates the device (last seen, state, running version, last benchmark metrics)
and, for transitions tied to a rollout's release, the device's outcome in that rollout — the
latest state per device wins — after which the rollout's advance/halt rules run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from ota_server import rollouts as ro
from ota_server import service
from ota_server import store as st
from ota_server.errors import BadRequest, NotFound

MAX_REPORTS = 500
TYPES = ("transition", "gate", "benchmark", "heartbeat")
STATES = ("idle", "checking", "downloading", "verifying", "staging", "preparing", "benchmarking", "swapping",
          "health-watch", "committed", "failed", "rolled-back", "refused")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
METRIC_KEYS = ("p50_ms", "p95_ms", "p99_ms", "fps", "agreement", "nan_frames", "frames_captured",
               "frames_dropped", "swap_ms")


@dataclass(frozen=True)
class Report:
    id: str
    time: str
    type: str
    state: str | None
    rollout_id: str | None
    release: int | None
    reason_code: str | None
    detail: str | None
    metrics: Mapping[str, Any] | None
    running: Mapping[str, Any] | None
    raw: Mapping[str, Any]


def _opt(r: Mapping[str, Any], key: str, types: tuple[type, ...], where: str) -> Any:
    value = r.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise BadRequest(f"expected {types[0].__name__} or null, got {type(value).__name__}", field=f"{where}.{key}")
    return value


def parse_report(r: Any, where: str) -> Report:
    if not isinstance(r, Mapping):
        raise BadRequest("expected an object", field=where)
    rid, time = r.get("id"), r.get("time")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise BadRequest(f"id must be 1-64 characters of [A-Za-z0-9_.:-], got {rid!r}", field=f"{where}.id")
    if not isinstance(time, str) or not _ISO.match(time):
        raise BadRequest(f"time must be ISO-8601 like 2026-11-27T10:00:00Z, got {time!r}", field=f"{where}.time")
    if r.get("type") not in TYPES:
        raise BadRequest(f"type must be one of {list(TYPES)}, got {r.get('type')!r}", field=f"{where}.type")
    state = _opt(r, "state", (str,), where)
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {list(STATES)} or null, got {state!r}", field=f"{where}.state")
    metrics = _opt(r, "metrics", (dict,), where)
    running = _opt(r, "running", (dict,), where)
    if running is not None:
        for key, types in (("name", (str,)), ("version", (str,)), ("release", (int,))):
            _opt(running, key, types, f"{where}.running")
    detail = _opt(r, "detail", (str,), where)
    return Report(
        id=rid, time=time, type=r["type"], state=state,
        rollout_id=_opt(r, "rollout_id", (str,), where), release=_opt(r, "release", (int,), where),
        reason_code=_opt(r, "reason_code", (str,), where), detail=detail[:2000] if detail else None,
        metrics=metrics, running=running, raw=r,
    )


def parse_batch(body: Any) -> list[Report]:
    if not isinstance(body, Mapping) or not isinstance(body.get("reports"), list):
        raise BadRequest('body must be {"reports": [...]}', field="reports")
    items = body["reports"]
    if len(items) > MAX_REPORTS:
        raise BadRequest(f"at most {MAX_REPORTS} reports per request, got {len(items)}", field="reports")
    return [parse_report(r, f"reports[{i}]") for i, r in enumerate(items)]


def ingest(conn: Connection, device_id: str, reports: Sequence[Report]) -> dict[str, list[str]]:
    """Store new reports, apply their effects; duplicates (by id) change nothing."""
    known = st.known_report_ids(conn, device_id, [r.id for r in reports])
    fresh: list[Report] = []
    duplicates: list[str] = []
    for r in reports:
        if r.id in known:
            duplicates.append(r.id)
        else:
            known.add(r.id)
            fresh.append(r)
    st.insert_reports(conn, [
        {"id": r.id, "device_id": device_id, "time": r.time, "type": r.type, "state": r.state,
         "rollout_id": r.rollout_id, "release": r.release, "reason_code": r.reason_code, "body": dict(r.raw)}
        for r in fresh
    ])
    _update_device(conn, device_id, sorted(fresh, key=lambda r: r.time))
    touched = set()
    for r in sorted(fresh, key=lambda r: r.time):
        # only finished outcomes can advance or halt a rollout; progress states just get recorded
        if (r.type == "transition" and r.rollout_id and r.state and _record_outcome(conn, device_id, r)
                and ro.outcome_of(r.state) != "pending"):
            touched.add(r.rollout_id)
    for rollout_id in sorted(touched):
        service.evaluate(conn, rollout_id)
    return {"accepted": [r.id for r in fresh], "duplicates": duplicates}


def _update_device(conn: Connection, device_id: str, ordered: Sequence[Report]) -> None:
    device = st.get_device(conn, device_id)
    values: dict[str, Any] = {"last_seen": st.utcnow()}
    for r in ordered:
        if r.state:
            values["state"] = r.state
        if r.running:
            values.update(running_name=r.running.get("name"), running_version=r.running.get("version"),
                          running_release=r.running.get("release"))
        if r.metrics:
            merged = dict(values.get("last_metrics") or device["last_metrics"] or {})
            merged.update({k: v for k, v in r.metrics.items() if k in METRIC_KEYS})
            merged["time"] = r.time
            values["last_metrics"] = merged
    st.update_device(conn, device_id, **values)
    if "running_release" in values and values["running_release"] != device["running_release"]:
        st.bump_generation(conn)


def _record_outcome(conn: Connection, device_id: str, r: Report) -> bool:
    try:
        rollout = st.get_rollout(conn, r.rollout_id or "")
    except NotFound:
        return False
    if r.release is not None and r.release != rollout["release"]:
        return False
    return st.upsert_device_outcome(conn, {
        "rollout_id": rollout["id"], "device_id": device_id, "state": r.state or "",
        "outcome": ro.outcome_of(r.state), "reason_code": r.reason_code, "detail": r.detail, "time": r.time,
    })
