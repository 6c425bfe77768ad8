"""CameraPerception as the update path uses it: construction, errors, counters, lifecycle."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from edge_agent.perception import GateResult, Perception
from edge_agent.perception.camera import CameraError
from edge_agent.perception.inference import ModelLoadFailed
from edge_agent.perception.serving import CameraPerception, PerceptionError
from models.bundle import Gates
from tests.bundles import make_bundle
from tests.conftest import wait_until
from tests.edge_agent.media import write_video


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("b") / "tiny"
    make_bundle(d, version="3.0.0")
    return d


def test_implements_the_perception_protocol() -> None:
    assert isinstance(CameraPerception.from_options("synthetic"), Perception)


def test_from_options_serves_a_file_and_writes_results(tmp_path: Path, bundle: Path) -> None:
    video = write_video(tmp_path / "v.avi", [("green", 25)])
    results = tmp_path / "out" / "results.jsonl"
    p = CameraPerception.from_options(str(video), loop=False, results_path=results, queue_size=2)
    assert p.active_version() is None and p.counters()["captured"] == 0
    p.start(bundle)
    assert p.active_version() == "tiny@3.0.0"
    assert p.pipeline is not None and p.pipeline.wait(20)
    c = p.counters()
    p.stop()
    p.stop()  # idempotent
    assert (c["captured"], c["inferred"], c["dropped"], c["queued"], c["reconnects"]) == (
        25,
        25,
        0,
        0,
        0,
    )
    assert {"fps", "last_swap_ms", "errors", "nan_frames", "infer_ms", "p95_ms"} <= set(c)
    assert (c["frames_captured"], c["frames_dropped"]) == (25, 0) and c["p95_ms"] >= c["p50_ms"] > 0
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(rows) == 25 and rows[0]["top_k"][0][0] == 1  # green
    assert p.active_version() is None
    assert p.counters()["inferred"] == 25  # the last run's totals remain readable after stop


def test_unopenable_source_is_a_clear_error_and_leaves_nothing_running(tmp_path: Path, bundle: Path) -> None:
    p = CameraPerception.from_options(str(tmp_path / "missing.avi"))
    before = threading.active_count()
    with pytest.raises(CameraError, match=r"cannot open file source .*missing\.avi.*no such file"):
        p.start(bundle)
    assert p.pipeline is None and threading.active_count() == before
    with pytest.raises(PerceptionError, match="not serving"):
        p.shadow(bundle, Gates(latency_budget_ms=10.0), timeout_s=1)


def test_bad_bundle_fails_to_start_with_model_load_failed(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    make_bundle(bad, behaviour="not-onnx")
    p = CameraPerception.from_options("synthetic")
    with pytest.raises(ModelLoadFailed, match="cannot load bundle"):
        p.start(bad)
    with pytest.raises(ModelLoadFailed):
        p.start(tmp_path / "nowhere")


def test_start_twice_is_refused(bundle: Path) -> None:
    p = CameraPerception.from_options("synthetic", max_fps=50.0)
    p.start(bundle)
    try:
        with pytest.raises(PerceptionError, match="already serving"):
            p.start(bundle)
        wait_until(lambda: p.counters()["inferred"] > 0, timeout=30, what="the first served frame")
    finally:
        p.stop()


def test_swap_back_loads_the_previous_model_when_it_is_not_kept(tmp_path: Path, bundle: Path) -> None:
    other = tmp_path / "other"
    make_bundle(other, version="3.1.0")
    p = CameraPerception.from_options("synthetic", max_fps=100.0)
    p.start(other)
    try:
        result = p.swap_back(bundle)  # no previous model in memory: loaded from its directory
        assert result.ok and p.active_version() == "tiny@3.0.0"
        assert "tiny@3.1.0 -> tiny@3.0.0" in result.detail
        failed = p.swap_back(tmp_path / "nowhere")
        assert not failed.ok and "cannot load the previous model" in failed.detail
    finally:
        p.stop()


def test_shadow_after_the_source_ended_fails_at_once(tmp_path: Path, bundle: Path) -> None:
    video = write_video(tmp_path / "short.avi", [("blue", 5)])
    p = CameraPerception.from_options(str(video), loop=False)
    p.start(bundle)
    try:
        assert p.pipeline is not None and p.pipeline.wait(20)
        results: list[GateResult] = []
        # an hour-long shadow run that must not wait at all: the bounded join only fails the test
        shadow = threading.Thread(
            target=lambda: results.append(p.shadow(bundle, Gates(latency_budget_ms=100.0), timeout_s=3600)),
            daemon=True,
        )
        shadow.start()
        shadow.join(60)
        assert not shadow.is_alive(), "the shadow run waited for frames of a source that has ended"
        (result,) = results
        assert not result.passed and "has ended" in result.detail
    finally:
        p.stop()


def _two_variant_bundle(directory: Path) -> Path:
    """The test bundle plus a second variant that host selection prefers on every profile."""
    import dataclasses
    import hashlib

    from models.bundle import SelectionEntry, write_bundle
    from tests.bundles import make_onnx

    manifest = make_bundle(directory, name="duo", version="1.0.0")
    data = make_onnx("permuted")
    (directory / "preferred.onnx").write_bytes(data)
    staged = manifest.variants[0]
    preferred = dataclasses.replace(
        staged, id="onnx-preferred", file="preferred.onnx", sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    selection = {
        hw: SelectionEntry(order=(preferred.id, staged.id), reason="preferred first") for hw in manifest.selection
    }
    write_bundle(directory, dataclasses.replace(manifest, variants=(preferred, staged), selection=selection))
    return directory


def test_a_slot_serves_the_variant_recorded_in_it_not_the_profile_pick(tmp_path: Path) -> None:
    from edge_agent.perception.runtimes import record_variant, variant_in

    slot = _two_variant_bundle(tmp_path / "slot")
    assert variant_in(slot) is None  # both files, no record: host selection decides
    record_variant(slot, "onnx-fp32")  # the gate chose the second of the selection order
    assert variant_in(slot) == "onnx-fp32"
    video = write_video(tmp_path / "v.avi", [("green", 10)])
    p = CameraPerception.from_options(str(video), loop=False, queue_size=2)
    p.start(slot)  # the profile would pick onnx-preferred
    try:
        assert p.pipeline is not None and p.pipeline.active.variant_id == "onnx-fp32"
        assert p.active_version() == "duo@1.0.0"
    finally:
        p.stop()
    (slot / ".variant").unlink()
    (slot / "preferred.onnx").unlink()  # a slot staged before the record existed holds one variant
    assert variant_in(slot) == "onnx-fp32"
    assert variant_in(tmp_path / "nothing-here") is None
