"""Device reports (contract §7): validation, idempotent storage, and what they drive.

A report batch updates the device (last seen, state, running version and variant, last
benchmark metrics, last gate evidence) and, for transitions tied to a rollout's release, the
device's outcome in that rollout — the latest state per device wins — after which the rollout's
advance/halt rules run. Reason codes are :class:`models.reasons.ReasonCode`: an unknown one is a
400 naming the field. Only validated fields are stored (see :mod:`ota_server.evidence` for the
gate's evidence); what a device adds beyond them is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from models.reasons import ReasonCode, UnknownReasonCode
from ota_server import director, service
from ota_server import evidence as ev
from ota_server import rollouts as ro
from ota_server import store as st
from ota_server.errors import BadRequest, NotFound

MAX_REPORTS = 500
MAX_DETAIL = 2000  # characters kept of a report's detail
TYPES = ("transition", "gate", "benchmark", "heartbeat")
STATES = ("idle", "checking", "downloading", "verifying", "staging", "preparing", "benchmarking", "swapping",
          "health-watch", "committed", "failed", "rolled-back", "refused")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")
METRIC_KEYS = ("p50_ms", "p95_ms", "p99_ms", "fps", "agreement", "nan_frames", "frames_captured",
               "frames_dropped", "swap_ms")


@dataclass(frozen=True)
class Report:
    """One validated report; ``body`` is what is stored: only the fields checked here."""

    id: str
    time: str
    type: str
    state: str | None
    rollout_id: str | None
    release: int | None
    reason_code: ReasonCode | None
    detail: str | None
    metrics: Mapping[str, float] | None
    running: Mapping[str, Any] | None
    variant: str | None  # the variant the device chose to serve for ``release``
    gate: Mapping[str, Any] | None  # the shadow gate's evidence (ota_server.evidence)
    body: Mapping[str, Any]


def _opt(r: Mapping[str, Any], key: str, types: tuple[type, ...], where: str) -> Any:
    value = r.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise BadRequest(f"expected {types[0].__name__} or null, got {type(value).__name__}", field=f"{where}.{key}")
    return value


def _reason(r: Mapping[str, Any], where: str) -> ReasonCode | None:
    value = _opt(r, "reason_code", (str,), where)
    if value is None:
        return None
    try:
        return ReasonCode.parse(value)
    except UnknownReasonCode as e:
        raise BadRequest(str(e), field=f"{where}.reason_code") from e


def _metrics(r: Mapping[str, Any], where: str) -> dict[str, float] | None:
    """The known metrics that are finite numbers; other keys (counters an agent adds) are not kept."""
    metrics = _opt(r, "metrics", (dict,), where)
    if metrics is None:
        return None
    return {k: metrics[k] for k in METRIC_KEYS
            if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool)
            and math.isfinite(metrics[k])}


def _running(r: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    running = _opt(r, "running", (dict,), where)
    if running is None:
        return None
    out = {key: _opt(running, key, types, f"{where}.running")
           for key, types in (("name", (str,)), ("version", (str,)), ("release", (int,)))}
    for key in ("name", "version"):
        if out[key] is not None and not 0 < len(out[key]) <= 64:
            raise BadRequest(f"expected 1-64 characters, got {len(out[key])}", field=f"{where}.running.{key}")
    variant = ev.parse_variant(running.get("variant"), f"{where}.running.variant")
    if variant is not None:
        out["variant"] = variant
    return out


def parse_report(r: Any, where: str) -> Report:
    """Validate one report; raises :class:`BadRequest` naming the field (``reports[3].reason_code``)."""
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
    rollout_id = _opt(r, "rollout_id", (str,), where)
    if rollout_id is not None and not _ROLLOUT_ID.match(rollout_id):
        raise BadRequest(f"rollout_id must be 1-40 characters of [A-Za-z0-9_.:-], got {rollout_id[:80]!r}",
                         field=f"{where}.rollout_id")
    detail = _opt(r, "detail", (str,), where)
    reason = _reason(r, where)
    body: dict[str, Any] = {
        "id": rid, "time": time, "type": r["type"], "state": state, "rollout_id": rollout_id,
        "release": _opt(r, "release", (int,), where), "reason_code": reason.value if reason else None,
        "detail": detail[:MAX_DETAIL] if detail else None, "metrics": _metrics(r, where),
        "running": _running(r, where), "variant": ev.parse_variant(r.get("variant"), f"{where}.variant"),
        "gate": ev.parse_gate(r.get("gate"), f"{where}.gate"),
    }
    return Report(
        id=rid, time=time, type=body["type"], state=state, rollout_id=rollout_id, release=body["release"],
        reason_code=reason, detail=body["detail"], metrics=body["metrics"], running=body["running"],
        variant=body["variant"], gate=body["gate"], body=body,
    )


def parse_batch(body: Any) -> list[Report]:
    if not isinstance(body, Mapping) or not isinstance(body.get("reports"), list):
        raise BadRequest('body must be {"reports": [...]}', field="reports")
    items = body["reports"]
    if len(items) > MAX_REPORTS:
        raise BadRequest(f"at most {MAX_REPORTS} reports per request, got {len(items)}", field="reports")
    return [parse_report(r, f"reports[{i}]") for i, r in enumerate(items)]


def _counts(r: Report) -> bool:
    """Whether the report is a transition that can move its device in a rollout."""
    return r.type == "transition" and bool(r.rollout_id) and bool(r.state)


def ingest(conn: Connection, device_id: str, reports: Sequence[Report]) -> dict[str, list[str]]:
    """Store new reports, apply their effects; duplicates (by id) change nothing.

    A report costs a fixed handful of statements whatever the fleet size: each rollout the batch
    names is read once (and its counters built if an older server made it), the device row once,
    and each counted report touches only the device's own rows and its stage's counters.
    """
    known = st.known_report_ids(conn, device_id, [r.id for r in reports])
    fresh: list[Report] = []
    duplicates: list[str] = []
    for r in reports:
        if r.id in known:
            duplicates.append(r.id)
        else:
            known.add(r.id)
            fresh.append(r)
    # one rollout's accounting runs one transaction at a time (PostgreSQL advisory lock; SQLite
    # writers are serial anyway); taken first and in a fixed order — before the generation row
    # may be bumped, like every other writer — so two transactions never deadlock
    rollouts: dict[str, dict[str, Any]] = {}
    for rollout_id in sorted({r.rollout_id for r in fresh if _counts(r) and r.rollout_id}):
        st.lock(conn, f"rollout:{rollout_id}")
        try:
            rollouts[rollout_id] = st.get_rollout(conn, rollout_id)
        except NotFound:
            continue  # a report about an unknown rollout is stored, not counted
        service.ensure_counters(conn, rollouts[rollout_id])
    st.insert_reports(conn, [
        {"id": r.id, "device_id": device_id, "time": r.time, "type": r.type, "state": r.state,
         "rollout_id": r.rollout_id, "release": r.release, "reason_code": r.body["reason_code"],
         "body": dict(r.body)}
        for r in fresh
    ])
    ordered = sorted(fresh, key=lambda r: r.time)
    device = _update_device(conn, device_id, ordered, rollouts.values())
    touched: dict[str, dict[str, Any]] = {}
    for r in ordered:
        rollout = rollouts.get(r.rollout_id or "") if _counts(r) else None
        # only finished outcomes can advance or halt a rollout; progress states just get recorded
        if rollout is not None and _record_outcome(conn, device, rollout, r) and ro.outcome_of(r.state) != "pending":
            touched[rollout["id"]] = rollout
    for rollout_id in sorted(touched):
        service.decide(conn, touched[rollout_id])
    return {"accepted": [r.id for r in fresh], "duplicates": duplicates}


def _update_device(conn: Connection, device_id: str, ordered: Sequence[Report],
                   rollouts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    device = st.get_device(conn, device_id)
    values: dict[str, Any] = {"last_seen": st.utcnow()}
    for r in ordered:
        if r.state:
            values["state"] = r.state
        if r.running:
            values.update(running_name=r.running.get("name"), running_version=r.running.get("version"),
                          running_release=r.running.get("release"),
                          running_variant=_served_variant(r, r.running, device, values))
        elif r.state == "committed" and r.variant and r.release == values.get("running_release",
                                                                                device["running_release"]):
            values["running_variant"] = r.variant
        if r.metrics:
            merged = dict(values.get("last_metrics") or device["last_metrics"] or {})
            merged.update(r.metrics)
            merged["time"] = r.time
            values["last_metrics"] = merged
        last_gate = values.get("last_gate") or device["last_gate"]
        if r.gate and (not last_gate or last_gate.get("time", "") <= r.time):
            values["last_gate"] = _gate_record(r, last_gate)
    st.update_device(conn, device_id, **values)
    # the installed release only shapes the assignment of a device outside every assigning
    # rollout's current stage (it then points at what the device runs): a device installing its
    # rollout's release leaves every cached assignment valid, so a rollout's commits do not
    # invalidate the whole fleet's caches one by one
    if "running_release" in values and values["running_release"] != device["running_release"]:
        updated = dict(device, **values)
        # the reported rollouts are at hand; only when none of them assigns to the device does it
        # take a look at every assigning rollout of its group
        if not any(ro.assigns(rollout, updated) for rollout in rollouts) and director.pick_release(
            conn, updated, director.Catalog(), None
        ).rollout_id is None:
            st.bump_generation(conn)
    return device


def _served_variant(r: Report, running: Mapping[str, Any], device: Mapping[str, Any],
                    values: Mapping[str, Any]) -> str | None:
    """The variant the device serves after ``r``: named in ``running``; else the variant of a
    ``committed`` report for the running release; else the one known before if the release did
    not change; else unknown (None: whoever needs it asks the director what it would pick)."""
    release = running.get("release")
    if running.get("variant"):
        return str(running["variant"])
    if r.state == "committed" and r.variant and r.release == release:
        return r.variant
    if release is not None and release == values.get("running_release", device["running_release"]):
        known = values.get("running_variant", device["running_variant"])
        return str(known) if known else None
    return None


EVIDENCE = ("agreement", "timing", "latency")  # the kinds of gate evidence a record keeps


def _gate_record(r: Report, previous: Any = None) -> dict[str, Any]:
    """What a device row and its rollout row keep of a report's gate: its evidence and context.

    The gates of one update report one after another (the shadow run's agreement and timing,
    then the health window's latency), so the evidence of ``previous`` — the record kept so
    far — carries over when it is of the same rollout and release and the new gate lacks it."""
    gate = dict(r.gate or {})
    same = isinstance(previous, Mapping) and (previous.get("rollout_id"), previous.get("release")) == (
        r.rollout_id, r.release)
    kept = previous if same else {}
    return {"time": r.time, "rollout_id": r.rollout_id, "release": r.release, "state": r.state,
            "reason_code": r.reason_code.value if r.reason_code else None,
            "variant": r.variant or gate.get("variant") or kept.get("variant"),
            **{k: gate.get(k, kept.get(k)) for k in EVIDENCE if k in gate or k in kept}}


def _record_outcome(conn: Connection, device: Mapping[str, Any], rollout: Mapping[str, Any], r: Report) -> bool:
    """Store the device's latest state in the rollout and move it between the rollout's counters
    (O(1): one row read, one counter update; the caller holds the rollout's lock)."""
    if r.release is not None and r.release != rollout["release"]:
        return False
    existing = st.device_outcome(conn, rollout["id"], device["id"])
    if existing is not None and existing["time"] > r.time:
        return False  # an older report never overwrites a newer one
    stage = service.stage_of(device, rollout) if existing is None else existing["stage"]
    outcome = ro.outcome_of(r.state)
    code = r.reason_code.value if r.reason_code else None
    row: dict[str, Any] = {
        "rollout_id": rollout["id"], "device_id": device["id"], "state": r.state or "",
        "outcome": outcome, "reason_code": code, "detail": r.detail, "time": r.time, "stage": stage,
    }
    # a later transition without evidence (swapping, committed) keeps the gate's evidence
    if r.gate or r.variant or existing is None:
        record = _gate_record(r, existing["gate"] if existing is not None else None) if r.gate else None
        row.update(variant=r.variant or (record or {}).get("variant"), gate=record)
    st.write_device_outcome(conn, row, exists=existing is not None)
    chosen = existing["variant"] if existing is not None else None
    if r.state == "committed" and chosen and not r.variant and r.running and not r.running.get("variant") \
            and r.running.get("release") == rollout["release"]:
        # the commit of a release whose gate named the variant it chose: that is what it serves now
        st.update_device(conn, device["id"], running_variant=chosen)
    if stage is not None:
        old = (existing["outcome"], existing["reason_code"]) if existing is not None else None
        service.count_outcome(conn, rollout["id"], stage, old, (outcome, r.reason_code))
    return True
