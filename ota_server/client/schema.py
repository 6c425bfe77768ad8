"""The shapes of the OTA server's API, as the client reads and sends them (docs/contracts.md §7–§8).

TypedDicts, not classes: the answers stay the JSON the server sent (``ota-ctl --json`` prints
them as they came), and mypy checks every field the client's users read. Request bodies the
client builds are frozen dataclasses with a ``to_body()``. Nothing here validates: the server
does (a wrong field is its 400 naming the field); this module only names what is there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

__all__ = [
    "AssignmentBody",
    "AssignmentPoll",
    "AuditEntry",
    "CoverageWarning",
    "CreatedRollout",
    "Device",
    "Enrollment",
    "FleetSummary",
    "Health",
    "PublicKey",
    "PublishResult",
    "Release",
    "ReleaseDetail",
    "ReleaseFile",
    "ReleaseRef",
    "Report",
    "ReportsResult",
    "Rollback",
    "Rollout",
    "RolloutEvent",
    "RolloutFailure",
    "RolloutRequest",
    "RunningRelease",
    "SignedAssignment",
    "StageProgress",
    "Target",
    "TERMINAL_STATUSES",
]

# rollout statuses after which nothing more happens on their own
TERMINAL_STATUSES = frozenset({"completed", "halted", "aborted", "rolled-back", "superseded"})


class Health(TypedDict):
    """``GET /healthz``."""

    status: str  # "ok" or "degraded" (then 503)
    db: str


# ------------------------------------------------------------------ releases


class Hashes(TypedDict):
    sha256: str


class ReleaseFile(TypedDict):
    path: str  # TUF target path: <name>/<version>/<file>
    kind: str  # "manifest" | "variant"
    variant: str | None
    length: int  # bytes
    hashes: Hashes
    custom: dict[str, Any]


class Release(TypedDict):
    """One release as ``GET /api/v1/releases`` lists it."""

    counter: int
    name: str
    version: str
    rollback_of: int | None
    awaiting_signature: bool  # the offline TUF targets key has not signed it: devices cannot see it, no rollout
    created_at: str
    created_by: str
    files: list[ReleaseFile]


class ReleaseDetail(Release):
    """``GET /api/v1/releases/<name>/<version>``: the release and its bundle manifest."""

    manifest: dict[str, Any]


class CoverageWarning(TypedDict):
    """A group running a release of the model that the bundle has no expectation for."""

    group: str
    devices: int
    release: str  # name@version
    counter: int
    variant: str | None
    sha256: str | None
    message: str


class PublishResult(TypedDict):
    """``POST /api/v1/releases`` → 201."""

    release: Release
    warnings: list[CoverageWarning]


# ------------------------------------------------------------------ rollouts


@dataclass(frozen=True)
class RolloutRequest:
    """The body of ``POST /api/v1/rollouts``; defaults are the server's."""

    model: str
    version: str
    group: str = "default"
    stages: Sequence[float] = (1.0, 10.0, 50.0, 100.0)  # percent of the selection, ending at 100
    tags: Sequence[str] = ()
    hardware_classes: Sequence[str] = ()
    max_failure_rate: float = 0.05  # halt above this share of finished devices failing
    success_quota: float = 1.0  # share of a stage that must succeed before the next
    min_devices_for_halt: int = 1
    gates: Mapping[str, float] = field(default_factory=dict)  # latency_budget_ms, min_agreement

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "group": self.group,
            "stages": list(self.stages),
            "tags": list(self.tags),
            "hardware_classes": list(self.hardware_classes),
            "max_failure_rate": self.max_failure_rate,
            "success_quota": self.success_quota,
            "min_devices_for_halt": self.min_devices_for_halt,
        }
        if self.gates:
            body["gates"] = dict(self.gates)
        return body


class StageProgress(TypedDict):
    stage: int
    percent: float
    devices: int  # cumulative: every device selected up to this stage
    succeeded: int
    failed: int
    in_progress: int
    failure_reasons: dict[str, int]


class Totals(TypedDict):
    success: int
    failure: int
    pending: int


class RolloutFailure(TypedDict):
    device_id: str
    state: str
    reason_code: str | None
    detail: str | None
    time: str
    variant: str | None
    gate: dict[str, Any] | None


class RolloutEvent(TypedDict):
    time: str
    kind: str  # created, stage-advanced, halted, completed, warning, ...
    detail: str | None
    actor: str | None


