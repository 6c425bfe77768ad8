"""The on-device TensorRT engine cache: one engine per ONNX, TensorRT version, GPU and batch profile.

A "build on device" variant is an ONNX (Q/DQ INT8 or FP16) that the device
compiles into a TensorRT engine for its own GPU. Building takes seconds to
minutes, so engines are kept under ``<data-dir>/engines/``, named by
everything that makes an engine valid or not::

    <onnx sha256>-trt<version>-<gpu name>-sm<compute capability>-<precision>-b<min>-<opt>-<max>.engine

The TensorRT version and the GPU come from the libraries on the device
(``tensorrt.__version__``, pycuda), never from a configured profile, so a
TensorRT upgrade or a swapped module misses the cache and rebuilds instead
of loading an engine this TensorRT would refuse. Engines are written with
:func:`models.fsio.write_atomic`, so a crash never leaves half an engine
under a valid name.

This module does not decide which variant to serve (:mod:`edge_agent.perception.runtimes`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from models.bundle import Manifest, Precision, Variant
from models.fsio import write_atomic
from models.runtime.errors import BackendUnavailable, EngineBuildError
from models.runtime.trt_build import BatchProfile, EngineSpec, build_serialized_engine, gpu_identity

__all__ = ["EngineKey", "engine_key", "engine_cache_path", "ensure_engine", "prune_engines"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; equal keys mean an engine can be reused."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision
    batch: BatchProfile

    def filename(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9.]+", "_", self.gpu_name).strip("_") or "gpu"
        cc = self.compute_capability.replace(".", "")
        return (
            f"{self.onnx_sha256}-trt{self.tensorrt_version}-{gpu}-sm{cc}-{self.precision.value}-{self.batch.tag}.engine"
        )


def engine_key(variant: Variant, batch: BatchProfile) -> EngineKey:
    """The key of ``variant``'s engine on this device. Raises :class:`EngineBuildError` without TensorRT or a GPU."""
    from models.runtime.tensorrt import tensorrt_version

    version = tensorrt_version()
    if version is None:
        raise EngineBuildError(f"variant {variant.id} is built on the device, which has no TensorRT installed")
    try:
        gpu = gpu_identity()
    except BackendUnavailable as e:
        raise EngineBuildError(f"variant {variant.id} is built on the device, but it has no usable GPU: {e}") from e
    return EngineKey(variant.sha256, version, gpu.name, gpu.compute_capability, variant.precision, batch)


def engine_cache_path(cache_dir: Path, key: EngineKey) -> Path:
    return cache_dir / key.filename()


def _batch_of(manifest: Manifest, batch: BatchProfile) -> BatchProfile:
    fixed = manifest.input.shape[0]
    return batch if fixed is None else BatchProfile(fixed, fixed, fixed)  # a fixed batch is the whole profile


def _spec(manifest: Manifest, variant: Variant, batch: BatchProfile, workspace_mb: int) -> EngineSpec:
    c, h, w = (int(d or 0) for d in manifest.input.shape[1:])
    return EngineSpec(manifest.input.name, (c, h, w), batch, variant.precision, workspace_mb)


def ensure_engine(
    bundle_dir: Path,
    manifest: Manifest,
    variant: Variant,
    *,
    cache_dir: Path,
    batch: BatchProfile,
    workspace_mb: int = 1024,
    rebuild: bool = False,
) -> tuple[Path, bool]:
    """The cached engine of ``variant`` (built now on a miss, or when ``rebuild``); ``(path, built)``.

    The variant's ONNX must already be verified. Raises :class:`EngineBuildError`.
    """
    batch = _batch_of(manifest, batch)
    key = engine_key(variant, batch)
    path = engine_cache_path(cache_dir, key)
    if path.is_file() and not rebuild:
        log.info("engine cache hit for %s: %s", variant.id, path.name)
        return path, False
    onnx_path = bundle_dir / variant.file
    try:
        onnx = onnx_path.read_bytes()
    except OSError as e:
        raise EngineBuildError(f"cannot read {onnx_path} to build its engine: {e}") from e
    plan = build_serialized_engine(onnx, _spec(manifest, variant, batch, workspace_mb), source=variant.file)
    try:
        write_atomic(path, plan)
    except OSError as e:
        raise EngineBuildError(f"cannot write the engine {path}: {e}") from e
    log.info("built TensorRT engine for %s@%s %s: %s", manifest.name, manifest.version, variant.id, path.name)
    return path, True


def prune_engines(cache_dir: Path, keep_sha256: set[str]) -> list[Path]:
    """Remove engines built from ONNX files no slot holds any more; returns what was removed."""
    removed = []
    for path in sorted(cache_dir.glob("*.engine")) if cache_dir.is_dir() else []:
        if path.name.split("-", 1)[0] not in keep_sha256:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
