"""The measurements behind ``edge-bench``: model-only latency and end-to-end pipeline rate.

- :func:`run_model`: MLPerf single-stream latency of the runtime alone
  (:func:`models.bench.measure` around ``runtime.run`` on a preprocessed
  frame of the chosen source);
- :func:`run_pipeline`: the real capture → queue → inference pipeline of
  :mod:`edge_agent.perception.pipeline` on the source for a timed window after a warm-up:
  FPS, per-stage time, capture→result latency, dropped frames;
- :func:`resolve_target`: a bundle directory (optionally ``DIR#VARIANT``) or a
  bare ``.onnx`` file, which gets a minimal classification bundle written
  next to the results so the same code path runs it.

Power and temperature come from :class:`~edge_agent.bench.tegrastats.TegrastatsSampler`
when ``tegrastats`` exists. This module prints nothing (the CLI reports).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bench import hostinfo
from edge_agent.bench.tegrastats import TegrastatsSampler, summarize
from edge_agent.errors import EdgeAgentError
from edge_agent.perception.camera import CameraError, CameraSpec, FrameSource, open_source, parse_cameras
from edge_agent.perception.inference import STAGES, ModelLoadFailed, load_model
from edge_agent.perception.pipeline import BatchError, Pipeline, PipelineConfig, latency_percentiles
from models.bench import LatencyStats, measure
from models.bundle import (
    BundleError,
    DecoderKind,
    DecoderSpec,
    Format,
    Gates,
    HardwareRequirements,
    InputSpec,
    Manifest,
    OutputSpec,
    Precision,
    Provenance,
    SelectionEntry,
    Task,
    TensorSpec,
    Variant,
    read_bundle,
    sha256_file,
    write_bundle,
)
from models.hardware import HARDWARE_CLASSES
from models.preprocess import Preprocessor
from models.runtime import Backend, Model, ModelRuntimeError

__all__ = [
    "BenchError",
    "Mode",
    "BenchSettings",
    "Target",
    "RunResult",
    "resolve_target",
    "run_model",
    "run_pipeline",
    "first_frame",
]

log = logging.getLogger(__name__)


class BenchError(EdgeAgentError):
    """Bad benchmark input: a path, bundle, variant, source or shape that cannot be used."""


class Mode(str, Enum):
    MODEL = "model"
    PIPELINE = "pipeline"
    BOTH = "both"


@dataclass(frozen=True)
class BenchSettings:
    variant: str | None = None
    backend: Backend = Backend.AUTO
    providers: tuple[str, ...] | None = None
    threads: int | None = None  # intra-op threads; None = runtime default
    source: str = "synthetic"  # the first camera (model-only mode's frames)
    sources: tuple[str, ...] = ()  # every camera of the pipeline mode ([NAME=]SOURCE); () = just ``source``
    batch_timeout_ms: float = 5.0  # how long a pipeline batch waits for the other cameras
    mode: Mode = Mode.BOTH
    duration_s: float = 10.0  # measured seconds per model and mode
    warmup_s: float = 2.0  # discarded seconds before each measurement
    batch: int = 1  # model-only mode
    input_shape: tuple[int, int, int, int] | None = None  # bare .onnx with dynamic H/W
    queue_size: int = 8
    max_fps: float | None = None
    tegrastats_interval_ms: int = 500


@dataclass(frozen=True)
class Target:
    label: str  # "name@version[variant]"
    bundle_dir: Path
    variant: str | None
    source_path: str  # what the user passed


@dataclass
class RunResult:
    target: Target
    model: LatencyStats | None = None
    images_per_s: float | None = None
    pipeline: dict[str, Any] | None = None
    timeline_ms: list[float] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    power: dict[str, Any] = field(default_factory=dict)


_SAFE = re.compile(r"[^a-z0-9._-]+")


def _bare_onnx_bundle(onnx_path: Path, work: Path, shape: tuple[int, int, int, int] | None) -> Path:
    """A minimal classification bundle around a bare ONNX file (top-k decoder, ImageNet normalisation)."""
    from models.runtime.onnxrt import (
        OrtRuntime,  # ONNX Runtime only when a bare file is benchmarked
    )

    try:
        rt = OrtRuntime(onnx_path)
    except ModelRuntimeError as e:
        raise BenchError(f"{onnx_path}: {e}") from e
    dims = list(rt.input_shape)
    rt.close()
    if len(dims) != 4:
        raise BenchError(f"{onnx_path}: input {rt.input_name!r} has shape {dims}; edge-bench needs NCHW images")
    if shape is None and not all(isinstance(d, int) for d in dims[1:]):
        raise BenchError(f"{onnx_path}: input shape {dims} is dynamic; pass --input-shape N,C,H,W")
    n: int | None
    if shape is not None:
        n, c, h, w = shape
    else:
        n = dims[0] if isinstance(dims[0], int) else None
        c, h, w = (int(d) for d in dims[1:] if isinstance(d, int))
    name = _SAFE.sub("-", onnx_path.stem.lower()).strip("-._")[:60] or "model"
    directory = work / f"{name}-bundle"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "model.onnx"
    link.unlink(missing_ok=True)
    link.symlink_to(onnx_path.resolve())
    data_sha = sha256_file(onnx_path)
    variant = Variant(
        "onnx-fp32",
        Format.ONNX,
        Precision.FP32,
        "model.onnx",
        data_sha,
        onnx_path.stat().st_size,
        requires=HardwareRequirements(accelerators=("cpu", "cuda", "jetson")),
    )
    manifest = Manifest(
        name=name,
        version="0.0.0",
        task=Task.CLASSIFICATION,
        labels=("class",),
        input=InputSpec(name=rt.input_name, shape=(n, c, h, w)),
        output=OutputSpec(
            tensors=(TensorSpec(rt.output_names[0], (None, None), "logits"),),
            decoder=DecoderSpec(kind=DecoderKind.TOPK, top_k=1),
        ),
        variants=(variant,),
        selection={hw: SelectionEntry(("onnx-fp32",), "bare ONNX file") for hw in HARDWARE_CLASSES},
        gates=Gates(latency_budget_ms=1000.0),
        provenance=Provenance(str(onnx_path), "unknown", "edge-bench", time.strftime("%Y-%m-%dT%H:%M:%SZ")),
        arch="bare-onnx",
    )
    write_bundle(directory, manifest)
    return directory


def resolve_target(text: str, *, settings: BenchSettings, work: Path) -> Target:
    """``DIR``, ``DIR#VARIANT`` or ``FILE.onnx`` → a :class:`Target`; raises :class:`BenchError`."""
    path_text, _, variant = text.partition("#")
    path = Path(path_text)
    variant_id = variant or settings.variant
    if path.is_file() and path.suffix.lower() == ".onnx":
        bundle = _bare_onnx_bundle(path, work, settings.input_shape)
        return Target(path.name, bundle, None, text)
    if not path.is_dir():
        raise BenchError(f"{path_text}: not a bundle directory or an .onnx file")
    try:
        manifest = read_bundle(path, verify=False)
        if variant_id is not None:
            manifest.variant(variant_id)
    except BundleError as e:
        raise BenchError(f"{path_text}: {e}") from e
    label = f"{manifest.name}@{manifest.version}" + (f"[{variant_id}]" if variant_id else "")
    return Target(label, path, variant_id, text)


