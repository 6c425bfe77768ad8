"""The terminal steps of an update: ``committed``, ``rolled-back``, ``refused`` / ``failed``.

:class:`Endings` carries out what the state machine decided: a commit keeps
the previous slot for rollback (and starts perception when nothing serves);
a rollback restores the previous slot and swaps perception back to it (or
serves nothing rather than a failed first install); an abandoned update
loses its staged slot. Every ending settles the update in the agent state
file (so the same release is not installed twice), records it as
``last_update`` for ``status``, deletes its ``.part`` files and the TensorRT
engines no slot needs any more. Each step is idempotent: a crash repeats it.

This module does not report (:mod:`edge_agent.update.records`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

from edge_agent.perception import Perception
from edge_agent.perception.engines import prune_engines
from edge_agent.update.core import State, StepOutcome, Update
from edge_agent.update.files import UpdateFiles, files_of
from edge_agent.update.journal import StateFile
from edge_agent.update.records import last_update
from edge_agent.update.slots import SLOT_NAMES, Slots

__all__ = ["Endings"]

log = logging.getLogger(__name__)


class Endings:
    """Commit, roll back or abandon an update, then settle it."""

    def __init__(
        self, *, slots: Slots, state: StateFile, files: UpdateFiles, engines_dir: Path, perception: Perception | None
    ) -> None:
        self.slots, self.state, self.files, self.engines_dir = slots, state, files, engines_dir
        self.perception = perception

    def commit(self, update: Update) -> None:
        self.settle(update, State.COMMITTED)
        if self.perception is not None and self.perception.active_version() is None:
            active = self.slots.active_dir()
            if active is not None:
                self.perception.start(active)

    def roll_back(self, update: Update, outcome: StepOutcome) -> None:
        previous = update.previous_slot
        if previous and (self.slots.path(previous) / "bundle.json").is_file():
            if self.slots.active_slot() != previous:
                self.slots.switch(previous)
                if self.perception is not None:
                    back = self.perception.swap_back(self.slots.path(previous))
                    if not back.ok:  # the slot is restored; serve it from scratch
                        log.error("swap back failed (%s); restarting perception on slot %s", back.detail, previous)
                        self.perception.stop()
                        self.perception.start(self.slots.path(previous))
        elif self.slots.active_slot() == update.slot:
            self.slots.current_link.unlink(missing_ok=True)  # first install failed: run nothing rather than it
            if self.perception is not None:
                self.perception.stop()
        self.settle(update, State.ROLLED_BACK, outcome)

    def abandon(self, update: Update, state: State, outcome: StepOutcome) -> None:
        if update.slot and update.slot != self.slots.active_slot():
            shutil.rmtree(self.slots.path(update.slot), ignore_errors=True)
        self.settle(update, state, outcome)

    def settle(self, update: Update, state: State, outcome: StepOutcome | None = None) -> None:
        """Record how ``update`` ended, then drop its downloads, slot leftovers and unneeded engines."""
        st = self.state.load()
        last = last_update(
            st, release=update.release, name=update.name, version=update.version, state=state, outcome=outcome
        )
        self.state.save(
            replace(st.with_settled(f"{update.release}:{update.target.sha256}", state.value), last_update=last)
        )
        for ref in files_of(update):
            self.files.part(ref.sha256).unlink(missing_ok=True)
        self.slots.clean()
        self.prune_engines()

    def prune_engines(self) -> None:
        """Drop the TensorRT engines of ONNX files neither slot holds any more."""
        keep = set()
        for slot in SLOT_NAMES:
            manifest = self.slots.manifest(slot)
            if manifest is not None:
                keep |= {v.sha256 for v in manifest.variants if (self.slots.path(slot) / v.file).is_file()}
        for gone in prune_engines(self.engines_dir, keep):
            log.info("removed the engine %s: no slot holds its ONNX", gone.name)
