"""kill -9 of the real agent process at every state and at random download offsets, then restart.

The agent is started with the test hook ``EDGEFLEET_AGENT_PAUSE_AT`` (a state,
or ``download:<bytes>``), which makes it write a marker and sleep once it has
journaled that state; the test then SIGKILLs it there. After every kill the
slots must hold only complete, verified bundles and ``current`` must name one;
after the final restart the update must be committed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.perception.runtimes import variant_in
from tests.bundles import make_bundle
from tests.edge_agent.update_harness import (
    FAST_RUN,
    check_slots,
    kill_at_pause,
    make_bundle_with,
    make_duo_with,
    padded_onnx,
    run_agent,
    start_agent,
)
from tests.live_server import LiveServer, live_server

STATES = [
    "checking",
    "downloading",
    "verifying",
    "staging",
    "preparing",
    "benchmarking",
    "swapping",
    "health-watch",
    "committed",
]
MODEL_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("crash")) as srv:
        yield srv


class Fleet:
    """One device in its own group, and a helper that publishes and rolls out the next version."""

    def __init__(self, server: LiveServer, tmp: Path, group: str, *, alternates: bool = False) -> None:
        self.server, self.tmp, self.group, self.alternates = server, tmp, group, alternates
        self.data = tmp / f"{group}-agent"
        self.minor = 0
        self.rollout: str | None = None
        out = run_agent(
            self.data,
            "enroll",
            "--server",
            server.url,
            "--token",
            server.credential(group),
            "--group",
            group,
            "--name",
            group,
        )
        assert out.returncode == 0, out.stderr

    def next_release(self, *, behaviour: str = "ok") -> str:
        version = f"1.{self.minor}.0"
        bundle = self.tmp / f"{self.group}-{version}"
        if behaviour == "ok" and self.alternates:
            # the assigned FP32 and its INT8 alternate: killed anywhere, both resume and land in the slot
            make_duo_with(
                bundle,
                name=self.group,
                version=version,
                fp32=padded_onnx(MODEL_BYTES, seed=self.minor),
                int8=padded_onnx(MODEL_BYTES // 2, seed=1000 + self.minor),
            )
        elif behaviour == "ok":
            make_bundle_with(bundle, name=self.group, version=version, data=padded_onnx(MODEL_BYTES, seed=self.minor))
        else:
            make_bundle(bundle, name=self.group, version=version, behaviour=behaviour)
        self.server.publish(bundle)
        self.rollout = self.server.create_rollout(model=self.group, version=version, group=self.group, stages=[100])[
            "id"
        ]
        self.minor += 1
        return f"{self.group}@{version}"

    def finish(self, *, code: int = 0) -> None:
        out = run_agent(self.data, "run", "--once", *FAST_RUN)
        assert out.returncode == code, out.stderr
        journal = json.loads((self.data / "journal.json").read_text())
        assert journal["state"] == "idle"
        assert not list(self.data.glob(".journal.json.*")), "a killed write left a temp file behind"


def test_kill_at_every_state_then_resume(server: LiveServer, tmp_path: Path) -> None:
    fleet = Fleet(server, tmp_path, "crash-states", alternates=True)
    fleet.next_release()
    fleet.finish()
    before = check_slots(fleet.data)
    wanted = fleet.next_release()
    for state in STATES:  # one update, killed successively at each state; each restart resumes it
        proc = start_agent(fleet.data, "run", "--once", *FAST_RUN, pause=state)
        assert kill_at_pause(proc, fleet.data) == state
        active = check_slots(fleet.data)
        assert active in (before, wanted), active
    fleet.finish()
    assert check_slots(fleet.data) == wanted
    current = fleet.data / "slots" / "current"
    assert {p.name for p in current.resolve().glob("model-*.onnx")} == {"model-onnx-fp32.onnx", "model-onnx-int8.onnx"}
    assert variant_in(current) in ("onnx-fp32", "onnx-int8")
    assert not list((fleet.data / "slots").glob(".staging-*"))
    assert not list((fleet.data / "downloads").glob("*.part"))
    assert fleet.rollout is not None and server.rollout(fleet.rollout)["totals"]["success"] == 1

    fleet.next_release(behaviour="nan")  # a failing update, killed once it has journaled "failed"
    proc = start_agent(fleet.data, "run", "--once", *FAST_RUN, pause="failed")
    assert kill_at_pause(proc, fleet.data) == "failed"
    assert check_slots(fleet.data) == wanted
    fleet.finish(code=3)  # the restart finishes abandoning it: reported, slot cleaned
    assert check_slots(fleet.data) == wanted
    assert len([p for p in (fleet.data / "slots").iterdir() if p.name in ("a", "b")]) == 1
    assert "NAN_OUTPUT" in str(server.rollout(fleet.rollout)["failure_reasons"])


def _ahead(data: Path, rng: random.Random) -> str | None:
    """A random pause point the resumed agent will still reach (None: let it finish)."""
    state = json.loads((data / "journal.json").read_text())["state"] if (data / "journal.json").exists() else "idle"
    order = ["idle"] + STATES
    later = [s for s in STATES if order.index(s) > order.index(state) and s != "checking"]
    if state == "idle":
        later.append("checking")
    if state in ("idle", "checking", "downloading"):
        parts = [p.stat().st_size for p in (data / "downloads").glob("*.part")] if (data / "downloads").exists() else []
        have = max(parts, default=0)
        if have < MODEL_BYTES - 1000:
            later += [f"download:{rng.randrange(have + 1, MODEL_BYTES - 500)}" for _ in range(10)]
    return rng.choice(later) if later else None


def test_random_kills_including_download_offsets(server: LiveServer, tmp_path: Path) -> None:
    rng = random.Random(20261127)
    fleet = Fleet(server, tmp_path, "crash-random", alternates=True)
    wanted = fleet.next_release()
    kills, seen = 0, set()
    while kills < 20:
        pause = _ahead(fleet.data, rng)
        if pause is None:  # nothing left to interrupt: finish this update and start the next
            fleet.finish()
            assert check_slots(fleet.data) == wanted
            wanted = fleet.next_release()
            continue
        proc = start_agent(fleet.data, "run", "--once", *FAST_RUN, pause=pause)
        where = kill_at_pause(proc, fleet.data)
        assert where is not None, f"the agent did not reach {pause}"
        check_slots(fleet.data)  # never a torn slot, whatever the kill point
        kills += 1
        seen.add(where.split("-")[0])
    assert "download" in seen and len(seen) >= 4, seen
    fleet.finish()
    assert check_slots(fleet.data) == wanted
    assert not list((fleet.data / "downloads").glob("*.part"))
