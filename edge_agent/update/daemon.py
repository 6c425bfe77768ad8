"""The agent loop: telemetry, heartbeats, the update state machine, waiting.

:func:`build_agent` wires the adapters of an enrolled data directory into an
:class:`Agent`. :meth:`Agent.run_once` flushes the outbox, sends a heartbeat
when due, resumes or starts an update with :func:`edge_agent.update.core.run_update`
and flushes again; :meth:`Agent.run_forever` repeats it every poll interval
(exponential back-off with jitter after transient errors) until ``stop`` is
set. With the server unreachable the active model keeps serving and reports
wait in the outbox. Decisions are :mod:`edge_agent.update.core`'s.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError, JournalError, ReasonCode, ServerError, StopRequested
from edge_agent.link.client import ServerClient
from edge_agent.link.identity import load_device_key, load_identity, load_profile
from edge_agent.link.telemetry import Outbox, make_report
from edge_agent.perception import Perception
from edge_agent.perception.headless import HeadlessPerception
from edge_agent.perception.runtimes import variant_in
from edge_agent.trust.assignment import DirectorKey
from edge_agent.trust.tuf_client import TufClient
from edge_agent.update.controller import AgentController
from edge_agent.update.core import Record, State, backoff_delay, run_update
from edge_agent.update.gate import ChildGate
from edge_agent.update.journal import Journal, StateFile, read_json, remove_stale_temps
from edge_agent.update.slots import Slots

__all__ = ["Agent", "build_agent", "CycleResult", "status", "manual_rollback"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycleResult:
    record: Record
    retry: bool  # a transient error: back off before the next cycle
    reports_sent: int
    reports_pending: int


class Agent:
    def __init__(
        self,
        *,
        config: AgentConfig,
        controller: AgentController,
        journal: Journal,
        perception: Perception,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.controller = controller
        self.journal = journal
        self.perception = perception
        self.rng = rng or random.Random()
        self._last_heartbeat = 0.0
        self._failures = 0

    def start(self) -> None:
        """Clean up after a crash and start serving the active model, if any."""
        self.controller.slots.clean()
        for path in (self.journal.path, self.controller.state.path):
            remove_stale_temps(path)
        active = self.controller.slots.active_dir()
        if active is not None:
            self.perception.start(active)
        record = self.journal.load()
        if record.state is not State.IDLE:
            log.info("resuming %s at %s", record.update.label if record.update else "update", record.state.value)

    def flush(self) -> int:
        c = self.controller
        try:
            return c.outbox.flush(
                lambda reports: c.client.post_reports(c.identity.device_id, reports), batch=self.config.report_batch
            )
        except ServerError as e:
            log.warning("reports stay queued (%d pending): %s", c.outbox.count(), e)
            return 0

    def heartbeat(self) -> None:
        now = time.monotonic()
        if self._last_heartbeat and now - self._last_heartbeat < self.config.heartbeat_every_s:
            return
        self._last_heartbeat = now
        counters = {k: float(v) for k, v in self.perception.counters().items()}
        # a camera perception names the cameras that stopped delivering frames (they do not stop the agent)
        problems = getattr(self.perception, "problems", None)
        detail = problems() if callable(problems) else None
        if detail:
            log.warning("heartbeat: %s", detail)
        self.controller.outbox.add(
            make_report("heartbeat", running=self.controller.running(), metrics=counters, detail=detail)
        )

    def run_once(self) -> CycleResult:
        sent = self.flush()
        self.heartbeat()
        record, retry = run_update(self.controller, self.journal, max_attempts=self.config.max_attempts)
        sent += self.flush()
        return CycleResult(record, retry, sent, self.controller.outbox.count())

    def next_delay(self, result: CycleResult) -> float:
        if result.retry:
            self._failures += 1
            return backoff_delay(
                self._failures,
                base_s=self.config.backoff_base_s,
                max_s=self.config.backoff_max_s,
                jitter=self.config.poll_jitter,
                rng=self.rng,
            )
        self._failures = 0
        j = self.config.poll_jitter
        return self.config.poll_interval_s * (1.0 + self.rng.uniform(-j, j))

    def report_hardware(self) -> None:
        """Send the detected profile: it may have changed since enrollment (new JetPack, TensorRT...)."""
        c = self.controller
        try:
            c.client.put_hardware(c.identity.device_id, c.profile.to_dict())
        except ServerError as e:
            log.warning("could not report the hardware profile (will keep running): %s", e)

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        self.report_hardware()
        try:
            while not stop.is_set():
                try:
                    result = self.run_once()
                except StopRequested as e:
                    # the journal still names the interrupted step: the next start repeats it
                    log.info("%s; the update resumes at the next start", e)
                    break
                except (JournalError, OSError) as e:
                    log.error("cycle failed, the active model keeps serving: %s", e)
                    result = CycleResult(Record(), True, 0, self.controller.outbox.count())
                delay = self.next_delay(result)
                log.debug("next poll in %.1f s", delay)
                stop.wait(delay)
        finally:
            self.perception.stop()
            self.controller.outbox.close()
            log.info("agent stopped")


def build_agent(
    config: AgentConfig, *, perception: Perception | None = None, stop: threading.Event | None = None
) -> Agent:
    """Wire an enrolled data directory; raises ConfigError when it is not usable.

    ``stop`` (set by the signal handler) cuts the long steps short: the child-process model check here,
    the shadow run and health watch in a perception built with the same event.
    """
    paths = config.paths
    identity = load_identity(paths)
    try:
        key = DirectorKey.from_dict(read_json(paths.director_key))
        root = paths.pinned_root.read_bytes()
    except (OSError, JournalError) as e:
        raise ConfigError(f"{paths.trust_dir} lacks the pinned trust anchors: {e}") from e
    pool = urllib3.PoolManager(num_pools=4, maxsize=4)
    client = ServerClient(identity.server, token=identity.device_token, timeout_s=config.http_timeout_s)
    client.device_key = load_device_key(paths)  # every report is signed (docs/contracts.md §7)
    tuf = TufClient(
        metadata_dir=paths.tuf_dir,
        metadata_url=identity.metadata_url,
        targets_url=identity.targets_url,
        pinned_root=root,
        timeout_s=config.http_timeout_s,
    )
    slots = Slots(paths.slots)
    profile = functools.cache(lambda: load_profile(identity))
    # one child-process gate: the controller runs it, a headless perception passes on its verdicts
    gate = ChildGate(config=config, slots=slots, profile=profile, stop=stop)
    if perception is None:
        perception = HeadlessPerception(
            gate=gate.cached, active_dir=slots.active_dir, variant_of=variant_in, open_model=gate.open_model
        )
    controller = AgentController(
        config=config,
        identity=identity,
        client=client,
        tuf=tuf,
        slots=slots,
        outbox=Outbox(paths.outbox),
        state=StateFile(paths.state),
        profile=profile,
        director_key=key,
        perception=perception,
        gate=gate,
        pool=pool,
        stop=stop,
    )
    return Agent(config=config, controller=controller, journal=Journal(paths.journal), perception=perception)


def status(config: AgentConfig) -> dict[str, Any]:
    """What ``edge-agent status`` shows: model, slot, last update, pending reports."""
    paths = config.paths
    identity = load_identity(paths)
    slots = Slots(paths.slots)
    slot = slots.active_slot()
    manifest = slots.manifest(slot)
    state = StateFile(paths.state).load()
    record = Journal(paths.journal).load()
    outbox = Outbox(paths.outbox)
    try:
        pending = outbox.count()
    finally:
        outbox.close()
    release = ((state.last_update or {}).get("slots") or {}).get(slot) if slot else None
    return {
        "device_id": identity.device_id,
        "server": identity.server,
        "model": {
            "name": manifest.name,
            "version": manifest.version,
            "release": release,
            "variant": variant_in(slots.path(slot)),
        }
        if manifest and slot
        else None,
        "slot": slot,
        "previous_slot": Slots.other(slot) if slot and slots.manifest(Slots.other(slot)) else None,
        "update_state": record.state.value,
        "update": record.update.to_dict() if record.update else None,
        "last_update": state.last_update,
        "highest_release": state.highest_release,
        "pending_reports": pending,
        "data_dir": str(Path(paths.root)),
    }


def manual_rollback(config: AgentConfig) -> dict[str, Any]:
    """Switch to the previous slot now and report MANUAL_ROLLBACK; raises ConfigError when impossible."""
    paths = config.paths
    slots = Slots(paths.slots)
    journal = Journal(paths.journal)
    if journal.load().state is not State.IDLE:
        raise ConfigError(f"an update is in progress ({journal.load().state.value}); try again when it is idle")
    slot = slots.active_slot()
    if slot is None or slots.manifest(Slots.other(slot)) is None:
        raise ConfigError("there is no previous model to roll back to")
    agent = build_agent(config)
    c = agent.controller
    before = c.running()
    slots.switch(Slots.other(slot))
    after = c.running()
    c.outbox.add(
        make_report(
            "transition",
            state="rolled-back",
            release=(before or {}).get("release"),
            reason_code=ReasonCode.MANUAL_ROLLBACK,
            detail=f"manual rollback from {before} to {after}",
            running=after,
        )
    )
    agent.flush()
    c.outbox.close()
    return {"from": before, "to": after, "slot": Slots.other(slot)}
