"""The :class:`AgentController`: every effect of an update, over the real adapters.

It implements :class:`edge_agent.update.core.Controller` by composing one
piece per group of steps::

    checking                          AssignmentIntake  (edge_agent.update.intake)
    downloading, verifying, staging   UpdateFiles       (edge_agent.update.files)
    preparing                         ChildGate         (edge_agent.update.gate)
    benchmarking, swapping, watching  Handover          (edge_agent.update.handover)
    committed, rolled back, abandoned Endings           (edge_agent.update.endings)
    reports, ``running``              Reports           (edge_agent.update.records)

and the test hook that pauses the agent at a state. Decisions live in
:mod:`edge_agent.update.core`; the loop around it in :mod:`edge_agent.update.daemon`.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3

from edge_agent.config import AgentConfig
from edge_agent.link.client import ServerClient
from edge_agent.link.identity import Identity
from edge_agent.link.telemetry import Outbox
from edge_agent.perception import GateResult, Perception
from edge_agent.trust.assignment import DirectorKey
from edge_agent.trust.tuf_client import TufClient
from edge_agent.update.core import State, StepOutcome, Update
from edge_agent.update.endings import Endings
from edge_agent.update.files import UpdateFiles
from edge_agent.update.gate import ChildGate
from edge_agent.update.handover import Handover
from edge_agent.update.intake import AssignmentIntake
from edge_agent.update.journal import StateFile
from edge_agent.update.records import Reports, set_slot_release
from edge_agent.update.slots import Slots
from models.hardware import HardwareProfile

__all__ = ["AgentController"]

log = logging.getLogger(__name__)


class AgentController:
    """Every device, network and runtime effect of an update (see core.Controller).

    ``profile`` is called once, on first use (detection imports ONNX Runtime). ``gate`` is the
    child-process gate to use, when the caller built one to share (a headless perception
    passes on its verdicts); by default one of its own. ``stop`` (set by the daemon's
    signal handler) ends downloads and the child-process gate early with StopRequested.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        identity: Identity,
        client: ServerClient,
        tuf: TufClient,
        slots: Slots,
        outbox: Outbox,
        state: StateFile,
        profile: Callable[[], HardwareProfile],
        director_key: DirectorKey,
        perception: Perception | None = None,
        gate: ChildGate | None = None,
        pool: urllib3.PoolManager | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config, self.identity, self.client, self.tuf = config, identity, client, tuf
        self.slots, self.outbox, self.state = slots, outbox, state
        self.perception = perception
        self._profile = functools.cache(profile)
        self.intake = AssignmentIntake(
            client=client, identity=identity, tuf=tuf, director_key=director_key, slots=slots, state=state
        )
        self.files = UpdateFiles(
            config=config,
            targets_url=identity.targets_url,
            pool=pool or urllib3.PoolManager(num_pools=4, maxsize=4),
            slots=slots,
            profile=self._profile,
            pause=self._pause,
            stop=stop,
        )
        self.gate = gate or ChildGate(config=config, slots=slots, profile=self._profile, stop=stop)
        self.handover = Handover(config=config, slots=slots, files=self.files, gate=self.gate, perception=perception)
        self.endings = Endings(
            slots=slots, state=state, files=self.files, engines_dir=config.paths.engines, perception=perception
        )
        self.reports = Reports(slots=slots, state=state, outbox=outbox)

    @property
    def profile(self) -> HardwareProfile:
        """This device's hardware profile, detected on first use (it imports ONNX Runtime)."""
        return self._profile()

    # ------------------------------------------------------------------ the Controller protocol
    def check(self) -> Update | None:
        return self.intake.check()

    def download(self, update: Update) -> None:
        self.files.download(update)

    def verify(self, update: Update) -> None:
        self.files.verify(update)

    def stage(self, update: Update) -> Update:
        staged = self.files.stage(update)
        assert staged.slot is not None  # stage() always names the slot it filled
        set_slot_release(self.state, staged.slot, update.release)
        return staged

    def prepare(self, update: Update) -> GateResult:
        return self.gate.prepare(update, self.files.manifest(update), self.files.gates(update))

    def benchmark(self, update: Update) -> GateResult:
        return self.handover.benchmark(update)

    def swap(self, update: Update) -> None:
        self.handover.swap(update)

    def watch(self, update: Update) -> GateResult:
        return self.handover.watch(update)

    def commit(self, update: Update) -> None:
        self.endings.commit(update)

    def roll_back(self, update: Update, outcome: StepOutcome) -> None:
        self.endings.roll_back(update, outcome)

    def abandon(self, update: Update, state: State, outcome: StepOutcome) -> None:
        self.endings.abandon(update, state, outcome)

    def report(self, state: State, update: Update | None, outcome: StepOutcome) -> None:
        self.reports.report(state, update, outcome, refused=self.intake.claimed)

    def running(self) -> dict[str, Any] | None:
        """What serves now, as reports name it (:meth:`Reports.running`)."""
        return self.reports.running()

    # ------------------------------------------------------------------ test hook
    def pause_point(self, state: State) -> None:
        if self.config.pause.state == state.value:
            self._pause(state.value)

    def _pause(self, point: str) -> None:
        marker = self.config.paths.pause_marker_dir / point
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        log.warning("test hook: paused at %s (pid %d) until killed", point, os.getpid())
        while True:
            time.sleep(3600)
