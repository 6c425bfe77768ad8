"""The rollout service: the rules of :mod:`ota_server.rules.rollouts` applied to the store.

Each function runs inside the caller's transaction (``conn``) and records what it did: rollout
events for the timeline, the audit log for operator actions, and a generation bump whenever an
assignment may change. Requests arrive validated (:func:`ota_server.rules.rollouts.parse_rollout`);
reports reach a rollout through :mod:`ota_server.fleet.ingest`, which calls :func:`decide`.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from models.bundle import Manifest, semver_key
from models.reasons import ReasonCode
from ota_server.errors import BadRequest, Conflict
from ota_server.fleet.publish import release_view, with_counter
from ota_server.rules import rollouts as ro
from ota_server.storage import store as st
from ota_server.trust.repository import OFFLINE_TARGETS_HINT, NewTarget, Repository

__all__ = [
    "act",
    "build_counters",
    "count_outcome",
    "create_rollout",
    "decide",
    "ensure_counters",
    "evaluate",
    "on_enrolled",
    "on_revoked",
    "rollback",
    "rollout_view",
    "selected_buckets",
    "stage_counts",
    "stage_of",
]

log = logging.getLogger(__name__)


def selected_buckets(conn: Connection, rollout: Mapping[str, Any]) -> dict[str, float]:
    """Bucket of every device the rollout selects (group, tags, hardware classes)."""
    return {
        d["id"]: ro.bucket(d["id"], rollout["id"])
        for d in st.devices_in_group(conn, rollout["group_name"])
        if ro.is_selected(d, tags=rollout["tags"], hardware_classes=rollout["hardware_classes"])
    }


def stage_of(device: Mapping[str, Any], rollout: Mapping[str, Any]) -> int | None:
    """The device's first stage in the rollout, or None when the rollout does not select it."""
    if device["group_name"] != rollout["group_name"] or not ro.is_selected(
        device, tags=rollout["tags"], hardware_classes=rollout["hardware_classes"]
    ):
        return None
    return ro.first_stage(ro.bucket(device["id"], rollout["id"]), rollout["stages"], rollout["floor_bucket"])


def build_counters(conn: Connection, rollout: Mapping[str, Any]) -> None:
    """Create a rollout's counters from a full scan — once, at creation (or for a rollout made by
    an older server): afterwards reports update them incrementally (:func:`count_outcome`)."""
    buckets = selected_buckets(conn, rollout)
    stages = rollout["stages"]
    rows = st.device_outcomes(conn, rollout["id"])
    counts = ro.count_stages(
        stages,
        buckets,
        {r["device_id"]: r["outcome"] for r in rows},
        rollout["floor_bucket"],
        {r["device_id"]: r["reason_code"] for r in rows},
    )
    out: list[dict[str, Any]] = []
    for k, c in enumerate(counts):
        values = {"devices": c.devices, "success": c.success, "failure": c.failure, "pending": c.pending}
        values.update({f"reason:{code}": n for code, n in c.reasons.items()})
        out += [{"rollout_id": rollout["id"], "stage": k, "key": key, "n": n} for key, n in values.items()]
    st.insert_counters(conn, out)
    for r in rows:  # an older server's rows: pin their stage
        stage = (
            ro.first_stage(buckets[r["device_id"]], stages, rollout["floor_bucket"])
            if r["device_id"] in buckets
            else None
        )
        st.set_device_stage(conn, r["rollout_id"], r["device_id"], stage)


def stage_counts(conn: Connection, rollout: Mapping[str, Any]) -> list[ro.StageCounts]:
    """The rollout's per-first-stage counters (a handful of rows, whatever the fleet size)."""
    per: list[dict[str, Any]] = [{"reasons": {}} for _ in rollout["stages"]]
    for row in st.counters(conn, rollout["id"]):
        if not 0 <= row["stage"] < len(per):
            continue
        key, n = row["key"], int(row["n"])
        if key.startswith("reason:"):
            if n:
                per[row["stage"]]["reasons"][key[len("reason:") :]] = n
        elif key in ("devices", "success", "failure", "pending"):
            per[row["stage"]][key] = n
    return [ro.StageCounts(**p) for p in per]


def ensure_counters(conn: Connection, rollout: Mapping[str, Any]) -> None:
    """Build the counters of a rollout created by an older server (call under the rollout's lock)."""
    if not st.has_counters(conn, rollout["id"]):
        build_counters(conn, rollout)


