"""The threaded perception pipeline: cameras → bounded queues → batched inference → sink.

Each camera (:class:`~edge_agent.perception.feeds.CameraFeed`) reads its source on its
own thread into its own bounded queue and preprocesses each frame for the active
model. One inference thread takes the newest frame of every camera that has one
(the next in order for a file), waits at most ``batch_timeout_ms`` for the other
cameras to deliver (like nvstreammux's batched-push-timeout), runs the frames as one
batch of the active :class:`~edge_agent.perception.inference.LoadedModel`
(:meth:`~edge_agent.perception.inference.LoadedModel.infer_batch`) and hands each
:class:`~edge_agent.perception.inference.Outcome`, named by its camera, to the sink
(JSON lines and/or callbacks) and to listeners (the shadow run, the health watch).

Every frame is counted, per camera and in total. When a queue is full a live
source drops its *oldest* frame, and a live camera's frames older than the one taken
for a batch are dropped too (a late frame is worth less than a fresh one); a file
blocks its reader (nothing is lost). At stop the frames still queued are drained, so
``captured == inferred + dropped`` holds for every camera once stopped. A camera
that ends or fails leaves the others running.

The active model is switched only by the inference thread, between two batches
(:meth:`Pipeline.swap_model`), so no frame sees a half-swapped model and every
outcome names the version that produced it.

This module does not load models or judge them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_agent.errors import ConfigError
from edge_agent.perception.camera import Frame, FrameSource
from edge_agent.perception.feeds import (
    CameraFeed,
    Counters,
    DropPolicy,
    FeedState,
    FrameQueue,
    latency_percentiles,
)
from edge_agent.perception.inference import LoadedModel, Outcome

__all__ = [
    "BatchError",
    "DropPolicy",
    "PipelineConfig",
    "FrameQueue",
    "Counters",
    "CameraFeed",
    "FeedState",
    "SwapReport",
    "Pipeline",
    "Listener",
    "batch_limit",
    "latency_percentiles",
]

log = logging.getLogger(__name__)

Listener = Callable[[Frame, Outcome], None]


class BatchError(ConfigError):
    """The batch asked for (``max_batch``) is more than the model can take."""


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = 8  # frames between capture and inference
    drop_policy: DropPolicy | None = None  # None = drop-oldest for live sources, block otherwise
    max_fps: float | None = None  # cap on the capture rate; None = as fast as the source
    results_path: Path | None = None  # JSON lines, one object per frame
    keep_outcomes: int = 0  # outcomes kept in memory for reports/plots (0 = none)
    prepare_on_capture: bool = True  # preprocess on the capture thread, overlapping inference
    fps_window: int = 120  # results over which fps is computed
    max_batch: int | None = None  # frames per inference; None = one per camera, within what the model takes
    batch_timeout_ms: float = 5.0  # how long a batch waits for the other cameras once one frame is ready

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.max_fps is not None and self.max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {self.max_fps}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {self.batch_timeout_ms}")


def batch_limit(model: LoadedModel, cameras: int, requested: int | None) -> int:
    """Frames per inference: ``requested``, or one per camera, within what ``model`` takes.

    A variant with a fixed batch dimension (``InputSpec.shape[0]`` an int) runs one frame
    at a time, one camera after the other; a TensorRT engine takes at most its profile's
    maximum. Raises :class:`BatchError` when ``requested`` is more than the model takes.
    """
    takes = model.max_batch
    if requested is not None:
        if takes is not None and requested > takes:
            why = (
                f"its input {model.spec.name!r} has a fixed batch of {model.spec.shape[0]}"
                if model.spec.shape[0] is not None
                else f"its engine takes at most {takes} frames"
            )
            raise BatchError(f"{model.version} ({model.variant_id}) cannot run batch {requested}: {why}")
        return requested
    wanted = max(1, cameras)
    return min(wanted, takes) if takes is not None else wanted


@dataclass(frozen=True)
class SwapReport:
    """What a hot swap took: request → the first batch on the new model's turn."""

    previous: LoadedModel
    current: LoadedModel
    swap_ms: float  # request until applied between two batches
    frames_dropped: int  # drops counted (all cameras) while the swap was pending


