"""The threaded perception pipeline: capture → bounded queue → inference → sink.

One thread reads frames from a :class:`~edge_agent.perception.camera.FrameSource` into
a bounded :class:`FrameQueue`; another takes them one at a time, runs the
active :class:`~edge_agent.perception.inference.LoadedModel` and hands each
:class:`~edge_agent.perception.inference.Outcome` to the sink (JSON lines and/or
callbacks) and to listeners (the shadow run, the health watch).

Every frame is counted. When the queue is full a live source drops the
*oldest* queued frame (a late frame is worth less than a fresh one) and a
file blocks the reader (nothing is lost). At stop the frames still queued
are drained, so ``captured == inferred + dropped`` always holds once stopped.

The capture thread also preprocesses each frame for the active model's
input spec, so preprocessing overlaps inference of the previous frame.

The active model is switched only by the inference thread, between two
frames (:meth:`Pipeline.swap_model`), so no frame sees a half-swapped model
and every outcome names the version that produced it.

This module does not load models or judge them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

import numpy as np

from edge_agent.perception.camera import Frame, FrameSource
from edge_agent.perception.inference import STAGES, LoadedModel, Outcome

__all__ = [
    "DropPolicy",
    "PipelineConfig",
    "FrameQueue",
    "Counters",
    "SwapReport",
    "Pipeline",
    "Listener",
]

log = logging.getLogger(__name__)

Listener = Callable[[Frame, Outcome], None]


class DropPolicy(str, Enum):
    DROP_OLDEST = "drop-oldest"  # live sources: keep the freshest frames
    BLOCK = "block"  # files: the reader waits, nothing is dropped


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = 8  # frames between capture and inference
    drop_policy: DropPolicy | None = None  # None = drop-oldest for live sources, block otherwise
    max_fps: float | None = None  # cap on the capture rate; None = as fast as the source
    results_path: Path | None = None  # JSON lines, one object per frame
    keep_outcomes: int = 0  # outcomes kept in memory for reports/plots (0 = none)
    prepare_on_capture: bool = True  # preprocess on the capture thread, overlapping inference
    fps_window: int = 120  # results over which fps is computed

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.max_fps is not None and self.max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {self.max_fps}")


class FrameQueue:
    """A bounded FIFO of frames with a drop-oldest or blocking put."""

    def __init__(self, maxsize: int, policy: DropPolicy) -> None:
        self.maxsize = maxsize
        self.policy = policy
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame) -> int:
        """Enqueue; returns how many frames were dropped to make room (0 or 1)."""
        with self._cond:
            dropped = 0
            if self.policy is DropPolicy.BLOCK:
                while len(self._items) >= self.maxsize and not self._closed:
                    self._cond.wait(0.1)
            elif len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped = 1
            self._items.append(frame)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> Frame | None:
        """Next frame, or None after ``timeout`` seconds (or at once when closed and empty)."""
        with self._cond:
            end = time.monotonic() + timeout
            while not self._items:
                left = end - time.monotonic()
                if self._closed or left <= 0:
                    return None
                self._cond.wait(left)
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """No more puts will come; blocked putters are released."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Counters:
    """Thread-safe frame counters and per-stage time totals."""

    def __init__(self, fps_window: int = 120) -> None:
        self._lock = threading.Lock()
        self.captured = 0
        self.inferred = 0
        self.dropped = 0
        self.errors = 0
        self.nan_frames = 0
        self.swaps = 0
        self.last_swap_ms = 0.0
        self.stage_ms = dict.fromkeys(STAGES, 0.0)
        self.latency_total_ms = 0.0
        self._done_times: collections.deque[float] = collections.deque(maxlen=max(2, fps_window))
        self._model_ms: collections.deque[float] = collections.deque(maxlen=512)  # recent preprocess+infer+post
        self.started_at = time.monotonic()

    def on_captured(self, dropped: int) -> None:
        with self._lock:
            self.captured += 1
            self.dropped += dropped

    def on_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            self.inferred += 1
            self.errors += outcome.error is not None
            self.nan_frames += outcome.nan
            for stage in STAGES:
                self.stage_ms[stage] += outcome.timings_ms.get(stage, 0.0)
            self.latency_total_ms += outcome.latency_ms
            self._done_times.append(outcome.done_at)
            self._model_ms.append(sum(outcome.timings_ms.get(k, 0.0) for k in ("preprocess", "infer", "postprocess")))

    def on_swap(self, swap_ms: float) -> None:
        with self._lock:
            self.swaps += 1
            self.last_swap_ms = swap_ms

    def fps(self) -> float:
        """Results per second over the last ``fps_window`` results."""
        with self._lock:
            times = list(self._done_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def snapshot(self) -> dict[str, float]:
        fps = self.fps()
        with self._lock:
            n = max(1, self.inferred)
            out: dict[str, float] = {
                "captured": float(self.captured),
                "inferred": float(self.inferred),
                "dropped": float(self.dropped),
                "errors": float(self.errors),
                "nan_frames": float(self.nan_frames),
                "fps": round(fps, 3),
                "swaps": float(self.swaps),
                "last_swap_ms": round(self.last_swap_ms, 3),
                "mean_latency_ms": round(self.latency_total_ms / n, 3),
                "uptime_s": round(time.monotonic() - self.started_at, 3),
            }
            for stage, total in self.stage_ms.items():
                out[f"{stage}_ms"] = round(total / n, 4)
            recent = list(self._model_ms)
        pct = latency_percentiles(recent)
        out.update({k: round(pct[k], 3) for k in ("p50_ms", "p95_ms", "p99_ms")})  # recent frames' model time
        return out


@dataclass(frozen=True)
class SwapReport:
    """What a hot swap took: request → the first frame on the new model's turn."""

    previous: LoadedModel
    current: LoadedModel
    swap_ms: float  # request until applied between two frames
    frames_dropped: int  # drops counted while the swap was pending


class _PendingSwap:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.requested_at = time.perf_counter()
        self.applied = threading.Event()
        self.previous: LoadedModel | None = None
        self.swap_ms = 0.0


class Pipeline:
    """Capture and inference threads around one source and one (swappable) active model."""

    def __init__(
        self,
        source: FrameSource,
        model: LoadedModel,
        config: PipelineConfig | None = None,
        *,
        on_result: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.source = source
        self.config = config or PipelineConfig()
        policy = self.config.drop_policy or (DropPolicy.DROP_OLDEST if source.spec.is_live else DropPolicy.BLOCK)
        self.queue = FrameQueue(self.config.queue_size, policy)
        self.counters = Counters(self.config.fps_window)
        self.outcomes: collections.deque[Outcome] = collections.deque(maxlen=self.config.keep_outcomes or None)
        self._keep = self.config.keep_outcomes > 0
        self._model = model
        self._pending: _PendingSwap | None = None
        self._swap_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._on_result = on_result
        self._stop = threading.Event()
        self._capture_done = threading.Event()
        self._done = threading.Event()
        self._sink: IO[str] | None = None
        self._threads: list[threading.Thread] = []
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.config.results_path is not None:
            self.config.results_path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = open(self.config.results_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.counters.started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._capture_loop, name="edge-capture", daemon=True),
            threading.Thread(target=self._infer_loop, name="edge-infer", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info(
            "pipeline started: %s, model %s, queue %d (%s)",
            self.source.spec.describe(),
            self._model.version,
            self.queue.maxsize,
            self.queue.policy.value,
        )

    def stop(self, *, timeout: float = 10.0) -> dict[str, float]:
        """Stop capture, drain queued frames through inference, close the sink; returns the counters."""
        self._stop.set()
        self.source.interrupt()
        for t in self._threads:
            t.join(timeout)
        self.source.close()
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        snap = self.counters.snapshot()
        log.info(
            "pipeline stopped: captured %d, inferred %d, dropped %d",
            snap["captured"],
            snap["inferred"],
            snap["dropped"],
        )
        return snap

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the source to end and every frame to be processed; True if it did."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._done.is_set()

    @property
    def active(self) -> LoadedModel:
        return self._model

    # ------------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # ------------------------------------------------------------------ swap
    def swap_model(self, model: LoadedModel, *, timeout: float = 30.0) -> SwapReport:
        """Make ``model`` active between two frames; blocks until applied.

        The inference thread applies it before taking its next frame, so the
        frame in flight finishes on the old model. Raises ``TimeoutError`` if
        the pipeline is not running.
        """
        with self._swap_lock:
            pending = _PendingSwap(model)
            dropped_before = self.counters.dropped
            if not self.running:
                self._model, pending.previous = model, self._model
                pending.swap_ms = 0.0
            else:
                self._pending = pending
                deadline = time.monotonic() + timeout
                while not pending.applied.wait(0.05):
                    if self._done.is_set():  # the inference thread has exited: apply it here
                        self._apply_pending()
                    elif time.monotonic() > deadline:
                        self._pending = None
                        raise TimeoutError(f"swap to {model.version} not applied within {timeout} s")
            previous = pending.previous
            if previous is None:  # whoever applies a swap records the model it replaced
                raise RuntimeError(f"swap to {model.version} was applied without recording the previous model")
            self.counters.on_swap(pending.swap_ms)
            report = SwapReport(previous, model, pending.swap_ms, self.counters.dropped - dropped_before)
        log.info(
            "swapped %s -> %s in %.2f ms (%d frames dropped meanwhile)",
            report.previous.version,
            model.version,
            report.swap_ms,
            report.frames_dropped,
        )
        return report

    def _apply_pending(self) -> None:
        pending = self._pending
        if pending is None:
            return
        pending.previous = self._model
        self._model = pending.model
        self._pending = None
        pending.swap_ms = (time.perf_counter() - pending.requested_at) * 1000.0
        pending.applied.set()

    # ------------------------------------------------------------------ threads
    def _capture_loop(self) -> None:
        period = 1.0 / self.config.max_fps if self.config.max_fps else 0.0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                if self.config.prepare_on_capture:
                    frame = self._prepare(frame)
                self.counters.on_captured(self.queue.put(frame))
                if period:
                    next_at += period
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_at = time.monotonic()
        except Exception as e:  # noqa: BLE001 - the capture thread must report, not vanish
            log.exception("capture thread failed")
            self.failure = e
        finally:
            self.queue.close()
            self._capture_done.set()

    def _prepare(self, frame: Frame) -> Frame:
        try:
            return dataclasses.replace(frame, prepared=self._model.prepare(frame.image))
        except ValueError:
            return frame  # the inference thread will record why this frame cannot be used

    def _infer_loop(self) -> None:
        try:
            while True:
                self._apply_pending()
                frame = self.queue.get(0.02)
                if frame is None:
                    if self.queue.closed and len(self.queue) == 0:
                        break
                    continue
                model = self._model  # one reference for the whole frame: never half-swapped
                outcome = model.infer(frame)
                self._emit(frame, outcome)
        except Exception as e:  # noqa: BLE001 - see _capture_loop
            log.exception("inference thread failed")
            self.failure = e
        finally:
            self._apply_pending()
            self._done.set()

    def _emit(self, frame: Frame, outcome: Outcome) -> None:
        self.counters.on_outcome(outcome)
        if self._keep:
            self.outcomes.append(outcome)
        if self._sink is not None:
            self._sink.write(json.dumps(outcome.to_json(), separators=(",", ":")) + "\n")
        if self._on_result is not None:
            self._on_result(outcome)
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(frame, outcome)


def latency_percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p95/p99/mean/max of a list of milliseconds (empty → zeros)."""
    if not values:
        return {
            "p50_ms": 0.0,
            "p90_ms": 0.0,
            "p95_ms": 0.0,
            "p99_ms": 0.0,
            "mean_ms": 0.0,
            "max_ms": 0.0,
        }
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(arr.mean()),
        "max_ms": float(arr.max()),
    }
