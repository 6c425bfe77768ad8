"""The controller's test hook and wiring, pinned down where mutation testing found them loose.

The crash tests stop the real agent at a state through :meth:`AgentController.pause_point`; here
the hook itself: it pauses only at the configured state, writes its marker (the pid, where the
crash tests look) before it sleeps, and sleeps until killed. The real controller the daemon
builds for an enrolled device (real TUF repository and director, real slots).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, PauseHook
from edge_agent.link.identity import enroll
from edge_agent.update.controller import AgentController
from edge_agent.update.core import State
from edge_agent.update.daemon import build_agent
from tests.edge_agent.update_harness import RepoSim, SimServer


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[AgentController]:
    """The daemon's controller of an enrolled device (as ``test_controller.py`` builds it)."""
    srv = SimServer(RepoSim())
    config = AgentConfig(tmp_path / "agent", http_timeout_s=5)
    enroll(config.paths, server=srv.url, token="ef_enroll_sim", name="dev")
    agent = build_agent(config)
    try:
        yield agent.controller
    finally:
        agent.controller.outbox.close()
        srv.close()


class _Slept(Exception):
    """Raised by the patched sleep: the hook would sleep until killed."""


def _patch_sleep(monkeypatch: pytest.MonkeyPatch, naps: list[float]) -> None:
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():  # the agent's own threads
            real_sleep(seconds)
            return
        naps.append(seconds)
        if len(naps) >= 2:  # it sleeps again after a nap: a loop, not one wait
            raise _Slept

    monkeypatch.setattr(time, "sleep", sleep)


def test_the_hook_does_nothing_at_other_states_or_when_unset(
    controller: AgentController, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = controller
    naps: list[float] = []
    _patch_sleep(monkeypatch, naps)
    c.pause_point(State.PREPARING)  # no hook configured
    c.config = dataclasses.replace(c.config, pause=PauseHook(state=State.SWAPPING.value))
    for state in (State.CHECKING, State.PREPARING, State.COMMITTED):
        c.pause_point(state)
    assert naps == [] and not c.config.paths.pause_marker_dir.exists()


def test_the_hook_marks_where_it_paused_then_sleeps_until_killed(
    controller: AgentController, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = controller
    c.config = dataclasses.replace(c.config, pause=PauseHook(state=State.PREPARING.value))
    naps: list[float] = []
    _patch_sleep(monkeypatch, naps)
    with pytest.raises(_Slept):
        c.pause_point(State.PREPARING)
    marker = c.config.paths.pause_marker_dir / State.PREPARING.value
    assert marker.read_text() == str(os.getpid())
    assert naps == [3600, 3600]


def test_the_marker_directory_is_created_with_its_parents(
    controller: AgentController, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = controller
    deep = c.config.data_dir.parent / "deep" / "agent"
    c.config = dataclasses.replace(c.config, data_dir=deep)
    naps: list[float] = []
    _patch_sleep(monkeypatch, naps)
    with pytest.raises(_Slept):
        c._pause("download-4096")
    assert (deep / "paused" / "download-4096").read_text() == str(os.getpid())
    with pytest.raises(_Slept):  # pausing again over the existing directory
        c._pause("download-8192")


def test_the_profile_is_detected_once_and_kept(controller: AgentController) -> None:
    c = controller
    assert c.profile is c.profile
    assert c.profile == c._profile()


def test_a_controller_built_without_a_shared_gate_wires_its_own(controller: AgentController) -> None:
    c = controller
    stop = threading.Event()
    own = AgentController(
        config=c.config,
        identity=c.identity,
        client=c.client,
        tuf=c.tuf,
        slots=c.slots,
        outbox=c.outbox,
        state=c.state,
        profile=c._profile,
        director_key=c.intake.director_key,
        stop=stop,
    )
    assert own.gate is not c.gate
    assert (own.gate.config, own.gate.slots, own.gate.stop) == (c.config, c.slots, stop)
    assert own.gate._profile is own._profile and own.perception is None
    assert own.files._pause == own._pause


def test_the_perception_passed_in_is_kept(controller: AgentController) -> None:
    assert controller.perception is not None  # the daemon shares its headless perception
    assert controller.handover.perception is controller.perception


def test_the_hook_logs_where_and_which_process_paused(
    controller: AgentController, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    naps: list[float] = []
    _patch_sleep(monkeypatch, naps)
    with caplog.at_level(logging.WARNING, logger="edge_agent.update.controller"), pytest.raises(_Slept):
        controller._pause("preparing")
    assert [r.getMessage() for r in caplog.records if r.name == "edge_agent.update.controller"] == [
        f"test hook: paused at preparing (pid {os.getpid()}) until killed"
    ]
