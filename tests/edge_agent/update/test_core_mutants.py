"""The update state machine, pinned down where mutation testing found it loose.

``test_core.py`` checks which states an update goes through; here what travels with them: the
journal's JSON form (every field, and the defaults of an older or partial record), the update and
outcome each controller call and report receives, the test hook's pause points, the attempts
count carried across states, the log lines an operator reads, and the back-off's edges.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge_agent.errors import FatalError, ReasonCode, TransientError
from edge_agent.perception import GateResult
from edge_agent.trust.assignment import TargetRef
from edge_agent.update.core import Record, State, StepOutcome, Update, VariantTarget, backoff_delay, run_update
from tests.edge_agent.update.test_core import UPDATE, FakeController, MemoryJournal

R = ReasonCode
S = State
ALT = VariantTarget("onnx-int8", TargetRef("tiny/1.2.0/model-int8.onnx", 200, "c" * 64))
FULL = Update(
    release=7,
    name="tiny",
    version="1.2.0",
    rollout_id="ro_9",
    variant="onnx-fp32",
    manifest=TargetRef("tiny/1.2.0/bundle.json", 100, "a" * 64),
    target=TargetRef("tiny/1.2.0/model.onnx", 400, "b" * 64),
    gates={"min_agreement": 0.97},
    slot="b",
    previous_slot="a",
    alternates=(ALT,),
    assignment_digest="d" * 64,
)
FULL_DICT = {
    "release": 7,
    "name": "tiny",
    "version": "1.2.0",
    "rollout_id": "ro_9",
    "variant": "onnx-fp32",
    "manifest": {"path": "tiny/1.2.0/bundle.json", "length": 100, "sha256": "a" * 64},
    "target": {"path": "tiny/1.2.0/model.onnx", "length": 400, "sha256": "b" * 64},
    "gates": {"min_agreement": 0.97},
    "slot": "b",
    "previous_slot": "a",
    "alternates": [
        {"variant": "onnx-int8", "target": {"path": "tiny/1.2.0/model-int8.onnx", "length": 200, "sha256": "c" * 64}}
    ],
    "assignment_digest": "d" * 64,
}
MINIMAL_DICT = {k: FULL_DICT[k] for k in ("release", "name", "version", "variant", "manifest", "target")}


def test_the_journal_form_of_an_update_names_every_field() -> None:
    """The journal on disk outlives the agent version that wrote it: its keys are a format."""
    assert FULL.to_dict() == FULL_DICT
    assert Update.from_dict(FULL_DICT) == FULL
    record = Record(S.SWAPPING, FULL, 2, StepOutcome(R.HEALTH_REGRESSION, "slow", {"p95_ms": 9.0}, {"variant": "x"}))
    assert record.to_dict() == {
        "state": "swapping",
        "update": FULL_DICT,
        "attempts": 2,
        "outcome": {
            "reason": "HEALTH_REGRESSION",
            "detail": "slow",
            "metrics": {"p95_ms": 9.0},
            "evidence": {"variant": "x"},
        },
    }
    assert Record.from_dict(record.to_dict()) == record


def test_an_update_journaled_with_only_its_required_fields_reads_with_defaults() -> None:
    update = Update.from_dict(MINIMAL_DICT)
    assert (update.rollout_id, update.slot, update.previous_slot, update.assignment_digest) == (None, None, None, None)
    assert update.gates == {} and update.alternates == ()
    nulls = Update.from_dict({**MINIMAL_DICT, "gates": None, "alternates": None})
    assert nulls.gates == {} and nulls.alternates == ()


def test_a_record_without_outcome_or_attempts_reads_as_a_fresh_one() -> None:
    record = Record.from_dict({"state": "downloading", "update": MINIMAL_DICT})
    assert record == Record(S.DOWNLOADING, Update.from_dict(MINIMAL_DICT), 0, StepOutcome())
    partial = Record.from_dict({"state": "idle", "outcome": {"reason": None, "detail": None, "metrics": None}})
    assert partial == Record()
    assert Record().to_dict() == {
        "state": "idle",
        "update": None,
        "attempts": 0,
        "outcome": {"reason": None, "detail": "", "metrics": {}, "evidence": {}},
    }


def test_the_label_names_the_model_version_and_release() -> None:
    assert FULL.label == "tiny@1.2.0 (release 7)"


@dataclass
class Recorder(FakeController):
    """The fake controller, also keeping every argument it was called with and every pause point."""

    args: list[tuple[Any, ...]] = field(default_factory=list)
    full_reports: list[tuple[State, Update | None, StepOutcome]] = field(default_factory=list)
    pauses: list[State] = field(default_factory=list)

    def download(self, update: Update) -> None:
        self.args.append(("download", update))
        super().download(update)

    def stage(self, update: Update) -> Update:
        self.args.append(("stage", update))
        return super().stage(update)

    def commit(self, update: Update) -> None:
        self.args.append(("commit", update))
        super().commit(update)

    def roll_back(self, update: Update, outcome: StepOutcome) -> None:
        self.args.append(("roll_back", update, outcome))
        super().roll_back(update, outcome)

    def abandon(self, update: Update, state: State, outcome: StepOutcome) -> None:
        self.args.append(("abandon", update, state, outcome))
        super().abandon(update, state, outcome)

    def report(self, state: State, update: Update | None, outcome: StepOutcome) -> None:
        self.full_reports.append((state, update, outcome))
        super().report(state, update, outcome)

    def pause_point(self, state: State) -> None:
        self.pauses.append(state)


STAGED = Update.from_dict({**UPDATE.to_dict(), "slot": "b", "previous_slot": "a"})  # what Recorder.stage returns


def test_every_step_gets_the_update_and_every_report_names_it() -> None:
    c = Recorder()
    journal = MemoryJournal()
    record, _ = run_update(c, journal)
    assert record == Record(S.COMMITTED, STAGED, 0, StepOutcome(None, "ok", {"p95_ms": 1.0}))
    assert c.args == [("download", UPDATE), ("stage", UPDATE), ("commit", STAGED)]
    assert c.pauses == [
        S.CHECKING,
        S.DOWNLOADING,
        S.VERIFYING,
        S.STAGING,
        S.PREPARING,
        S.BENCHMARKING,
        S.SWAPPING,
        S.HEALTH_WATCH,
        S.COMMITTED,
    ]
    assert [(s, u) for s, u, _ in c.full_reports] == [
        (S.DOWNLOADING, UPDATE),
        (S.VERIFYING, UPDATE),
        (S.STAGING, UPDATE),
        (S.PREPARING, STAGED),
        (S.BENCHMARKING, STAGED),
        (S.SWAPPING, STAGED),
        (S.HEALTH_WATCH, STAGED),
        (S.COMMITTED, STAGED),  # the terminal state is reported once, after its effect
    ]
    assert all(o == StepOutcome() for _, _, o in c.full_reports[:3])
    # the cycle ends idle, the outcome kept for the next cycle's log
    assert journal.saved[-1] == Record(S.IDLE, outcome=record.outcome)


def test_a_fatal_step_error_keeps_its_detail_for_the_abandon_and_the_report() -> None:
    c = Recorder(faults={"verify": FatalError(R.HASH_MISMATCH, "sha256 differs")})
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    outcome = StepOutcome(R.HASH_MISMATCH, "sha256 differs")
    assert (record, retry) == (Record(S.REFUSED, UPDATE, 0, outcome), False)
    assert c.args[-1] == ("abandon", UPDATE, S.REFUSED, outcome)
    assert c.full_reports[-1] == (S.REFUSED, UPDATE, outcome)
    assert journal.saved[-2] == record and journal.saved[-1] == Record(S.IDLE, outcome=outcome)


def test_a_rollback_gets_the_outcome_that_caused_it() -> None:
    c = Recorder(faults={"watch": GateResult(False, R.HEALTH_REGRESSION, "p95 doubled", {"p95_ms": 8.0})})
    record, _ = run_update(c, MemoryJournal())
    outcome = StepOutcome(R.HEALTH_REGRESSION, "p95 doubled", {"p95_ms": 8.0})
    assert record == Record(S.ROLLED_BACK, STAGED, 0, outcome)
    assert c.args[-1] == ("roll_back", STAGED, outcome)
    assert c.full_reports[-1] == (S.ROLLED_BACK, STAGED, outcome)


@pytest.mark.parametrize("passed", [True, False])
def test_a_gate_without_detail_says_only_whether_it_failed(passed: bool) -> None:
    gate = GateResult(passed, None if passed else R.LOW_AGREEMENT, "", {"agreement": 0.5}, {"variant": "v"})
    c = Recorder(faults={"benchmark": gate})
    run_update(c, MemoryJournal())
    state = S.SWAPPING if passed else S.FAILED
    outcome = next(o for s, _, o in c.full_reports if s is state)
    assert outcome == StepOutcome(
        None if passed else R.LOW_AGREEMENT, "" if passed else "gate failed", {"agreement": 0.5}, {"variant": "v"}
    )


def test_a_refused_assignment_is_reported_with_its_detail_and_no_update() -> None:
    c = Recorder(faults={"check": FatalError(R.WRONG_DEVICE, "assigned to dev-2")})
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    outcome = StepOutcome(R.WRONG_DEVICE, "assigned to dev-2")
    assert (record, retry) == (Record(S.REFUSED, outcome=outcome), False)
    assert c.full_reports == [(S.REFUSED, None, outcome)]
    assert journal.saved == [Record(S.CHECKING), Record(S.IDLE)]
    assert c.pauses == [S.CHECKING]


def test_a_transient_check_error_returns_why_and_journals_idle() -> None:
    c = Recorder(faults={"check": TransientError(R.DOWNLOAD_FAILED, "server down")})
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    assert (record, retry) == (Record(S.IDLE, outcome=StepOutcome(R.DOWNLOAD_FAILED, "server down")), True)
    assert journal.saved == [Record(S.CHECKING), Record(S.IDLE)]
    assert c.full_reports == []


def test_nothing_to_do_journals_idle() -> None:
    c = Recorder(offer=None)
    journal = MemoryJournal(Record(S.IDLE, outcome=StepOutcome(R.NAN_OUTPUT, "last cycle")))
    record, retry = run_update(c, journal)
    assert (record, retry) == (Record(), False)
    assert journal.saved[1:] == [Record(S.CHECKING), Record(S.IDLE)]


def test_a_transient_step_error_is_journaled_and_reported_with_the_update() -> None:
    c = Recorder(faults={"stage": [TransientError(R.DOWNLOAD_FAILED, "disk busy")]})
    journal = MemoryJournal()
    record, retry = run_update(c, journal)
    outcome = StepOutcome(R.DOWNLOAD_FAILED, "disk busy")
    assert (record, retry) == (Record(S.STAGING, UPDATE, 1, outcome), True)
    assert journal.saved[-1] == record
    assert c.full_reports[-1] == (S.STAGING, UPDATE, outcome)
    assert c.pauses[-1] is S.STAGING  # no pause point for the retry: nothing new was journaled


def test_the_attempts_count_stays_with_the_update_through_later_states() -> None:
    """A transient error's count is the update's, not the step's: it is kept until the update ends."""
    c = Recorder(faults={"download": [TransientError(R.SLOW_RETRIEVAL, "t")]})
    journal = MemoryJournal()
    run_update(c, journal)
    first = len(journal.saved)
    record, _ = run_update(c, journal)
    assert record.state is S.COMMITTED and record.attempts == 1
    assert [r.attempts for r in journal.saved[first:-1]] == [1] * 7  # verifying .. committed


