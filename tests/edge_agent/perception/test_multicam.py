"""Several cameras per agent: real OpenCV decoding of four videos (one a live stream that drops and
comes back), batched inference on real ONNX Runtime sessions, every frame counted per camera."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from edge_agent.__main__ import main as agent_main
from edge_agent.config import AgentConfig
from edge_agent.link.telemetry import Outbox
from edge_agent.perception.budget import split_cpu
from edge_agent.perception.camera import (
    CameraError,
    CameraSpec,
    Frame,
    FrameSource,
    ReconnectPolicy,
    SourceKind,
    open_source,
    parse_camera,
    parse_cameras,
    parse_source,
    read_sources_file,
)
from edge_agent.perception.inference import load_model
from edge_agent.perception.pipeline import BatchError, FeedState, Pipeline, PipelineConfig, batch_limit
from edge_agent.perception.serving import CameraPerception
from edge_agent.update.daemon import Agent
from models.bundle import read_bundle, write_bundle
from tests.bundles import make_bundle
from tests.conftest import wait_until
from tests.edge_agent.media import mjpeg_server, write_video

FAST = ReconnectPolicy(initial_s=0.05, max_s=0.2)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multicam")
    out = {"v1": root / "v1", "v2": root / "v2", "static": root / "static"}
    make_bundle(out["v1"], version="1.0.0")
    make_bundle(out["v2"], version="2.0.0")
    m = make_bundle(out["static"], version="1.0.1")
    write_bundle(
        out["static"], dataclasses.replace(m, input=dataclasses.replace(m.input, shape=(1, *m.input.shape[1:])))
    )
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "front": write_video(root / "front.avi", [("red", 20), ("green", 20)]),
        "left": write_video(root / "left.avi", [("green", 25), ("blue", 15)]),
        "right": write_video(root / "right.avi", [("blue", 30), ("red", 10)]),
        "rear": write_video(root / "rear.avi", [("green", 10), ("red", 30)]),
    }


def _frames(path: Path, camera: str, n: int) -> list[Frame]:
    src = open_source(str(path))
    try:
        frames = []
        for _ in range(n):
            f = src.read()
            assert f is not None
            frames.append(dataclasses.replace(f, camera=camera))
        return frames
    finally:
        src.close()


# ---------------------------------------------------------------------- parsing
def test_camera_names_and_bare_sources() -> None:
    cams = parse_cameras(["front=/dev/video0", "rtsp://cam/x?a=b", "left=drive.avi"])
    assert [(c.name, c.source.kind, c.source.target) for c in cams] == [
        ("front", SourceKind.DEVICE, "0"),
        ("cam1", SourceKind.STREAM, "rtsp://cam/x?a=b"),
        ("left", SourceKind.FILE, "drive.avi"),
    ]
    gst = "nvarguscamerasrc ! video/x-raw,width=1280 ! appsink"
    assert parse_camera(gst, 0) == CameraSpec("cam0", parse_source(gst))  # '=' inside a pipeline names nothing
    with pytest.raises(CameraError, match="used twice"):
        parse_cameras(["front=a.avi", "front=b.avi"])
    with pytest.raises(CameraError, match="no source after"):
        parse_camera("front=", 0)


def test_sources_file_lists_cameras(tmp_path: Path) -> None:
    f = tmp_path / "cams.yaml"
    f.write_text("- front=/dev/video0\n- {name: rear, source: rear.avi}\n")
    assert read_sources_file(f) == ["front=/dev/video0", "rear=rear.avi"]
    f.write_text('{"front": 1}')
    with pytest.raises(CameraError, match="non-empty list"):
        read_sources_file(f)


def test_cpu_split_rule() -> None:
    s = split_cpu(1, 4)
    assert (s.capture, s.inference) == (0, 1)
    if split_cpu(None, 1).budget >= 2:
        s = split_cpu(2, 4)
        assert (s.capture, s.inference) == (1, 1)
    from edge_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="cpu-budget"):
        split_cpu(0, 1)


# ---------------------------------------------------------------------- batching
def test_a_frame_gives_the_same_result_batched_or_alone(bundles: dict[str, Path], videos: dict[str, Path]) -> None:
    model = load_model(bundles["v1"])
    static = load_model(bundles["static"])
    try:
        frames = [f for name, path in videos.items() for f in _frames(path, name, 3)]
        alone = [model.infer(f) for f in frames]
        batched = model.infer_batch(frames)
        one_by_one = static.infer_batch(frames)  # a fixed batch of 1: one frame per run
        assert [o.camera for o in batched] == [f.camera for f in frames]
        assert {o.timings_ms.get("batch") for o in batched} == {float(len(frames))}
        assert all("batch" not in o.timings_ms for o in one_by_one)
        for a, b, c in zip(alone, batched, one_by_one, strict=True):
            assert a.ok and b.ok and c.ok
            assert a.top_k is not None and b.top_k is not None and c.top_k is not None
            assert [k for k, _ in a.top_k] == [k for k, _ in b.top_k] == [k for k, _ in c.top_k]
            np.testing.assert_allclose([p for _, p in a.top_k], [p for _, p in b.top_k], rtol=1e-5, atol=1e-6)
        assert static.max_batch == 1 and model.max_batch is None
        assert batch_limit(static, 4, None) == 1 and batch_limit(model, 4, None) == 4
        with pytest.raises(BatchError, match="fixed batch of 1"):
            batch_limit(static, 4, 4)
    finally:
        model.close()
        static.close()


def test_four_cameras_one_live_that_drops_every_frame_counted(
    tmp_path: Path, bundles: dict[str, Path], videos: dict[str, Path]
) -> None:
    model = load_model(bundles["v1"])
    results = tmp_path / "results.jsonl"
    with mjpeg_server(frames_per_connection=15) as (url, connections):
        sources: dict[str, FrameSource] = {n: open_source(str(videos[n])) for n in ("front", "left", "right")}
        sources["rear"] = open_source(parse_source(url), reconnect=FAST)
        pipe = Pipeline(sources, model, PipelineConfig(queue_size=4, results_path=results, batch_timeout_ms=5))
        pipe.start()
        try:
            wait_until(lambda: sources["rear"].reconnects >= 1, timeout=60, what="the live camera to reconnect")
            wait_until(
                lambda: all(pipe.feeds[n].state is FeedState.ENDED for n in ("front", "left", "right")),
                timeout=60,
                what="the three files to end",
            )
            assert pipe.running  # the live camera keeps the pipeline serving
        finally:
            pipe.stop()
            model.close()
    assert len(connections) >= 2
    per_cam = {n: f.counters.snapshot() for n, f in pipe.feeds.items()}
    for name, c in per_cam.items():
        assert c["captured"] == c["inferred"] + c["dropped"], (name, c)
    for name in ("front", "left", "right"):
        assert (per_cam[name]["captured"], per_cam[name]["dropped"]) == (40.0, 0.0)
    assert per_cam["rear"]["captured"] >= 16
    total = pipe.counters.snapshot()
    assert total["captured"] == sum(c["captured"] for c in per_cam.values())
    assert total["captured"] == total["inferred"] + total["dropped"]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    seen: dict[str, list[int]] = defaultdict(list)
    for x in lines:
        seen[x["camera"]].append(x["frame"])
    for name in ("front", "left", "right"):
        assert seen[name] == list(range(40))  # in order, each once
    # the tiny model's class c fires for colour channel c (labels red, green, blue, other)
    by_key = {(x["camera"], x["frame"]): x["top_k"][0][0] for x in lines}
    assert [by_key[("front", 5)], by_key[("left", 5)], by_key[("right", 5)], by_key[("right", 35)]] == [0, 1, 2, 0]


def test_hot_swap_with_four_cameras_loses_no_frame(bundles: dict[str, Path], videos: dict[str, Path]) -> None:
    a, b = load_model(bundles["v1"]), load_model(bundles["v2"])
    sources: dict[str, FrameSource] = {n: open_source(str(p)) for n, p in videos.items()}
    outcomes: list[tuple[str, int, str]] = []
    pipe = Pipeline(
        sources,
        a,
        PipelineConfig(queue_size=4, max_fps=40),
        on_result=lambda o: outcomes.append((o.camera, o.frame_index, o.model)),
    )
    pipe.start()
    try:
        wait_until(lambda: pipe.counters.snapshot()["inferred"] >= 12, timeout=60, what="frames on the first model")
        report = pipe.swap_model(b)
        assert pipe.wait(60)
    finally:
        pipe.stop()
    a.close()
    b.close()
    assert report.frames_dropped == 0
    for name, feed in pipe.feeds.items():
        c = feed.counters.snapshot()
        assert (c["captured"], c["inferred"], c["dropped"]) == (40.0, 40.0, 0.0), (name, c)
        mine = [(i, m) for cam, i, m in outcomes if cam == name]
        assert [i for i, _ in mine] == list(range(40))
        versions = [m for _, m in mine]
        first_new = versions.index("tiny@2.0.0") if "tiny@2.0.0" in versions else len(versions)
        assert set(versions[:first_new]) <= {"tiny@1.0.0"} and set(versions[first_new:]) <= {"tiny@2.0.0"}
    assert {m for _, _, m in outcomes} == {"tiny@1.0.0", "tiny@2.0.0"}


# ---------------------------------------------------------------------- bad input, dead cameras
@pytest.mark.parametrize(
    "sources, message",
    [
        (["front=FRONT", "front=LEFT"], "used twice"),
        (["front=FRONT", "rear=/nonexistent/rear.avi"], "no such file"),
        (["front="], "no source after"),
        (["front=FRONT", "rear=http://127.0.0.1:9/stream.mjpg"], "cannot open stream source"),
    ],
)
def test_bad_cameras_exit_2_before_anything_runs(
    tmp_path: Path,
    videos: dict[str, Path],
    sources: list[str],
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    argv = ["run", "--once", "--data-dir", str(tmp_path / "data")]
    for s in sources:
        argv += ["--source", s.replace("FRONT", str(videos["front"])).replace("LEFT", str(videos["left"]))]
    assert agent_main(argv) == 2
    assert message in caplog.text


def test_cpu_budget_out_of_range_exits_2(tmp_path: Path, videos: dict[str, Path]) -> None:
    argv = ["run", "--once", "--data-dir", str(tmp_path), "--source", f"front={videos['front']}"]
    assert agent_main([*argv, "--cpu-budget", "0"]) == 2


def test_a_batch_the_model_cannot_take_is_refused_at_start(bundles: dict[str, Path], videos: dict[str, Path]) -> None:
    p = CameraPerception.from_options([f"{n}={v}" for n, v in videos.items()], max_batch=4)
    with pytest.raises(BatchError, match="cannot run batch 4"):
        p.start(bundles["static"])
    assert p.pipeline is None
    p = CameraPerception.from_options([f"{n}={v}" for n, v in videos.items()])  # default: one frame per run
    p.start(bundles["static"])
    try:
        assert p.counters()["batch_size"] == 1.0
    finally:
        p.stop()


class _Controller:
    """What :meth:`Agent.heartbeat` uses of the controller: the real outbox and the running model."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def running(self) -> dict[str, object]:
        return {"name": "tiny", "version": "1.0.0", "release": 1}


