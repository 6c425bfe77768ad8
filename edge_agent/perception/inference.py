"""A loaded bundle as the perception path uses it: one frame in, one attributed outcome out.

:class:`LoadedModel` wraps :class:`models.runtime.Model` (preprocessing,
runtime and decoder all come from the bundle manifest) and turns every call
into an :class:`Outcome` that names the model version that produced it, its
per-stage times and whether its outputs were finite. A runtime failure on a
frame becomes an outcome with ``error`` set, never an exception in the
inference thread.

This module does not capture frames, queue them or judge models.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import EdgeAgentError, ReasonCode
from edge_agent.perception.camera import Frame
from edge_agent.perception.runtimes import EngineOptions, open_staged
from models.bundle import DecoderKind, InputSpec
from models.hardware import HardwareProfile
from models.preprocess import Preprocessor, Transform
from models.runtime import Backend, Detections, Model, ModelRuntimeError
from models.runtime.decode import decode_boxes, decode_mask, pick_outputs, topk
from models.runtime.errors import EngineBuildError

__all__ = ["ModelLoadFailed", "Outcome", "LatencySamples", "Prepared", "LoadedModel", "load_model", "load_staged"]

log = logging.getLogger(__name__)

STAGES = ("decode", "queue", "preprocess", "infer", "postprocess")
MAX_LATENCY_SAMPLES = 4096  # per window; later frames still count for errors and NaNs


class ModelLoadFailed(EdgeAgentError):
    """A bundle could not be loaded or warmed up for serving; the message says why.

    ``reason`` is ``ENGINE_BUILD_FAILED`` when the TensorRT engine of a
    build-on-device variant could not be built, else ``MODEL_LOAD_FAILED``.
    """

    def __init__(self, message: str, *, reason: ReasonCode = ReasonCode.MODEL_LOAD_FAILED) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """One frame's result, attributed to exactly one model version."""

    frame_index: int
    model: str  # "name@version" of the model that produced it
    captured_at: float  # time.monotonic() of capture
    done_at: float  # time.monotonic() when the result was ready
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, queue, preprocess, infer, postprocess
    top_k: tuple[tuple[int, float], ...] | None = None
    detections: Detections | None = None
    mask: np.ndarray | None = None
    nan: bool = False  # an output was NaN or infinite
    error: str | None = None  # the inference failed; the message says why
    runtime: str | None = None  # the backend that ran it: "onnxruntime" or "tensorrt"
    camera: str = "cam0"  # the camera that captured the frame

    @property
    def ok(self) -> bool:
        return self.error is None and not self.nan

    @property
    def top1(self) -> int | None:
        return self.top_k[0][0] if self.top_k else None

    @property
    def latency_ms(self) -> float:
        """Capture to result (what a consumer of the result waits)."""
        return (self.done_at - self.captured_at) * 1000.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "camera": self.camera,
            "frame": self.frame_index,
            "model": self.model,
            "latency_ms": round(self.latency_ms, 3),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "nan": self.nan,
        }
        if self.runtime is not None:
            out["runtime"] = self.runtime
        if self.error is not None:
            out["error"] = self.error
        if self.top_k is not None:
            out["top_k"] = [[c, round(p, 5)] for c, p in self.top_k]
        if self.detections is not None:
            d = self.detections
            out["boxes"] = [
                {
                    "box": [round(float(v), 1) for v in d.boxes[i]],
                    "score": round(float(d.scores[i]), 4),
                    "label": int(d.labels[i]),
                }
                for i in range(len(d))
            ]
        if self.mask is not None:
            labels, counts = np.unique(self.mask, return_counts=True)
            out["mask_histogram"] = {str(int(k)): int(v) for k, v in zip(labels, counts, strict=True)}
        return out


@dataclass
class LatencySamples:
    """Per-frame inference times of one model in one window (a shadow run, a health window; bounded)."""

    wall_ms: list[float] = field(default_factory=list)  # preprocess + infer + postprocess
    cpu_ms: list[float] = field(default_factory=list)  # the inference call's thread CPU time
    gpu: bool = False  # served by TensorRT: the CPU thread mostly waits, wall time is the measure

    def add(self, outcome: Outcome) -> None:
        self.gpu = self.gpu or outcome.runtime == "tensorrt"
        if len(self.wall_ms) >= MAX_LATENCY_SAMPLES:
            return
        t = outcome.timings_ms
        self.wall_ms.append(sum(t.get(k, 0.0) for k in ("preprocess", "infer", "postprocess")))
        if "infer_cpu" in t:
            self.cpu_ms.append(t["infer_cpu"])

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.wall_ms, 95)) if self.wall_ms else 0.0

    def measure(self) -> tuple[str, list[float]]:
        """The metric a regression is judged on and its samples (positive ones only)."""
        if not self.gpu and len(self.cpu_ms) == len(self.wall_ms):
            return "cpu", [x for x in self.cpu_ms if x > 0]
        return "wall", [x for x in self.wall_ms if x > 0]


