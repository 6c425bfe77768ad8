"""One camera's side of the pipeline: a capture thread, a bounded queue, and counters.

A :class:`CameraFeed` reads one :class:`~edge_agent.perception.camera.FrameSource` on
its own thread, preprocesses each frame for the active model (so preprocessing
overlaps inference) and puts it into its own :class:`FrameQueue`. When the queue is
full a live source drops the *oldest* frame and a file blocks its reader; each feed
has its own :class:`Counters`, so a stalled or reconnecting camera shows in its own
figures and never blocks another camera's thread. The inference loop that empties
the queues is :mod:`edge_agent.perception.pipeline`'s.

This module does not run models.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from enum import Enum

import numpy as np

from edge_agent.perception.camera import Frame, FrameSource
from edge_agent.perception.inference import STAGES, Outcome

__all__ = ["DropPolicy", "FrameQueue", "Counters", "CameraFeed", "FeedState", "latency_percentiles"]

log = logging.getLogger(__name__)


class DropPolicy(str, Enum):
    DROP_OLDEST = "drop-oldest"  # live sources: keep the freshest frames
    BLOCK = "block"  # files: the reader waits, nothing is dropped


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

    def take(self, *, newest: bool) -> tuple[Frame | None, int]:
        """The next frame without waiting (None when empty), or with ``newest`` the freshest one, the
        older queued frames dropped; returns it and how many frames were dropped (0 or more)."""
        with self._cond:
            if not self._items:
                return None, 0
            skipped = 0
            if newest:
                skipped = len(self._items) - 1
                frame = self._items.pop()
                self._items.clear()
            else:
                frame = self._items.popleft()
            self._cond.notify_all()
            return frame, skipped

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

    def on_skipped(self, dropped: int) -> None:
        """Queued frames dropped because a fresher frame of the same camera was taken."""
        with self._lock:
            self.dropped += dropped

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


class FeedState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"  # delivering frames
    RECONNECTING = "reconnecting"  # a live source dropped and is being reopened
    ENDED = "ended"  # the source ended (a file at its end, a live source out of reconnect attempts)
    FAILED = "failed"  # the capture thread raised


class CameraFeed:
    """One named camera: its source, capture thread, queue and counters.

    ``prepare`` turns a captured frame into one carrying the active model's input
    (or returns it unchanged); ``arrivals`` is notified after every frame queued, so the
    inference loop waiting to fill a batch wakes when a camera delivers.
    """

    def __init__(
        self,
        name: str,
        source: FrameSource,
        *,
        queue_size: int,
        policy: DropPolicy,
        max_fps: float | None,
        prepare: Callable[[Frame], Frame] | None,
        arrivals: threading.Condition,
        totals: Counters,
        fps_window: int = 120,
    ) -> None:
        self.name = name
        self.source = source
        self.queue = FrameQueue(queue_size, policy)
        self.counters = Counters(fps_window)
        self.max_fps = max_fps
        self._prepare = prepare
        self._arrivals = arrivals
        self._totals = totals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"edge-capture-{name}", daemon=True)
        self._state = FeedState.STARTING
        self.failure: BaseException | None = None

    @property
    def live(self) -> bool:
        return self.queue.policy is DropPolicy.DROP_OLDEST

    @property
    def state(self) -> FeedState:
        if self._state is FeedState.RUNNING and getattr(self.source, "reconnecting", False):
            return FeedState.RECONNECTING
        return self._state

    @property
    def capturing(self) -> bool:
        """The capture thread may still queue frames (it has not ended)."""
        return not self.queue.closed

    def start(self) -> None:
        self.counters.started_at = time.monotonic()
        self._state = FeedState.RUNNING
        self._thread.start()

    def interrupt(self) -> None:
        self._stop.set()
        self.source.interrupt()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def take(self) -> Frame | None:
        """The frame this camera contributes to the next batch: the freshest for a live camera
        (older queued frames are dropped and counted), the oldest queued for a file."""
        frame, skipped = self.queue.take(newest=self.live)
        if skipped:
            self.counters.on_skipped(skipped)
            self._totals.on_skipped(skipped)
        return frame

    def _loop(self) -> None:
        period = 1.0 / self.max_fps if self.max_fps else 0.0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                frame = dataclasses.replace(frame, camera=self.name)
                if self._prepare is not None:
                    frame = self._prepare(frame)
                dropped = self.queue.put(frame)
                self.counters.on_captured(dropped)
                self._totals.on_captured(dropped)
                with self._arrivals:
                    self._arrivals.notify_all()
                if period:
                    next_at += period
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_at = time.monotonic()
            self._state = FeedState.ENDED
            if not self._stop.is_set():
                log.warning("camera %s: %s ended", self.name, self.source.spec.describe())
        except Exception as e:  # noqa: BLE001 - the capture thread must report, not vanish
            log.exception("camera %s: capture thread failed", self.name)
            self.failure = e
            self._state = FeedState.FAILED
        finally:
            self.queue.close()
            with self._arrivals:
                self._arrivals.notify_all()


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
