"""The update state machine: pure decisions, every effect behind :class:`Controller`.

Each state's handler calls one controller method and returns the next
state (Mender's design)::

    idle → checking → downloading → verifying → staging → preparing
         → benchmarking → swapping → health-watch → committed
    any step before swapping fails   → refused (trust/integrity) | failed (model, space)
    swapping / health-watch fails    → rolled-back (previous slot restored)
    a transient error                → stay in the state, back off, resume later

:func:`run_update` journals the state *before* each step acts, so a crash at
any point resumes from the last journaled state; every handler is idempotent.
This module does no I/O itself: network, disk, clocks, runtimes and the
perception path are the controller's and the journal's business.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from edge_agent.errors import FatalError, ReasonCode, TransientError
from edge_agent.perception import GateResult
from edge_agent.trust.assignment import TargetRef

__all__ = [
    "State",
    "VariantTarget",
    "Update",
    "Record",
    "Controller",
    "JournalStore",
    "StepOutcome",
    "run_update",
    "next_state",
    "backoff_delay",
    "REFUSAL_REASONS",
    "TERMINAL",
]

log = logging.getLogger(__name__)


class State(str, Enum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    PREPARING = "preparing"
    BENCHMARKING = "benchmarking"
    SWAPPING = "swapping"
    HEALTH_WATCH = "health-watch"
    COMMITTED = "committed"
    FAILED = "failed"
    REFUSED = "refused"
    ROLLED_BACK = "rolled-back"


TERMINAL = frozenset({State.COMMITTED, State.FAILED, State.REFUSED, State.ROLLED_BACK})
# steps after which the new model may be active: a fatal error there means restoring the old one
_AFTER_SWITCH = frozenset({State.SWAPPING, State.HEALTH_WATCH})
# trust and integrity refusals (reported as "refused"); everything else fatal is "failed"
REFUSAL_REASONS = frozenset(
    {
        ReasonCode.SIGNATURE_INVALID,
        ReasonCode.WRONG_DEVICE,
        ReasonCode.NONCE_MISMATCH,
        ReasonCode.ASSIGNMENT_EXPIRED,
        ReasonCode.RELEASE_COUNTER_DECREASED,
        ReasonCode.TARGET_NOT_IN_TUF,
        ReasonCode.TARGET_MISMATCH,
        ReasonCode.TUF_METADATA_INVALID,
        ReasonCode.TUF_EXPIRED,
        ReasonCode.TUF_ROLLBACK,
        ReasonCode.LENGTH_EXCEEDED,
        ReasonCode.HASH_MISMATCH,
        ReasonCode.INCOMPATIBLE_HARDWARE,
        ReasonCode.BUNDLE_INVALID,
    }
)


@dataclass(frozen=True)
class VariantTarget:
    """An alternate variant of the assigned release and its verified TUF target."""

    variant: str
    target: TargetRef

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "target": self.target.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantTarget:
        return cls(variant=str(data["variant"]), target=TargetRef.from_dict(data["target"]))


@dataclass(frozen=True)
class Update:
    """One accepted assignment being installed (everything here was verified).

    ``variant``/``target`` is the server's preferred variant; ``alternates`` the others its
    hardware class may run, in selection order: all are downloaded and staged, and the
    child-process gate picks the one to serve.
    """

    release: int
    name: str
    version: str
    rollout_id: str | None
    variant: str
    manifest: TargetRef
    target: TargetRef
    gates: Mapping[str, Any] = field(default_factory=dict)  # rollout overrides
    slot: str | None = None  # the slot being staged into
    previous_slot: str | None = None  # the slot active when the update began
    alternates: tuple[VariantTarget, ...] = ()
    # the digest of the assignment it came from (models.device_reports), signed into its reports
    assignment_digest: str | None = None

    def variant_targets(self) -> tuple[VariantTarget, ...]:
        """The primary variant's target, then the alternates'."""
        return (VariantTarget(self.variant, self.target), *self.alternates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "name": self.name,
            "version": self.version,
            "rollout_id": self.rollout_id,
            "variant": self.variant,
            "manifest": self.manifest.to_dict(),
            "target": self.target.to_dict(),
            "gates": dict(self.gates),
            "slot": self.slot,
            "previous_slot": self.previous_slot,
            "alternates": [a.to_dict() for a in self.alternates],
            "assignment_digest": self.assignment_digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Update:
        return cls(
            release=int(data["release"]),
            name=str(data["name"]),
            version=str(data["version"]),
            rollout_id=data.get("rollout_id"),
            variant=str(data["variant"]),
            manifest=TargetRef.from_dict(data["manifest"]),
            target=TargetRef.from_dict(data["target"]),
            gates=dict(data.get("gates") or {}),
            slot=data.get("slot"),
            previous_slot=data.get("previous_slot"),
            alternates=tuple(VariantTarget.from_dict(a) for a in data.get("alternates") or ()),
            assignment_digest=data.get("assignment_digest"),
        )

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version} (release {self.release})"


@dataclass(frozen=True)
class StepOutcome:
    """How a state ended: the reason and detail travel to the terminal state's report."""

    reason: ReasonCode | None = None
    detail: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)  # a gate's, JSON-ready: the report's "gate"


