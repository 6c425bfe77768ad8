"""Health watch: the window after a swap in which a new model can still be rolled back.

A :class:`HealthWatch` listens to the pipeline's outcomes of one model
version, from every camera, and compares them with what the shadow run measured: failed
inferences (error rate above ``gates.max_error_rate``), NaN/inf frames
(more than ``gates.max_nan_frames``) and a latency regression. The first
error or NaN regression ends the window early; :func:`judge_health` is the
pure decision and reports ``HEALTH_REGRESSION`` with the cause in the detail
and metrics.

A latency regression is an interval decision, not a p95 against a ratio
(:func:`models.stats.slowed_down`): the model regressed only when the lower
bound of a 95 % bootstrap interval of ``median(after) / median(shadow)``
exceeds ``gates.max_latency_regression``. On a CPU runtime the samples are
the inference thread's CPU time, which a process keeping a core busy does
not inflate (the session runs single-threaded, so that thread does all the
work); on TensorRT, where that thread mostly waits for the GPU, they are
wall times, with a floor of :data:`MIN_REGRESSION_MS` for time slices.

This module does not swap models back; the caller does (``swap_back``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from edge_agent.errors import ReasonCode, StopRequested
from edge_agent.perception.base import GateResult
from edge_agent.perception.camera import Frame
from edge_agent.perception.inference import LatencySamples, Outcome
from edge_agent.stopping import wait_either
from models.bundle import Gates
from models.stats import slowed_down

__all__ = ["HealthStats", "HealthWatch", "judge_health"]

log = logging.getLogger(__name__)

MIN_FRAMES_FOR_LATENCY = 30  # per side: fewer frames say nothing reliable about a median
MIN_REGRESSION_MS = 5.0  # wall time only: slower by less than this is a time slice, not a regression


@dataclass
class HealthStats:
    frames: int = 0
    errors: int = 0
    nan_frames: int = 0
    latency: LatencySamples = field(default_factory=LatencySamples)
    first_bad_frame: int | None = None
    cameras: dict[str, list[int]] = field(default_factory=dict)  # camera -> [frames, errors + NaN frames]

    def metrics(self, baseline: LatencySamples | None) -> dict[str, float]:
        out = {
            "frames": float(self.frames),
            "errors": float(self.errors),
            "nan_frames": float(self.nan_frames),
            "p95_ms": round(self.latency.p95_ms, 3),
        }
        if baseline is not None and baseline.wall_ms:
            out["baseline_p95_ms"] = round(baseline.p95_ms, 3)
        if self.first_bad_frame is not None:
            out["first_bad_frame"] = float(self.first_bad_frame)
        return out


def judge_health(stats: HealthStats, gates: Gates, *, baseline: LatencySamples | None) -> GateResult:
    """Pass, or ``HEALTH_REGRESSION`` naming the cause (errors, NaN, latency).

    ``baseline`` is what the shadow run measured of the same model; ``None`` skips the
    latency rule (the early check on every frame does).
    """
    metrics = stats.metrics(baseline)
    code = ReasonCode.HEALTH_REGRESSION
    if stats.frames == 0:
        return GateResult(True, None, "no frames arrived during the health window; nothing to judge", metrics)
    rate = stats.errors / stats.frames
    if stats.errors and rate > gates.max_error_rate:
        return GateResult(
            False,
            code,
            f"errors: {stats.errors} of {stats.frames} inferences failed ({rate:.1%} > {gates.max_error_rate:.1%})",
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
    evidence: dict[str, object] = {}
    if stats.cameras:  # the window watches every camera's frames; this says how many came from each
        evidence["per_camera"] = {n: {"frames": f, "bad": b} for n, (f, b) in sorted(stats.cameras.items())}
    if baseline is not None:
        metric, before = baseline.measure()
        after_metric, after = stats.latency.measure()
        if after_metric != metric:  # the shadow ran another runtime: compare what both have
            metric, before, after = "wall", baseline.wall_ms, stats.latency.wall_ms
        if min(len(before), len(after)) >= MIN_FRAMES_FOR_LATENCY:
            verdict = slowed_down(before, after, max_ratio=gates.max_latency_regression, metric=metric)
            evidence["latency"] = verdict.to_dict()
            floor_ok = metric == "cpu" or _median(after) - _median(before) > MIN_REGRESSION_MS
            if verdict.regressed and floor_ok:
                return GateResult(False, code, f"latency: {verdict.reason}", metrics, evidence)
    return GateResult(True, None, f"healthy over {stats.frames} frames (p95 {p95:.2f} ms)", metrics, evidence)


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else 0.0


class HealthWatch:
    """Collects outcomes of ``version`` until the window ends or a regression shows."""

    def __init__(self, version: str, gates: Gates, *, baseline: LatencySamples | None) -> None:
        self.version = version
        self.gates = gates
        self.baseline = baseline
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
            s.latency.add(outcome)
            cam = s.cameras.setdefault(outcome.camera, [0, 0])
            cam[0] += 1
            cam[1] += not outcome.ok
            early = judge_health(s, self.gates, baseline=None)  # errors and NaNs end it at once
        if not early.passed:
            self._failed.set()

    def wait(self, window_s: float, *, stop: threading.Event | None = None) -> GateResult:
        """Block for the window (or until the first regression) and judge.

        Raises :class:`StopRequested` (nothing judged) when ``stop`` is set first.
        """
        if not wait_either(self._failed, stop, window_s):
            raise StopRequested(f"stop requested during the health watch of {self.version}")
        with self._lock:
            result = judge_health(self.stats, self.gates, baseline=self.baseline)
        log.info(
            "health watch of %s: %s %s",
            self.version,
            "healthy" if result.passed else "REGRESSION",
            result.detail,
        )
        return result
