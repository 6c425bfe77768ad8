"""Health watch after a swap: a model that turns NaN on later frames of a real video is rolled back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from edge_agent.errors import StopRequested
from edge_agent.health import HealthStats, HealthWatch, judge_health
from edge_agent.serving import CameraPerception
from models.bundle import Gates
from tests.bundles import make_bundle
from tests.edge_agent.media import write_video

GATES = Gates(latency_budget_ms=250.0, min_agreement=0.8, shadow_frames=20, health_window_s=10.0)


def test_a_model_that_degrades_after_the_swap_is_rolled_back(tmp_path: Path) -> None:
    active, candidate = tmp_path / "active", tmp_path / "candidate"
    make_bundle(active, version="1.0.0")
    # agrees with the active model on blue/green scenes, outputs NaN on red ones
    make_bundle(candidate, version="1.1.0", behaviour="nan-on-red")
    video = write_video(tmp_path / "drive.avi", [("blue", 120), ("green", 120), ("red", 60)])
    results = tmp_path / "results.jsonl"
    p = CameraPerception.from_options(str(video), loop=True, max_fps=150.0, results_path=results)
    p.start(active)
    try:
        shadow = p.shadow(candidate, GATES, timeout_s=20)
        assert shadow.passed, shadow.detail  # the first scenes are not red: it looks fine
        assert p.swap().ok
        health = p.watch(GATES, window_s=GATES.health_window_s)
        assert not health.passed
        assert health.reason_code == "HEALTH_REGRESSION"
        assert "NaN" in health.detail and health.metrics["nan_frames"] >= 1
        back = p.swap_back(active)
        assert back.ok and back.frames_dropped == 0
        assert p.active_version() == "tiny@1.0.0"
        time.sleep(0.3)
    finally:
        p.stop()
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    nan_models = {r["model"] for r in rows if r["nan"]}
    assert nan_models == {"tiny@1.1.0"}  # only the candidate ever produced NaN
    first_nan = next(r["frame"] for r in rows if r["nan"])
    assert first_nan % 300 >= 240  # red frames are 240..299 of each loop
    assert rows[-1]["model"] == "tiny@1.0.0"


def test_a_healthy_model_passes_its_window(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    make_bundle(v1, version="1.0.0")
    make_bundle(v2, version="1.1.0")
    video = write_video(tmp_path / "drive.avi", [("blue", 30), ("red", 30), ("green", 30)])
    p = CameraPerception.from_options(str(video), loop=True, max_fps=150.0)
    p.start(v1)
    try:
        assert p.shadow(v2, GATES, timeout_s=20).passed
        assert p.swap().ok
        health = p.watch(GATES, window_s=1.0)
    finally:
        p.stop()
    assert health.passed, health.detail
    assert health.metrics["frames"] > 50 and health.metrics["nan_frames"] == 0


def test_judge_health_reports_each_kind_of_regression() -> None:
    gates = Gates(latency_budget_ms=50.0, max_error_rate=0.05, max_latency_regression=1.5)
    ok = HealthStats(frames=100, infer_ms=[10.0] * 100)
    assert judge_health(ok, gates, baseline_p95_ms=10.0).passed
    errors = HealthStats(frames=100, errors=10, infer_ms=[10.0] * 100)
    assert "errors" in judge_health(errors, gates, baseline_p95_ms=10.0).detail
    nan = HealthStats(frames=100, nan_frames=1, infer_ms=[10.0] * 100, first_bad_frame=7)
    r = judge_health(nan, gates, baseline_p95_ms=10.0)
    assert (r.passed, r.reason_code) == (False, "HEALTH_REGRESSION") and "frame 7" in r.detail
    slow = HealthStats(frames=100, infer_ms=[30.0] * 100)
    r = judge_health(slow, gates, baseline_p95_ms=10.0)
    assert not r.passed and "latency" in r.detail
    jitter = HealthStats(
        frames=100, infer_ms=[3.0] * 100
    )  # 10x a 0.3 ms baseline, but < 5 ms slower
    assert judge_health(jitter, gates, baseline_p95_ms=0.3).passed
    assert judge_health(HealthStats(), gates, baseline_p95_ms=10.0).passed


def test_a_stop_request_ends_the_health_window_at_once_without_a_verdict() -> None:
    stop = threading.Event()
    watch = HealthWatch("tiny@1.0.0", GATES, baseline_p95_ms=None)
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(StopRequested):
        watch.wait(60.0, stop=stop)
    assert time.monotonic() - t0 < 2.0
    assert watch.wait(0.05).passed  # without a stop the (empty) window is judged as before
