"""The threaded pipeline on real video files and real ONNX Runtime sessions: every frame counted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.perception.camera import Frame, SourceKind, SourceSpec, SyntheticSource, open_source
from edge_agent.perception.inference import LoadedModel, Outcome, load_model
from edge_agent.perception.pipeline import DropPolicy, FrameQueue, Pipeline, PipelineConfig
from tests.bundles import make_bundle
from tests.conftest import wait_until
from tests.edge_agent.media import write_video


@pytest.fixture(scope="module")
def ok_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    d = tmp_path_factory.mktemp("ok")
    make_bundle(d, behaviour="ok")
    return load_model(d)


def _frame(i: int) -> Frame:
    import numpy as np

    return Frame(i, np.zeros((2, 2, 3), np.uint8), time.monotonic(), 0.0)


def test_frame_queue_drop_oldest_keeps_the_freshest() -> None:
    q = FrameQueue(3, DropPolicy.DROP_OLDEST)
    dropped = sum(q.put(_frame(i)) for i in range(5))
    assert dropped == 2
    assert [q.get(0.1).index for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]
    assert q.get(0.01) is None


def test_frame_queue_block_waits_for_room() -> None:
    q = FrameQueue(1, DropPolicy.BLOCK)
    q.put(_frame(0))
    done = threading.Event()

    def producer() -> None:
        q.put(_frame(1))
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.2)  # blocked: the queue is full
    assert q.get(1.0).index == 0  # type: ignore[union-attr]
    assert done.wait(2.0)
    assert q.get(1.0).index == 1  # type: ignore[union-attr]


def test_file_pipeline_infers_every_frame_and_writes_jsonl(tmp_path: Path, ok_model: LoadedModel) -> None:
    video = write_video(tmp_path / "clip.avi", [("red", 20), ("green", 20), ("blue", 20)])
    results = tmp_path / "results.jsonl"
    seen: list[Outcome] = []
    pipe = Pipeline(
        open_source(str(video)),
        ok_model,
        PipelineConfig(queue_size=4, results_path=results, keep_outcomes=100),
        on_result=seen.append,
    )
    assert pipe.queue.policy is DropPolicy.BLOCK  # a file never drops
    pipe.start()
    assert pipe.wait(30)
    c = pipe.stop()
    assert (c["captured"], c["inferred"], c["dropped"], c["errors"]) == (60, 60, 0, 0)
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(60))
    assert {x["model"] for x in lines} == {"tiny@1.0.0"}
    # the tiny model's class c fires for colour channel c (labels red, green, blue, other)
    assert [lines[i]["top_k"][0][0] for i in (5, 25, 45)] == [0, 1, 2]
    assert set(lines[0]["timings_ms"]) == {"decode", "queue", "preprocess", "infer", "infer_cpu", "postprocess"}
    assert 0 < lines[0]["timings_ms"]["infer_cpu"] <= lines[0]["timings_ms"]["infer"] * 1.5 + 1.0
    assert len(seen) == 60 and seen[10].model == "tiny@1.0.0"
    assert c["infer_ms"] > 0 and c["decode_ms"] > 0 and c["fps"] > 0


def test_live_source_drops_oldest_and_counters_add_up(tmp_path: Path) -> None:
    slow_dir = tmp_path / "slow"
    make_bundle(slow_dir, behaviour="slow")
    slow = load_model(slow_dir)
    # a synthetic source posing as live (drop-oldest) that produces far faster than the slow model
    spec = SourceSpec(SourceKind.SYNTHETIC, "patterns", fps=400.0)
    pipe = Pipeline(
        SyntheticSource(spec),
        slow,
        PipelineConfig(queue_size=2, drop_policy=DropPolicy.DROP_OLDEST),
    )
    pipe.start()
    try:
        wait_until(
            lambda: (c := pipe.counters.snapshot())["dropped"] > 0 and c["inferred"] >= 2,
            timeout=30,
            what="frames dropped while the slow model infers",
        )
    finally:
        c = pipe.stop()
        slow.close()
    assert c["dropped"] > 0
    assert c["captured"] == c["inferred"] + c["dropped"]  # in-flight frames were drained at stop
    assert c["inferred"] >= 2


class _RecordingEvent(threading.Event):
    """A camera feed's stop event, recording each timeout its capture thread waits with."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return super().wait(timeout)


def test_max_fps_paces_the_capture_thread(ok_model: LoadedModel) -> None:
    """After each frame the capture thread waits out the rest of its 1/max_fps period (here 0.5 s, far
    longer than a synthetic frame takes) before it reads the next one; without a cap it never waits."""
    for max_fps, frames in ((2.0, 3), (None, 20)):
        pipe = Pipeline(
            SyntheticSource(SourceSpec(SourceKind.SYNTHETIC, "patterns")),
            ok_model,
            PipelineConfig(max_fps=max_fps),
        )
        stop = pipe.feeds["cam0"]._stop = _RecordingEvent()
        pipe.start()
        try:

            def enough(snapshot: Callable[[], dict[str, float]] = pipe.counters.snapshot, n: int = frames) -> bool:
                return snapshot()["captured"] >= n

            wait_until(enough, timeout=30, what=f"{frames} frames")
        finally:
            c = pipe.stop()
        waits = [w for w in stop.waits if w is not None]
        assert c["captured"] == c["inferred"] + c["dropped"]
        if max_fps is None:
            assert waits == [], waits
            continue
        period = 1.0 / max_fps
        assert len(waits) >= 2, (waits, c)  # between the frames: a wait after each one the host was not late for
        assert all(0 < w <= period for w in waits), waits
        assert max(waits) > period / 2, waits  # the rest of a 0.5 s period, not of a shorter one


def test_listener_sees_each_frame_with_its_outcome(tmp_path: Path, ok_model: LoadedModel) -> None:
    video = write_video(tmp_path / "clip.avi", [("green", 15)])
    pairs: list[tuple[int, int]] = []
    pipe = Pipeline(open_source(str(video)), ok_model)
    pipe.add_listener(lambda f, o: pairs.append((f.index, o.frame_index)))
    pipe.start()
    assert pipe.wait(20)
    pipe.stop()
    assert pairs == [(i, i) for i in range(15)]
