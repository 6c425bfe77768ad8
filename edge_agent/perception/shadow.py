"""Shadow run: judge a candidate model on live frames while the active one serves.

The inference thread offers every (frame, active outcome) pair to
:meth:`ShadowRun.offer`, which never blocks: a one-slot mailbox takes the
pair only when the shadow worker is idle and its duty cycle allows, so the
candidate sees a sample of the very frames the active model served and the
active model keeps its frame rate. The worker runs the candidate, scores its
agreement with the reference on that frame (:func:`edge_agent.perception.agreement.frame_agreement`)
and records latency, NaNs and failures. The reference is the active model's
outcome, or — when the bundle has no agreement expectation for the release
the device runs — the candidate bundle's own FP32 variant, run by the worker
on the same frame (:class:`~edge_agent.perception.GateContext`).

Per-frame agreement feeds a sequential test (:class:`models.stats.AgreementTest`,
Wald's SPRT): H0 "agreement is at least ``p0 = expected - tolerance``" against H1
"it is ``p0 - effect``", with false-refusal rate ``alpha`` and false-acceptance
rate ``beta`` from the gates. When the expectation breaks agreement down by the
reference's class (classification), each frame also feeds the test of the class
the reference predicted on it (:class:`models.stats.ClassAgreementTest`: H1 a
catastrophic failure of that class, ``class_agreement_effect`` below its p0), so
a candidate that never predicts one class is refused although its overall
agreement is within the tolerance. The run stops as soon as the test is decisive
(after ``min_shadow_frames``, at most ``shadow_frames``), or on the first error
or NaN beyond the allowance. With several cameras the worker samples them in
turn, and the evidence carries each camera's frames and agreement; the verdict
is the test's on all sampled frames.

:func:`judge_shadow` is the pure gate decision (:class:`models.bundle.Gates`):
failures → ``RUNTIME_CRASHED``, NaN/inf frames → ``NAN_OUTPUT``, p95 over
budget → ``LATENCY_OVER_BUDGET`` (only when a distribution-free 95 % lower
confidence bound of the p95 is over it, so that a few frames delayed by a busy
neighbour cannot fail a model),  the test refuses → ``LOW_AGREEMENT``, the
test undecided when the camera source ended → ``SOURCE_ENDED`` or at the
timeout → ``NOT_ENOUGH_FRAMES``.

This module does not load models or swap them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import ReasonCode, StopRequested
from edge_agent.perception.agreement import FlipCounter, frame_agreement
from edge_agent.perception.base import GateContext, GateResult, JudgedAgainst
from edge_agent.perception.camera import Frame
from edge_agent.perception.inference import LatencySamples, LoadedModel, Outcome
from edge_agent.perception.pipeline import latency_percentiles
from edge_agent.stopping import STOP_POLL_S
from models.bundle import Gates, Task
from models.stats import (
    AgreementTest,
    ClassAgreementTest,
    ClassExpectation,
    Verdict,
    quantile_lower_bound,
)

__all__ = ["ShadowStats", "ShadowRun", "judge_shadow", "agreement_test", "CONFUSION_ROWS"]

log = logging.getLogger(__name__)
CONFUSION_ROWS = 10  # flipped class pairs a refusal reports
CAMERA_RECENT_S = 1.0  # a camera that offered no frame for this long is not waited for


SequentialTest = AgreementTest | ClassAgreementTest


def agreement_test(gates: Gates, context: GateContext) -> SequentialTest:
    """The sequential test the gates ask for, against the context's expectation: the overall
    test, with a test per class when the expectation has per-class figures."""
    overall = AgreementTest(
        p0=gates.agreement_threshold(context.expected),
        effect=gates.agreement_effect,
        alpha=gates.false_refusal_rate,
        beta=gates.false_acceptance_rate,
        min_frames=min(gates.min_shadow_frames, gates.shadow_frames),
        max_frames=gates.shadow_frames,
    )
    if not context.per_class:
        return overall
    # no floor under a class's p0: min_agreement bounds the overall agreement, while a better
    # candidate agrees with a worse active model on few of the frames of a class that model
    # gets wrong (e.g. 12 % where it calls many signs "speed_limit_50"), and is expected to
    return ClassAgreementTest(
        overall,
        [ClassExpectation(c.label, c.agreement, c.frames) for c in context.per_class],
        tolerance=gates.agreement_tolerance,
        class_effect=gates.class_agreement_effect,
    )


@dataclass
class ShadowStats:
    """What the candidate did on the sampled frames."""

    test: SequentialTest
    flips: FlipCounter | None = None
    frames: int = 0
    errors: int = 0
    nan_frames: int = 0
    latency: LatencySamples = field(default_factory=LatencySamples)  # the candidate's, on the sampled frames
    offered: int = 0  # frames the active model served while the shadow ran
    first_error: str | None = None
    source_ended: str | None = None  # the source that ended before the test was decisive
    cameras: dict[str, list[float]] = field(default_factory=dict)  # camera -> [frames, agreement sum]

    def per_camera(self) -> dict[str, dict[str, float]]:
        """Frames and mean agreement of each camera's sampled frames (the verdict is on all of them)."""
        return {
            name: {"frames": int(n), "agreement": round(total / n, 4) if n else 1.0}
            for name, (n, total) in sorted(self.cameras.items())
        }

    @property
    def agreement(self) -> float:
        """Mean per-frame agreement so far (1.0 before any frame)."""
        return self.test.agreement

    def metrics(self) -> dict[str, float]:
        pct = latency_percentiles(self.latency.wall_ms)
        return {
            "frames": float(self.frames),
            "offered_frames": float(self.offered),
            "errors": float(self.errors),
            "nan_frames": float(self.nan_frames),
            "agreement": round(self.agreement, 4),
            "p50_ms": round(pct["p50_ms"], 3),
            "p95_ms": round(pct["p95_ms"], 3),
            "p99_ms": round(pct["p99_ms"], 3),
        }


