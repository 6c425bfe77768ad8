"""Table-driven tests of the pure update state machine (edge_agent.update.core) with a fake controller."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge_agent.errors import FatalError, ReasonCode, TransientError
from edge_agent.perception import GateResult
from edge_agent.trust.assignment import TargetRef
from edge_agent.update.core import (
    Record,
    State,
    StepOutcome,
    Update,
    VariantTarget,
    backoff_delay,
    run_update,
)

R = ReasonCode
S = State
UPDATE = Update(
    release=3,
    name="tiny",
    version="1.1.0",
    rollout_id="ro_1",
    variant="onnx-fp32",
    manifest=TargetRef("tiny/1.1.0/bundle.json", 100, "a" * 64),
    target=TargetRef("tiny/1.1.0/model.onnx", 400, "b" * 64),
)
OK = GateResult(True, None, "ok", {"p95_ms": 1.0})


class MemoryJournal:
    def __init__(self, record: Record | None = None) -> None:
        self.saved: list[Record] = [record] if record else []

    def load(self) -> Record:
        # round-trip through the JSON form, as the real journal does
        return Record.from_dict(self.saved[-1].to_dict()) if self.saved else Record()

    def save(self, record: Record) -> None:
        self.saved.append(record)

    @property
    def states(self) -> list[str]:
        return [r.state.value for r in self.saved]


@dataclass
class FakeController:
    """Scripted effects: ``faults[method]`` is an exception to raise or a GateResult to return."""

    faults: dict[str, Any] = field(default_factory=dict)
    offer: Update | None = UPDATE
    calls: list[str] = field(default_factory=list)
    reports: list[tuple[str, str | None]] = field(default_factory=list)
    outcomes: list[StepOutcome] = field(default_factory=list)

    def _do(self, name: str) -> Any:
        self.calls.append(name)
        fault = self.faults.get(name)
        if isinstance(fault, list):  # one scripted result per call
            fault = fault.pop(0) if fault else None
        if isinstance(fault, Exception):
            raise fault
        return fault

    def check(self) -> Update | None:
        self._do("check")
        return self.offer

    def download(self, update: Update) -> None:
        self._do("download")

    def verify(self, update: Update) -> None:
        self._do("verify")

    def stage(self, update: Update) -> Update:
        self._do("stage")
        return Update.from_dict({**update.to_dict(), "slot": "b", "previous_slot": "a"})

    def prepare(self, update: Update) -> GateResult:
        return self._do("prepare") or OK

    def benchmark(self, update: Update) -> GateResult:
        return self._do("benchmark") or OK

    def swap(self, update: Update) -> None:
        self._do("swap")

    def watch(self, update: Update) -> GateResult:
        return self._do("watch") or OK

    def commit(self, update: Update) -> None:
        self._do("commit")

    def roll_back(self, update: Update, outcome: StepOutcome) -> None:
        self._do("roll_back")

    def abandon(self, update: Update, state: State, outcome: StepOutcome) -> None:
        self._do("abandon")

    def report(self, state: State, update: Update | None, outcome: StepOutcome) -> None:
        self.reports.append((state.value, outcome.reason.value if outcome.reason else None))
        self.outcomes.append(outcome)

    def pause_point(self, state: State) -> None:
        pass


HAPPY = ["check", "download", "verify", "stage", "prepare", "benchmark", "swap", "watch", "commit"]

# name, faults, final state, reason, calls
CASES: list[tuple[str, dict[str, Any], State, ReasonCode | None, list[str]]] = [
    ("happy path commits", {}, S.COMMITTED, None, HAPPY),
    (
        "bad signature refused at check",
        {"check": FatalError(R.SIGNATURE_INVALID, "x")},
        S.REFUSED,
        R.SIGNATURE_INVALID,
        ["check"],
    ),
    (
        "hash mismatch refused",
        {"verify": FatalError(R.HASH_MISMATCH, "x")},
        S.REFUSED,
        R.HASH_MISMATCH,
        ["check", "download", "verify", "abandon"],
    ),
    (
        "endless data refused",
        {"download": FatalError(R.LENGTH_EXCEEDED, "x")},
        S.REFUSED,
        R.LENGTH_EXCEEDED,
        ["check", "download", "abandon"],
    ),
    (
        "no space fails",
        {"download": FatalError(R.NO_SPACE, "x")},
        S.FAILED,
        R.NO_SPACE,
        ["check", "download", "abandon"],
    ),
    (
        "invalid bundle refused at staging",
        {"stage": FatalError(R.BUNDLE_INVALID, "x")},
        S.REFUSED,
        R.BUNDLE_INVALID,
        ["check", "download", "verify", "stage", "abandon"],
    ),
    (
        "NaN model fails at prepare",
        {"prepare": GateResult(False, R.NAN_OUTPUT, "nan")},
        S.FAILED,
        R.NAN_OUTPUT,
        ["check", "download", "verify", "stage", "prepare", "abandon"],
    ),
    (
        "crashing runtime fails at prepare",
        {"prepare": GateResult(False, R.RUNTIME_CRASHED, "sig")},
        S.FAILED,
        R.RUNTIME_CRASHED,
        ["check", "download", "verify", "stage", "prepare", "abandon"],
    ),
    (
        "over-budget variant fails at prepare",
        {"prepare": GateResult(False, R.LATENCY_OVER_BUDGET, "p95")},
        S.FAILED,
        R.LATENCY_OVER_BUDGET,
        ["check", "download", "verify", "stage", "prepare", "abandon"],
    ),
    (
        "low agreement fails at benchmark",
        {"benchmark": GateResult(False, R.LOW_AGREEMENT, "a")},
        S.FAILED,
        R.LOW_AGREEMENT,
        HAPPY[:6] + ["abandon"],
    ),
    (
        "failed hot swap rolls back",
        {"swap": FatalError(R.HEALTH_REGRESSION, "x")},
        S.ROLLED_BACK,
        R.HEALTH_REGRESSION,
        HAPPY[:7] + ["roll_back"],
    ),
    (
        "health regression rolls back",
        {"watch": GateResult(False, R.HEALTH_REGRESSION, "slow")},
        S.ROLLED_BACK,
        R.HEALTH_REGRESSION,
        HAPPY[:8] + ["roll_back"],
    ),
]


@pytest.mark.parametrize(("name", "faults", "final", "reason", "calls"), CASES, ids=[c[0] for c in CASES])
def test_transitions(
    name: str, faults: dict[str, Any], final: State, reason: ReasonCode | None, calls: list[str]
) -> None:
    c = FakeController(faults=dict(faults))
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    assert (record.state, record.outcome.reason, retry) == (final, reason, False)
    assert c.calls == calls
    assert c.reports[-1] == (final.value, reason.value if reason else None)
    assert journal.load().state is S.IDLE  # the cycle always ends idle
    # the journal recorded every state before acting on it, in order
    expected = ["checking"] + [
        s
        for s in ("downloading", "verifying", "staging", "preparing", "benchmarking", "swapping", "health-watch")
        if s in journal.states
    ]
    assert [s for s in journal.states if s not in ("idle", final.value)] == expected


def test_no_assignment_stays_idle() -> None:
    c = FakeController(offer=None)
    record, retry = run_update(c, MemoryJournal())
    assert (record.state, retry, c.calls, c.reports) == (S.IDLE, False, ["check"], [])


def test_transient_check_error_backs_off_without_report() -> None:
    c = FakeController(faults={"check": TransientError(R.DOWNLOAD_FAILED, "server down")})
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    assert record.state is S.IDLE and retry is True and c.reports == []
    assert journal.load().state is S.IDLE


def test_transient_download_error_keeps_the_update_and_resumes() -> None:
    c = FakeController(faults={"download": [TransientError(R.SLOW_RETRIEVAL, "trickle")]})
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    assert record.state is S.DOWNLOADING and record.attempts == 1 and retry is True
    assert journal.load().update == UPDATE
    assert c.reports[-1] == ("downloading", "SLOW_RETRIEVAL")
    record, retry = run_update(c, journal)  # next cycle resumes the download; no new check
    assert record.state is S.COMMITTED and retry is False
    assert c.calls.count("check") == 1 and c.calls.count("download") == 2


def test_transient_errors_give_up_after_max_attempts() -> None:
    c = FakeController(faults={"download": [TransientError(R.SLOW_RETRIEVAL, "t") for _ in range(3)]})
    journal = MemoryJournal()
    results = [run_update(c, journal, max_attempts=3)[0] for _ in range(3)]
    assert [r.state for r in results] == [S.DOWNLOADING, S.DOWNLOADING, S.FAILED]
    assert results[-1].outcome.reason is R.SLOW_RETRIEVAL
    assert c.calls[-1] == "abandon"


@pytest.mark.parametrize(
    ("state", "resumed_calls"),
    [
        (S.DOWNLOADING, ["download", "verify", "stage", "prepare", "benchmark", "swap", "watch", "commit"]),
        (S.STAGING, ["stage", "prepare", "benchmark", "swap", "watch", "commit"]),
        (S.SWAPPING, ["swap", "watch", "commit"]),
        (S.HEALTH_WATCH, ["watch", "commit"]),
        (S.COMMITTED, ["commit"]),
        (S.ROLLED_BACK, ["roll_back"]),
        (S.FAILED, ["abandon"]),
    ],
)
def test_resume_from_journaled_state(state: State, resumed_calls: list[str]) -> None:
    """After a crash the journaled step is repeated (idempotent) and the update goes on."""
    c = FakeController()
    record, _ = run_update(c, MemoryJournal(Record(state, UPDATE)))
    assert c.calls == resumed_calls
    assert record.state is (state if state in (S.COMMITTED, S.ROLLED_BACK, S.FAILED) else S.COMMITTED)


def test_crash_while_checking_restarts_the_check() -> None:
    c = FakeController()
    record, _ = run_update(c, MemoryJournal(Record(S.CHECKING)))
    assert c.calls[0] == "check" and record.state is S.COMMITTED


def test_record_round_trips_through_json() -> None:
    rec = Record(S.PREPARING, UPDATE, 2, StepOutcome(R.NAN_OUTPUT, "d", {"nan_frames": 3.0}, {"variant": "onnx-fp32"}))
    assert Record.from_dict(rec.to_dict()) == rec


def test_alternates_are_journaled_with_the_update() -> None:
    """A crash after the check must resume with every variant the assignment named, in its order."""
    update = Update.from_dict(
        {
            **UPDATE.to_dict(),
            "alternates": [
                VariantTarget("onnx-int8", TargetRef("tiny/1.1.0/model-int8.onnx", 200, "c" * 64)).to_dict()
            ],
        }
    )
    rec = Record(S.DOWNLOADING, update)
    back = Record.from_dict(rec.to_dict())
    assert back == rec and back.update is not None
    assert [v.variant for v in back.update.variant_targets()] == ["onnx-fp32", "onnx-int8"]
    old = UPDATE.to_dict()
    del old["alternates"]  # a journal written before alternates existed
    assert Update.from_dict(old).alternates == ()


TIMING = {
    "variant": "onnx-int8",
    "timing": [
        {
            "candidate": "onnx-int8",
            "baseline": "onnx-fp32",
            "metric": "cpu",
            "speedup": {"point": 1.9, "low": 1.7, "high": 2.1, "confidence": 0.95},
            "preferred": True,
        }
    ],
}


@pytest.mark.parametrize("passed", [True, False])
def test_a_gate_keeps_its_metrics_and_evidence_in_the_report(passed: bool) -> None:
    gate = GateResult(passed, None if passed else R.LATENCY_OVER_BUDGET, "p95", {"p95_ms": 9.0}, TIMING)
    c = FakeController(faults={"prepare": gate})
    record, _ = run_update(c, MemoryJournal())
    reported = next(
        o
        for (state, _), o in zip(c.reports, c.outcomes, strict=True)
        if state == ("benchmarking" if passed else "failed")
    )
    assert dict(reported.evidence) == TIMING and reported.metrics == {"p95_ms": 9.0}
    assert record.state is (S.COMMITTED if passed else S.FAILED)


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 1.6, 2.4), (2, 3.2, 4.8), (3, 6.4, 9.6), (10, 80, 120)])
def test_backoff_is_exponential_capped_and_jittered(attempt: int, low: float, high: float) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base_s=2.0, max_s=100.0, jitter=0.2, rng=rng) for _ in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1  # jittered