@dataclass(frozen=True)
class Prepared:
    """A frame already turned into the network input of one :class:`InputSpec`."""

    spec: InputSpec
    tensor: np.ndarray  # one input, no batch dim
    transform: Transform
    frame_hw: tuple[int, int]
    preprocess_ms: float


class LoadedModel:
    """A bundle variant opened, warmed up and ready to serve frames.

    :meth:`prepare` (preprocessing) may run on the capture thread while
    :meth:`infer` runs the previous frame, so the inference thread spends its
    time in the runtime; a frame prepared for another input spec (after a
    swap) is simply prepared again.
    """

    def __init__(self, model: Model, bundle_dir: Path) -> None:
        self.model = model
        self.bundle_dir = bundle_dir
        self.version = model.name
        self.manifest = model.manifest
        self.task = model.manifest.task
        self.labels = model.manifest.labels
        self.variant_id = model.variant.id
        self.runtime = model.backend.value  # "tensorrt" when an engine built on this device serves
        self.spec = model.input_spec  # the variant's own input: the spec's tensor, or the resized frame
        self._local = threading.local()  # a Preprocessor per thread: it keeps the last transform

    def prepare(self, image: np.ndarray) -> Prepared:
        """Preprocess one uint8 BGR frame; raises ``ValueError`` for a frame it cannot take."""
        pre = getattr(self._local, "pre", None)
        if pre is None:
            pre = self._local.pre = Preprocessor(self.spec)
        t0 = time.perf_counter()
        tensor = pre(image)
        return Prepared(
            self.spec,
            tensor,
            pre.last_transform,
            (int(image.shape[0]), int(image.shape[1])),
            (time.perf_counter() - t0) * 1000.0,
        )

    @property
    def max_batch(self) -> int | None:
        """The most frames one inference takes: 1 for a fixed batch dimension (the frames of
        several cameras then run one after the other), an engine's profile maximum, None = any."""
        if self.spec.shape[0] is not None:
            return 1
        limit = getattr(self.model.runtime, "max_batch", None)
        return int(limit) if isinstance(limit, int) else None

    def infer(self, frame: Frame) -> Outcome:
        """Run one frame; failures and non-finite outputs are recorded in the outcome."""
        return self.infer_batch([frame])[0]

    def infer_batch(self, frames: Sequence[Frame]) -> list[Outcome]:
        """Run frames (of several cameras) as one batch: their prepared tensors stacked along a new
        batch axis, one runtime call, one outcome per frame in order.

        More frames than :attr:`max_batch` run in chunks. A frame that cannot be prepared gets an
        outcome with ``error`` and the others still run; a failed runtime call fails every frame
        of its batch. ``timings_ms["infer"]`` / ``["infer_cpu"]`` are each frame's share of the
        batch's runtime call (its wall / thread CPU time over the batch size), ``"batch"`` the
        batch size: a frame's share is what the health watch compares with a shadow run's frames.
        """
        limit = self.max_batch
        if limit is not None and len(frames) > limit:
            return [o for i in range(0, len(frames), limit) for o in self.infer_batch(frames[i : i + limit])]
        start = _now()
        out: list[Outcome | None] = [None] * len(frames)
        ready: list[tuple[int, Prepared, dict[str, float]]] = []
        for i, frame in enumerate(frames):
            timings = {"decode": frame.decode_ms, "queue": max(0.0, (start - frame.captured_at) * 1000.0)}
            prep = frame.prepared
            try:
                if not isinstance(prep, Prepared) or prep.spec != self.spec:
                    prep = self.prepare(frame.image)
            except ValueError as e:
                out[i] = self._failed(frame, timings, str(e))
                continue
            timings["preprocess"] = prep.preprocess_ms
            ready.append((i, prep, timings))
        if ready:
            self._run(frames, ready, out)
        return [o for o in out if o is not None]

    def _run(
        self,
        frames: Sequence[Frame],
        ready: list[tuple[int, Prepared, dict[str, float]]],
        out: list[Outcome | None],
    ) -> None:
        n = len(ready)
        try:
            batch = ready[0][1].tensor[None] if n == 1 else np.stack([p.tensor for _, p, _ in ready])
            t1, c1 = time.perf_counter(), time.thread_time()
            outputs = self.model.runtime.run(batch)
            t2, c2 = time.perf_counter(), time.thread_time()
        except (ModelRuntimeError, ValueError) as e:
            for i, _, timings in ready:
                out[i] = self._failed(frames[i], timings, str(e))
            return
        for row, (i, prep, timings) in enumerate(ready):
            t3 = time.perf_counter()
            try:
                outcome = self._decode(frames[i], outputs, prep, timings, row)
            except (ModelRuntimeError, ValueError) as e:
                out[i] = self._failed(frames[i], timings, str(e))
                continue
            timings.update(
                infer=(t2 - t1) * 1000.0 / n,
                infer_cpu=(c2 - c1) * 1000.0 / n,  # this thread's CPU time: what a busy neighbour cannot inflate
                postprocess=(time.perf_counter() - t3) * 1000.0,
            )
            if n > 1:
                timings["batch"] = float(n)
            out[i] = outcome

    def _failed(self, frame: Frame, timings: dict[str, float], error: str) -> Outcome:
        return Outcome(
            frame.index,
            self.version,
            frame.captured_at,
            _now(),
            timings,
            error=error,
            runtime=self.runtime,
            camera=frame.camera,
        )

    def _decode(
        self,
        frame: Frame,
        outputs: dict[str, np.ndarray],
        prep: Prepared,
        timings: dict[str, float],
        row: int = 0,
    ) -> Outcome:
        spec = self.manifest.output
        picked = pick_outputs(outputs, spec)
        nan = any(
            np.issubdtype(a.dtype, np.floating) and not bool(np.all(np.isfinite(a[row] if a.ndim else a)))
            for a in outputs.values()
        )
        kind = spec.decoder.kind
        top_k = detections = mask = None
        if kind is DecoderKind.TOPK:
            top_k = topk(picked["logits"][row], spec.decoder.top_k)
        elif kind is DecoderKind.BOXES:
            detections = decode_boxes(
                picked["boxes"][row], picked["scores"][row], spec.decoder, prep.transform, prep.frame_hw
            )
        else:
            mask = decode_mask(picked["mask_logits"][row], prep.transform, prep.frame_hw)
        return Outcome(
            frame.index,
            self.version,
            frame.captured_at,
            _now(),
            timings,
            top_k=top_k,
            detections=detections,
            mask=mask,
            nan=nan,
            runtime=self.runtime,
            camera=frame.camera,
        )

    def warmup(self, frames: Sequence[np.ndarray] = (), *, n: int = 3) -> None:
        """Run a few frames (live ones when given) so the first served frame is not slow."""
        try:
            if frames:
                for image in list(frames)[:n]:
                    self.model.predict(image)
            else:
                self.model.warmup(n)
        except ModelRuntimeError as e:
            raise ModelLoadFailed(f"{self.version} failed during warm-up: {e}") from e

    def close(self) -> None:
        self.model.close()

    def __repr__(self) -> str:
        return f"LoadedModel({self.version}, variant={self.variant_id!r}, runtime={self.runtime})"