def judge_shadow(stats: ShadowStats, gates: Gates, *, context: GateContext) -> GateResult:
    """The gate decision for a finished, timed-out or source-ended shadow run."""
    metrics = stats.metrics()
    evidence = {"agreement": _agreement_evidence(stats, context)}
    if stats.errors:
        return GateResult(
            False,
            ReasonCode.RUNTIME_CRASHED,
            f"candidate failed on {stats.errors} of {stats.frames} frames: {stats.first_error}",
            metrics,
            evidence,
        )
    if stats.nan_frames > gates.max_nan_frames:
        return GateResult(
            False,
            ReasonCode.NAN_OUTPUT,
            f"candidate produced NaN/inf on {stats.nan_frames} of {stats.frames} frames "
            f"(allowed {gates.max_nan_frames})",
            metrics,
            evidence,
        )
    p95 = metrics["p95_ms"]
    p95_low = quantile_lower_bound(stats.latency.wall_ms, 0.95, confidence=0.95) if stats.frames else None
    if p95_low is not None and p95_low > gates.latency_budget_ms:
        return GateResult(
            False,
            ReasonCode.LATENCY_OVER_BUDGET,
            f"candidate p95 {p95:.2f} ms exceeds the budget {gates.latency_budget_ms:.2f} ms "
            f"(its 95 % lower confidence bound is {p95_low:.2f} ms)",
            metrics,
            evidence,
        )
    t = stats.test
    against = _against(context)
    versus = f"the expected {context.expected:.1%} (p0 {t.p0:.1%})"
    if t.verdict is Verdict.REFUSE:
        return GateResult(
            False,
            ReasonCode.LOW_AGREEMENT,
            f"refused: {_refusal(t, against, versus)}{_flipped(evidence['agreement'])}{_why(context)}",
            metrics,
            evidence,
        )
    if t.verdict is Verdict.CONTINUE:
        so_far = (
            f"agreement so far {t.agreement:.1%} vs {versus}; the test needs at least "
            f"{t.min_frames} and stops by {t.max_frames} frames"
        )
        if stats.source_ended is not None:
            return GateResult(
                False,
                ReasonCode.SOURCE_ENDED,
                f"{stats.source_ended} ended during the shadow run after {stats.frames} candidate "
                f"frames, before the agreement test was decisive ({so_far})",
                metrics,
                evidence,
            )
        return GateResult(
            False,
            ReasonCode.NOT_ENOUGH_FRAMES,
            f"candidate saw only {stats.frames} frames before the timeout, not enough for a decision "
            f"({so_far}; {stats.offered} frames were served meanwhile)",
            metrics,
            evidence,
        )
    tested = len(t.classes) if isinstance(t, ClassAgreementTest) else 0
    classes = f" overall and on each of the {tested} classes tested" if tested else ""
    return GateResult(
        True,
        None,
        f"passed on {t.frames} frames: p95 {p95:.2f} ms, agreement with {against} {t.agreement:.1%} "
        f"vs {versus}, accepted{classes} at {t.confidence:.0%} confidence{_why(context)}",
        metrics,
        evidence,
    )


