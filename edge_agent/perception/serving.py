"""``CameraPerception``: the camera implementation of :class:`edge_agent.perception.Perception`.

It serves the active bundle on a camera stream through
:class:`~edge_agent.perception.pipeline.Pipeline` and gives the update state machine
its four judged steps (docs/contracts.md §9):

- :meth:`~CameraPerception.shadow` loads and warms the candidate beside the
  active model and runs it on a rate-limited sample of the live frames
  (:mod:`edge_agent.perception.shadow`);
- :meth:`~CameraPerception.swap` makes it active between two frames, with
  no frame dropped by the swap itself;
- :meth:`~CameraPerception.watch` watches the new model's health
  (:mod:`edge_agent.perception.health`);
- :meth:`~CameraPerception.swap_back` restores the previous model the same
  way (it is kept loaded until the next update, so a rollback costs no load).

This module does not decide whether to update; the state machine does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent.errors import EdgeAgentError, ReasonCode, StopRequested
from edge_agent.perception.base import GateContext, GateResult, JudgedAgainst, SwapResult
from edge_agent.perception.camera import (
    CameraSpec,
    FrameSource,
    ReconnectPolicy,
    SourceSpec,
    open_source,
    parse_cameras,
)
from edge_agent.perception.health import HealthWatch
from edge_agent.perception.inference import (
    LatencySamples,
    LoadedModel,
    ModelLoadFailed,
    Outcome,
    load_model,
    load_staged,
)
from edge_agent.perception.pipeline import BatchError, FeedState, Pipeline, PipelineConfig, batch_limit
from edge_agent.perception.runtimes import EngineOptions, variant_in
from edge_agent.perception.shadow import ShadowRun
from models.bundle import Gates
from models.hardware import HardwareProfile

__all__ = ["PerceptionError", "CameraPerception"]

log = logging.getLogger(__name__)


class PerceptionError(EdgeAgentError):
    """The perception path was used out of order (e.g. ``swap`` before ``start``)."""


class CameraPerception:
    """Serve one or several cameras with the active model; shadow, swap, watch and swap back candidates.

    ``source`` is one source (the camera is named ``cam0``) or the named cameras; their frames
    are inferred in batches (:class:`~edge_agent.perception.pipeline.Pipeline`).
    """

    def __init__(
        self,
        source: SourceSpec | Sequence[CameraSpec],
        *,
        config: PipelineConfig | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        reconnect: ReconnectPolicy | None = None,
        shadow_duty: float = 0.5,
        on_result: Callable[[Outcome], None] | None = None,
        stop_requested: threading.Event | None = None,
        engines_dir: Path | None = None,
        profile: Callable[[], HardwareProfile] | None = None,
        engine: EngineOptions | None = None,
    ) -> None:
        self.cameras = (CameraSpec("cam0", source),) if isinstance(source, SourceSpec) else tuple(source)
        if not self.cameras:
            raise ValueError("CameraPerception needs at least one camera")
        self.source_spec = self.cameras[0].source
        # with the device's engine cache and profile, models open as they serve on it (open_staged):
        # a build-on-device variant as its TensorRT engine; without them, the variant file itself
        self.engines_dir, self.profile, self.engine = engines_dir, profile, engine
        self.config = config or PipelineConfig()
        self.providers = tuple(providers) if providers else None
        self.threads = threads
        self.reconnect = reconnect
        self.shadow_duty = shadow_duty
        self.on_result = on_result
        # set by the daemon's signal handler: shadow() and watch() end early and raise StopRequested
        self.stop_requested = stop_requested
        self._pipeline: Pipeline | None = None
        self._candidate: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._baseline: LatencySamples | None = None  # the shadow run's latency of the staged candidate
        self._final: dict[str, float] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_options(
        cls,
        source: str | Sequence[str],
        *,
        loop: bool = True,
        results_path: Path | None = None,
        max_fps: float | None = None,
        queue_size: int = 8,
        max_batch: int | None = None,
        batch_timeout_ms: float = 5.0,
        threads: int | None = None,
        stop_requested: threading.Event | None = None,
        engines_dir: Path | None = None,
        profile: Callable[[], HardwareProfile] | None = None,
        engine: EngineOptions | None = None,
    ) -> CameraPerception:
        """Build from ``edge-agent run --source [NAME=]SRC ...`` options; raises ``CameraError`` for a bad
        source string or a camera name given twice."""
        cameras = parse_cameras([source] if isinstance(source, str) else list(source), loop=loop)
        return cls(
            cameras,
            config=PipelineConfig(
                queue_size=queue_size,
                max_fps=max_fps,
                results_path=results_path,
                max_batch=max_batch,
                batch_timeout_ms=batch_timeout_ms,
            ),
            threads=threads,
            stop_requested=stop_requested,
            engines_dir=engines_dir,
            profile=profile,
            engine=engine,
        )

    def probe(self) -> None:
        """Open and close every camera's source once; raises ``CameraError`` naming the first that does
        not open (what ``edge-agent run`` checks before it starts, so a bad source stops it at once)."""
        for cam in self.cameras:
            source = open_source(cam.source, reconnect=self.reconnect)
            source.close()

    # ------------------------------------------------------------------ serving
    def _load(self, bundle_dir: Path, variant_id: str | None = None) -> LoadedModel:
        vid = variant_id or variant_in(bundle_dir)
        if self.engines_dir is not None and self.profile is not None:
            return load_staged(
                bundle_dir,
                vid,
                engines_dir=self.engines_dir,
                profile=self.profile(),
                threads=self.threads,
                engine=self.engine,
            )
        return load_model(bundle_dir, variant_id=vid, providers=self.providers, threads=self.threads)

    def start(self, active_bundle_dir: Path) -> None:
        """Load the active model, open the source, start the threads.

        Raises ``ModelLoadFailed``, ``CameraError`` or ``BatchError`` (a ``max_batch`` the model cannot
        take); nothing is left running then.
        """
        with self._lock:
            if self._pipeline is not None:
                raise PerceptionError("perception is already serving; stop() it first")
            model = self._load(Path(active_bundle_dir))
            opened: dict[str, FrameSource] = {}
            try:
                for cam in self.cameras:
                    opened[cam.name] = open_source(cam.source, reconnect=self.reconnect)
                self._pipeline = Pipeline(opened, model, self.config, on_result=self.on_result)
            except EdgeAgentError:
                for src in opened.values():
                    src.close()
                model.close()
                raise
            self._pipeline.start()

    def stop(self) -> None:
        with self._lock:
            pipeline, self._pipeline = self._pipeline, None
            if pipeline is None:
                return
            pipeline.stop()
            self._final = self._snapshot(pipeline)  # the last run's totals stay readable
            for m in {id(x): x for x in (pipeline.active, self._candidate, self._previous) if x}.values():
                m.close()
            self._candidate = self._previous = None

    @property
    def pipeline(self) -> Pipeline | None:
        return self._pipeline

    def active_version(self) -> str | None:
        p = self._pipeline
        return p.active.version if p is not None else None

    def counters(self) -> dict[str, float]:
        """Counters of the running pipeline; after :meth:`stop`, the totals of the last run."""
        p = self._pipeline
        if p is None:
            return (
                dict(self._final)
                if self._final
                else {
                    "captured": 0.0,
                    "inferred": 0.0,
                    "dropped": 0.0,
                    "fps": 0.0,
                    "last_swap_ms": 0.0,
                }
            )
        return self._snapshot(p)

    @staticmethod
    def _snapshot(p: Pipeline) -> dict[str, float]:
        out = p.counters.snapshot()
        out["queued"] = float(sum(len(f.queue) for f in p.feeds.values()))
        out["reconnects"] = float(sum(f.source.reconnects for f in p.feeds.values()))
        out["cameras"] = float(len(p.feeds))
        out["cameras_down"] = 0.0
        out["batch_size"] = float(p.batch_size)
        for name, feed in p.feeds.items():
            c = feed.counters.snapshot()
            up = feed.state is FeedState.RUNNING
            out["cameras_down"] += not up
            for key in ("captured", "inferred", "dropped", "errors", "fps", "mean_latency_ms"):
                out[f"camera.{name}.{key}"] = c[key]
            out[f"camera.{name}.reconnects"] = float(feed.source.reconnects)
            out[f"camera.{name}.up"] = 1.0 if up else 0.0
        # the names of the report metrics (docs/contracts.md §7)
        out.update(
            frames_captured=out["captured"],
            frames_dropped=out["dropped"],
            swap_ms=out["last_swap_ms"],
        )
        return out

    def camera_states(self) -> dict[str, str]:
        """Each camera's state now (``running``, ``reconnecting``, ``ended``, ``failed``); {} when not serving."""
        p = self._pipeline
        return {name: state.value for name, state in p.states().items()} if p is not None else {}

    def problems(self) -> str | None:
        """What the heartbeat says about cameras that are not delivering frames, or None when all are."""
        down = {name: state for name, state in self.camera_states().items() if state != FeedState.RUNNING.value}
        if not down:
            return None
        return "cameras not delivering frames: " + ", ".join(f"{n} ({s})" for n, s in sorted(down.items()))

    def _require(self) -> Pipeline:
        if self._pipeline is None:
            raise PerceptionError("perception is not serving; call start() first")
        return self._pipeline

    # ------------------------------------------------------------------ update steps
    def shadow(
        self, candidate_dir: Path, gates: Gates, *, timeout_s: float, context: GateContext | None = None
    ) -> GateResult:
        """Raises :class:`StopRequested` when ``stop_requested`` is set during the run."""
        with self._lock:
            pipeline = self._require()
            if self._candidate is not None:
                self._candidate.close()
                self._candidate = None
            if not pipeline.running:
                return GateResult(
                    False,
                    ReasonCode.SOURCE_ENDED,
                    f"no live frames to judge the candidate on: every camera has ended ({pipeline.describe()})",
                    {"frames": 0.0},
                )
            active = pipeline.active
            context = context or GateContext.floor(gates, baseline=active.version)
            try:
                candidate = self._load(Path(candidate_dir), context.candidate_variant)
            except ModelLoadFailed as e:
                return GateResult(False, e.reason, str(e))
            try:
                batch_limit(candidate, len(pipeline.feeds), self.config.max_batch)
            except BatchError as e:
                candidate.close()
                return GateResult(False, ReasonCode.MODEL_LOAD_FAILED, str(e))
            if candidate.task is not active.task:
                candidate.close()
                return GateResult(
                    False,
                    ReasonCode.LOW_AGREEMENT,
                    f"candidate is a {candidate.task.value} model, the active one "
                    f"{active.task.value}: their outputs cannot agree",
                )
            reference = None
            if context.judged_against is JudgedAgainst.OWN_FP32:
                try:
                    reference = self._load(Path(candidate_dir), context.baseline_variant)
                except ModelLoadFailed as e:
                    candidate.close()
                    return GateResult(False, ReasonCode.MODEL_LOAD_FAILED, f"reference {context.baseline_variant}: {e}")
            try:
                result, latency = self._run_shadow(pipeline, candidate, gates, context, reference, timeout_s)
            except StopRequested:
                candidate.close()
                raise
            finally:
                if reference is not None:
                    reference.close()
            if result.passed:
                self._candidate = candidate
                self._baseline = latency
            else:
                candidate.close()
            return result

    def _run_shadow(
        self,
        pipeline: Pipeline,
        candidate: LoadedModel,
        gates: Gates,
        context: GateContext,
        reference: LoadedModel | None,
        timeout_s: float,
    ) -> tuple[GateResult, LatencySamples]:
        active = pipeline.active
        run = ShadowRun(
            candidate,
            gates,
            task=active.task,
            context=context,
            reference=reference,
            reference_labels=active.labels,
            duty=self.shadow_duty,
        )
        pipeline.add_listener(run.offer)
        log.info(
            "shadow run of %s against %s (%s): %d to %d frames within %.0f s",
            candidate.version,
            context.baseline,
            context.judged_against.value,
            run.stats.test.min_frames,
            gates.shadow_frames,
            timeout_s,
        )
        run.start()
        try:
            result = run.wait(
                timeout_s,
                stop=self.stop_requested,
                ended=lambda: None if pipeline.running else f"every camera ({pipeline.describe()})",
            )
            return result, run.stats.latency
        finally:
            pipeline.remove_listener(run.offer)

    def swap(self) -> SwapResult:
        with self._lock:
            pipeline = self._require()
            candidate = self._candidate
            if candidate is None:
                return SwapResult(False, detail="no candidate has passed a shadow run")
            report = pipeline.swap_model(candidate)
            self._candidate = None
            if self._previous is not None and self._previous is not report.previous:
                self._previous.close()  # two updates ago: no longer a rollback target
            self._previous = report.previous
            return SwapResult(
                True,
                report.swap_ms,
                report.frames_dropped,
                f"{report.previous.version} -> {candidate.version}",
            )

    def watch(self, gates: Gates, *, window_s: float) -> GateResult:
        """Raises :class:`StopRequested` when ``stop_requested`` is set during the window."""
        pipeline = self._require()
        watch = HealthWatch(pipeline.active.version, gates, baseline=self._baseline)
        pipeline.add_listener(watch)
        log.info("health watch of %s: %.1f s window", watch.version, window_s)
        try:
            return watch.wait(window_s, stop=self.stop_requested)
        finally:
            pipeline.remove_listener(watch)

    def swap_back(self, previous_dir: Path) -> SwapResult:
        with self._lock:
            pipeline = self._require()
            previous = self._previous
            if previous is None or previous.bundle_dir.resolve() != Path(previous_dir).resolve():
                try:
                    previous = self._load(Path(previous_dir))
                except ModelLoadFailed as e:
                    return SwapResult(False, detail=f"cannot load the previous model: {e}")
            report = pipeline.swap_model(previous)
            self._previous = None
            if report.previous is not previous:
                report.previous.close()  # the model that failed its health window
            log.warning("rolled back %s -> %s", report.previous.version, previous.version)
            return SwapResult(
                True,
                report.swap_ms,
                report.frames_dropped,
                f"{report.previous.version} -> {previous.version}",
            )
