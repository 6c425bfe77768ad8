"""Rollout rules, pure: request validation, cohort hashing, stage membership, advance and halt.

A device's bucket is ``sha256("<rollout id>:<device id>")`` mapped to [0, 100): it never
changes, so a device stays in its cohort. Stage *k* includes the selected devices whose bucket
is below ``stages[k]``; so that the first stage of a small fleet is never empty, the rollout
also pins ``floor_bucket`` (the lowest bucket among the devices selected at creation) and every
stage includes buckets up to it.

No I/O here: :mod:`ota_server.fleet.service` loads rows, calls these functions and stores the result.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from models.bundle import BundleError, Gates
from models.hardware import HARDWARE_CLASSES
from models.reasons import ReasonCode
from ota_server.errors import BadRequest

__all__ = [
    "ASSIGNING",
    "BLOCKING",
    "DEFAULT_STAGES",
    "FAILURE_STATES",
    "NO_REASON",
    "SUCCESS_STATES",
    "Decision",
    "Evaluation",
    "RolloutSpec",
    "StageCounts",
    "StageProgress",
    "Status",
    "assigns",
    "bucket",
    "check_gates_tighten",
    "count_stages",
    "cumulative",
    "evaluate",
    "evaluate_counts",
    "first_stage",
    "floor_of",
    "in_stage",
    "is_selected",
    "outcome_of",
    "parse_rollout",
    "parse_stages",
    "progress_of",
    "reason_key",
    "stage_progress",
]

_GATE_NAMES = frozenset(f.name for f in fields(Gates))  # what a rollout may override

DEFAULT_STAGES = (1.0, 10.0, 50.0, 100.0)


class Status(str, Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled-back"
    SUPERSEDED = "superseded"


# statuses that block another rollout of the same model to the same group
BLOCKING = (Status.ACTIVE.value, Status.PAUSED.value, Status.HALTED.value)
# statuses whose cohort devices receive the release in their assignment
ASSIGNING = (Status.ACTIVE.value, Status.COMPLETED.value)

SUCCESS_STATES = ("committed",)
FAILURE_STATES = ("failed", "refused", "rolled-back")
NO_REASON = "UNKNOWN"  # the reason counter of a failure reported without a code


def reason_key(code: ReasonCode | str | None) -> str:
    """A failure's reason as counted: the :class:`ReasonCode`'s value, :data:`NO_REASON` for none.

    Reports are validated against the enum on arrival; a plain string here is one read back
    from the database, kept as it was stored.
    """
    if code is None:
        return NO_REASON
    return code.value if isinstance(code, ReasonCode) else code


@dataclass(frozen=True)
class RolloutSpec:
    """A validated ``POST /api/v1/rollouts`` body."""

    model: str
    version: str
    group: str = "default"
    tags: tuple[str, ...] = ()
    hardware_classes: tuple[str, ...] = ()
    stages: tuple[float, ...] = DEFAULT_STAGES
    max_failure_rate: float = 0.05
    success_quota: float = 1.0
    min_devices_for_halt: int = 1
    gates: Mapping[str, Any] = field(default_factory=dict)


def _str_list(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadRequest(f"{key} must be a list of strings, got {value!r}", field=key)
    return tuple(value)


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"{key} must be a number within [{lo}, {hi}], got {value!r}", field=key)
    return float(value)


def parse_stages(value: Any) -> tuple[float, ...]:
    """Validate a list of stage percentages: increasing, in (0, 100], the last one 100.

    Raises:
        BadRequest: naming the list or the stage (``stages[2]``).
    """
    if not isinstance(value, list) or not value:
        raise BadRequest(f"stages must be a non-empty list of percentages, got {value!r}", field="stages")
    stages: list[float] = []
    for i, pct in enumerate(value):
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 100:
            raise BadRequest(f"every stage must be a percentage in (0, 100], got {pct!r}", field=f"stages[{i}]")
        if stages and pct <= stages[-1]:
            raise BadRequest("stages must increase strictly", field=f"stages[{i}]")
        stages.append(float(pct))
    if stages[-1] != 100:
        raise BadRequest(f"the last stage must be 100, got {stages[-1]:g}", field="stages")
    return tuple(stages)


def parse_rollout(body: Any) -> RolloutSpec:
    """Validate a rollout request; raises :class:`BadRequest` naming the field."""
    if not isinstance(body, Mapping):
        raise BadRequest("expected a JSON object")
    known = {f for f in RolloutSpec.__dataclass_fields__}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; known fields are {sorted(known)}", field=unknown[0])
    for key in ("model", "version"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise BadRequest(f"{key} is required (a string)", field=key)
    group = body.get("group", "default")
    if not isinstance(group, str) or not group:
        raise BadRequest(f"group must be a non-empty string, got {group!r}", field="group")
    hw = _str_list(body, "hardware_classes")
    for i, cls in enumerate(hw):
        if cls not in HARDWARE_CLASSES:
            raise BadRequest(f"must be one of {list(HARDWARE_CLASSES)}, got {cls!r}", field=f"hardware_classes[{i}]")
    gates = body.get("gates") or {}
    if not isinstance(gates, Mapping):
        raise BadRequest("gates must be an object", field="gates")
    unknown = sorted(str(k) for k in gates if k not in _GATE_NAMES)
    if unknown:
        raise BadRequest(
            f"unknown gate {unknown[0]!r}; a rollout may override {sorted(_GATE_NAMES)}", field=f"gates.{unknown[0]}"
        )
    try:
        Gates(latency_budget_ms=1.0).with_overrides(gates)
    except (BundleError, TypeError) as e:
        raise BadRequest(f"invalid gates: {e}", field=getattr(e, "field", None) or "gates") from e
    min_devices = body.get("min_devices_for_halt", 1)
    if isinstance(min_devices, bool) or not isinstance(min_devices, int) or min_devices < 1:
        raise BadRequest(
            f"min_devices_for_halt must be an integer >= 1, got {min_devices!r}", field="min_devices_for_halt"
        )
    return RolloutSpec(
        model=body["model"],
        version=body["version"],
        group=group,
        tags=_str_list(body, "tags"),
        hardware_classes=hw,
        stages=parse_stages(body["stages"]) if "stages" in body else DEFAULT_STAGES,
        max_failure_rate=_number(body, "max_failure_rate", 0.05, 0.0, 1.0),
        success_quota=_number(body, "success_quota", 1.0, 0.0, 1.0),
        min_devices_for_halt=min_devices,
        gates=dict(gates),
    )


def check_gates_tighten(bundle: Gates, overrides: Mapping[str, Any]) -> None:
    """A rollout's gate overrides may only make the bundle's gates stricter.

    Raises:
        BadRequest: an override loosens a gate (naming ``gates.<name>``) or is invalid.
    """
    try:
        loosened = bundle.loosened_by(overrides)
    except BundleError as e:
        raise BadRequest(f"invalid gates: {e}", field=e.field or "gates") from e
    if loosened:
        name = loosened[0]
        raise BadRequest(
            f"gates.{name} {overrides[name]!r} loosens the bundle's {getattr(bundle, name)!r}; "
            "a rollout may only tighten the bundle's gates",
            field=f"gates.{name}",
        )


def bucket(device_id: str, rollout_id: str) -> float:
    """The device's fixed position in [0, 100) for this rollout."""
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def is_selected(device: Mapping[str, Any], *, tags: Sequence[str], hardware_classes: Sequence[str]) -> bool:
    """Group is matched by the query; here tags (all required) and hardware classes (any)."""
    if tags and not set(tags) <= set(device.get("tags") or ()):
        return False
    return not hardware_classes or device.get("hardware_class") in hardware_classes