def _now() -> float:
    return time.monotonic()


def load_model(
    bundle_dir: str | os.PathLike[str],
    *,
    variant_id: str | None = None,
    backend: Backend = Backend.AUTO,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    warmup: int = 3,
) -> LoadedModel:
    """Open a bundle for serving and warm it up; raises :class:`ModelLoadFailed`."""
    path = Path(bundle_dir)
    try:
        model = Model(path, variant_id, backend=backend, providers=providers, threads=threads)
    except ModelRuntimeError as e:
        raise ModelLoadFailed(f"cannot load bundle {path}: {e}") from e
    return _ready(LoadedModel(model, path), warmup)


def load_staged(
    slot_dir: Path,
    variant_id: str | None,
    *,
    engines_dir: Path,
    profile: HardwareProfile,
    threads: int | None = None,
    engine: EngineOptions | None = None,
    warmup: int = 3,
) -> LoadedModel:
    """A staged slot's variant opened as it serves on this device (:func:`edge_agent.perception.runtimes.open_staged`:
    the TensorRT engine built here for a build-on-device variant), warmed up.

    Raises :class:`ModelLoadFailed` (``reason`` ``ENGINE_BUILD_FAILED`` when the engine cannot be built).
    """
    try:
        model = open_staged(
            slot_dir, variant_id, engines_dir=engines_dir, profile=profile, threads=threads, engine=engine
        )
    except EngineBuildError as e:
        raise ModelLoadFailed(
            f"cannot build the engine of {slot_dir}: {e}", reason=ReasonCode.ENGINE_BUILD_FAILED
        ) from e
    except ModelRuntimeError as e:
        raise ModelLoadFailed(f"cannot load bundle {slot_dir}: {e}") from e
    return _ready(LoadedModel(model, slot_dir), warmup)


def _ready(loaded: LoadedModel, warmup: int) -> LoadedModel:
    path = loaded.bundle_dir
    if warmup:
        try:
            loaded.warmup(n=warmup)
        except ModelLoadFailed:
            loaded.close()
            raise
    log.info("loaded %s (variant %s, %s) from %s", loaded.version, loaded.variant_id, loaded.runtime, path)
    return loaded
