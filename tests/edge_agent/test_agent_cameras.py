"""``edge-agent run`` with two named cameras against a real server: the update is judged on both
cameras' frames, every result names its camera, and bad camera options exit 2 before anything runs."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from models.bundle import write_bundle
from tests.bundles import SIZE, make_bundle
from tests.edge_agent.media import write_video
from tests.edge_agent.update_harness import check_slots, run_agent
from tests.live_server import live_server


def test_two_cameras_serve_the_update_and_every_result_names_its_camera(tmp_path: Path) -> None:
    front = write_video(tmp_path / "front.avi", [("red", 30), ("green", 30)])
    rear = write_video(tmp_path / "rear.avi", [("blue", 30), ("red", 30)])
    data, results = tmp_path / "truck", tmp_path / "results.jsonl"
    run = [
        *("run", "--once", "--source", f"front={front}", "--source", f"rear={rear}"),
        *("--results", str(results), "--cpu-budget", "1", "--health-window", "1"),
        *("--bench-queries", "5", "--bench-duration", "0.05"),
    ]
    with live_server(tmp_path) as srv:
        out = run_agent(data, "enroll", "--server", srv.url, "--token", srv.credential("cam"), "--group", "cam")
        assert out.returncode == 0, out.stderr
        # 1.0.0 has a fixed batch of 1: the two cameras run one frame after the other
        m = make_bundle(tmp_path / "v1", name="cam", version="1.0.0")
        write_bundle(
            tmp_path / "v1", dataclasses.replace(m, input=dataclasses.replace(m.input, shape=(1, 3, SIZE, SIZE)))
        )
        srv.publish(tmp_path / "v1")
        srv.create_rollout(model="cam", version="1.0.0", group="cam", stages=[100])
        out = run_agent(data, *run)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.0.0" and "batch up to 1" in out.stderr
        out = run_agent(data, *run, "--max-batch", "2")  # a batch the active model cannot take
        assert out.returncode == 2, out.stderr
        assert "cam@1.0.0 (onnx-fp32) cannot run batch 2: its input 'input' has a fixed batch of 1" in out.stderr
        make_bundle(tmp_path / "v2", name="cam", version="2.0.0")
        srv.publish(tmp_path / "v2")
        srv.create_rollout(model="cam", version="2.0.0", group="cam", stages=[100])
        out = run_agent(data, *run)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@2.0.0"
    assert "batch up to 2" in out.stderr
    assert "CPU budget 1: 0 for capture (2 camera threads), 1 ONNX Runtime intra-op thread" in out.stderr
    assert "front: file source" in out.stderr and "rear: file source" in out.stderr
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    seen = Counter((x["camera"], x["model"]) for x in lines)
    assert {cam for cam, _ in seen} == {"front", "rear"}
    assert {m for _, m in seen} == {"cam@1.0.0", "cam@2.0.0"}


def test_bad_camera_options_exit_2(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", [("red", 5)])
    for argv, message in (
        (["--source", f"a={video}", "--source", f"a={video}"], "camera name 'a' is used twice"),
        (["--source", f"a={video}", "--source", f"b={tmp_path / 'missing.avi'}"], "no such file"),
        (["--source", f"a={video}", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--source", f"a={video}", "--cpu-budget", "0"], "--cpu-budget must be between 1 and"),
    ):
        out = run_agent(tmp_path / "data", "run", "--once", *argv)
        assert out.returncode == 2, out.stderr
        assert message in out.stderr
