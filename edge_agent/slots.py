"""A/B model slots on disk and the on-device TensorRT engine cache.

``slots/a`` and ``slots/b`` each hold one complete, verified bundle
directory; ``slots/current`` is a symlink to the active one, switched
atomically (new symlink under a temp name, ``os.replace``, fsync). A slot is
filled through ``slots/.staging-<x>`` and renamed into place only when
complete, so a crash never leaves a half-written slot; the other slot keeps
the previous model for rollback.

Engines for "build on device" variants are compiled with TensorRT and cached
under ``engines/<onnx sha256>-trt<version>-<gpu>.engine``. This module does
not verify signatures or hashes of downloads (see :mod:`edge_agent.download`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from edge_agent.errors import FatalError, ReasonCode
from edge_agent.journal import fsync_dir
from models.bundle import BundleError, Manifest, read_bundle, verify_bundle

__all__ = ["SLOT_NAMES", "Slots", "engine_cache_path", "build_engine"]

log = logging.getLogger(__name__)
SLOT_NAMES = ("a", "b")


class Slots:
    """The two slots under ``root`` and the ``current`` symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.current_link = root / "current"

    def path(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise ValueError(f"slot must be one of {SLOT_NAMES}, got {slot!r}")
        return self.root / slot

    def active_slot(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        return target if target in SLOT_NAMES else None

    def active_dir(self) -> Path | None:
        slot = self.active_slot()
        return self.path(slot) if slot else None

    def inactive_slot(self) -> str:
        return "b" if self.active_slot() == "a" else "a"

    @staticmethod
    def other(slot: str) -> str:
        return "b" if slot == "a" else "a"

    def manifest(self, slot: str | None) -> Manifest | None:
        """The manifest of a slot's bundle (files not re-hashed), or None when empty/invalid."""
        if slot is None or not (self.path(slot) / "bundle.json").is_file():
            return None
        try:
            return read_bundle(self.path(slot), verify=False)
        except BundleError:
            return None

    def clean(self) -> None:
        """Remove what a crash may have left: staging dirs and temp symlinks."""
        if not self.root.exists():
            return
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob(".current-*"):
            leftover.unlink(missing_ok=True)

    def stage(self, slot: str, files: dict[str, Path], *, variant_id: str) -> Path:
        """Fill ``slot`` with ``files`` (name → source), verified, then rename it into place.

        The active slot is never touched. Raises FatalError(BUNDLE_INVALID)
        when the files do not form a valid bundle for ``variant_id``.
        """
        if slot == self.active_slot():
            raise ValueError(f"refusing to stage into the active slot {slot!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{slot}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name, src in files.items():
            _link_or_copy(src, staging / name)
        fsync_dir(staging)
        try:
            manifest = read_bundle(staging, verify=False)
            verify_bundle(staging, manifest, variant_ids=[variant_id])
        except BundleError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise FatalError(ReasonCode.BUNDLE_INVALID, f"staged bundle is invalid: {e}") from e
        final = self.path(slot)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_dir(self.root)
        return final

    def switch(self, slot: str) -> None:
        """Point ``current`` at ``slot`` atomically (no-op when it already does)."""
        if self.active_slot() == slot:
            return
        if not (self.path(slot) / "bundle.json").is_file():
            raise ValueError(f"slot {slot!r} holds no bundle")
        tmp = self.root / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(slot, tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)
        log.info("current → slots/%s", slot)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    with open(dst, "rb") as fh:
        os.fsync(fh.fileno())


def engine_cache_path(cache_dir: Path, *, onnx_sha256: str, tensorrt_version: str, gpu: str) -> Path:
    """Engines depend on the ONNX bytes, the TensorRT version and the exact GPU."""
    gpu_tag = re.sub(r"[^A-Za-z0-9.]+", "_", gpu) or "gpu"
    return cache_dir / f"{onnx_sha256}-trt{tensorrt_version}-{gpu_tag}.engine"


def build_engine(onnx_path: Path, engine_path: Path, *, fp16: bool = True, workspace_mb: int = 1024) -> Path:
    """Compile an ONNX file to a serialized TensorRT engine (cached; atomic write).

    Raises FatalError(ENGINE_BUILD_FAILED) when TensorRT is absent or the
    build fails.
    """
    if engine_path.is_file():
        log.info("engine cache hit: %s", engine_path.name)
        return engine_path
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise FatalError(ReasonCode.ENGINE_BUILD_FAILED, "TensorRT is not installed on this device") from e
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FatalError(ReasonCode.ENGINE_BUILD_FAILED, f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FatalError(ReasonCode.ENGINE_BUILD_FAILED, f"TensorRT failed to build an engine from {onnx_path.name}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    log.info("built TensorRT engine %s", engine_path.name)
    return engine_path