def first_frame(source: str) -> np.ndarray:
    """One frame of the (first camera's) source (the model-only mode's input); raises :class:`BenchError`."""
    try:
        src = open_source(parse_cameras([source], loop=True)[0].source)
    except CameraError as e:
        raise BenchError(str(e)) from e
    try:
        frame = src.read()
    finally:
        src.close()
    if frame is None:
        raise BenchError(f"source {source!r} delivered no frame")
    return frame.image


@contextmanager
def _power(settings: BenchSettings, into: dict[str, Any]) -> Iterator[None]:
    sampler = TegrastatsSampler(interval_ms=settings.tegrastats_interval_ms)
    if not sampler.available():
        yield
        return
    sampler.start()
    try:
        yield
    finally:
        into.update(summarize(sampler.stop()))


def run_model(target: Target, settings: BenchSettings, frame: np.ndarray, result: RunResult) -> None:
    """Model-only single-stream latency into ``result.model``; raises :class:`BenchError`."""
    try:
        model = Model(
            target.bundle_dir,
            target.variant,
            backend=settings.backend,
            providers=settings.providers,
            threads=settings.threads,
        )
    except ModelRuntimeError as e:
        raise BenchError(f"{target.source_path}: {e}") from e
    try:
        if model.manifest.input.shape[0] not in (None, settings.batch):
            raise BenchError(
                f"{target.label} has a fixed batch of {model.manifest.input.shape[0]}; "
                f"--batch {settings.batch} cannot run"
            )
        batch = np.stack([Preprocessor(model.input_spec)(frame)] * settings.batch)
        with _power(settings, result.power):
            stats = measure(
                lambda: model.runtime.run(batch),
                warmup_queries=5,
                warmup_s=settings.warmup_s,
                min_queries=20,
                min_duration_s=settings.duration_s,
                max_duration_s=settings.duration_s * 3 + 30,
                label=target.label,
            )
        result.model = stats
        result.images_per_s = stats.throughput_qps * settings.batch
        result.memory["rss_after_model_mb"] = hostinfo.process_rss_mb()
        result.memory["gpu"] = hostinfo.gpu_memory_mb()
    except ModelRuntimeError as e:
        raise BenchError(f"{target.label} failed during the benchmark: {e}") from e
    finally:
        model.close()


