"""Open a bundle variant with the right backend, and run frames end to end.

:func:`open_variant` reads a bundle, picks the variant (the manifest's
selection for this host's hardware class unless one is named), verifies its
length and sha256, and opens it with ONNX Runtime or TensorRT.
:class:`Model` adds the bundle's preprocessing and decoder around it:
``predict(frame_bgr) -> Prediction`` with per-stage timings; given
``engine=``, it serves the TensorRT engine a device built from the variant's
ONNX (``build_on_device``) instead of the ONNX itself.

This module does not download, verify signatures or benchmark (the agent and
:mod:`models.bench` do).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from models.bundle import (
    BundleError,
    DecoderKind,
    Format,
    Manifest,
    Variant,
    read_bundle,
    verify_bundle,
)
from models.hardware import HardwareProfile, NoCompatibleVariant, detect_profile, select_variant
from models.preprocess import Preprocessor, Transform
from models.runtime.base import Backend, Runtime
from models.runtime.decode import Detections, decode_boxes, decode_mask, pick_outputs, topk
from models.runtime.errors import InferenceError, ModelLoadError

__all__ = ["Prediction", "Model", "open_variant", "resolve_variant"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One frame's result. Exactly one of ``top_k`` / ``boxes`` / ``mask`` is set, by ``kind``.

    ``raw`` holds this frame's output tensors (batch dim removed);
    ``timings_ms`` the stage times of the call that produced it
    (``preprocess``, ``infer``, ``postprocess``, ``total``; a batch call
    reports the whole batch's times and ``batch_size``).
    """

    kind: DecoderKind
    top_k: tuple[tuple[int, float], ...] | None = None  # (class index, probability), best first
    boxes: Detections | None = None  # frame pixels
    mask: np.ndarray | None = None  # int32 HxW class map in frame pixels
    raw: Mapping[str, np.ndarray] = field(default_factory=dict)
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def top1(self) -> int | None:
        """Best class index (classification), or None."""
        return self.top_k[0][0] if self.top_k else None

    def has_nan(self) -> bool:
        """Whether any raw output is NaN or infinite."""
        return any(np.issubdtype(a.dtype, np.floating) and not bool(np.all(np.isfinite(a))) for a in self.raw.values())


def resolve_variant(manifest: Manifest, variant_id: str | None, profile: HardwareProfile | None) -> Variant:
    """The named variant, or the manifest's choice for ``profile`` (this host when None)."""
    if variant_id is not None:
        try:
            return manifest.variant(variant_id)
        except BundleError as e:
            raise ModelLoadError(str(e)) from e
    try:
        return select_variant(manifest, profile or detect_profile())
    except NoCompatibleVariant as e:
        raise ModelLoadError(str(e)) from e


def _concrete(variant: Variant, backend: Backend) -> Backend:
    if backend is Backend.AUTO:
        return Backend.TENSORRT if variant.format is Format.TENSORRT_ENGINE else Backend.ONNXRUNTIME
    return backend


def _open_file(
    path: Path, variant: Variant, *, backend: Backend, providers: Sequence[str] | None, threads: int | None
) -> Runtime:
    backend = _concrete(variant, backend)
    if backend is Backend.TENSORRT:
        if variant.format is not Format.TENSORRT_ENGINE:
            raise ModelLoadError(f"variant {variant.id!r} is {variant.format.value}, not a TensorRT engine")
        from models.runtime.tensorrt import TrtRuntime

        return TrtRuntime(path)
    if variant.format is not Format.ONNX:
        raise ModelLoadError(f"variant {variant.id!r} is a {variant.format.value}; ONNX Runtime runs only ONNX")
    from models.runtime.onnxrt import OrtRuntime, ort_options

    return OrtRuntime(path, ort_options(providers=providers, threads=threads))


def open_variant(
    bundle_dir: str | os.PathLike[str],
    variant_id: str | None = None,
    *,
    profile: HardwareProfile | None = None,
    backend: Backend = Backend.AUTO,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    verify: bool = True,
) -> Runtime:
    """Open one variant of a bundle (contract §4).

    With ``verify`` (default) the variant file's length and sha256 are checked
    against the manifest before the runtime parses a byte of it. Raises
    :class:`ModelLoadError` (bad bundle, no compatible variant, unloadable
    file) or :class:`BackendUnavailable`.
    """
    manifest = _read(bundle_dir)
    variant = resolve_variant(manifest, variant_id, profile)
    return _open_checked(
        Path(bundle_dir), manifest, variant, backend=backend, providers=providers, threads=threads, verify=verify
    )


def _read(bundle_dir: str | os.PathLike[str]) -> Manifest:
    try:
        return read_bundle(bundle_dir, verify=False)
    except BundleError as e:
        raise ModelLoadError(f"invalid bundle {bundle_dir}: {e}") from e


def _open_checked(
    bundle_dir: Path,
    manifest: Manifest,
    variant: Variant,
    *,
    backend: Backend,
    providers: Sequence[str] | None,
    threads: int | None,
    verify: bool,
    engine: Path | None = None,
) -> Runtime:
    if verify:
        try:
            verify_bundle(bundle_dir, manifest, variant_ids=[variant.id])
        except BundleError as e:
            raise ModelLoadError(f"refusing to load {variant.file}: {e}") from e
    if engine is not None:
        rt = _open_engine(engine, variant)
    else:
        rt = _open_file(bundle_dir / variant.file, variant, backend=backend, providers=providers, threads=threads)
    log.info("opened %s@%s variant %s (%s)", manifest.name, manifest.version, variant.id, rt)
    return rt