def in_stage(bucket_value: float, pct: float, floor_bucket: float | None) -> bool:
    return bucket_value < pct or (floor_bucket is not None and bucket_value <= floor_bucket)


def assigns(rollout: Mapping[str, Any], device: Mapping[str, Any]) -> bool:
    """Whether the rollout hands its release to the device now: it is assigning, selects the
    device and its current stage includes the device's bucket."""
    if rollout["status"] not in ASSIGNING or rollout["group_name"] != device["group_name"]:
        return False
    if not is_selected(device, tags=rollout["tags"], hardware_classes=rollout["hardware_classes"]):
        return False
    return in_stage(bucket(device["id"], rollout["id"]), rollout["stages"][rollout["stage"]], rollout["floor_bucket"])


def floor_of(device_ids: Iterable[str], rollout_id: str) -> float | None:
    buckets = [bucket(d, rollout_id) for d in device_ids]
    return min(buckets) if buckets else None


class Decision(str, Enum):
    NONE = "none"
    ADVANCE = "advance"
    COMPLETE = "complete"
    HALT = "halt"


@dataclass(frozen=True)
class Evaluation:
    decision: Decision
    stage: int  # the stage after the decision
    detail: str = ""


@dataclass(frozen=True)
class StageProgress:
    stage: int
    percent: float
    devices: int
    succeeded: int
    failed: int
    in_progress: int
    failure_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StageCounts:
    """Counters of the devices whose *first* stage is this one (not cumulative): how many are
    selected, and how many last reported success, failure or a progress state, with the
    failures' reason codes. The server keeps these up to date report by report."""

    devices: int = 0
    success: int = 0
    failure: int = 0
    pending: int = 0
    reasons: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: StageCounts) -> StageCounts:
        reasons = Counter(self.reasons)
        reasons.update(other.reasons)
        return StageCounts(
            self.devices + other.devices,
            self.success + other.success,
            self.failure + other.failure,
            self.pending + other.pending,
            {k: v for k, v in reasons.items() if v},
        )