def test_giving_up_fails_with_the_last_error_and_the_update() -> None:
    c = Recorder(faults={"download": [TransientError(R.SLOW_RETRIEVAL, f"t{i}") for i in range(2)]})
    journal = MemoryJournal()
    run_update(c, journal, max_attempts=2)
    record, retry = run_update(c, journal, max_attempts=2)
    outcome = StepOutcome(R.SLOW_RETRIEVAL, "t1")
    assert (record, retry) == (Record(S.FAILED, UPDATE, 1, outcome), False)
    assert c.args[-1] == ("abandon", UPDATE, S.FAILED, outcome)


def test_one_attempt_allowed_gives_up_at_the_first_transient_error() -> None:
    c = Recorder(faults={"download": [TransientError(R.SLOW_RETRIEVAL, "t")]})
    record, retry = run_update(c, MemoryJournal(), max_attempts=1)
    assert (record.state, retry) == (S.FAILED, False)


def test_the_default_allows_five_attempts() -> None:
    c = Recorder(faults={"download": [TransientError(R.SLOW_RETRIEVAL, "t") for _ in range(5)]})
    journal = MemoryJournal()
    states = [run_update(c, journal)[0].state for _ in range(5)]
    assert states == [S.DOWNLOADING] * 4 + [S.FAILED]


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_agent.update.core"]


