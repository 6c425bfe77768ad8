"""Device reports (contract §7), pure: the batch a device posts, validated field by field.

A report says what its device did (a transition, a gate, a benchmark, a heartbeat), tied to a
rollout's release or not. Reason codes are :class:`models.reasons.ReasonCode`: an unknown one is
a 400 naming the field. Only validated fields are kept (see :mod:`ota_server.rules.evidence` for
the gate's evidence); what a device adds beyond them is dropped. Every field has a size bound
(ids, times, names, release counters; ``detail`` is cut at :data:`MAX_DETAIL` characters; of
``metrics`` only :data:`METRIC_KEYS` with finite numbers are kept), and an error message quotes
at most 80 characters of a bad value. How many reports and bytes a device may post is its quota
(:mod:`ota_server.rules.quota`).

No I/O: storing reports and what they drive (the device row, its rollout outcome, the rollout's
counters) is :mod:`ota_server.fleet.ingest`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.device_reports import DIGEST_RE, SIGNATURE_RE
from models.reasons import ReasonCode, UnknownReasonCode
from ota_server.errors import BadRequest
from ota_server.rules import evidence as ev

__all__ = [
    "MAX_DETAIL",
    "MAX_RELEASE",
    "MAX_REPORTS",
    "METRIC_KEYS",
    "STATES",
    "TYPES",
    "Report",
    "parse_batch",
    "parse_report",
]

MAX_REPORTS = 500
MAX_DETAIL = 2000  # characters kept of a report's detail
TYPES = ("transition", "gate", "benchmark", "heartbeat")
STATES = (
    "idle",
    "checking",
    "downloading",
    "verifying",
    "staging",
    "preparing",
    "benchmarking",
    "swapping",
    "health-watch",
    "committed",
    "failed",
    "rolled-back",
    "refused",
)
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
MAX_RELEASE = 2**31 - 1  # a release counter (an INTEGER column)
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")
METRIC_KEYS = (
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "fps",
    "agreement",
    "nan_frames",
    "frames_captured",
    "frames_dropped",
    "swap_ms",
)


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
    gate: Mapping[str, Any] | None  # the shadow gate's evidence (ota_server.rules.evidence)
    body: Mapping[str, Any]
    # the digest of the assignment the device acted on (models.device_reports), signed with it
    assignment_digest: str | None = None


def _opt(r: Mapping[str, Any], key: str, types: tuple[type, ...], where: str) -> Any:
    value = r.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise BadRequest(f"expected {types[0].__name__} or null, got {type(value).__name__}", field=f"{where}.{key}")
    return value


def _release(r: Mapping[str, Any], where: str) -> int | None:
    value = _opt(r, "release", (int,), where)
    if value is not None and not 0 <= value <= MAX_RELEASE:
        raise BadRequest(
            f"expected a release counter within [0, {MAX_RELEASE}], got {str(value)[:40]}", field=f"{where}.release"
        )
    return None if value is None else int(value)


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
    return {
        k: metrics[k]
        for k in METRIC_KEYS
        if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool) and math.isfinite(metrics[k])
    }


def _running(r: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    running = _opt(r, "running", (dict,), where)
    if running is None:
        return None
    out = {key: _opt(running, key, types, f"{where}.running") for key, types in (("name", (str,)), ("version", (str,)))}
    out["release"] = _release(running, f"{where}.running")
    for key in ("name", "version"):
        if out[key] is not None and not 0 < len(out[key]) <= 64:
            raise BadRequest(f"expected 1-64 characters, got {len(out[key])}", field=f"{where}.running.{key}")
    variant = ev.parse_variant(running.get("variant"), f"{where}.running.variant")
    if variant is not None:
        out["variant"] = variant
    return out


def parse_report(r: Any, where: str) -> Report:
    """Validate one report found at ``where`` of the body.

    Raises:
        BadRequest: a field is missing, of the wrong type or out of range; ``field`` names it
            (``reports[3].reason_code``).
    """
    if not isinstance(r, Mapping):
        raise BadRequest("expected an object", field=where)
    rid, time = r.get("id"), r.get("time")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise BadRequest(f"id must be 1-64 characters of [A-Za-z0-9_.:-], got {str(rid)[:80]!r}", field=f"{where}.id")
    if not isinstance(time, str) or not _ISO.match(time):
        raise BadRequest(
            f"time must be ISO-8601 like 2026-11-27T10:00:00Z, got {str(time)[:80]!r}", field=f"{where}.time"
        )
    if r.get("type") not in TYPES:
        raise BadRequest(f"type must be one of {list(TYPES)}, got {str(r.get('type'))[:80]!r}", field=f"{where}.type")
    state = _opt(r, "state", (str,), where)
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {list(STATES)} or null, got {state[:80]!r}", field=f"{where}.state")
    rollout_id = _opt(r, "rollout_id", (str,), where)
    if rollout_id is not None and not _ROLLOUT_ID.match(rollout_id):
        raise BadRequest(
            f"rollout_id must be 1-40 characters of [A-Za-z0-9_.:-], got {rollout_id[:80]!r}",
            field=f"{where}.rollout_id",
        )
    detail = _opt(r, "detail", (str,), where)
    digest = _opt(r, "assignment_digest", (str,), where)
    if digest is not None and not DIGEST_RE.match(digest):
        raise BadRequest(
            f"assignment_digest must be 64 lowercase hex digits, got {digest[:80]!r}",
            field=f"{where}.assignment_digest",
        )
    reason = _reason(r, where)
    body: dict[str, Any] = {
        "id": rid,
        "time": time,
        "type": r["type"],
        "state": state,
        "rollout_id": rollout_id,
        "release": _release(r, where),
        "reason_code": reason.value if reason else None,
        "detail": detail[:MAX_DETAIL] if detail else None,
        "metrics": _metrics(r, where),
        "running": _running(r, where),
        "variant": ev.parse_variant(r.get("variant"), f"{where}.variant"),
        "gate": ev.parse_gate(r.get("gate"), f"{where}.gate"),
        "assignment_digest": digest,
        "signature": sig if isinstance(sig := r.get("signature"), str) and SIGNATURE_RE.match(sig) else None,
    }
    return Report(
        id=rid,
        time=time,
        type=body["type"],
        state=state,
        rollout_id=rollout_id,
        release=body["release"],
        reason_code=reason,
        detail=body["detail"],
        metrics=body["metrics"],
        running=body["running"],
        variant=body["variant"],
        gate=body["gate"],
        body=body,
        assignment_digest=digest,
    )


def parse_batch(body: Any) -> list[Report]:
    """Validate a ``{"reports": [...]}`` body of at most :data:`MAX_REPORTS` reports.

    Raises:
        BadRequest: the body's shape, its size, or a report's field (named like ``reports[3].time``).
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("reports"), list):
        raise BadRequest('body must be {"reports": [...]}', field="reports")
    items = body["reports"]
    if len(items) > MAX_REPORTS:
        raise BadRequest(f"at most {MAX_REPORTS} reports per request, got {len(items)}", field="reports")
    return [parse_report(r, f"reports[{i}]") for i, r in enumerate(items)]