def count_outcome(
    conn: Connection,
    rollout_id: str,
    stage: int,
    old: tuple[str, str | None] | None,
    new: tuple[str, ReasonCode | None],
) -> None:
    """Move one device between counters: ``old`` (as stored) / ``new`` are (outcome, reason code)."""
    old_key = (old[0], ro.reason_key(old[1])) if old is not None else None
    new_key = (new[0], ro.reason_key(new[1]))
    if old_key == new_key or (old_key and old_key[0] != "failure" and old_key[0] == new_key[0]):
        return
    deltas: Counter[str] = Counter()
    if old_key is not None:
        deltas[old_key[0]] -= 1
        if old_key[0] == "failure":
            deltas[f"reason:{old_key[1]}"] -= 1
    deltas[new_key[0]] += 1
    if new_key[0] == "failure":
        deltas[f"reason:{new_key[1]}"] += 1
    st.add_counters(conn, rollout_id, stage, {k: n for k, n in deltas.items() if n})


def create_rollout(
    conn: Connection,
    spec: ro.RolloutSpec,
    *,
    actor: str,
    release: int | None = None,
    supersede: str | None = None,
    allow_unsigned: bool = False,
) -> dict[str, Any]:
    """Insert a rollout of ``spec.model@spec.version`` (or of ``release``).

    A release awaiting the offline targets signature is refused, unless ``allow_unsigned`` (a
    rollback's own rollout: the director holds its assignments until TUF lists the release).

    Raises:
        BadRequest: no such release, or a gate override that loosens the bundle's gates.
            Conflict: a rollout of the model to the group is still active, paused or halted, or
            the release awaits the offline targets signature.
    """
    st.lock(conn, f"rollouts:{spec.model}:{spec.group}")
    if release is None:
        row = st.release_by_version(conn, spec.model, spec.version)
        if row is None:
            raise BadRequest(f"no release {spec.model}@{spec.version}; publish it first", field="version")
        release = row["counter"]
    else:
        row = st.get_release(conn, release)
    if row.get("awaiting_signature") and not allow_unsigned:
        raise Conflict(
            f"release {row['name']}@{row['version']} (counter {row['counter']}) awaits the offline TUF targets "
            f"signature: devices cannot verify it yet; sign it with `{OFFLINE_TARGETS_HINT}`, then create the rollout",
            field="version",
        )
    ro.check_gates_tighten(Manifest.from_dict(row["manifest"]).gates, spec.gates)
    for other in st.list_rollouts(conn, group=spec.group, model=spec.model):
        if other["id"] == supersede:
            continue
        if other["status"] in ro.BLOCKING:
            raise Conflict(
                f"rollout {other['id']} of {spec.model} to group {spec.group!r} is {other['status']}; "
                "abort it or let it finish first",
                field="group",
            )
    for other in st.list_rollouts(conn, statuses=[ro.Status.COMPLETED.value], group=spec.group, model=spec.model):
        st.update_rollout(conn, other["id"], status=ro.Status.SUPERSEDED.value)
        st.add_event(conn, other["id"], "superseded", "a newer rollout of this model started", actor)
    rollout_id = "ro_" + secrets.token_hex(8)
    now = st.utcnow()
    row_out: dict[str, Any] = {
        "id": rollout_id,
        "release": release,
        "model": spec.model,
        "group_name": spec.group,
        "tags": list(spec.tags),
        "hardware_classes": list(spec.hardware_classes),
        "stages": list(spec.stages),
        "stage": 0,
        "status": ro.Status.ACTIVE.value,
        "max_failure_rate": spec.max_failure_rate,
        "success_quota": spec.success_quota,
        "min_devices_for_halt": spec.min_devices_for_halt,
        "floor_bucket": None,
        "gates": dict(spec.gates) or None,
        "halt_reason": None,
        "created_at": now,
        "created_by": actor,
        "updated_at": now,
    }
    st.lock(conn, "rollouts:seq")
    row_out["seq"] = st.next_rollout_seq(conn)
    buckets = selected_buckets(conn, row_out)
    row_out["floor_bucket"] = min(buckets.values()) if buckets else None
    st.insert_rollout(conn, row_out)
    build_counters(conn, row_out)
    st.add_event(
        conn,
        rollout_id,
        "created",
        f"release {release} to group {spec.group!r}: {len(buckets)} devices selected",
        actor,
    )
    st.audit(conn, actor, "rollout.create", rollout_id, {"release": release, "group": spec.group})
    st.bump_generation(conn)
    return row_out


