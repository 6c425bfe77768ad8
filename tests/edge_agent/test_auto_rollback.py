"""The automatic rollback on the vehicle, end to end through the real controller.

The agent (real controller, real slots, real child-process gate) serves a real
video through :class:`~edge_agent.perception.serving.CameraPerception`. The
candidate computes exactly what the active model does, except that it outputs
NaN on bright scenes (every colour channel's mean above 0.75): none of the
child-process gate's sample frames is such a scene, and neither are the blue
and green ones its shadow run sees. It is swapped in, the road turns white
during the health window, and the agent must switch ``current`` back and serve
the previous model again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edge_agent.config import AgentConfig
from edge_agent.link.identity import enroll
from edge_agent.perception.serving import CameraPerception
from edge_agent.update.core import State
from edge_agent.update.daemon import Agent, CycleResult, build_agent
from tests.bundles import make_bundle, make_onnx
from tests.edge_agent.update_harness import RepoSim, SimServer, check_slots, make_bundle_with

BRIGHT = 0.75  # the candidate's NaN threshold on the smallest channel mean (inputs scaled to [0, 1])
BGR = {"blue": (220, 30, 30), "green": (30, 220, 30), "white": (235, 235, 235)}


def nan_on_bright_onnx() -> bytes:
    """The ``ok`` tiny model plus ``logits += NaN where min(channel means) > BRIGHT``."""
    model = onnx.load_from_string(make_onnx("ok"))
    g = model.graph
    out = next(n for n in g.node if n.op_type == "Identity" and n.output[0] == "logits")
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(BRIGHT, dtype=np.float32), "BRIGHT"),
            numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "BRIGHT_NAN"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "BRIGHT_ZERO"),
        ]
    )
    added = [
        helper.make_node("ReduceMin", ["flat"], ["darkest"], axes=[1], keepdims=1),
        helper.make_node("Greater", ["darkest", "BRIGHT"], ["is_bright"]),
        helper.make_node("Where", ["is_bright", "BRIGHT_NAN", "BRIGHT_ZERO"], ["bright_nan"]),
        helper.make_node("Add", [out.input[0], "bright_nan"], ["logits_bright"]),
    ]
    out.input[0] = "logits_bright"
    at = list(g.node).index(out)
    for i, node in enumerate(added):
        g.node.insert(at + i, node)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_drive(path: Path, segments: list[tuple[str, int]]) -> Path:
    """An MJPG .avi of flat colour scenes, 64x48."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert writer.isOpened(), f"cv2.VideoWriter cannot write {path}"
    for colour, count in segments:
        frame = np.empty((48, 64, 3), dtype=np.uint8)
        frame[:] = BGR[colour]
        for _ in range(count):
            writer.write(frame)
    writer.release()
    return path


def _attempt(sim: RepoSim, srv: SimServer, agent: Agent, release: dict[str, Any]) -> CycleResult:
    def make(device: str, nonce: str) -> dict[str, Any]:
        return sim.sign_assignment(sim.assignment_body(release, device_id=device, nonce=nonce))

    srv.knobs.assign = make
    return agent.run_once()


def _rows(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []


@pytest.mark.slow
def test_a_health_regression_after_the_swap_rolls_back_to_the_previous_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, results = RepoSim(), tmp_path / "results.jsonl"
    srv = SimServer(sim)
    data = tmp_path / "truck"
    enroll(AgentConfig(data).paths, server=srv.url, token="ef_enroll_sim", name="truck")
    # a long health window: the first NaN frame ends it early
    config = AgentConfig(data, health_window_s=30.0, bench_queries=5, bench_duration_s=0.05, http_timeout_s=5)
    video = write_drive(tmp_path / "drive.avi", [("blue", 120), ("green", 120), ("white", 60)])
    perception = CameraPerception.from_options(str(video), loop=True, max_fps=150.0, results_path=results)
    agent = build_agent(config, perception=perception)
    agent.start()
    try:
        make_bundle(tmp_path / "v1", name="sim", version="1.0.0")
        first = _attempt(sim, srv, agent, sim.add_bundle(tmp_path / "v1"))
        assert first.record.state is State.COMMITTED, first.record
        assert perception.active_version() == "sim@1.0.0"
        slots = data / "slots"
        assert os.readlink(slots / "current") == "a"

        c = agent.controller
        real_pause = c.pause_point

        def restart_the_drive(state: State) -> None:
            # the camera restarts at the video's first frame just before the shadow run, so the
            # candidate is judged on blue and green scenes and meets white ones only after the swap
            if state is State.BENCHMARKING:
                perception.stop()
                active = c.slots.active_dir()
                assert active is not None
                perception.start(active)
            real_pause(state)

        monkeypatch.setattr(c, "pause_point", restart_the_drive)
        make_bundle_with(tmp_path / "v2", name="sim", version="1.1.0", data=nan_on_bright_onnx())
        release = sim.add_bundle(tmp_path / "v2")
        result = _attempt(sim, srv, agent, release)

        assert result.record.state is State.ROLLED_BACK, result.record
        assert result.record.outcome.reason is not None
        assert result.record.outcome.reason.value == "HEALTH_REGRESSION", result.record.outcome
        assert "NaN" in result.record.outcome.detail
        states = [r["state"] for r in srv.reports if r["type"] == "transition" and r["release"] == release["counter"]]
        assert states[-3:] == ["swapping", "health-watch", "rolled-back"], states  # it was swapped in, then back
        assert os.readlink(slots / "current") == "a"  # current switched back to the previous slot
        assert check_slots(data) == "sim@1.0.0"
        assert (slots / "b" / "bundle.json").is_file()
        assert perception.active_version() == "sim@1.0.0"
        last = c.state.load().last_update or {}
        assert (last["state"], last["reason"], last["version"]) == ("rolled-back", "HEALTH_REGRESSION", "1.1.0")

        # the previous model serves the camera again: new results come from it, without NaN
        nan_frames = [r["frame"] for r in _rows(results) if r["nan"]]
        assert nan_frames, "the candidate never served a bright frame"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            later = [r for r in _rows(results) if r["model"] == "sim@1.0.0" and r["frame"] > max(nan_frames)]
            if len(later) >= 10:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the previous model did not serve again: {_rows(results)[-5:]}")
        assert not any(r["nan"] for r in later)
    finally:
        perception.stop()
        agent.controller.outbox.close()
        srv.close()
