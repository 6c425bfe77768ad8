"""Open a staged variant the way it will serve on this device: the one door to a runtime.

The child-process gate (:mod:`edge_agent.update.prepare`), the shadow run and the
camera serving (:mod:`edge_agent.perception.serving`) and the headless health watch all
open models with :func:`open_staged`, so what the gate times is what the
shadow runs and what the camera serves:

- a ``build_on_device`` variant (a Q/DQ INT8 or FP16 ONNX) on a TensorRT
  device → the TensorRT engine built from it on this device, from the cache
  (:mod:`edge_agent.perception.engines`) or built now on a miss;
- any other ONNX variant → ONNX Runtime.

:func:`variant_in` answers "which variant does this slot serve": the one its
``.variant`` record names (written by :func:`record_variant` when the slot is
staged, then when the gate has chosen). :func:`staged_variants` is the order
in which a slot's variants may serve here: the bundle's selection for this hardware class, restricted to what the
hardware can run and the slot holds. When an engine cannot be built
(:class:`~models.runtime.errors.EngineBuildError`, reported as
``ENGINE_BUILD_FAILED``), :func:`fallbacks` are the only variants that may
serve instead; with none, the update fails.

This module does not time or judge models (the gate and the shadow run do).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.perception.engines import ensure_engine
from models.bundle import BundleError, Manifest, read_bundle, verify_bundle
from models.fsio import write_atomic
from models.hardware import HardwareProfile, NoCompatibleVariant, can_run, runnable_variants
from models.runtime import Model
from models.runtime.errors import BackendUnavailable, ModelLoadError
from models.runtime.trt_build import BatchProfile

__all__ = [
    "VARIANT_FILE",
    "variant_in",
    "record_variant",
    "EngineOptions",
    "open_staged",
    "staged_variants",
    "fallbacks",
]

log = logging.getLogger(__name__)
VARIANT_FILE = ".variant"  # {"variant": id}: the variant the slot serves


def variant_in(bundle_dir: Path) -> str | None:
    """The variant a slot (or any bundle directory) serves.

    The one its ``.variant`` record names, when the directory holds that file; without a
    record, its only variant file. None when it holds no valid bundle, or several variant
    files and no record (a full bundle directory: the host's selection then decides).
    """
    try:
        manifest = read_bundle(bundle_dir, verify=False)
    except BundleError:
        return None
    present = [v.id for v in manifest.variants if (Path(bundle_dir) / v.file).is_file()]
    recorded = _recorded_variant(Path(bundle_dir))
    if recorded in present:
        return recorded
    if recorded is not None:
        log.warning("%s records variant %r, which it does not hold; ignoring the record", bundle_dir, recorded)
    return present[0] if len(present) == 1 else None


def _recorded_variant(bundle_dir: Path) -> str | None:
    try:
        value = json.loads((bundle_dir / VARIANT_FILE).read_bytes())["variant"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable %s (%s); ignoring it", bundle_dir, VARIANT_FILE, e)
        return None
    return value if isinstance(value, str) else None


def record_variant(bundle_dir: Path, variant_id: str) -> None:
    """Record (atomically) which variant ``bundle_dir`` serves; it must hold that variant's file.

    Raises ``ValueError`` for a variant the directory's bundle does not hold.
    """
    manifest = read_bundle(bundle_dir, verify=False)
    if not any(v.id == variant_id and (bundle_dir / v.file).is_file() for v in manifest.variants):
        raise ValueError(f"{bundle_dir} holds no file of variant {variant_id!r}")
    write_atomic(bundle_dir / VARIANT_FILE, json.dumps({"variant": variant_id}).encode())


@dataclass(frozen=True)
class EngineOptions:
    """How the device builds engines. The batch profile is part of the cache key, so the gate and
    the camera serving take both from one :class:`~edge_agent.config.AgentConfig` (:meth:`of`)."""

    batch: BatchProfile = field(default_factory=BatchProfile)
    workspace_mb: int = 1024  # builder scratch memory

    @classmethod
    def of(cls, config: AgentConfig) -> EngineOptions:
        return cls(BatchProfile(1, config.engine_opt_batch, config.engine_max_batch), config.engine_workspace_mb)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": [self.batch.min, self.batch.opt, self.batch.max], "workspace_mb": self.workspace_mb}

    @classmethod
    def from_dict(cls, data: Any) -> EngineOptions:
        """Raises ``ValueError`` for anything but ``{"batch": [min, opt, max], "workspace_mb": n}``."""
        try:
            lo, opt, hi = (int(x) for x in data["batch"])
            return cls(BatchProfile(lo, opt, hi), int(data.get("workspace_mb", 1024)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f'engine options must be {{"batch": [min, opt, max], "workspace_mb": n}}, got {data!r}: {e}'
            ) from e


def _manifest(slot_dir: Path) -> Manifest:
    try:
        return read_bundle(slot_dir, verify=False)
    except BundleError as e:
        raise ModelLoadError(f"invalid bundle in {slot_dir}: {e}") from e


def staged_variants(slot_dir: Path, profile: HardwareProfile) -> tuple[str, ...]:
    """The variants ``slot_dir`` holds that ``profile`` may serve, in the selection order of its hardware class."""
    manifest = _manifest(slot_dir)
    try:
        runnable = runnable_variants(manifest, profile)
    except NoCompatibleVariant:
        return ()
    return tuple(v.id for v in runnable if (slot_dir / v.file).is_file())


def fallbacks(slot_dir: Path, failed: Iterable[str], profile: HardwareProfile) -> tuple[str, ...]:
    """What may serve when the variants in ``failed`` cannot (their engine did not build), in order.

    Only variants of the bundle's selection for this hardware class that the
    device can run and the slot holds; an empty answer means the update
    fails with ``ENGINE_BUILD_FAILED``.
    """
    gone = set(failed)
    return tuple(v for v in staged_variants(slot_dir, profile) if v not in gone)


def open_staged(
    slot_dir: Path,
    variant_id: str | None,
    *,
    engines_dir: Path,
    profile: HardwareProfile,
    threads: int | None = None,
    engine: EngineOptions | None = None,
) -> Model:
    """Open ``variant_id`` of a staged slot as it serves here (None: the first of :func:`staged_variants`).

    Raises :class:`~models.runtime.errors.EngineBuildError` when the engine
    of a ``build_on_device`` variant cannot be built (no TensorRT, no GPU, a
    parse or build failure) and :class:`~models.runtime.errors.ModelLoadError`
    for anything else that keeps the model from loading. A cached engine that
    no longer deserializes is rebuilt once.
    """
    opts = engine or EngineOptions()
    manifest = _manifest(slot_dir)
    vid = variant_id or next(iter(staged_variants(slot_dir, profile)), None)
    if vid is None:
        raise ModelLoadError(f"{slot_dir} holds no variant of {manifest.name}@{manifest.version} this device can run")
    try:
        variant = manifest.variant(vid)
    except BundleError as e:
        raise ModelLoadError(str(e)) from e
    ok, why = can_run(variant, profile)
    if not ok:
        raise BackendUnavailable(f"variant {vid} cannot run here: {why}")
    if not variant.requires.build_on_device:
        return Model(slot_dir, vid, threads=threads)
    try:
        verify_bundle(slot_dir, manifest, variant_ids=[vid])  # before TensorRT parses a byte of it
    except BundleError as e:
        raise ModelLoadError(f"refusing to build {variant.file}: {e}") from e
    path, built = ensure_engine(
        slot_dir, manifest, variant, cache_dir=engines_dir, batch=opts.batch, workspace_mb=opts.workspace_mb
    )
    try:
        return Model(slot_dir, vid, engine=path, verify=False)
    except BackendUnavailable:
        raise
    except ModelLoadError as e:
        if built:
            raise
        log.warning("cached engine %s does not load (%s); rebuilding it", path.name, e)
    path, _ = ensure_engine(
        slot_dir,
        manifest,
        variant,
        cache_dir=engines_dir,
        batch=opts.batch,
        workspace_mb=opts.workspace_mb,
        rebuild=True,
    )
    return Model(slot_dir, vid, engine=path, verify=False)