class Rollout(TypedDict):
    """``GET /api/v1/rollouts/<id>`` (and each entry of the list)."""

    id: str
    model: str
    version: str
    release: int
    group: str
    tags: list[str]
    hardware_classes: list[str]
    stages: list[float]
    stage: int  # index into stages
    status: str  # active, paused, halted, completed, aborted, rolled-back, superseded
    halt_reason: str | None
    max_failure_rate: float
    success_quota: float
    min_devices_for_halt: int
    gates: dict[str, Any]
    created_at: str
    created_by: str
    updated_at: str
    selected_devices: int
    progress: list[StageProgress]
    totals: Totals
    failure_reasons: dict[str, int]
    enrolled_since_created: int  # devices of its group enrolled since it was created (a spike is suspicious)
    variants: dict[str, int]
    failures: list[RolloutFailure]
    events: list[RolloutEvent]


class CreatedRollout(Rollout):
    """``POST /api/v1/rollouts`` → 201: the rollout and the warnings for its selection."""

    warnings: list[CoverageWarning]


class Rollback(TypedDict):
    """``POST /api/v1/rollouts/<id>/rollback`` → 201: the new release and its rollout."""

    release: Release
    rollout: Rollout


# ------------------------------------------------------------------ devices and fleet


class RunningRelease(TypedDict):
    name: str
    version: str
    release: int | None
    variant: str | None


class Device(TypedDict):
    """``GET /api/v1/devices/<id>`` (and each entry of the list)."""

    id: str
    name: str
    group: str
    tags: list[str]
    hardware_class: str
    hardware: dict[str, Any]
    enrolled_at: str
    last_seen: str | None
    state: str | None
    running: RunningRelease | None
    metrics: dict[str, Any] | None
    gate: dict[str, Any] | None  # the last gate record: time, rollout_id, release, state, ...
    status: str  # active | pending (waits for an operator's approval) | revoked (decommissioned)
    credential: str | None  # the enrollment credential it enrolled with
    revoked_at: str | None  # when an operator revoked it (its token is refused since)


class FleetSummary(TypedDict):
    """``GET /api/v1/fleet/summary``."""

    devices: int
    groups: dict[str, int]
    running: dict[str, int]  # name@version (or "none") -> devices
    states: dict[str, int]
    rollouts: dict[str, int]  # status -> rollouts
    active_rollouts: list[str]


class AuditEntry(TypedDict):
    id: int
    time: str
    actor: str
    action: str
    target: str | None
    detail: Any


# ------------------------------------------------------------------ the device side


class PublicKeyValue(TypedDict):
    public: str  # hex


class PublicKey(TypedDict):
    keytype: str
    scheme: str
    keyid: str
    keyval: PublicKeyValue


class TufUrls(TypedDict):
    metadata_url: str
    targets_url: str


class Enrollment(TypedDict):
    """``POST /api/v1/devices/enroll`` → 201."""

    device_id: str
    device_token: str
    director_public_key: PublicKey
    image_root: dict[str, Any]
    tuf: TufUrls
    status: str  # active | pending
    group: str  # what the credential bound
    tags: list[str]


class ReleaseRef(TypedDict):
    counter: int
    name: str
    version: str


class Target(TypedDict):
    path: str
    length: int
    hashes: Hashes
    custom: dict[str, Any]
    variant: str | None


class Alternate(TypedDict):
    variant: str
    target: Target


class AssignmentBody(TypedDict):
    """The ``signed`` part of a director assignment (docs/contracts.md §8)."""

    _type: str
    spec_version: str
    device_id: str
    nonce: str
    issued: str
    expires: str
    rollout_id: str | None
    release: ReleaseRef | None
    manifest: dict[str, Any] | None
    target: Target | None  # None: keep what you run
    alternates: list[Alternate]
    gates: dict[str, Any] | None


class Signature(TypedDict):
    keyid: str
    sig: str  # hex Ed25519 over canonical_json(signed)


class SignedAssignment(TypedDict):
    signed: AssignmentBody
    signatures: list[Signature]


class AssignmentPoll(NamedTuple):
    """One poll of ``GET /api/v1/devices/<id>/assignment``: 200 with the assignment and its
    ETag, or 304 (``assignment`` None, ``etag`` the one sent)."""

    status: int
    etag: str | None
    assignment: SignedAssignment | None


class _ReportRequired(TypedDict):
    id: str  # uuid4: reports are idempotent per id
    time: str  # ISO-8601 Z
    type: str  # transition, gate, benchmark, heartbeat
    state: str | None
    rollout_id: str | None
    release: int | None
    reason_code: str | None
    detail: str | None
    metrics: dict[str, float]
    running: dict[str, Any] | None  # name, version, release (variant optional)


class Report(_ReportRequired, total=False):
    """One entry of ``POST /api/v1/devices/<id>/reports``."""

    variant: str | None
    gate: dict[str, Any] | None
    assignment_digest: str | None  # the assignment acted on (models.device_reports)
    signature: str  # the device's Ed25519 signature (hex) over its signed fields


class ReportsResult(TypedDict, total=False):
    accepted: list[str]
    duplicates: list[str]
    not_counted: list[str]  # stored, but not counted: no assignment of their rollout was issued
