"""Health watch: the window after a swap in which a new model can still be rolled back.

A :class:`HealthWatch` listens to the pipeline's outcomes of one model
version and compares them with what the shadow run measured: failed
inferences (error rate above ``gates.max_error_rate``), NaN/inf frames
(more than ``gates.max_nan_frames``) and p95 latency above
``gates.max_latency_regression`` × the shadow baseline. The first
regression ends the window early; :func:`judge_health` is the pure decision
and reports ``HEALTH_REGRESSION`` with the cause in the detail and metrics.

This module does not swap models back; the caller does (``swap_back``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from edge_agent.camera import Frame
from edge_agent.errors import ReasonCode, StopRequested
from edge_agent.inference import Outcome
from edge_agent.perception import GateResult
from edge_agent.pipeline import latency_percentiles
from edge_agent.stopping import wait_either
from models.bundle import Gates

__all__ = ["HealthStats", "HealthWatch", "judge_health"]

log = logging.getLogger(__name__)

MIN_FRAMES_FOR_LATENCY = 30  # fewer frames say nothing reliable about a p95
MIN_REGRESSION_MS = (
    5.0  # slower by less than this is scheduler jitter (a time slice), not a regression
)


@dataclass
class HealthStats:
    frames: int = 0
    errors: int = 0
    nan_frames: int = 0
    infer_ms: list[float] = field(default_factory=list)
    first_bad_frame: int | None = None

    def metrics(self, baseline_p95_ms: float | None) -> dict[str, float]:
        p95 = latency_percentiles(self.infer_ms)["p95_ms"]
        out = {
            "frames": float(self.frames),
            "errors": float(self.errors),
            "nan_frames": float(self.nan_frames),
            "p95_ms": round(p95, 3),
        }
        if baseline_p95_ms:
            out["baseline_p95_ms"] = round(baseline_p95_ms, 3)
        if self.first_bad_frame is not None:
            out["first_bad_frame"] = float(self.first_bad_frame)
        return out


def judge_health(stats: HealthStats, gates: Gates, *, baseline_p95_ms: float | None) -> GateResult:
    """Pass, or ``HEALTH_REGRESSION`` naming the cause (errors, NaN, latency)."""
    metrics = stats.metrics(baseline_p95_ms)
    code = ReasonCode.HEALTH_REGRESSION
    if stats.frames == 0:
        return GateResult(
            True, None, "no frames arrived during the health window; nothing to judge", metrics
        )
    rate = stats.errors / stats.frames
    if stats.errors and rate > gates.max_error_rate:
        return GateResult(
            False,
            code,
            f"errors: {stats.errors} of {stats.frames} inferences failed "
            f"({rate:.1%} > {gates.max_error_rate:.1%})",
            metrics,
        )
    if stats.nan_frames > gates.max_nan_frames:
        return GateResult(
            False,
            code,
            f"NaN/inf output on {stats.nan_frames} of {stats.frames} frames "
            f"(first at frame {stats.first_bad_frame}; allowed {gates.max_nan_frames})",
            metrics,
        )
    p95 = metrics["p95_ms"]
    limit = (baseline_p95_ms or 0.0) * gates.max_latency_regression
    if (
        baseline_p95_ms
        and stats.frames >= MIN_FRAMES_FOR_LATENCY
        and p95 > max(limit, baseline_p95_ms + MIN_REGRESSION_MS)
    ):
        return GateResult(
            False,
            code,
            f"latency: p95 {p95:.2f} ms > {gates.max_latency_regression:g} x "
            f"shadow baseline {baseline_p95_ms:.2f} ms",
            metrics,
        )
    return GateResult(True, None, f"healthy over {stats.frames} frames (p95 {p95:.2f} ms)", metrics)


class HealthWatch:
    """Collects outcomes of ``version`` until the window ends or a regression shows."""

    def __init__(self, version: str, gates: Gates, *, baseline_p95_ms: float | None) -> None:
        self.version = version
        self.gates = gates
        self.baseline_p95_ms = baseline_p95_ms
        self.stats = HealthStats()
        self._lock = threading.Lock()
        self._failed = threading.Event()

    def __call__(self, frame: Frame, outcome: Outcome) -> None:
        if outcome.model != self.version:
            return
        with self._lock:
            s = self.stats
            s.frames += 1
            s.errors += outcome.error is not None
            s.nan_frames += outcome.nan
            if not outcome.ok and s.first_bad_frame is None:
                s.first_bad_frame = outcome.frame_index
            s.infer_ms.append(
                sum(outcome.timings_ms.get(k, 0.0) for k in ("preprocess", "infer", "postprocess"))
            )
            early = judge_health(
                s, self.gates, baseline_p95_ms=None
            )  # errors and NaNs end it at once
        if not early.passed:
            self._failed.set()

    def wait(self, window_s: float, *, stop: threading.Event | None = None) -> GateResult:
        """Block for the window (or until the first regression) and judge.

        Raises :class:`StopRequested` (nothing judged) when ``stop`` is set first.
        """
        if not wait_either(self._failed, stop, window_s):
            raise StopRequested(f"stop requested during the health watch of {self.version}")
        with self._lock:
            result = judge_health(self.stats, self.gates, baseline_p95_ms=self.baseline_p95_ms)
        log.info(
            "health watch of %s: %s %s",
            self.version,
            "healthy" if result.passed else "REGRESSION",
            result.detail,
        )
        return result