class _PendingSwap:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.requested_at = time.perf_counter()
        self.applied = threading.Event()
        self.previous: LoadedModel | None = None
        self.swap_ms = 0.0


class Pipeline:
    """Capture threads (one per camera) and one batched inference thread around a (swappable) active model.

    ``sources`` is one source (the camera is named ``cam0``) or the cameras by name.
    Raises :class:`BatchError` when ``config.max_batch`` is more than ``model`` takes.
    """

    def __init__(
        self,
        sources: FrameSource | Mapping[str, FrameSource],
        model: LoadedModel,
        config: PipelineConfig | None = None,
        *,
        on_result: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        named = dict(sources) if isinstance(sources, Mapping) else {"cam0": sources}
        if not named:
            raise ValueError("a pipeline needs at least one camera")
        self.counters = Counters(self.config.fps_window)  # all cameras together
        self._arrivals = threading.Condition()
        self.feeds: dict[str, CameraFeed] = {}
        for name, source in named.items():
            policy = self.config.drop_policy or (DropPolicy.DROP_OLDEST if source.spec.is_live else DropPolicy.BLOCK)
            self.feeds[name] = CameraFeed(
                name,
                source,
                queue_size=self.config.queue_size,
                policy=policy,
                max_fps=self.config.max_fps,
                prepare=self._prepare if self.config.prepare_on_capture else None,
                arrivals=self._arrivals,
                totals=self.counters,
                fps_window=self.config.fps_window,
            )
        self.outcomes: collections.deque[Outcome] = collections.deque(maxlen=self.config.keep_outcomes or None)
        self._keep = self.config.keep_outcomes > 0
        self.batch_size = batch_limit(model, len(self.feeds), self.config.max_batch)
        self._model = model
        self._pending: _PendingSwap | None = None
        self._pending_batch = self.batch_size
        self._swap_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._on_result = on_result
        self._stop = threading.Event()
        self._done = threading.Event()
        self._sink: IO[str] | None = None
        self._thread: threading.Thread | None = None
        self._turn = 0  # which camera goes first in the next batch: each in turn
        self.batches = 0
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ views
    @property
    def failure(self) -> BaseException | None:
        """What made the inference thread, or else a camera's capture thread, fail (None: nothing)."""
        if self._failure is not None:
            return self._failure
        return next((f.failure for f in self.feeds.values() if f.failure is not None), None)

    @property
    def source(self) -> FrameSource:
        """The first camera's source (the only one of a single-camera pipeline)."""
        return next(iter(self.feeds.values())).source

    @property
    def queue(self) -> FrameQueue:
        """The first camera's queue."""
        return next(iter(self.feeds.values())).queue

    def describe(self) -> str:
        return ", ".join(f"{n}: {f.source.spec.describe()}" for n, f in self.feeds.items())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.config.results_path is not None:
            self.config.results_path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = open(self.config.results_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.counters.started_at = time.monotonic()
        for feed in self.feeds.values():
            feed.start()
        self._thread = threading.Thread(target=self._infer_loop, name="edge-infer", daemon=True)
        self._thread.start()
        log.info(
            "pipeline started: %s; model %s, batch up to %d (timeout %.1f ms), queue %d per camera",
            self.describe(),
            self._model.version,
            self.batch_size,
            self.config.batch_timeout_ms,
            self.config.queue_size,
        )

    def stop(self, *, timeout: float = 10.0) -> dict[str, float]:
        """Stop capture, drain queued frames through inference, close the sink; returns the counters."""
        self._stop.set()
        for feed in self.feeds.values():
            feed.interrupt()
        for feed in self.feeds.values():
            feed.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        for feed in self.feeds.values():
            feed.source.close()
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        snap = self.counters.snapshot()
        log.info(
            "pipeline stopped: captured %d, inferred %d, dropped %d (%d cameras, %d batches)",
            snap["captured"],
            snap["inferred"],
            snap["dropped"],
            len(self.feeds),
            self.batches,
        )
        return snap

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every source to end and every frame to be processed; True if it did."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    @property
    def active(self) -> LoadedModel:
        return self._model

    def states(self) -> dict[str, FeedState]:
        return {name: feed.state for name, feed in self.feeds.items()}

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
        """Make ``model`` active between two batches; blocks until applied.

        The inference thread applies it before taking its next batch, so the
        batch in flight finishes on the old model and no queued frame is lost.
        Raises ``TimeoutError`` if it is not applied in time and :class:`BatchError`
        when the pipeline's ``max_batch`` is more than ``model`` takes.
        """
        batch = batch_limit(model, len(self.feeds), self.config.max_batch)
        with self._swap_lock:
            pending = _PendingSwap(model)
            dropped_before = self.counters.dropped
            if not self.running:
                self._model, pending.previous = model, self._model
                self.batch_size = batch
            else:
                pending.swap_ms = 0.0
                self._pending_batch = batch
                self._pending = pending
                with self._arrivals:  # wake an inference thread waiting for frames
                    self._arrivals.notify_all()
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
            "swapped %s -> %s in %.2f ms (%d frames dropped meanwhile); batch up to %d",
            report.previous.version,
            model.version,
            report.swap_ms,
            report.frames_dropped,
            batch,
        )
        return report

    def _apply_pending(self) -> None:
        pending = self._pending
        if pending is None:
            return
        pending.previous = self._model
        self._model = pending.model
        self.batch_size = self._pending_batch
        self._pending = None
        pending.swap_ms = (time.perf_counter() - pending.requested_at) * 1000.0
        pending.applied.set()

    # ------------------------------------------------------------------ threads
    def _prepare(self, frame: Frame) -> Frame:
        try:
            return dataclasses.replace(frame, prepared=self._model.prepare(frame.image))
        except ValueError:
            return frame  # the inference thread will record why this frame cannot be used

    def _gather(self) -> list[Frame] | None:
        """The next batch: one frame of each camera that has one. Waits up to ``batch_timeout_ms``
        for the cameras still capturing (not reconnecting) to deliver; [] when nothing came
        within a poll interval, None when every camera has ended and every queue is empty."""
        feeds = list(self.feeds.values())
        deadline: float | None = None
        with self._arrivals:
            while True:
                ready = [f for f in feeds if len(f.queue)]
                if not ready:
                    if not any(f.capturing for f in feeds):
                        # a queue closes after its last put: with every one closed, empty now is empty for good
                        if any(len(f.queue) for f in feeds):
                            continue
                        return None
                    if self._pending is not None:  # nothing to run: apply the swap now
                        return []
                    self._arrivals.wait(0.02)
                    if not any(len(f.queue) for f in feeds):
                        return []
                    continue
                pending = [
                    f for f in feeds if f.capturing and not len(f.queue) and f.state is not FeedState.RECONNECTING
                ]
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.config.batch_timeout_ms / 1000.0
                if len(ready) >= self.batch_size or not pending or now >= deadline or self._stop.is_set():
                    break
                self._arrivals.wait(deadline - now)
        start = self._turn % len(ready)
        self._turn += 1
        order = ready[start:] + ready[:start]
        frames = [f.take() for f in order[: self.batch_size]]
        return [f for f in frames if f is not None]

    def _infer_loop(self) -> None:
        try:
            while True:
                self._apply_pending()
                frames = self._gather()
                if frames is None:
                    break
                if not frames:
                    continue
                model = self._model  # one reference for the whole batch: never half-swapped
                outcomes = model.infer_batch(frames)
                self.batches += 1
                for frame, outcome in zip(frames, outcomes, strict=True):
                    self._emit(frame, outcome)
        except Exception as e:  # noqa: BLE001 - the inference thread must report, not vanish
            log.exception("inference thread failed")
            self._failure = e
        finally:
            self._apply_pending()
            self._done.set()

    def _emit(self, frame: Frame, outcome: Outcome) -> None:
        self.counters.on_outcome(outcome)
        feed = self.feeds.get(frame.camera)
        if feed is not None:
            feed.counters.on_outcome(outcome)
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