def first_stage(bucket_value: float, stages: Sequence[float], floor_bucket: float | None) -> int:
    """The first stage whose cohort includes the bucket (cohorts are cumulative)."""
    for k, pct in enumerate(stages):
        if in_stage(bucket_value, pct, floor_bucket):
            return k
    return len(stages) - 1


def cumulative(counts: Sequence[StageCounts]) -> list[StageCounts]:
    """Per stage, the counters of its whole (cumulative) cohort."""
    out: list[StageCounts] = []
    acc = StageCounts()
    for c in counts:
        acc = acc + c
        out.append(acc)
    return out


def count_stages(
    stages: Sequence[float],
    buckets: Mapping[str, float],
    outcomes: Mapping[str, str],
    floor: float | None,
    reasons: Mapping[str, ReasonCode | str | None] | None = None,
) -> list[StageCounts]:
    """Per-first-stage counters from every selected device's bucket and outcome (the full scan the
    server avoids; used to build counters once and by the tests)."""
    per: list[Counter[str]] = [Counter() for _ in stages]
    why: list[Counter[str]] = [Counter() for _ in stages]
    for d, b in buckets.items():
        k = first_stage(b, stages, floor)
        per[k]["devices"] += 1
        o = outcomes.get(d)
        if o in ("success", "failure", "pending"):
            per[k][o] += 1
        if o == "failure":
            why[k][reason_key((reasons or {}).get(d))] += 1
    return [
        StageCounts(c["devices"], c["success"], c["failure"], c["pending"], dict(w))
        for c, w in zip(per, why, strict=True)
    ]


def progress_of(stages: Sequence[float], counts: Sequence[StageCounts]) -> list[StageProgress]:
    """Per stage (cumulative cohorts): devices, their outcomes and the failures' reason codes."""
    return [
        StageProgress(k, pct, c.devices, c.success, c.failure, c.pending, dict(Counter(c.reasons).most_common()))
        for k, (pct, c) in enumerate(zip(stages, cumulative(counts), strict=True))
    ]


