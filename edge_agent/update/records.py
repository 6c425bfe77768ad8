"""What an update leaves behind for ``edge-agent status`` and for the server.

- :func:`last_update` builds the agent state file's ``last_update`` (how the
  update ended and why) and :func:`set_slot_release` records which release
  each slot holds in it;
- :class:`Reports` answers what serves now (:meth:`Reports.running`) and
  queues the transition and gate reports in the telemetry outbox, each naming
  the digest of the assignment it acted on (signed by the client when sent).

This module decides nothing (the state machine does) and sends nothing (the
daemon flushes the outbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edge_agent.link.telemetry import Outbox, make_report, utc_now_iso
from edge_agent.perception.runtimes import variant_in
from edge_agent.update.core import State, StepOutcome, Update
from edge_agent.update.journal import AgentState, StateFile
from edge_agent.update.slots import Slots

__all__ = ["last_update", "set_slot_release", "Reports"]


def last_update(
    st: AgentState,
    *,
    release: int | None,
    name: str | None,
    version: str | None,
    state: State,
    outcome: StepOutcome | None,
) -> dict[str, Any]:
    """The state file's ``last_update`` for ``status``: how the update ended, and why (reason code, detail)."""
    reason = outcome.reason.value if outcome is not None and outcome.reason is not None else None
    return {
        "release": release,
        "name": name,
        "version": version,
        "state": state.value,
        "reason": reason,
        "detail": (outcome.detail or None) if outcome is not None and reason else None,
        "time": utc_now_iso(),
        "slots": (st.last_update or {}).get("slots", {}),
    }


def set_slot_release(state: StateFile, slot: str, release: int) -> None:
    """Record in the state file that ``slot`` holds ``release``. Raises JournalError."""
    st = state.load()
    last = dict(st.last_update or {})
    last["slots"] = {**dict(last.get("slots", {})), slot: release}
    state.save(replace(st, last_update=last))


class Reports:
    """The reports of an update, queued (durably) in the outbox."""

    def __init__(self, *, slots: Slots, state: StateFile, outbox: Outbox) -> None:
        self.slots, self.state, self.outbox = slots, state, outbox

    def running(self) -> dict[str, Any] | None:
        """Name, version, release and variant of the model the active slot serves; None without one."""
        slot = self.slots.active_slot()
        manifest = self.slots.manifest(slot)
        if manifest is None or slot is None:
            return None
        release = ((self.state.load().last_update or {}).get("slots") or {}).get(slot)
        return {
            "name": manifest.name,
            "version": manifest.version,
            "release": release,
            "variant": variant_in(self.slots.path(slot)),
        }

    def report(self, state: State, update: Update | None, outcome: StepOutcome, *, refused: Mapping[str, Any]) -> None:
        """Queue a transition report (and a gate report when the outcome carries measurements).

        ``refused`` is what a refused assignment claimed (rollout, release): the report of a
        refusal has no :class:`Update` to take them from. Raises JournalError.
        """
        claimed: Mapping[str, Any] = (
            refused
            if update is None
            else {
                "rollout_id": update.rollout_id,
                "release": update.release,
                "assignment_digest": update.assignment_digest,
            }
        )
        types = ("gate", "transition") if outcome.metrics or outcome.evidence else ("transition",)
        running = self.running()
        chosen = outcome.evidence.get("variant")  # the variant the child-process gate chose to serve
        variant = chosen if isinstance(chosen, str) else None
        if variant is None and update is not None and update.slot is not None:
            variant = variant_in(self.slots.path(update.slot))  # recorded in the slot once it is staged
        for type_ in types:
            report = make_report(
                type_,
                state=state.value,
                rollout_id=claimed.get("rollout_id"),
                release=claimed.get("release"),
                reason_code=outcome.reason,
                detail=outcome.detail or None,
                metrics=outcome.metrics,
                running=running,
                variant=variant,
                gate=outcome.evidence or None,
            )
            # the assignment it acted on: the server counts a rollout's reports only from devices
            # it issued that assignment to (the client signs this field with the rest)
            report["assignment_digest"] = claimed.get("assignment_digest")
            self.outbox.add(report)