def _refusal(t: SequentialTest, against: str, versus: str) -> str:
    overall = (
        f"candidate agrees with {against} on {t.agreement:.1%} of {t.frames} frames, "
        f"significantly below {versus}, at {t.confidence:.0%} confidence"
    )
    if not isinstance(t, ClassAgreementTest) or t.decided_by is None:
        return overall
    c = t.decider()
    return (
        f"class {t.decided_by!r}: candidate agrees with {against} on {c.agreement:.1%} of the {c.frames} "
        f"frames {against} saw as {t.decided_by!r}, significantly below that class's p0 {c.p0:.1%}, at "
        f"{c.confidence:.1%} confidence (one of {len(t.classes)} class tests; overall {t.agreement:.1%} of "
        f"{t.frames} frames vs {versus})"
    )


def _against(context: GateContext) -> str:
    if context.judged_against is JudgedAgainst.OWN_FP32:
        return f"its own {context.baseline_variant}"
    return "the active model"


def _why(context: GateContext) -> str:
    return f" ({context.why})" if context.why else ""


def _agreement_evidence(stats: ShadowStats, context: GateContext) -> dict[str, Any]:
    out: dict[str, Any] = {**stats.test.evidence(), **context.evidence()}
    if stats.cameras:
        out["per_camera"] = stats.per_camera()
    if stats.test.verdict is Verdict.REFUSE and stats.flips is not None:
        out["confusion"] = stats.flips.table(CONFUSION_ROWS)
    return out


def _flipped(agreement: dict[str, Any]) -> str:
    rows = agreement.get("confusion") or []
    if not rows:
        return ""
    top = ", ".join(f"{r['active']} -> {r['candidate']} x{r['count']}" for r in rows[:3])
    return f"; most flipped: {top}"


