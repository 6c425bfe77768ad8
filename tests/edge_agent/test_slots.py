"""A/B slots: staging never touches the active slot, the switch is atomic, leftovers are cleaned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.errors import FatalError, ReasonCode
from edge_agent.slots import Slots, build_engine, engine_cache_path
from tests.bundles import make_bundle


def _files(bundle: Path) -> dict[str, Path]:
    return {"bundle.json": bundle / "bundle.json", "model.onnx": bundle / "model.onnx"}


def test_stage_switch_and_keep_previous(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1", version="1.0.0")
    make_bundle(tmp_path / "v2", version="2.0.0")
    slots = Slots(tmp_path / "slots")
    assert slots.active_slot() is None and slots.inactive_slot() == "a"
    slots.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    slots.switch("a")
    assert slots.active_slot() == "a" and os.readlink(slots.current_link) == "a"
    assert slots.inactive_slot() == "b"
    slots.stage("b", _files(tmp_path / "v2"), variant_id="onnx-fp32")
    assert slots.active_slot() == "a"  # staging does not activate
    slots.switch("b")
    assert slots.manifest("b").version == "2.0.0"  # type: ignore[union-attr]
    assert slots.manifest("a").version == "1.0.0"  # type: ignore[union-attr]  # previous kept for rollback
    assert sorted(p.name for p in slots.root.iterdir()) == ["a", "b", "current"]


def test_staging_into_the_active_slot_is_refused(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    slots = Slots(tmp_path / "slots")
    slots.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    slots.switch("a")
    with pytest.raises(ValueError, match="active slot"):
        slots.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")


def test_a_bundle_whose_file_does_not_match_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    (tmp_path / "v1" / "model.onnx").write_bytes(b"corrupt")
    slots = Slots(tmp_path / "slots")
    with pytest.raises(FatalError) as info:
        slots.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    assert info.value.reason is ReasonCode.BUNDLE_INVALID
    assert list(slots.root.iterdir()) == []


def test_switch_to_an_empty_slot_is_refused(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "slots")
    slots.root.mkdir()
    with pytest.raises(ValueError, match="holds no bundle"):
        slots.switch("b")


def test_clean_removes_crash_leftovers(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "slots")
    (slots.root / ".staging-b").mkdir(parents=True)
    (slots.root / ".staging-b" / "model.onnx").write_bytes(b"half")
    os.symlink("a", slots.root / ".current-123")
    slots.clean()
    assert list(slots.root.iterdir()) == []


def test_engine_cache_key_depends_on_onnx_trt_and_gpu(tmp_path: Path) -> None:
    a = engine_cache_path(tmp_path, onnx_sha256="f" * 64, tensorrt_version="10.3.0", gpu="Orin (nvgpu)")
    b = engine_cache_path(tmp_path, onnx_sha256="f" * 64, tensorrt_version="10.4.0", gpu="Orin (nvgpu)")
    c = engine_cache_path(tmp_path, onnx_sha256="e" * 64, tensorrt_version="10.3.0", gpu="Orin (nvgpu)")
    assert len({a, b, c}) == 3 and a.name == "f" * 64 + "-trt10.3.0-Orin_nvgpu_.engine"


def test_engine_cache_hit_skips_the_build(tmp_path: Path) -> None:
    cached = tmp_path / "x.engine"
    cached.write_bytes(b"engine")
    assert build_engine(tmp_path / "missing.onnx", cached) == cached


def test_engine_build_without_tensorrt_is_a_clear_failure(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        make_bundle(tmp_path / "v1")
        with pytest.raises(FatalError) as info:
            build_engine(tmp_path / "v1" / "model.onnx", tmp_path / "out.engine")
        assert info.value.reason is ReasonCode.ENGINE_BUILD_FAILED and "not installed" in info.value.detail
    else:
        make_bundle(tmp_path / "v1")
        assert build_engine(tmp_path / "v1" / "model.onnx", tmp_path / "out.engine").stat().st_size > 0


@pytest.mark.tensorrt
def test_engine_build_on_device(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    out = build_engine(tmp_path / "v1" / "model.onnx", tmp_path / "out.engine")
    assert out.stat().st_size > 0
