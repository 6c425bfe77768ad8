"""Rollout rules, pure: request validation, cohort hashing, stage membership, advance and halt.

A device's bucket is ``sha256("<rollout id>:<device id>")`` mapped to [0, 100): it never
changes, so a device stays in its cohort. Stage *k* includes the selected devices whose bucket
is below ``stages[k]``; so that the first stage of a small fleet is never empty, the rollout
also pins ``floor_bucket`` (the lowest bucket among the devices selected at creation) and every
stage includes buckets up to it.

No I/O here: :mod:`ota_server.service` loads rows, calls these functions and stores the result.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from models.bundle import BundleError, Gates
from models.hardware import HARDWARE_CLASSES
from ota_server.errors import BadRequest

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
    try:
        Gates(latency_budget_ms=1.0).with_overrides(gates)
    except (BundleError, TypeError) as e:
        raise BadRequest(f"invalid gates: {e}", field=getattr(e, "field", None) or "gates") from e
    min_devices = body.get("min_devices_for_halt", 1)
    if isinstance(min_devices, bool) or not isinstance(min_devices, int) or min_devices < 1:
        raise BadRequest(f"min_devices_for_halt must be an integer >= 1, got {min_devices!r}",
                         field="min_devices_for_halt")
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


def stage_progress(
    stages: Sequence[float], buckets: Mapping[str, float], outcomes: Mapping[str, str], floor: float | None,
    reasons: Mapping[str, str | None] | None = None,
) -> list[StageProgress]:
    """Per stage (cumulative cohorts): devices, their outcomes and the failures' reason codes."""
    out = []
    for k, pct in enumerate(stages):
        members = [d for d, b in buckets.items() if in_stage(b, pct, floor)]
        counts = Counter(outcomes.get(d, "none") for d in members)
        why = Counter((reasons or {}).get(d) or "UNKNOWN" for d in members if outcomes.get(d) == "failure")
        out.append(StageProgress(k, pct, len(members), counts["success"], counts["failure"], counts["pending"],
                                 dict(why.most_common())))
    return out


def evaluate(
    *, status: str, stage: int, stages: Sequence[float], buckets: Mapping[str, float],
    outcomes: Mapping[str, str], reasons: Mapping[str, str | None], floor: float | None,
    success_quota: float, max_failure_rate: float, min_devices_for_halt: int,
) -> Evaluation:
    """What a rollout should do now, given every selected device's bucket and outcome."""
    if status not in (Status.ACTIVE.value, Status.PAUSED.value):
        return Evaluation(Decision.NONE, stage)
    failures = [d for d, o in outcomes.items() if o == "failure"]
    finished = sum(1 for o in outcomes.values() if o in ("success", "failure"))
    if finished >= min_devices_for_halt and finished and len(failures) / finished > max_failure_rate:
        top = Counter(reasons.get(d) or "UNKNOWN" for d in failures).most_common(3)
        why = ", ".join(f"{code} x{n}" for code, n in top)
        return Evaluation(
            Decision.HALT, stage,
            f"failure rate {len(failures)}/{finished} = {len(failures) / finished:.0%} "
            f"exceeds {max_failure_rate:.0%} ({why})",
        )
    if status != Status.ACTIVE.value:
        return Evaluation(Decision.NONE, stage)
    new_stage = stage
    while True:
        cohort = [d for d, b in buckets.items() if in_stage(b, stages[new_stage], floor)]
        done = sum(1 for d in cohort if outcomes.get(d) == "success")
        needed = math.ceil(success_quota * len(cohort) - 1e-9)
        if not cohort or done < needed:
            break
        if new_stage == len(stages) - 1:
            return Evaluation(Decision.COMPLETE, new_stage, f"{done}/{len(cohort)} devices succeeded")
        new_stage += 1
    if new_stage != stage:
        return Evaluation(Decision.ADVANCE, new_stage, f"stage {new_stage} ({stages[new_stage]:g}%)")
    return Evaluation(Decision.NONE, stage)


def outcome_of(state: str | None) -> str:
    if state in SUCCESS_STATES:
        return "success"
    if state in FAILURE_STATES:
        return "failure"
    return "pending"