@dataclass(frozen=True)
class Record:
    """What the journal holds: where the update stands, and how it got there."""

    state: State = State.IDLE
    update: Update | None = None
    attempts: int = 0  # transient failures of this update so far
    outcome: StepOutcome = field(default_factory=StepOutcome)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "update": self.update.to_dict() if self.update else None,
            "attempts": self.attempts,
            "outcome": {
                "reason": self.outcome.reason.value if self.outcome.reason else None,
                "detail": self.outcome.detail,
                "metrics": dict(self.outcome.metrics),
                "evidence": dict(self.outcome.evidence),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        out = data.get("outcome") or {}
        return cls(
            state=State(data["state"]),
            update=Update.from_dict(data["update"]) if data.get("update") else None,
            attempts=int(data.get("attempts", 0)),
            outcome=StepOutcome(
                reason=ReasonCode.parse(out["reason"]) if out.get("reason") else None,
                detail=str(out.get("detail") or ""),
                metrics=dict(out.get("metrics") or {}),
                evidence=dict(out.get("evidence") or {}),
            ),
        )


class Controller(Protocol):
    """Every effect of an update. Each method is idempotent (a crash may repeat it)."""

    def check(self) -> Update | None:
        """Poll, verify the assignment and its TUF target; None = nothing to do."""

    def download(self, update: Update) -> None:
        """Fetch manifest and variant into ``.part`` files (resuming), capped at their lengths."""

    def verify(self, update: Update) -> None:
        """Check length and sha256 of the downloaded files and the manifest's claims."""

    def stage(self, update: Update) -> Update:
        """Install the verified files into the inactive slot; returns the update with ``slot``."""

    def prepare(self, update: Update) -> GateResult:
        """Child-process load check, NaN check, latency, on-device engine build."""

    def benchmark(self, update: Update) -> GateResult:
        """Shadow run of the candidate on the perception path."""

    def swap(self, update: Update) -> None:
        """Switch ``current`` to the new slot and the perception path to the new model."""

    def watch(self, update: Update) -> GateResult:
        """Health window after the swap."""

    def commit(self, update: Update) -> None:
        """Record success; the previous slot stays for rollback."""

    def roll_back(self, update: Update, outcome: StepOutcome) -> None:
        """Restore the previous slot and model."""

    def abandon(self, update: Update, state: State, outcome: StepOutcome) -> None:
        """Drop partial downloads and the staged slot of a refused/failed update."""

    def report(self, state: State, update: Update | None, outcome: StepOutcome) -> None:
        """Queue a transition report (persisted; sent when the server is reachable)."""

    def pause_point(self, state: State) -> None:
        """Test hook: called after each journal write."""


class JournalStore(Protocol):
    def load(self) -> Record: ...

    def save(self, record: Record) -> None: ...


def _fail_state(state: State, reason: ReasonCode) -> State:
    if state in _AFTER_SWITCH:
        return State.ROLLED_BACK
    return State.REFUSED if reason in REFUSAL_REASONS else State.FAILED


def _gate(result: GateResult, state: State, ok: State) -> tuple[State, StepOutcome]:
    """``ok`` when the gate passed, else the failure state of ``state``; either way the outcome
    keeps the gate's metrics and evidence, so the report says what was measured.

    A failed :class:`GateResult` always carries its :class:`ReasonCode` (it refuses to be
    built without one), so there is no default to fall back on."""
    reason = result.reason_code
    outcome = StepOutcome(
        reason=reason,
        detail=result.detail or ("" if result.passed else "gate failed"),
        metrics=dict(result.metrics),
        evidence=dict(result.evidence),
    )
    if reason is None:
        return ok, outcome
    return _fail_state(state, reason), outcome


Handler = Callable[[Controller, Update], tuple[State, Update, StepOutcome]]


def _download(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    c.download(u)
    return State.VERIFYING, u, StepOutcome()


def _verify(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    c.verify(u)
    return State.STAGING, u, StepOutcome()


def _stage(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    return State.PREPARING, c.stage(u), StepOutcome()


def _prepare(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    nxt, out = _gate(c.prepare(u), State.PREPARING, State.BENCHMARKING)
    return nxt, u, out


def _benchmark(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    nxt, out = _gate(c.benchmark(u), State.BENCHMARKING, State.SWAPPING)
    return nxt, u, out


def _swap(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    c.swap(u)
    return State.HEALTH_WATCH, u, StepOutcome()


def _watch(c: Controller, u: Update) -> tuple[State, Update, StepOutcome]:
    nxt, out = _gate(c.watch(u), State.HEALTH_WATCH, State.COMMITTED)
    return nxt, u, out


HANDLERS: dict[State, Handler] = {
    State.DOWNLOADING: _download,
    State.VERIFYING: _verify,
    State.STAGING: _stage,
    State.PREPARING: _prepare,
    State.BENCHMARKING: _benchmark,
    State.SWAPPING: _swap,
    State.HEALTH_WATCH: _watch,
}


def next_state(c: Controller, state: State, update: Update) -> tuple[State, Update, StepOutcome]:
    """Run one working state's handler; fatal errors map to refused/failed/rolled-back.

    Raises :class:`TransientError` unchanged (the caller backs off and resumes).
    """
    try:
        return HANDLERS[state](c, update)
    except FatalError as e:
        return _fail_state(state, e.reason), update, StepOutcome(e.reason, e.detail)


def _finish(c: Controller, record: Record) -> None:
    """Terminal states' effects (idempotent: a crash here repeats them)."""
    assert record.update is not None  # terminal records always carry their update
    if record.state is State.COMMITTED:
        c.commit(record.update)
    elif record.state is State.ROLLED_BACK:
        c.roll_back(record.update, record.outcome)
    else:
        c.abandon(record.update, record.state, record.outcome)


def run_update(c: Controller, journal: JournalStore, *, max_attempts: int = 5) -> tuple[Record, bool]:
    """Resume the journaled update or check for a new one, and drive it as far as it goes.

    Returns the last record and whether a transient error stopped it (back
    off, then call again: the journal resumes it). Raises nothing for update
    failures: they end in a terminal state, reported. A ``StopRequested``
    from a step (the agent is shutting down) passes through unjournaled: the
    journal still names that step, so the next call repeats it.
    """
    record = journal.load()
    if record.state in (State.IDLE, State.CHECKING):
        record = Record(State.CHECKING)
        journal.save(record)
        c.pause_point(State.CHECKING)
        try:
            update = c.check()
        except TransientError as e:
            log.warning("check failed, will retry: %s", e)
            journal.save(Record(State.IDLE))
            return Record(State.IDLE, outcome=StepOutcome(e.reason, e.detail)), True
        except FatalError as e:
            log.warning("assignment refused: %s", e)
            journal.save(Record(State.IDLE))
            c.report(State.REFUSED, None, StepOutcome(e.reason, e.detail, {}))
            return Record(State.REFUSED, outcome=StepOutcome(e.reason, e.detail)), False
        if update is None:
            journal.save(Record(State.IDLE))
            return Record(State.IDLE), False
        record = Record(State.DOWNLOADING, update)
        log.info("accepted %s: downloading %s", update.label, update.target.path)
        journal.save(record)
        c.report(State.DOWNLOADING, update, StepOutcome())
        c.pause_point(State.DOWNLOADING)
    return _drive(c, journal, record, max_attempts=max_attempts)


def _drive(c: Controller, journal: JournalStore, record: Record, *, max_attempts: int) -> tuple[Record, bool]:
    while record.state not in TERMINAL:
        current = record.update
        assert current is not None  # working states always carry their update
        try:
            state, update, outcome = next_state(c, record.state, current)
        except TransientError as e:
            attempts = record.attempts + 1
            if attempts < max_attempts:
                log.warning("%s: transient error (attempt %d/%d): %s", record.state.value, attempts, max_attempts, e)
                record = replace(record, attempts=attempts, outcome=StepOutcome(e.reason, e.detail))
                journal.save(record)
                c.report(record.state, current, record.outcome)  # not a failure: the server only sees why
                return record, True
            log.error("%s: giving up after %d attempts: %s", record.state.value, attempts, e)
            state, update, outcome = _fail_state(record.state, e.reason), current, StepOutcome(e.reason, e.detail)
        record = Record(state, update, record.attempts, outcome)
        journal.save(record)
        log.info(
            "%s → %s%s",
            update.label,
            state.value,
            f" ({outcome.reason.value}: {outcome.detail})" if outcome.reason else "",
        )
        if state not in TERMINAL:
            c.report(state, update, outcome)
        c.pause_point(state)
    _finish(c, record)
    c.report(record.state, record.update, record.outcome)
    journal.save(Record(State.IDLE, outcome=record.outcome))
    return record, False


def backoff_delay(attempt: int, *, base_s: float, max_s: float, jitter: float, rng: random.Random) -> float:
    """Exponential back-off with +-``jitter`` relative noise: base * 2^(attempt-1), capped."""
    delay = min(max_s, base_s * float(2 ** max(0, attempt - 1)))
    return max(0.0, delay * (1.0 + rng.uniform(-jitter, jitter)))
