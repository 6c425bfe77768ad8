"""A/B slots: staging never touches the active slot, the switch is atomic, leftovers are cleaned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.errors import FatalError, ReasonCode
from edge_agent.perception.runtimes import VARIANT_FILE, variant_in
from edge_agent.update.slots import Slots
from tests.bundles import make_bundle, make_multi_bundle


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


def _duo_files(bundle: Path) -> dict[str, Path]:
    return {name: bundle / name for name in ("bundle.json", "model-onnx-fp32.onnx", "model-onnx-int8.onnx")}


def test_a_slot_holds_every_staged_variant_and_records_the_one_it_serves(tmp_path: Path) -> None:
    make_multi_bundle(tmp_path / "duo")
    slots = Slots(tmp_path / "slots")
    final = slots.stage("a", _duo_files(tmp_path / "duo"), variant_id="onnx-fp32", alternates=["onnx-int8"])
    assert {p.name for p in final.iterdir()} == {
        "bundle.json",
        "model-onnx-fp32.onnx",
        "model-onnx-int8.onnx",
        VARIANT_FILE,
    }
    assert variant_in(final) == "onnx-fp32"  # until the gate has chosen, the assigned variant
    slots.choose("a", "onnx-int8")
    assert variant_in(final) == "onnx-int8"
    assert not list(final.glob(f".{VARIANT_FILE}.*"))  # written atomically: no temp file left
    with pytest.raises(ValueError, match="no file of variant"):
        slots.choose("a", "onnx-fp16")
    slots.switch("a")
    with pytest.raises(ValueError, match="active slot"):
        slots.choose("a", "onnx-fp32")  # what serves now is not re-decided under its feet
    assert variant_in(final) == "onnx-int8"


def test_an_alternate_whose_file_is_missing_or_wrong_refuses_the_slot(tmp_path: Path) -> None:
    make_multi_bundle(tmp_path / "duo")
    files = _duo_files(tmp_path / "duo")
    (tmp_path / "duo" / "model-onnx-int8.onnx").write_bytes(b"tampered")
    slots = Slots(tmp_path / "slots")
    with pytest.raises(FatalError) as info:
        slots.stage("a", files, variant_id="onnx-fp32", alternates=["onnx-int8"])
    assert info.value.reason is ReasonCode.BUNDLE_INVALID
    assert list(slots.root.iterdir()) == []
    del files["model-onnx-int8.onnx"]
    with pytest.raises(FatalError):
        slots.stage("a", files, variant_id="onnx-fp32", alternates=["onnx-int8"])


def test_a_record_naming_a_variant_the_slot_lacks_is_ignored(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    (tmp_path / "v1" / VARIANT_FILE).write_text('{"variant": "onnx-int8"}')
    assert variant_in(tmp_path / "v1") == "onnx-fp32"  # its only variant file
    (tmp_path / "v1" / VARIANT_FILE).write_text("not json")
    assert variant_in(tmp_path / "v1") == "onnx-fp32"
    assert variant_in(tmp_path / "nothing") is None