def test_the_log_tells_each_transition_and_why(caplog: pytest.LogCaptureFixture) -> None:
    c = Recorder(
        faults={
            "download": [TransientError(R.SLOW_RETRIEVAL, "trickle")],
            "prepare": GateResult(False, R.NAN_OUTPUT, "nan frames"),
        }
    )
    journal = MemoryJournal()
    with caplog.at_level(logging.INFO, logger="edge_agent.update.core"):
        run_update(c, journal, max_attempts=3)
        run_update(c, journal, max_attempts=3)
    label = UPDATE.label
    assert _messages(caplog) == [
        f"accepted {label}: downloading tiny/1.1.0/model.onnx",
        "downloading: transient error (attempt 1/3): SLOW_RETRIEVAL: trickle",
        f"{label} → verifying",
        f"{label} → staging",
        f"{label} → preparing",
        f"{label} → failed (NAN_OUTPUT: nan frames)",
    ]


def test_the_log_tells_a_refusal_a_retry_and_giving_up(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge_agent.update.core"):
        run_update(Recorder(faults={"check": FatalError(R.WRONG_DEVICE, "not mine")}), MemoryJournal())
        run_update(Recorder(faults={"check": TransientError(R.DOWNLOAD_FAILED, "down")}), MemoryJournal())
        run_update(
            Recorder(faults={"download": TransientError(R.SLOW_RETRIEVAL, "t")}), MemoryJournal(), max_attempts=1
        )
    assert _messages(caplog) == [
        "assignment refused: WRONG_DEVICE: not mine",
        "check failed, will retry: DOWNLOAD_FAILED: down",
        f"accepted {UPDATE.label}: downloading tiny/1.1.0/model.onnx",
        "downloading: giving up after 1 attempts: SLOW_RETRIEVAL: t",
        f"{UPDATE.label} → failed (SLOW_RETRIEVAL: t)",
    ]


@pytest.mark.parametrize(("attempt", "expected"), [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (9, 50.0)])
def test_backoff_without_jitter_doubles_from_the_base_up_to_the_cap(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, base_s=2.0, max_s=50.0, jitter=0.0, rng=random.Random(0)) == expected


def test_backoff_noise_is_symmetric_and_never_negative() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(1, base_s=1.0, max_s=10.0, jitter=0.5, rng=rng) for _ in range(200)]
    assert min(delays) < 0.9 and max(delays) > 1.1 and all(0.5 <= d <= 1.5 for d in delays)
    wide = [backoff_delay(1, base_s=0.5, max_s=10.0, jitter=3.0, rng=rng) for _ in range(200)]
    assert min(wide) == 0.0 and max(wide) > 0.5


def test_a_gate_failing_for_an_integrity_reason_refuses() -> None:
    c = Recorder(faults={"prepare": GateResult(False, R.INCOMPATIBLE_HARDWARE, "needs a GPU")})
    record, _ = run_update(c, MemoryJournal())
    assert (record.state, c.calls[-1]) == (S.REFUSED, "abandon")


def test_giving_up_after_the_swap_rolls_back() -> None:
    c = Recorder(faults={"swap": TransientError(R.DOWNLOAD_FAILED, "runtime busy")})
    record, retry = run_update(c, MemoryJournal(Record(S.SWAPPING, STAGED)), max_attempts=1)
    assert (record.state, retry, c.calls[-1]) == (S.ROLLED_BACK, False, "roll_back")


def test_giving_up_keeps_the_errors_reason_for_the_end_state() -> None:
    """The end state follows the reason, whichever kind of error carried it."""
    c = Recorder(faults={"verify": TransientError(R.TUF_EXPIRED, "metadata expired")})
    record, _ = run_update(c, MemoryJournal(Record(S.VERIFYING, UPDATE)), max_attempts=1)
    assert (record.state, record.outcome) == (S.REFUSED, StepOutcome(R.TUF_EXPIRED, "metadata expired"))