class ShadowRun:
    """Runs ``candidate`` on a rate-limited sample of the frames offered to it.

    ``duty`` caps the share of one core the shadow worker may take: after an
    inference (candidate and, against the own FP32, its reference) of ``t`` ms
    the worker rests ``t * (1 / duty - 1)`` ms. ``reference`` is the bundle's
    own FP32 when ``context`` judges against it, else None (the active model's
    outcome is the reference); ``reference_labels`` name the reference's classes.
    """

    def __init__(
        self,
        candidate: LoadedModel,
        gates: Gates,
        *,
        task: Task,
        context: GateContext | None = None,
        reference: LoadedModel | None = None,
        reference_labels: Sequence[str] | None = None,
        duty: float = 0.5,
    ) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be within (0, 1], got {duty}")
        self.context = context or GateContext.floor(gates)
        if (self.context.judged_against is JudgedAgainst.OWN_FP32) != (reference is not None):
            raise ValueError(
                f"a reference model is needed exactly when judging against the own FP32; "
                f"judged against {self.context.judged_against.value}, reference {reference!r}"
            )
        self.candidate = candidate
        self.reference = reference
        self.gates = gates
        self.duty = duty
        labels = reference.labels if reference is not None else (reference_labels or candidate.labels)
        self._reference_labels = tuple(labels)
        self.stats = ShadowStats(
            agreement_test(gates, self.context), FlipCounter(task, tuple(labels), tuple(candidate.labels))
        )
        self._task = task
        self._slot: tuple[Frame, Outcome] | None = None
        self._cond = threading.Condition()
        self._busy_until = 0.0
        self._sampled: dict[str, int] = {}  # frames taken per camera
        self._last_offer: dict[str, float] = {}  # camera -> when it last offered a frame
        self._finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="edge-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, frame: Frame, active: Outcome) -> None:
        """Called by the inference thread for every served frame; never blocks.

        With several cameras the worker takes, when idle, a frame of the camera it has sampled least
        among those that delivered within the last :data:`CAMERA_RECENT_S` (a camera that stopped
        does not hold the others back), so every camera is sampled alike whatever the timing.
        """
        self.stats.offered += 1
        now = time.monotonic()
        self._last_offer[frame.camera] = now
        if self._finished.is_set() or not active.ok:
            return
        with self._cond:
            if self._slot is None and now >= self._busy_until and self._its_turn(frame.camera, now):
                self._slot = (frame, active)
                self._sampled[frame.camera] = self._sampled.get(frame.camera, 0) + 1
                self._cond.notify()

    def _its_turn(self, camera: str, now: float) -> bool:
        if len(self._last_offer) < 2:
            return True
        recent = [c for c, t in self._last_offer.items() if now - t <= CAMERA_RECENT_S]
        return self._sampled.get(camera, 0) <= min(self._sampled.get(c, 0) for c in recent)

    def _work(self) -> None:
        while not self._stop.is_set() and not self._finished.is_set():
            with self._cond:
                while self._slot is None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._slot is None:
                    break
                frame, active = self._slot
            t0 = time.perf_counter()
            outcome = self.candidate.infer(frame)
            reference = self.reference.infer(frame) if self.reference is not None else active
            took = time.perf_counter() - t0
            self._record(outcome, reference)
            with self._cond:
                self._busy_until = time.monotonic() + took * (1.0 / self.duty - 1.0)
                self._slot = None

    def _record(self, outcome: Outcome, reference: Outcome) -> None:
        s = self.stats
        s.frames += 1
        if outcome.error is not None:
            s.errors += 1
            s.first_error = s.first_error or outcome.error
        s.nan_frames += outcome.nan
        s.latency.add(outcome)
        if s.flips is not None:
            s.flips.add(outcome, reference)
        x = frame_agreement(self._task, outcome, reference)
        cam = s.cameras.setdefault(outcome.camera, [0.0, 0.0])
        cam[0] += 1
        cam[1] += x
        if isinstance(s.test, ClassAgreementTest):
            verdict = s.test.add(x, self._class_of(reference))
        else:
            verdict = s.test.add(x)
        if verdict is not Verdict.CONTINUE or s.errors or s.nan_frames > self.gates.max_nan_frames:
            self._finished.set()

    def _class_of(self, reference: Outcome) -> str | None:
        """The label the reference predicted (classification), which keys the per-class tests."""
        k = reference.top1 if reference.ok and self._task is Task.CLASSIFICATION else None
        return self._reference_labels[k] if k is not None and 0 <= k < len(self._reference_labels) else None

    def wait(
        self,
        timeout_s: float,
        *,
        stop: threading.Event | None = None,
        ended: Callable[[], str | None] | None = None,
    ) -> GateResult:
        """Wait until the gate can decide, the source ends or ``timeout_s`` passes; stop the worker and judge.

        ``ended`` returns a description of the camera source once it has ended
        (None while it runs). Raises :class:`StopRequested` (worker stopped,
        nothing judged) when ``stop`` is set first.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        source_ended: str | None = None
        while True:
            if stop is not None and stop.is_set():
                self.stop()
                raise StopRequested(f"stop requested during the shadow run of {self.candidate.version}")
            left = deadline - time.monotonic()
            if left <= 0 or self._finished.wait(min(left, STOP_POLL_S)):
                break
            source_ended = ended() if ended is not None else None
            if source_ended is not None:
                break
        self.stop()
        if self.stats.test.verdict is Verdict.CONTINUE:
            self.stats.source_ended = source_ended
        result = judge_shadow(self.stats, self.gates, context=self.context)
        log.info(
            "shadow run of %s: %s (%s) %s",
            self.candidate.version,
            "passed" if result.passed else "refused",
            result.reason_code.value if result.reason_code else "ok",
            result.detail,
        )
        return result

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(30.0)
