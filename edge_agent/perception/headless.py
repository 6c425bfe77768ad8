"""``HeadlessPerception``: the perception path of an agent without a camera.

There are no live frames to shadow a candidate on, so :meth:`shadow` passes
on the child-process gate's result (the ``gate`` callable it is given: the
update path's :meth:`~edge_agent.update.gate.ChildGate.cached`, which re-runs
the check when the agent restarted in between), :meth:`swap` is nothing
beyond the slot switch the update path already made, and :meth:`watch`
re-checks the now active model on sample frames in this process: it must
load, give finite outputs and stay within its latency budget times the
allowed regression. Agreement is not judged without live frames (the log
says what a camera agent would have compared the candidate with).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import ReasonCode
from edge_agent.perception.base import GateContext, GateResult, SwapResult
from edge_agent.perception.samples import sample_frames
from models.bundle import BundleError, Gates, read_bundle
from models.stats import quantile_lower_bound

if TYPE_CHECKING:
    from models.runtime import Model

__all__ = ["HeadlessPerception"]

log = logging.getLogger(__name__)


class HeadlessPerception:
    """Implements :class:`edge_agent.perception.Perception` on sample frames."""

    def __init__(
        self,
        *,
        gate: Callable[[Path, Gates], GateResult],
        active_dir: Callable[[], Path | None],
        variant_of: Callable[[Path], str | None],
        watch_frames: int = 8,
        open_model: Callable[[Path, str | None], Model] | None = None,
    ) -> None:
        self._gate = gate
        self._active_dir = active_dir
        self._variant_of = variant_of
        # how the device opens a slot's variant (edge_agent.perception.runtimes.open_staged: a build-on-device
        # variant as its TensorRT engine); None opens the variant file itself
        self._open_model = open_model
        self._watch_frames = watch_frames
        self._active: str | None = None
        self._candidate: Path | None = None
        self._counters: dict[str, float] = {"inferred": 0.0, "errors": 0.0}

    def start(self, active_bundle_dir: Path) -> None:
        self._active = _version(active_bundle_dir)
        log.info("headless perception: active model %s (no camera)", self._active)

    def stop(self) -> None:
        self._candidate = None
        self._active = None

    def active_version(self) -> str | None:
        return self._active

    def counters(self) -> dict[str, float]:
        return dict(self._counters)

    def shadow(
        self, candidate_dir: Path, gates: Gates, *, timeout_s: float, context: GateContext | None = None
    ) -> GateResult:
        result = self._gate(candidate_dir, gates)
        self._candidate = candidate_dir if result.passed else None
        if context is not None:
            log.info(
                "no camera: agreement with %s (%s) is not judged without live frames",
                context.baseline or "the active model",
                context.judged_against.value,
            )
        return result

    def swap(self) -> SwapResult:
        if self._candidate is None:
            return SwapResult(ok=False, detail="no candidate passed shadow()")
        self._active, self._candidate = _version(self._candidate), None
        return SwapResult(ok=True, swap_ms=0.0, frames_dropped=0, detail="slot switch only (headless)")

    def swap_back(self, previous_dir: Path) -> SwapResult:
        self._active = _version(previous_dir)
        return SwapResult(ok=True, detail="slot switch only (headless)")

    def watch(self, gates: Gates, *, window_s: float) -> GateResult:
        """Re-check the active slot's model on sample frames (bounded by ``window_s``)."""
        from models.runtime import Model, ModelRuntimeError

        active = self._active_dir()
        if active is None:
            return GateResult(False, ReasonCode.HEALTH_REGRESSION, "no active model after the swap")
        try:
            variant = self._variant_of(active)
            model = (
                self._open_model(active, variant) if self._open_model is not None else Model(active, variant, threads=1)
            )
        except ModelRuntimeError as e:
            return GateResult(False, ReasonCode.HEALTH_REGRESSION, f"active model does not load: {e}")
        latencies: list[float] = []
        nan_frames = errors = 0
        deadline = time.monotonic() + max(window_s, 0.1)
        try:
            for frame in sample_frames(self._watch_frames, seed=1):
                t0 = time.perf_counter()
                try:
                    nan_frames += model.predict(frame).has_nan()
                except ModelRuntimeError:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1e3)
                if time.monotonic() > deadline:
                    break
        finally:
            model.close()
        self._counters["inferred"] += len(latencies)
        self._counters["errors"] += errors
        return _judge(latencies, nan_frames, errors, gates)


def _judge(latencies: list[float], nan_frames: int, errors: int, gates: Gates) -> GateResult:
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
    metrics = {
        "p95_ms": round(p95, 3),
        "nan_frames": float(nan_frames),
        "errors": float(errors),
        "frames": float(len(latencies)),
    }
    limit = gates.latency_budget_ms * gates.max_latency_regression
    if errors > gates.max_error_rate * max(1, len(latencies)):
        return GateResult(
            False, ReasonCode.HEALTH_REGRESSION, f"{errors} of {len(latencies)} inferences failed", metrics
        )
    if nan_frames > gates.max_nan_frames:
        return GateResult(False, ReasonCode.NAN_OUTPUT, f"{nan_frames} frames gave NaN/inf after the swap", metrics)
    p95_low = quantile_lower_bound(latencies, 0.95, confidence=0.95)  # a few stalled frames are the host's
    if p95_low is not None and p95_low > limit:
        return GateResult(
            False,
            ReasonCode.HEALTH_REGRESSION,
            f"p95 {p95:.1f} ms over {limit:.1f} ms after the swap (lower confidence bound {p95_low:.1f} ms)",
            metrics,
        )
    return GateResult(True, None, f"healthy on {len(latencies)} sample frames, p95 {p95:.1f} ms", metrics)


def _version(bundle_dir: Path) -> str | None:
    try:
        m = read_bundle(bundle_dir, verify=False)
    except BundleError:
        return None
    return f"{m.name}@{m.version}"