def on_enrolled(conn: Connection, device: Mapping[str, Any]) -> bool:
    """A rollout created before any selected device existed pins its floor on the first one, so
    its first stage is never empty (see :mod:`ota_server.rules.rollouts`). Whether a floor was
    pinned: that changes the rollout for every device (the caller bumps the generation);
    counting the device changes nobody's assignment."""
    pinned = False
    for rollout in st.list_rollouts(conn, statuses=list(ro.BLOCKING), group=device["group_name"]):
        if rollout["floor_bucket"] is None and ro.is_selected(
            device, tags=rollout["tags"], hardware_classes=rollout["hardware_classes"]
        ):
            floor = ro.bucket(device["id"], rollout["id"])
            st.update_rollout(conn, rollout["id"], floor_bucket=floor)
            rollout = dict(rollout, floor_bucket=floor)
            st.add_event(conn, rollout["id"], "first-device", f"{device['id']} pins the first stage", None)
            pinned = True
        stage = stage_of(device, rollout)
        if stage is not None:
            st.lock(conn, f"rollout:{rollout['id']}")
            if st.has_counters(conn, rollout["id"]):
                st.add_counters(conn, rollout["id"], stage, {"devices": 1})
    return pinned


def on_revoked(conn: Connection, device: Mapping[str, Any], *, actor: str) -> list[str]:
    """A revoked device leaves every blocking rollout that selects it: its stage's device count
    and its outcome are taken back, so a decommissioned vehicle neither holds a stage below its
    success quota nor keeps a failure counting towards a halt. Each rollout it left is then
    evaluated again (the stage may now advance). Returns the ids of those rollouts."""
    left = []
    for rollout in st.list_rollouts(conn, statuses=list(ro.BLOCKING), group=device["group_name"]):
        stage = stage_of(device, rollout)
        if stage is None:
            continue
        st.lock(conn, f"rollout:{rollout['id']}")
        if st.has_counters(conn, rollout["id"]):
            st.add_counters(conn, rollout["id"], stage, {"devices": -1})
            existing = st.device_outcome(conn, rollout["id"], device["id"])
            if (
                existing is not None
                and existing["stage"] is not None
                and existing["outcome"] in ("success", "failure", "pending")
            ):
                deltas = {existing["outcome"]: -1}
                if existing["outcome"] == "failure":
                    deltas[f"reason:{ro.reason_key(existing['reason_code'])}"] = -1
                st.add_counters(conn, rollout["id"], existing["stage"], deltas)
        st.add_event(conn, rollout["id"], "device-revoked", f"{device['id']} left the rollout: revoked", actor)
        left.append(rollout["id"])
    for rollout_id in left:
        evaluate(conn, rollout_id, actor=actor)
    return left


_TRANSITIONS = {
    "pause": ((ro.Status.ACTIVE,), ro.Status.PAUSED),
    "resume": ((ro.Status.PAUSED, ro.Status.HALTED), ro.Status.ACTIVE),
    "abort": ((ro.Status.ACTIVE, ro.Status.PAUSED, ro.Status.HALTED), ro.Status.ABORTED),
}


def act(conn: Connection, rollout_id: str, action: str, *, actor: str) -> dict[str, Any]:
    """pause / resume / abort.

    Raises:
        RecordNotFound: no such rollout. Conflict: the rollout's status does not allow it.
    """
    st.lock(conn, f"rollout:{rollout_id}")
    rollout = st.get_rollout(conn, rollout_id)
    allowed, to = _TRANSITIONS[action]
    if rollout["status"] not in [s.value for s in allowed]:
        raise Conflict(f"cannot {action} a rollout that is {rollout['status']}", field="status")
    values: dict[str, Any] = {"status": to.value}
    if action == "resume":
        values["halt_reason"] = None
    st.update_rollout(conn, rollout_id, **values)
    st.add_event(conn, rollout_id, {"pause": "paused", "resume": "resumed", "abort": "aborted"}[action], None, actor)
    st.audit(conn, actor, f"rollout.{action}", rollout_id)
    st.bump_generation(conn)
    if action == "resume":
        evaluate(conn, rollout_id, actor="system")
    return st.get_rollout(conn, rollout_id)


