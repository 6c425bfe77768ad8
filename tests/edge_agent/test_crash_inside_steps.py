"""kill -9 of the real agent *inside* staging and inside the slot switch, then restart.

The journal-level crash tests (``test_crash.py``) kill the agent between two
journaled steps. These kill it in the middle of one, at the file-system calls
the step makes (:mod:`tests.edge_agent.syscall_pause`): after a file of the
new slot is linked and before the next, before the complete slot is renamed
into place, before the symlink for ``current`` is created and before it is
renamed onto ``current``. After every kill ``current`` must still be a symlink
to a complete, verified model (the switch is atomic: a kill between an unlink
and a new symlink would leave none), and the restarted agent must finish the
update.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge_agent.update_harness import (
    FAST_RUN,
    PY,
    ROOT,
    agent_env,
    check_slots,
    kill_at_pause,
    make_duo_with,
    padded_onnx,
    run_agent,
)
from tests.live_server import LiveServer, live_server

POINTS = ["stage-link:2", "stage-rename", "switch-symlink", "switch-replace"]  # in the order the update meets them


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("crash-inside")) as srv:
        yield srv


def _publish(server: LiveServer, tmp: Path, group: str, minor: int) -> str:
    version = f"1.{minor}.0"
    bundle = tmp / f"{group}-{version}"
    make_duo_with(
        bundle,
        name=group,
        version=version,
        fp32=padded_onnx(200_000, seed=minor),
        int8=padded_onnx(100_000, seed=1000 + minor),
    )
    server.publish(bundle)
    server.create_rollout(model=group, version=version, group=group, stages=[100])
    return f"{group}@{version}"


def _start_paused(data: Path, point: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "tests.edge_agent.syscall_pause", point, "run", "--once", *FAST_RUN, "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=agent_env(),
        cwd=ROOT,
    )


def _finish(data: Path) -> None:
    out = run_agent(data, "run", "--once", *FAST_RUN)
    assert out.returncode == 0, out.stderr
    assert json.loads((data / "journal.json").read_text())["state"] == "idle"


@pytest.mark.slow
def test_kills_inside_staging_and_inside_the_switch_always_leave_a_valid_current(
    server: LiveServer, tmp_path: Path
) -> None:
    group = "crash-inside"
    data = tmp_path / "agent"
    out = run_agent(
        data, "enroll", "--server", server.url, "--token", server.credential(group), "--group", group, "--name", group
    )
    assert out.returncode == 0, out.stderr
    before = _publish(server, tmp_path, group, 0)
    _finish(data)
    assert check_slots(data) == before
    wanted = _publish(server, tmp_path, group, 1)
    current = data / "slots" / "current"
    for point in POINTS:  # one update, killed inside successive steps; each restart resumes it
        proc = _start_paused(data, point)
        assert kill_at_pause(proc, data) == point, f"the agent did not reach {point}"
        assert current.is_symlink(), f"killed at {point}: no current symlink"
        assert check_slots(data) in (before, wanted), point  # a complete, verified model is current
        if point.startswith("stage"):
            assert check_slots(data) == before  # nothing switched while the slot was being staged
            assert list((data / "slots").glob(".staging-*")), "the kill did not land inside staging"
    assert os.readlink(current) == "a"  # killed before the rename onto current: still the old slot
    _finish(data)
    assert check_slots(data) == wanted and os.readlink(current) == "b"
    assert not list((data / "slots").glob(".staging-*")) and not list((data / "slots").glob(".current-*"))
    assert not list((data / "downloads").glob("*.part"))