def test_a_camera_that_dies_shows_in_the_heartbeat_and_the_rest_serve(
    tmp_path: Path, bundles: dict[str, Path], videos: dict[str, Path]
) -> None:
    with mjpeg_server(frames_per_connection=30) as (url, _):
        cams = parse_cameras([f"front={videos['front']}", f"rear={url}"], loop=True)
        p = CameraPerception(cams, reconnect=FAST)
        p.start(bundles["v1"])
        wait_until(lambda: p.counters()["camera.rear.inferred"] >= 3, timeout=60, what="frames of the live camera")
    # the stream's server is gone: the rear camera reconnects with back-off, the front one keeps serving
    try:
        wait_until(lambda: p.camera_states()["rear"] == "reconnecting", timeout=60, what="the rear camera to drop")
        served = p.counters()["camera.front.inferred"]
        wait_until(lambda: p.counters()["camera.front.inferred"] > served + 5, timeout=60, what="front frames")
        outbox = Outbox(tmp_path / "outbox.sqlite")
        agent = Agent(
            config=AgentConfig(data_dir=tmp_path),
            controller=_Controller(outbox),  # type: ignore[arg-type]
            journal=None,  # type: ignore[arg-type]
            perception=p,
        )
        agent.heartbeat()
        (report,) = outbox.pending()
        outbox.close()
    finally:
        p.stop()
    assert report["type"] == "heartbeat"
    assert report["metrics"]["camera.rear.up"] == 0.0 and report["metrics"]["camera.front.up"] == 1.0
    assert report["metrics"]["cameras_down"] == 1.0
    assert "rear (reconnecting)" in report["detail"]
    c = p.counters()
    for name in ("front", "rear"):
        assert c[f"camera.{name}.captured"] == c[f"camera.{name}.inferred"] + c[f"camera.{name}.dropped"]


def test_shadow_samples_every_camera_then_swap_and_watch_see_them_all(
    bundles: dict[str, Path], videos: dict[str, Path]
) -> None:
    p = CameraPerception.from_options([f"{n}={v}" for n, v in videos.items()], loop=True)
    p.start(bundles["v1"])
    try:
        gates = read_bundle(bundles["v2"]).gates
        result = p.shadow(bundles["v2"], gates, timeout_s=60)
        assert result.passed, result.detail
        per_camera = result.evidence["agreement"]["per_camera"]
        assert set(per_camera) == set(videos)
        assert all(c["frames"] >= 1 and c["agreement"] == 1.0 for c in per_camera.values())
        assert sum(c["frames"] for c in per_camera.values()) == result.metrics["frames"]
        swap = p.swap()
        assert swap.ok and swap.frames_dropped == 0
        health = p.watch(gates, window_s=1.0)
        assert health.passed, health.detail
        assert set(health.evidence["per_camera"]) == set(videos)
        c = p.counters()
        assert c["dropped"] == 0 and all(c[f"camera.{n}.up"] == 1.0 for n in videos)
    finally:
        p.stop()