def stage_progress(
    stages: Sequence[float],
    buckets: Mapping[str, float],
    outcomes: Mapping[str, str],
    floor: float | None,
    reasons: Mapping[str, ReasonCode | str | None] | None = None,
) -> list[StageProgress]:
    return progress_of(stages, count_stages(stages, buckets, outcomes, floor, reasons))


def _pct(share: float) -> str:
    """A share as a percentage with up to three significant digits: 3/55 is "5.45%", not a
    "5%" that reads as if it did not exceed a 5 % limit."""
    return f"{share * 100:.3g}%"


def _why(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{code} x{n}" for code, n in Counter(reasons).most_common(3))


def evaluate_counts(
    *,
    status: str,
    stage: int,
    stages: Sequence[float],
    counts: Sequence[StageCounts],
    success_quota: float,
    max_failure_rate: float,
    min_devices_for_halt: int,
) -> Evaluation:
    """What a rollout should do now, given its per-first-stage counters (see docs/server.md).

    * Early halt: over every finished device, failures / finished > ``max_failure_rate`` once
      at least ``min(min_devices_for_halt, devices in the current stage)`` have finished.
    * Advance: the current stage's cohort reached ``success_quota``.
    * Resolve: every device of the current stage reported a final state — advance if its failure
      rate is within ``max_failure_rate``, otherwise halt. So a stage never stalls for good.
    """
    if status not in (Status.ACTIVE.value, Status.PAUSED.value):
        return Evaluation(Decision.NONE, stage)
    cum = cumulative(counts)
    total = cum[-1]
    finished = total.success + total.failure
    size = cum[stage].devices
    min_sample = max(1, min(min_devices_for_halt, size) if size else min_devices_for_halt)
    if finished >= min_sample and total.failure / finished > max_failure_rate:
        return Evaluation(
            Decision.HALT,
            stage,
            f"failure rate {total.failure}/{finished} = {_pct(total.failure / finished)} "
            f"exceeds {_pct(max_failure_rate)} ({_why(total.reasons)})",
        )
    if status != Status.ACTIVE.value:
        return Evaluation(Decision.NONE, stage)
    new_stage = stage
    while True:
        c = cum[new_stage]
        if not c.devices:
            break
        needed = math.ceil(success_quota * c.devices - 1e-9)
        if c.success < needed:
            if c.success + c.failure < c.devices:
                break  # devices of this stage are still on their way
            if c.failure / c.devices > max_failure_rate:
                return Evaluation(
                    Decision.HALT,
                    new_stage,
                    f"stage {new_stage} finished with {c.failure}/{c.devices} failed = "
                    f"{_pct(c.failure / c.devices)}, over {_pct(max_failure_rate)} ({_why(c.reasons)})",
                )
        if new_stage == len(stages) - 1:
            return Evaluation(Decision.COMPLETE, new_stage, f"{c.success}/{c.devices} devices succeeded")
        new_stage += 1
    if new_stage != stage:
        return Evaluation(Decision.ADVANCE, new_stage, f"stage {new_stage} ({stages[new_stage]:g}%)")
    return Evaluation(Decision.NONE, stage)


def evaluate(
    *,
    status: str,
    stage: int,
    stages: Sequence[float],
    buckets: Mapping[str, float],
    outcomes: Mapping[str, str],
    reasons: Mapping[str, ReasonCode | str | None],
    floor: float | None,
    success_quota: float,
    max_failure_rate: float,
    min_devices_for_halt: int,
) -> Evaluation:
    """:func:`evaluate_counts` from every selected device's bucket and outcome."""
    return evaluate_counts(
        status=status,
        stage=stage,
        stages=stages,
        counts=count_stages(stages, buckets, outcomes, floor, reasons),
        success_quota=success_quota,
        max_failure_rate=max_failure_rate,
        min_devices_for_halt=min_devices_for_halt,
    )


def outcome_of(state: str | None) -> str:
    if state in SUCCESS_STATES:
        return "success"
    if state in FAILURE_STATES:
        return "failure"
    return "pending"
