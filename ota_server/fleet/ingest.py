"""Report ingest: a validated batch applied to the store, in the caller's transaction.

A batch updates the device (last seen, state, running version and variant, last benchmark
metrics, last gate evidence) and, for transitions tied to a rollout's release, the device's
outcome in that rollout — the latest state per device wins — after which the rollout's
advance/halt rules run (:func:`ota_server.fleet.service.decide`). Reports are stored once: a
duplicate id changes nothing.

A transition counts in a rollout only when the device was issued that rollout's assignment:
the report's (signed) ``assignment_digest`` must be one the director recorded for the device and
rollout; other reports are stored and listed as ``not_counted``. :func:`verify_signatures` checks
each report's device signature before a batch is ingested.

Validation is not done here: batches come parsed by :mod:`ota_server.rules.reports`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from models.device_reports import verify_report
from ota_server.errors import RecordNotFound, Unauthorized
from ota_server.fleet import director, service
from ota_server.rules import rollouts as ro
from ota_server.rules.reports import Report
from ota_server.storage import store as st

__all__ = ["EVIDENCE", "ingest", "verify_signatures"]

log = logging.getLogger(__name__)


def verify_signatures(device: Mapping[str, Any], raw: Sequence[Any]) -> None:
    """Check that every report of a posted batch is signed by the device's key, before anything
    of it is stored or counted (:mod:`models.device_reports`).

    Raises:
        Unauthorized: a report is unsigned or its signature does not verify (``field`` names it,
            like ``reports[3].signature``), or the device has no key (enrolled by an older server).
    """
    key = device.get("public_key")
    if not key:
        raise Unauthorized(f"device {device['id']} has no key to verify its reports: re-enroll it", field="reports")
    for i, report in enumerate(raw):
        if not isinstance(report, Mapping) or not report.get("signature"):
            raise Unauthorized("the report is not signed by the device's key", field=f"reports[{i}].signature")
        if not verify_report(key, device["id"], report):
            raise Unauthorized(
                "the report's signature does not verify with the device's key", field=f"reports[{i}].signature"
            )


def _counts(r: Report) -> bool:
    """Whether the report is a transition that can move its device in a rollout."""
    return r.type == "transition" and bool(r.rollout_id) and bool(r.state)


def ingest(conn: Connection, device_id: str, reports: Sequence[Report]) -> dict[str, list[str]]:
    """Store new reports, apply their effects; duplicates (by id) change nothing.

    A report costs a fixed handful of statements whatever the fleet size: each rollout the batch
    names is read once (and its counters built if an older server made it), the device row once,
    and each counted report touches only the device's own rows and its stage's counters.

    Raises:
        RecordNotFound: no such device. A report naming an unknown rollout is stored, not counted.
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
        except RecordNotFound:
            continue  # a report about an unknown rollout is stored, not counted
        service.ensure_counters(conn, rollouts[rollout_id])
    # a report counts for a rollout only when it names an assignment of that rollout the director
    # issued to this device (issued only once the rollout's stage reached it)
    issued = st.issued_digests(conn, device_id, sorted(rollouts))
    received = st.utcnow()  # retention goes by when the server stored a report, not its own time
    st.insert_reports(
        conn,
        [
            {
                "id": r.id,
                "device_id": device_id,
                "time": r.time,
                "type": r.type,
                "state": r.state,
                "rollout_id": r.rollout_id,
                "release": r.release,
                "reason_code": r.body["reason_code"],
                "body": dict(r.body),
                "received_at": received,
            }
            for r in fresh
        ],
    )
    ordered = sorted(fresh, key=lambda r: r.time)
    device = _update_device(conn, device_id, ordered, rollouts.values())
    touched: dict[str, dict[str, Any]] = {}
    ignored: list[str] = []
    for r in ordered:
        rollout = rollouts.get(r.rollout_id or "") if _counts(r) else None
        if rollout is not None and (rollout["id"], r.assignment_digest) not in issued:
            ignored.append(r.id)
            continue  # stored, not counted: this device was never issued that assignment
        # only finished outcomes can advance or halt a rollout; progress states just get recorded
        if rollout is not None and _record_outcome(conn, device, rollout, r) and ro.outcome_of(r.state) != "pending":
            touched[rollout["id"]] = rollout
    for rollout_id in sorted(touched):
        service.decide(conn, touched[rollout_id])
    if ignored:
        log.warning(
            "device %s: %d report(s) not counted: no issued assignment of their rollout named (%s)",
            device_id,
            len(ignored),
            ", ".join(ignored[:5]),
        )
    answer = {"accepted": [r.id for r in fresh], "duplicates": duplicates}
    if ignored:
        answer["not_counted"] = ignored
    return answer


def _update_device(
    conn: Connection, device_id: str, ordered: Sequence[Report], rollouts: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    device = st.get_device(conn, device_id)
    values: dict[str, Any] = {"last_seen": st.utcnow()}
    for r in ordered:
        if r.state:
            values["state"] = r.state
        if r.running:
            values.update(
                running_name=r.running.get("name"),
                running_version=r.running.get("version"),
                running_release=r.running.get("release"),
                running_variant=_served_variant(r, r.running, device, values),
            )
        elif (
            r.state == "committed"
            and r.variant
            and r.release == values.get("running_release", device["running_release"])
        ):
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
    # invalidate the whole fleet's caches one by one; and it shapes that device's assignment
    # alone, so only its cached one is invalidated
    if "running_release" in values and values["running_release"] != device["running_release"]:
        updated = dict(device, **values)
        # the reported rollouts are at hand; only when none of them assigns to the device does it
        # take a look at every assigning rollout of its group
        if (
            not any(ro.assigns(rollout, updated) for rollout in rollouts)
            and director.pick_release(conn, updated, director.Catalog(), None).rollout_id is None
        ):
            st.bump_device_assignment(conn, device_id)
    return device


def _served_variant(
    r: Report, running: Mapping[str, Any], device: Mapping[str, Any], values: Mapping[str, Any]
) -> str | None:
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
        r.rollout_id,
        r.release,
    )
    kept = previous if same else {}
    return {
        "time": r.time,
        "rollout_id": r.rollout_id,
        "release": r.release,
        "state": r.state,
        "reason_code": r.reason_code.value if r.reason_code else None,
        "variant": r.variant or gate.get("variant") or kept.get("variant"),
        **{k: gate.get(k, kept.get(k)) for k in EVIDENCE if k in gate or k in kept},
    }


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
        "rollout_id": rollout["id"],
        "device_id": device["id"],
        "state": r.state or "",
        "outcome": outcome,
        "reason_code": code,
        "detail": r.detail,
        "time": r.time,
        "stage": stage,
    }
    # a later transition without evidence (swapping, committed) keeps the gate's evidence
    if r.gate or r.variant or existing is None:
        record = _gate_record(r, existing["gate"] if existing is not None else None) if r.gate else None
        row.update(variant=r.variant or (record or {}).get("variant"), gate=record)
    st.write_device_outcome(conn, row, exists=existing is not None)
    chosen = existing["variant"] if existing is not None else None
    if (
        r.state == "committed"
        and chosen
        and not r.variant
        and r.running
        and not r.running.get("variant")
        and r.running.get("release") == rollout["release"]
    ):
        # the commit of a release whose gate named the variant it chose: that is what it serves now
        st.update_device(conn, device["id"], running_variant=chosen)
    if stage is not None:
        old = (existing["outcome"], existing["reason_code"]) if existing is not None else None
        service.count_outcome(conn, rollout["id"], stage, old, (outcome, r.reason_code))
    return True