def cameras_of(settings: BenchSettings) -> tuple[CameraSpec, ...]:
    """The pipeline's cameras; raises :class:`BenchError` for a bad source string or a name used twice."""
    try:
        return parse_cameras(list(settings.sources or (settings.source,)), loop=True)
    except CameraError as e:
        raise BenchError(str(e)) from e


def _open_cameras(settings: BenchSettings) -> dict[str, FrameSource]:
    opened: dict[str, FrameSource] = {}
    try:
        for cam in cameras_of(settings):
            opened[cam.name] = open_source(cam.source)
    except CameraError as e:
        for src in opened.values():
            src.close()
        raise BenchError(str(e)) from e
    return opened


def run_pipeline(target: Target, settings: BenchSettings, result: RunResult, progress: Any = None) -> None:
    """The capture → batched inference pipeline on every camera for ``settings.duration_s`` after a warm-up."""
    try:
        loaded = load_model(
            target.bundle_dir,
            variant_id=target.variant,
            backend=settings.backend,
            providers=settings.providers,
            threads=settings.threads,
        )
    except ModelLoadFailed as e:
        raise BenchError(f"{target.source_path}: {e}") from e
    try:
        sources = _open_cameras(settings)
    except BenchError:
        loaded.close()
        raise
    try:
        pipe = Pipeline(
            sources,
            loaded,
            PipelineConfig(
                queue_size=settings.queue_size,
                max_fps=settings.max_fps,
                keep_outcomes=1_000_000,
                batch_timeout_ms=settings.batch_timeout_ms,
            ),
        )
    except BatchError as e:
        loaded.close()
        for src in sources.values():
            src.close()
        raise BenchError(f"{target.label}: {e}") from e
    pipe.start()
    try:
        _sleep(settings.warmup_s, pipe, None)
        before, t0 = _snapshots(pipe), time.monotonic()
        with _power(settings, result.power):
            _sleep(settings.duration_s, pipe, progress)
        after, t1 = _snapshots(pipe), time.monotonic()
    finally:
        pipe.stop()
        loaded.close()
    if pipe.failure is not None:
        raise BenchError(f"the pipeline failed: {pipe.failure}") from pipe.failure
    window = [o for o in pipe.outcomes if t0 <= o.done_at <= t1]
    result.pipeline = _pipeline_summary(before[""], after[""], t1 - t0, window)
    result.pipeline["batch_size"] = pipe.batch_size
    result.pipeline["cameras"] = {
        name: _pipeline_summary(before[name], after[name], t1 - t0, [o for o in window if o.camera == name])
        for name in pipe.feeds
    }
    result.timeline_ms = [o.latency_ms for o in window]
    result.memory["rss_after_pipeline_mb"] = hostinfo.process_rss_mb()


def _snapshots(pipe: Pipeline) -> dict[str, dict[str, float]]:
    """Counters of every camera, and of all of them under ``""``."""
    return {"": pipe.counters.snapshot(), **{n: f.counters.snapshot() for n, f in pipe.feeds.items()}}


def _sleep(seconds: float, pipe: Pipeline, progress: Any) -> None:
    """Wait ``seconds`` while the pipeline runs; a source that ends early is bad input."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        step = min(left, 0.25)
        if pipe.wait(step):
            if pipe.failure is None:
                raise BenchError("the source ended before the measurement finished (a short file without loop?)")
            return
        if progress is not None:
            progress.update(step)


def _pipeline_summary(
    before: dict[str, float], after: dict[str, float], seconds: float, window: list[Any]
) -> dict[str, Any]:
    inferred = after["inferred"] - before["inferred"]
    stages = {s: float(np.mean([o.timings_ms.get(s, 0.0) for o in window])) if window else 0.0 for s in STAGES}
    lat = latency_percentiles([o.latency_ms for o in window])
    return {
        "seconds": round(seconds, 3),
        "fps": inferred / seconds if seconds > 0 else 0.0,
        "captured": after["captured"] - before["captured"],
        "inferred": inferred,
        "dropped": after["dropped"] - before["dropped"],
        "errors": after["errors"] - before["errors"],
        "nan_frames": after["nan_frames"] - before["nan_frames"],
        "stages_ms": stages,
        "latency": lat,
    }
