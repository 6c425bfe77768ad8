"""Hot swap under a steady stream: zero frames dropped, every result attributed to one version."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_agent.perception.camera import parse_source
from edge_agent.perception.inference import load_model
from edge_agent.perception.pipeline import DropPolicy, PipelineConfig
from edge_agent.perception.serving import CameraPerception
from models.bundle import Gates
from tests.bundles import make_bundle
from tests.edge_agent.media import write_video

GATES = Gates(latency_budget_ms=250.0, min_agreement=0.8, shadow_frames=20)


def _results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _segments(models: list[object]) -> list[object]:
    out: list[object] = []
    for m in models:
        if not out or out[-1] != m:
            out.append(m)
    return out


def _wait_for(p: CameraPerception, frames: int) -> None:
    target = p.counters()["inferred"] + frames
    deadline = time.monotonic() + 20
    while p.counters()["inferred"] < target and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture()
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "drive.avi", [("red", 30), ("green", 30), ("blue", 30)])


def test_hot_swap_drops_nothing_and_attributes_every_frame(tmp_path: Path, video: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    make_bundle(v1, version="1.0.0")
    make_bundle(v2, version="1.1.0")
    results = tmp_path / "results.jsonl"
    # a paced stream whose reader blocks on a full queue: no frame is ever dropped by policy, so a gap
    # in the results can only be a frame the swap lost. (A live camera also drops the frames older than
    # the one a batch takes when a loaded host falls behind: test_multicam counts those.)
    p = CameraPerception(
        parse_source(str(video), loop=True),
        config=PipelineConfig(queue_size=32, drop_policy=DropPolicy.BLOCK, max_fps=60.0, results_path=results),
    )
    p.start(v1)
    _wait_for(p, 20)
    shadow = p.shadow(v2, GATES, timeout_s=20)
    assert shadow.passed, shadow.detail
    swap = p.swap()
    assert swap.ok and swap.frames_dropped == 0 and swap.swap_ms > 0
    assert p.active_version() == "tiny@1.1.0"
    _wait_for(p, 20)
    back = p.swap_back(v1)  # the previous model is still loaded: a zero-drop swap again
    assert back.ok and back.frames_dropped == 0
    assert p.active_version() == "tiny@1.0.0"
    _wait_for(p, 20)
    p.stop()
    counters = p.counters()  # the totals after the drain at stop

    rows = _results(results)
    assert counters["dropped"] == 0
    assert [r["frame"] for r in rows] == list(range(len(rows)))  # no gap: no frame lost
    assert len(rows) == counters["captured"] == counters["inferred"] + counters["dropped"]
    assert _segments([r["model"] for r in rows]) == ["tiny@1.0.0", "tiny@1.1.0", "tiny@1.0.0"]
    assert counters["swaps"] == 2 and counters["last_swap_ms"] > 0


def test_repeated_swaps_never_interleave_versions(tmp_path: Path, video: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    make_bundle(dirs[0], version="2.0.0")
    make_bundle(dirs[1], version="2.1.0")
    models = [load_model(d) for d in dirs]
    results = tmp_path / "r.jsonl"
    p = CameraPerception(
        parse_source(str(video), loop=True),
        config=PipelineConfig(queue_size=32, drop_policy=DropPolicy.BLOCK, max_fps=60.0, results_path=results),
    )
    p.start(dirs[0])
    pipe = p.pipeline
    assert pipe is not None
    reports = []
    for i in range(6):
        _wait_for(p, 5)
        reports.append(pipe.swap_model(models[(i + 1) % 2]))
    _wait_for(p, 5)
    p.stop()
    for m in models:
        m.close()
    rows = _results(results)
    assert sum(r.frames_dropped for r in reports) == 0
    assert [r["frame"] for r in rows] == list(range(len(rows)))
    segments = _segments([r["model"] for r in rows])
    assert segments == [
        "tiny@2.0.0",
        "tiny@2.1.0",
        "tiny@2.0.0",
        "tiny@2.1.0",
        "tiny@2.0.0",
        "tiny@2.1.0",
        "tiny@2.0.0",
    ]


def test_swap_without_a_passed_shadow_is_refused(tmp_path: Path, video: Path) -> None:
    v1, bad = tmp_path / "v1", tmp_path / "bad"
    make_bundle(v1, version="1.0.0")
    make_bundle(bad, version="1.1.0", behaviour="permuted")
    p = CameraPerception.from_options(str(video), max_fps=100.0)
    p.start(v1)
    try:
        assert not p.swap().ok
        refused = p.shadow(bad, GATES, timeout_s=20)
        assert refused.reason_code == "LOW_AGREEMENT"
        result = p.swap()  # the refused candidate must not become swappable
        assert not result.ok and "no candidate" in result.detail
        assert p.active_version() == "tiny@1.0.0"
    finally:
        p.stop()
