"""Shadow run: judge a candidate model on live frames while the active one serves.

The inference thread offers every (frame, active outcome) pair to
:meth:`ShadowRun.offer`, which never blocks: a one-slot mailbox takes the
pair only when the shadow worker is idle and its duty cycle allows, so the
candidate sees a sample of the very frames the active model served and the
active model keeps its frame rate. The worker runs the candidate, compares
it with the active model's outcome and records latency, NaNs and failures.

:func:`judge_shadow` is the pure gate decision (:class:`models.bundle.Gates`):
failures → ``RUNTIME_CRASHED``, NaN/inf frames → ``NAN_OUTPUT``, p95 over
budget → ``LATENCY_OVER_BUDGET``, agreement below the minimum → ``LOW_AGREEMENT``.

This module does not load models or swap them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from edge_agent.agreement import AgreementTracker
from edge_agent.camera import Frame
from edge_agent.errors import ReasonCode, StopRequested
from edge_agent.inference import LoadedModel, Outcome
from edge_agent.perception import GateResult
from edge_agent.pipeline import latency_percentiles
from edge_agent.stopping import wait_either
from models.bundle import Gates, Task

__all__ = ["ShadowStats", "ShadowRun", "judge_shadow"]

log = logging.getLogger(__name__)


@dataclass
class ShadowStats:
    """What the candidate did on the sampled frames."""

    frames: int = 0
    errors: int = 0
    nan_frames: int = 0
    infer_ms: list[float] = field(default_factory=list)  # candidate preprocess+infer+postprocess
    agreement: float = 1.0
    offered: int = 0  # frames the active model served while the shadow ran
    first_error: str | None = None

    def metrics(self) -> dict[str, float]:
        pct = latency_percentiles(self.infer_ms)
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


def judge_shadow(
    stats: ShadowStats, gates: Gates, *, required_frames: int | None = None
) -> GateResult:
    """The gate decision for a finished (or timed-out) shadow run."""
    required = gates.shadow_frames if required_frames is None else required_frames
    metrics = stats.metrics()
    if stats.errors:
        return GateResult(
            False,
            ReasonCode.RUNTIME_CRASHED.value,
            f"candidate failed on {stats.errors} of {stats.frames} frames: {stats.first_error}",
            metrics,
        )
    if stats.nan_frames > gates.max_nan_frames:
        return GateResult(
            False,
            ReasonCode.NAN_OUTPUT.value,
            f"candidate produced NaN/inf on {stats.nan_frames} of {stats.frames} frames "
            f"(allowed {gates.max_nan_frames})",
            metrics,
        )
    p95 = metrics["p95_ms"]
    if stats.frames and p95 > gates.latency_budget_ms:
        return GateResult(
            False,
            ReasonCode.LATENCY_OVER_BUDGET.value,
            f"candidate p95 {p95:.2f} ms exceeds the budget {gates.latency_budget_ms:.2f} ms",
            metrics,
        )
    if stats.frames < required:
        return GateResult(
            False,
            ReasonCode.LATENCY_OVER_BUDGET.value,
            f"candidate saw only {stats.frames} of the {required} frames the gate needs before "
            f"the timeout ({stats.offered} frames were served meanwhile)",
            metrics,
        )
    if stats.agreement < gates.min_agreement:
        return GateResult(
            False,
            ReasonCode.LOW_AGREEMENT.value,
            f"candidate agrees with the active model on {stats.agreement:.1%} "
            f"(minimum {gates.min_agreement:.1%}) over {stats.frames} frames",
            metrics,
        )
    return GateResult(
        True,
        None,
        f"candidate passed on {stats.frames} frames: p95 {p95:.2f} ms, "
        f"agreement {stats.agreement:.1%}",
        metrics,
    )


class ShadowRun:
    """Runs ``candidate`` on a rate-limited sample of the frames offered to it.

    ``duty`` caps the share of one core the candidate may take: after an
    inference of ``t`` ms the worker rests ``t * (1 / duty - 1)`` ms.
    """

    def __init__(
        self, candidate: LoadedModel, gates: Gates, *, task: Task, duty: float = 0.5
    ) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be within (0, 1], got {duty}")
        self.candidate = candidate
        self.gates = gates
        self.duty = duty
        self.stats = ShadowStats()
        self._tracker = AgreementTracker(task)
        self._slot: tuple[Frame, Outcome] | None = None
        self._cond = threading.Condition()
        self._busy_until = 0.0
        self._finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="edge-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, frame: Frame, active: Outcome) -> None:
        """Called by the inference thread for every served frame; never blocks."""
        self.stats.offered += 1
        if self._finished.is_set() or not active.ok:
            return
        with self._cond:
            if self._slot is None and time.monotonic() >= self._busy_until:
                self._slot = (frame, active)
                self._cond.notify()

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
            took = time.perf_counter() - t0
            self._record(outcome, active)
            with self._cond:
                self._busy_until = time.monotonic() + took * (1.0 / self.duty - 1.0)
                self._slot = None

    def _record(self, outcome: Outcome, active: Outcome) -> None:
        s = self.stats
        s.frames += 1
        if outcome.error is not None:
            s.errors += 1
            s.first_error = s.first_error or outcome.error
        s.nan_frames += outcome.nan
        s.infer_ms.append(
            sum(outcome.timings_ms.get(k, 0.0) for k in ("preprocess", "infer", "postprocess"))
        )
        self._tracker.add(outcome, active)
        s.agreement = self._tracker.value
        if (
            s.frames >= self.gates.shadow_frames
            or s.errors
            or s.nan_frames > self.gates.max_nan_frames
        ):
            self._finished.set()

    def wait(self, timeout_s: float, *, stop: threading.Event | None = None) -> GateResult:
        """Wait until the gate can decide (or ``timeout_s``), stop the worker and judge.

        Raises :class:`StopRequested` (worker stopped, nothing judged) when ``stop`` is set first.
        """
        if not wait_either(self._finished, stop, timeout_s):
            self.stop()
            raise StopRequested(f"stop requested during the shadow run of {self.candidate.version}")
        self.stop()
        result = judge_shadow(self.stats, self.gates)
        log.info(
            "shadow run of %s: %s (%s) %s",
            self.candidate.version,
            "passed" if result.passed else "refused",
            result.reason_code or "ok",
            result.detail,
        )
        return result

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(30.0)
