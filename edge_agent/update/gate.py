"""The ``preparing`` step: the child-process gate over a staged slot, and its verdicts.

:class:`ChildGate` runs :func:`edge_agent.update.prepare.check_in_child` with
the limits of :class:`~edge_agent.config.AgentConfig` over every variant
staged in a slot (the engine cache and hardware profile go along on a
TensorRT device), records the variant it chose in the slot and keeps each
slot's verdict for the steps after it: the shadow run adds its evidence to
it, and an agent without a camera (:class:`~edge_agent.perception.headless.HeadlessPerception`)
passes on it as its shadow verdict. It also opens a slot's variant in this
process as it serves here, for the headless health watch.

This module does not load a candidate in the agent's own process before the
child did, nor decide what a verdict means (:mod:`edge_agent.update.core`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.errors import FatalError, ReasonCode
from edge_agent.perception import GateResult
from edge_agent.perception.runtimes import EngineOptions, open_staged, variant_in
from edge_agent.update.core import Update
from edge_agent.update.prepare import PrepareLimits, check_in_child
from edge_agent.update.slots import Slots
from models.bundle import BundleError, Gates, Manifest, SelectionEntry
from models.hardware import HardwareProfile, hardware_class
from models.runtime import Model

__all__ = ["ChildGate", "staged_dir", "holds_file"]

log = logging.getLogger(__name__)
_R = ReasonCode


def staged_dir(slots: Slots, update: Update) -> Path:
    """The slot directory ``update`` was staged into. Raises FatalError(BUNDLE_INVALID) before staging."""
    if update.slot is None:
        raise FatalError(_R.BUNDLE_INVALID, f"{update.label} has no staged slot")
    return slots.path(update.slot)


def holds_file(manifest: Manifest, variant_id: str, slot_dir: Path) -> bool:
    """Whether ``slot_dir`` holds the file of ``variant_id`` (False for a variant the manifest lacks)."""
    try:
        return (slot_dir / manifest.variant(variant_id).file).is_file()
    except BundleError:
        return False


class ChildGate:
    """The child-process gate of staged slots, and the verdict it gave each slot in this process."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        slots: Slots,
        profile: Callable[[], HardwareProfile],
        stop: threading.Event | None = None,
    ) -> None:
        self.config, self.slots = config, slots
        self._profile = profile
        self.stop = stop  # set by the daemon's signal handler: the child is killed, StopRequested raised
        self._results: dict[str, GateResult] = {}  # slot dir → child-process gate result

    def prepare(self, update: Update, manifest: Manifest, gates: Gates) -> GateResult:
        """The child-process gate over every variant staged in the slot; records the variant it chose."""
        slot_dir = staged_dir(self.slots, update)
        profile = self._profile()
        staged = [vt.variant for vt in update.variant_targets() if holds_file(manifest, vt.variant, slot_dir)]
        if not profile.tensorrt_version and any(manifest.variant(v).requires.build_on_device for v in staged):
            log.info("TensorRT is absent: no on-device engine build; ONNX Runtime runs the build-on-device variants")
        entry = manifest.selection.get(hardware_class(profile))
        result = self.run(
            slot_dir, gates, staged, min_speedup=entry.min_speedup if entry is not None else SelectionEntry.min_speedup
        )
        chosen = result.evidence.get("variant")
        if result.passed and isinstance(chosen, str) and update.slot is not None:
            self.slots.choose(update.slot, chosen)
        return result

    def run(
        self, slot_dir: Path, gates: Gates, variants: Sequence[str], *, min_speedup: float = SelectionEntry.min_speedup
    ) -> GateResult:
        """Run the child-process gate over ``variants`` (selection order) of a staged slot.

        Raises StopRequested when ``stop`` is set while the child runs.
        """
        c = self.config
        limits = PrepareLimits(
            timeout_s=c.prepare_timeout_s,
            cpu_s=c.prepare_cpu_limit_s,
            memory_mb=c.prepare_memory_limit_mb,
            frames=c.sample_frames,
            queries=c.bench_queries,
            duration_s=c.bench_duration_s,
        )
        profile = self._profile()
        trt = profile.tensorrt_version is not None
        result = check_in_child(
            slot_dir,
            variants,
            gates,
            limits,
            min_speedup=min_speedup,
            engines_dir=c.paths.engines if trt else None,
            profile=profile if trt else None,
            engine=EngineOptions.of(c),
            stop=self.stop,
        )
        log.info(
            "prepare gate for %s: %s %s",
            slot_dir.name,
            "passed" if result.passed else (result.reason_code.value if result.reason_code else None),
            result.detail,
        )
        self._results[str(slot_dir)] = result
        return result

    def result_of(self, slot_dir: Path) -> GateResult | None:
        """The verdict the gate gave ``slot_dir`` in this process, if it ran."""
        return self._results.get(str(slot_dir))

    def cached(self, slot_dir: Path, gates: Gates) -> GateResult:
        """The gate's verdict on ``slot_dir``; after a restart, the gate re-run on the variant the slot
        records (the choice was made before the restart). HeadlessPerception's shadow verdict."""
        cached = self.result_of(slot_dir)
        if cached is not None:
            return cached
        variant = variant_in(slot_dir)
        if variant is None:
            return GateResult(False, _R.BUNDLE_INVALID, f"{slot_dir} holds no bundle")
        return self.run(slot_dir, gates, [variant])

    def open_model(self, slot_dir: Path, variant_id: str | None) -> Model:
        """A slot's variant opened in this process as it serves here.

        Through :func:`edge_agent.perception.runtimes.open_staged`, the one way a staged variant is opened.
        """
        return open_staged(
            slot_dir,
            variant_id,
            engines_dir=self.config.paths.engines,
            profile=self._profile(),
            threads=1,
            engine=EngineOptions.of(self.config),
        )
