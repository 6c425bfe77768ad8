"""The perception steps of an update: ``benchmarking``, ``swapping`` and ``health-watch``.

:class:`Handover` hands a staged candidate to the perception path
(:class:`edge_agent.perception.Perception`): the shadow run beside the active
model, judged against what the optimizer expects of it
(:func:`edge_agent.perception.agreement.choose_context`); the switch of
``current`` and the hot swap; the health window after it. The first model on
a device has nothing to be shadowed against: the child-process gate's verdict
decides alone and perception starts on it.

This module does not run the child-process gate (:mod:`edge_agent.update.gate`)
nor roll back (:mod:`edge_agent.update.endings`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, FatalError, ReasonCode, StopRequested
from edge_agent.perception import GateContext, GateResult, Perception
from edge_agent.perception.agreement import choose_context
from edge_agent.perception.runtimes import variant_in
from edge_agent.update.core import Update
from edge_agent.update.files import UpdateFiles
from edge_agent.update.gate import ChildGate, holds_file, staged_dir
from edge_agent.update.slots import Slots
from models.bundle import Gates

__all__ = ["Handover"]

log = logging.getLogger(__name__)
_R = ReasonCode


class Handover:
    """Shadow, swap and watch a staged candidate on the perception path."""

    def __init__(
        self, *, config: AgentConfig, slots: Slots, files: UpdateFiles, gate: ChildGate, perception: Perception | None
    ) -> None:
        self.config, self.slots, self.files, self.gate = config, slots, files, gate
        self.perception = perception
        self._shadowed: str | None = None  # slot whose shadow run passed in this process

    def _perception(self) -> Perception:
        if self.perception is None:
            raise FatalError(_R.MODEL_LOAD_FAILED, "no perception path configured")
        return self.perception

    def benchmark(self, update: Update) -> GateResult:
        """The shadow run's verdict (the child-process gate's for a device's first model).

        Raises StopRequested (not a verdict: the journal stays at this step), FatalError
        without a perception path or a staged slot.
        """
        perception = self._perception()
        slot_dir, gates = staged_dir(self.slots, update), self.files.gates(update)
        if perception.active_version() is None:
            # the first model on this device: nothing serves yet to shadow it against,
            # so the child-process gate decides alone
            log.info("no model serving yet: %s is judged by its child-process gate only", update.label)
            result = self.gate.cached(slot_dir, gates)
        else:
            context = self.gate_context(update, gates)
            log.info(
                "agreement of %s judged against %s (%s): %s",
                update.label,
                context.baseline,
                context.judged_against.value,
                context.why,
            )
            try:
                result = perception.shadow(slot_dir, gates, timeout_s=self.config.shadow_timeout_s, context=context)
            except StopRequested:
                raise  # not a verdict: the journal stays at this step and the next start repeats it
            except EdgeAgentError as e:
                result = GateResult(False, _R.MODEL_LOAD_FAILED, f"shadow run failed: {e}")
            # one evidence object for the report: the child gate's variant choice and timing, then the shadow's
            prepared = self.gate.result_of(slot_dir)
            if prepared is not None:
                result = replace(result, evidence={**prepared.evidence, **result.evidence})
        self._shadowed = update.slot if result.passed else None
        return result

    def gate_context(self, update: Update, gates: Gates) -> GateContext:
        """What the shadow run compares the candidate with: the expectation for the release this
        device runs (its active slot's release and the file it serves), else the bundle's own FP32,
        else the floor ``min_agreement`` (:func:`edge_agent.perception.agreement.choose_context`)."""
        slot_dir = staged_dir(self.slots, update)
        candidate = self.files.manifest(update)
        prepared = self.gate.result_of(slot_dir)
        chosen = prepared.evidence.get("variant") if prepared is not None else None
        # after a restart the gate's choice is read back from the slot
        candidate_variant = chosen if isinstance(chosen, str) else (variant_in(slot_dir) or update.variant)
        active = self.slots.active_slot()
        running = self.slots.manifest(active)
        if active is None or running is None:
            return GateContext.floor(gates, why="no active slot to read the running release from")
        return choose_context(
            candidate,
            candidate_variant,
            running=running,
            running_variant=variant_in(self.slots.path(active)),
            in_slot=lambda v: holds_file(candidate, v, slot_dir),
            gates=gates,
        )

    def swap(self, update: Update) -> None:
        """Switch ``current`` to the candidate's slot and the perception path to it (start it for a
        first model). A resumed swap first repeats the shadow run. Raises FatalError."""
        assert update.slot is not None  # staged before swapping
        if self.slots.active_slot() == update.slot:
            log.info("slot %s is already active (resumed after the switch)", update.slot)
            return
        if self._shadowed != update.slot:  # resumed: the perception path has not seen the candidate
            result = self.benchmark(update)
            if not result.passed:
                assert result.reason_code is not None  # a failed GateResult always carries its reason
                raise FatalError(result.reason_code, result.detail)
        perception = self._perception()
        first = perception.active_version() is None
        self.slots.switch(update.slot)
        try:
            if first:
                perception.start(self.slots.path(update.slot))
                return
            swapped = perception.swap()
        except EdgeAgentError as e:
            raise FatalError(_R.HEALTH_REGRESSION, f"hot swap failed: {e}") from e
        if not swapped.ok:
            raise FatalError(_R.HEALTH_REGRESSION, f"hot swap failed: {swapped.detail}")
        log.info("swapped to %s in %.1f ms, %d frames dropped", update.label, swapped.swap_ms, swapped.frames_dropped)

    def watch(self, update: Update) -> GateResult:
        """The health window's verdict. Raises StopRequested (the journal stays at health-watch)."""
        gates = self.files.gates(update)
        window = self.config.health_window_s if self.config.health_window_s is not None else gates.health_window_s
        try:
            return self._perception().watch(gates, window_s=window)
        except StopRequested:
            raise  # not a verdict: the journal stays at health-watch and the next start repeats it
        except EdgeAgentError as e:
            return GateResult(False, _R.HEALTH_REGRESSION, f"health watch failed: {e}")