def _open_engine(engine: Path, variant: Variant) -> Runtime:
    """The TensorRT engine built from ``variant``'s ONNX on this device."""
    if variant.format is not Format.ONNX:
        raise ModelLoadError(
            f"variant {variant.id!r} is a {variant.format.value}; only an ONNX variant is built "
            "into an engine on the device"
        )
    from models.runtime.tensorrt import TrtRuntime

    return TrtRuntime(engine)


class Model:
    """Preprocess + run + decode for one bundle variant.

    Cheap to construct twice side by side (each holds one session); safe for
    several threads because calls are serialised by a lock (the preprocessor
    keeps the last transform). Use as a context manager or call :meth:`close`.

    ``engine`` runs a TensorRT engine built from the (ONNX) variant on this
    device instead of the variant file; the variant is still verified, since
    its manifest entry says what the engine was built from. ``backend`` is
    then :attr:`Backend.TENSORRT`, and :attr:`backend` always names the
    runtime that serves.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        variant_id: str | None = None,
        *,
        profile: HardwareProfile | None = None,
        backend: Backend = Backend.AUTO,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        verify: bool = True,
        engine: str | os.PathLike[str] | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = _read(bundle_dir)
        self.variant = resolve_variant(self.manifest, variant_id, profile)
        self.engine_path = Path(engine) if engine is not None else None
        self.backend = Backend.TENSORRT if engine is not None else _concrete(self.variant, backend)
        self.runtime = _open_checked(
            self.bundle_dir,
            self.manifest,
            self.variant,
            backend=backend,
            providers=providers,
            threads=threads,
            verify=verify,
            engine=self.engine_path,
        )
        # what the variant's graph takes: the spec's tensor, or the resized uint8 frame (input_form "frame")
        self.input_spec = self.manifest.input.for_form(self.variant.input_form)
        self._pre = Preprocessor(self.manifest.input, self.variant.input_form)
        self._dynamic_batch = self.manifest.input.shape[0] is None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``"name@version"`` of the bundle."""
        return f"{self.manifest.name}@{self.manifest.version}"

    def predict(self, frame_bgr: np.ndarray) -> Prediction:
        """One uint8 BGR HxWx3 frame → :class:`Prediction`. Raises :class:`InferenceError`."""
        return self.predict_batch([frame_bgr])[0]

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[Prediction]:
        """Several frames in one batch (one by one when the model's batch is fixed)."""
        if not frames:
            return []
        if not self._dynamic_batch and len(frames) > 1:
            return [p for f in frames for p in self.predict_batch([f])]
        limit = getattr(self.runtime, "max_batch", None)  # an engine's optimization profile bounds the batch
        if limit is not None and len(frames) > limit:
            return [p for i in range(0, len(frames), limit) for p in self.predict_batch(frames[i : i + limit])]
        with self._lock:
            t0 = time.perf_counter()
            inputs, transforms, sizes = [], [], []
            for i, frame in enumerate(frames):
                if not isinstance(frame, np.ndarray):
                    raise InferenceError(f"frame {i} must be a numpy array, got {type(frame).__name__}")
                try:
                    inputs.append(self._pre(frame))
                except ValueError as e:
                    raise InferenceError(f"frame {i} cannot be preprocessed: {e}") from e
                transforms.append(self._pre.last_transform)
                sizes.append((int(frame.shape[0]), int(frame.shape[1])))
            batch = np.stack(inputs)
            t1 = time.perf_counter()
            outputs = self.runtime.run(batch)
            t2 = time.perf_counter()
            preds = self._decode(outputs, transforms, sizes)
            t3 = time.perf_counter()
        timings = {
            "preprocess": (t1 - t0) * 1e3,
            "infer": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3,
            "batch_size": float(len(frames)),
        }
        return [Prediction(p.kind, p.top_k, p.boxes, p.mask, p.raw, timings) for p in preds]

    def _decode(
        self, outputs: Mapping[str, np.ndarray], transforms: Sequence[Transform], sizes: Sequence[tuple[int, int]]
    ) -> list[Prediction]:
        spec = self.manifest.output
        try:
            picked = pick_outputs(outputs, spec)
        except ValueError as e:
            raise InferenceError(str(e)) from e
        kind = spec.decoder.kind
        preds = []
        for i, (tf, hw) in enumerate(zip(transforms, sizes, strict=True)):
            raw = {k: v[i] for k, v in outputs.items()}
            if kind is DecoderKind.TOPK:
                preds.append(Prediction(kind, top_k=topk(picked["logits"][i], spec.decoder.top_k), raw=raw))
            elif kind is DecoderKind.BOXES:
                dets = decode_boxes(picked["boxes"][i], picked["scores"][i], spec.decoder, tf, hw)
                preds.append(Prediction(kind, boxes=dets, raw=raw))
            else:
                preds.append(Prediction(kind, mask=decode_mask(picked["mask_logits"][i], tf, hw), raw=raw))
        return preds

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` grey frames so the first real frame is not slow."""
        spec = self.manifest.input
        frame = np.full((max(spec.height, 1), max(spec.width, 1), 3), 114, dtype=np.uint8)
        for _ in range(n):
            self.predict(frame)

    def close(self) -> None:
        with self._lock:
            self.runtime.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.name}, variant={self.variant.id!r}, backend={self.backend.value})"