def rollback(
    conn: Connection, rollout_id: str, body: Any, *, actor: str, repo: Repository, created: list[Path]
) -> dict[str, Any]:
    """A new release (next counter) pointing at an older release's artifacts, rolled out at once.

    The older release's TUF targets are re-signed with the new counter (devices require the
    director's counter to be the one the targets key signs); the caller holds ``repo``'s lock and,
    when its transaction fails, passes the files added to ``created`` to ``repo.discard``. With
    the targets key offline the re-pointed targets are staged and the new rollout assigns nothing
    until they are signed (``ota-server targets sign``): devices keep what they run until then.

    Raises:
        BadRequest: the body names no older release of the model, or bad stages. RecordNotFound:
            no such rollout. Conflict: as :func:`create_rollout`. RepositoryError: the TUF
            targets could not be re-signed.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("to_version"), str):
        raise BadRequest('body must be {"to_version": "1.0.0"}', field="to_version")
    st.lock(conn, "releases")
    rollout = st.get_rollout(conn, rollout_id)
    current = st.get_release(conn, rollout["release"])
    old = st.release_by_version(conn, rollout["model"], body["to_version"])
    if old is None:
        raise BadRequest(f"no release {rollout['model']}@{body['to_version']}", field="to_version")
    if semver_key(old["version"]) >= semver_key(current["version"]):
        raise BadRequest(f"to_version {old['version']} is not older than {current['version']}", field="to_version")
    counter = st.next_counter(conn)
    new_release = {
        "counter": counter,
        "name": old["name"],
        "version": old["version"],
        "rollback_of": old["counter"],
        "awaiting_signature": repo.offline_targets,
        "manifest": old["manifest"],
        "created_at": st.utcnow(),
        "created_by": actor,
    }
    files = [
        {**{k: f[k] for k in f if k != "release"}, "custom": with_counter(f["custom"], counter)}
        for f in st.release_files(conn, old["counter"])
    ]
    st.insert_release(conn, new_release, files)
    if rollout["status"] not in (ro.Status.ABORTED.value, ro.Status.SUPERSEDED.value):
        st.update_rollout(conn, rollout_id, status=ro.Status.ROLLED_BACK.value)
    st.add_event(conn, rollout_id, "rolled-back", f"to {old['version']} as release {counter}", actor)
    stages = ro.parse_stages(body["stages"]) if "stages" in body else (100.0,)
    spec = ro.RolloutSpec(
        model=rollout["model"],
        version=old["version"],
        group=rollout["group_name"],
        tags=tuple(rollout["tags"]),
        hardware_classes=tuple(rollout["hardware_classes"]),
        stages=stages,
        max_failure_rate=rollout["max_failure_rate"],
        success_quota=rollout["success_quota"],
        min_devices_for_halt=rollout["min_devices_for_halt"],
        # the older bundle may be stricter: keep only the overrides that still tighten it
        gates=_still_tightening(Manifest.from_dict(old["manifest"]), rollout["gates"] or {}),
    )
    new = create_rollout(conn, spec, actor=actor, release=counter, supersede=rollout_id, allow_unsigned=True)
    st.audit(conn, actor, "rollout.rollback", rollout_id, {"release": counter, "rollout": new["id"]})
    created += repo.add_targets(
        [
            NewTarget(f["path"], repo.target_file(f["path"], f["sha256"]), f["length"], f["sha256"], f["custom"])
            for f in files
        ]
    )
    if new_release["awaiting_signature"]:
        log.warning("rollback release %d awaits the offline targets signature: %s", counter, OFFLINE_TARGETS_HINT)
    return {"release": release_view(new_release, files), "rollout": rollout_view(conn, new)}


def _still_tightening(manifest: Manifest, gates: Mapping[str, Any]) -> dict[str, Any]:
    loosened = set(manifest.gates.loosened_by(gates))
    return {k: v for k, v in gates.items() if k not in loosened}


def evaluate(conn: Connection, rollout_id: str, *, actor: str = "system") -> str:
    """Apply the advance/halt rules to a rollout; returns the decision taken.

    Raises:
        RecordNotFound: no such rollout.
    """
    st.lock(conn, f"rollout:{rollout_id}")
    rollout = st.get_rollout(conn, rollout_id)
    ensure_counters(conn, rollout)
    return decide(conn, rollout, actor=actor)


def decide(conn: Connection, rollout: Mapping[str, Any], *, actor: str = "system") -> str:
    """:func:`evaluate` for a rollout row the caller read under the rollout's lock, in this
    transaction, after making sure it has counters (report ingestion has both at hand)."""
    rollout_id = rollout["id"]
    result = ro.evaluate_counts(
        status=rollout["status"],
        stage=rollout["stage"],
        stages=rollout["stages"],
        counts=stage_counts(conn, rollout),
        success_quota=rollout["success_quota"],
        max_failure_rate=rollout["max_failure_rate"],
        min_devices_for_halt=rollout["min_devices_for_halt"],
    )
    status = rollout["status"]
    if result.decision is ro.Decision.HALT:
        status = ro.Status.HALTED.value
        st.update_rollout(conn, rollout_id, stage=result.stage, status=status, halt_reason=result.detail)
        st.add_event(conn, rollout_id, "halted", result.detail, actor)
        log.warning("rollout %s halted: %s", rollout_id, result.detail)
    elif result.decision is ro.Decision.ADVANCE:
        st.update_rollout(conn, rollout_id, stage=result.stage)
        st.add_event(conn, rollout_id, "stage-advanced", result.detail, actor)
    elif result.decision is ro.Decision.COMPLETE:
        status = ro.Status.COMPLETED.value
        st.update_rollout(conn, rollout_id, stage=result.stage, status=status)
        st.add_event(conn, rollout_id, "completed", result.detail, actor)
    # assignments change only when the current stage moves or the rollout starts or stops handing
    # out its release; completing in the last stage changes none, and invalidating every cached
    # assignment of the fleet for it would have every device's next poll signed afresh
    if result.stage != rollout["stage"] or (status in ro.ASSIGNING) != (rollout["status"] in ro.ASSIGNING):
        st.bump_generation(conn)
    return result.decision.value


def rollout_view(conn: Connection, rollout: Mapping[str, Any]) -> dict[str, Any]:
    """A rollout with per-stage progress, failure reasons, the variants its devices chose, the
    failed devices with their gate evidence, and its event timeline.

    Raises:
        RecordNotFound: the rollout's release is not in the store.
    """
    if st.has_counters(conn, rollout["id"]):
        counts = stage_counts(conn, rollout)
    else:  # a rollout made by an older server, not evaluated since: count without storing
        rows = st.device_outcomes(conn, rollout["id"])
        counts = ro.count_stages(
            rollout["stages"],
            selected_buckets(conn, rollout),
            {r["device_id"]: r["outcome"] for r in rows},
            rollout["floor_bucket"],
            {r["device_id"]: r["reason_code"] for r in rows},
        )
    progress = ro.progress_of(rollout["stages"], counts)
    total = ro.cumulative(counts)[-1]
    release = st.get_release(conn, rollout["release"])
    failures = Counter(total.reasons)
    return {
        "id": rollout["id"],
        "model": rollout["model"],
        "version": release["version"],
        "release": rollout["release"],
        "group": rollout["group_name"],
        "tags": rollout["tags"],
        "hardware_classes": rollout["hardware_classes"],
        "stages": rollout["stages"],
        "stage": rollout["stage"],
        "status": rollout["status"],
        "halt_reason": rollout["halt_reason"],
        "max_failure_rate": rollout["max_failure_rate"],
        "success_quota": rollout["success_quota"],
        "min_devices_for_halt": rollout["min_devices_for_halt"],
        "gates": rollout["gates"],
        "created_at": rollout["created_at"],
        "created_by": rollout["created_by"],
        "updated_at": rollout["updated_at"],
        "selected_devices": total.devices,
        "progress": [p.__dict__ for p in progress],
        "totals": {"success": total.success, "failure": total.failure, "pending": total.pending},
        "failure_reasons": dict(failures.most_common()),
        # an enrollment spike in the rollout's group during it is suspicious (ota-ctl shows it)
        "enrolled_since_created": st.count_enrolled_since(conn, rollout["group_name"], rollout["created_at"]),
        "variants": st.variant_counts(conn, rollout["id"]),
        "failures": [
            {
                "device_id": r["device_id"],
                "state": r["state"],
                "reason_code": r["reason_code"],
                "detail": r["detail"],
                "time": r["time"],
                "variant": r["variant"],
                "gate": r["gate"],
            }
            for r in st.failed_devices(conn, rollout["id"], limit=100)
        ],
        "events": [
            {"time": e["time"], "kind": e["kind"], "detail": e["detail"], "actor": e["actor"]}
            for e in st.events(conn, rollout["id"])
        ],
    }
