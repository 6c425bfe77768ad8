"""A/B slots, pinned down where mutation testing found them loose.

``test_slots.py`` checks staging, switching and cleaning; here the edges: a ``current`` link that
names no slot, the slot names the rest of the agent relies on, what ``manifest`` answers for an
empty, missing or broken slot, a staging left by a crash, a first stage under a root that does not
exist yet, the copy when a hard link is impossible (another file system), a slot holding only some
of a bundle's variants, a clean that cannot remove everything, and the exact refusals and log line.
Real files and symlinks throughout.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.errors import FatalError
from edge_agent.perception.runtimes import variant_in
from edge_agent.update.slots import Slots
from tests.bundles import make_bundle, make_multi_bundle


def _files(bundle: Path) -> dict[str, Path]:
    return {"bundle.json": bundle / "bundle.json", "model.onnx": bundle / "model.onnx"}


@pytest.fixture
def staged(tmp_path: Path) -> Slots:
    """Slots with ``a`` staged and active."""
    make_bundle(tmp_path / "v1", version="1.0.0")
    slots = Slots(tmp_path / "slots")
    slots.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    slots.switch("a")
    return slots


def test_slot_names_are_a_and_b_only(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    assert (slots.path("a"), slots.path("b")) == (tmp_path / "a", tmp_path / "b")
    with pytest.raises(ValueError, match=re.escape("slot must be one of ('a', 'b'), got 'current'")):
        slots.path("current")
    assert (Slots.other("a"), Slots.other("b")) == ("b", "a")


def test_a_current_link_naming_no_slot_means_no_active_slot(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    assert (slots.active_slot(), slots.active_dir()) == (None, None)  # no link at all
    os.symlink("elsewhere", slots.current_link)
    assert (slots.active_slot(), slots.active_dir(), slots.inactive_slot()) == (None, None, "a")


def test_the_active_dir_is_the_active_slots_directory(staged: Slots) -> None:
    assert staged.active_dir() == staged.root / "a"
    assert staged.inactive_slot() == "b"


def test_manifest_of_no_slot_an_empty_one_or_a_broken_one_is_none(staged: Slots) -> None:
    assert staged.manifest(None) is None
    assert staged.manifest("b") is None  # never staged
    manifest = staged.manifest("a")
    assert manifest is not None and manifest.version == "1.0.0"
    (staged.root / "a" / "bundle.json").write_text("{not json")
    assert staged.manifest("a") is None


def test_clean_of_a_root_that_does_not_exist_does_nothing(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "never")
    slots.clean()
    assert not slots.root.exists()


def test_the_first_stage_creates_the_root_with_its_parents(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    slots = Slots(tmp_path / "data" / "agent" / "slots")
    final = slots.stage("b", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    assert final == slots.root / "b" and variant_in(final) == "onnx-fp32"
    assert sorted(p.name for p in slots.root.iterdir()) == ["b"]  # the staging dir was renamed, not copied


def test_a_staging_left_by_a_crash_is_replaced_not_merged(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    slots = Slots(tmp_path / "slots")
    (slots.root / ".staging-a" / "sub").mkdir(parents=True)
    (slots.root / ".staging-a" / "stale.onnx").write_bytes(b"half")
    (slots.root / "a").mkdir()
    (slots.root / "a" / "old.onnx").write_bytes(b"previous")
    final = slots.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    assert sorted(p.name for p in final.iterdir()) == [".variant", "bundle.json", "model.onnx"]
    assert sorted(p.name for p in slots.root.iterdir()) == ["a"]


@pytest.fixture
def other_fs_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on another file system than ``tmp_path`` (tmpfs), where a hard link cannot reach."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    with tempfile.TemporaryDirectory(dir=shm) as d:
        yield Path(d)


def test_files_on_another_file_system_are_copied(tmp_path: Path, other_fs_dir: Path) -> None:
    make_bundle(other_fs_dir / "v1")
    slots = Slots(tmp_path / "slots")
    final = slots.stage("a", _files(other_fs_dir / "v1"), variant_id="onnx-fp32")
    for name in ("bundle.json", "model.onnx"):
        assert (final / name).read_bytes() == (other_fs_dir / "v1" / name).read_bytes()
        assert (final / name).stat().st_dev != (other_fs_dir / "v1" / name).stat().st_dev


def test_files_on_the_same_file_system_are_hard_linked(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    final = Slots(tmp_path / "slots").stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    assert os.path.samefile(final / "model.onnx", tmp_path / "v1" / "model.onnx")


def test_the_refusals_name_the_slot(staged: Slots, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^refusing to stage into the active slot 'a'$"):
        staged.stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")
    with pytest.raises(ValueError, match=r"^refusing to change the variant of the active slot 'a'$"):
        staged.choose("a", "onnx-fp32")
    with pytest.raises(ValueError, match=r"^slot 'b' holds no bundle$"):
        staged.switch("b")


def test_a_switch_is_logged_and_a_switch_to_the_active_slot_is_a_no_op(
    staged: Slots, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_bundle(tmp_path / "v2", version="2.0.0")
    staged.stage("b", _files(tmp_path / "v2"), variant_id="onnx-fp32")
    with caplog.at_level(logging.INFO, logger="edge_agent.update.slots"):
        staged.switch("b")
        staged.switch("b")
    assert [r.getMessage() for r in caplog.records if r.name == "edge_agent.update.slots"] == ["current → slots/b"]
    assert os.readlink(staged.current_link) == "b"
    assert sorted(p.name for p in staged.root.iterdir()) == ["a", "b", "current"]  # no temp link left


def test_a_slot_may_hold_only_some_of_a_bundles_variants(tmp_path: Path) -> None:
    """Only the assigned variant and its alternates are downloaded: the others are not checked for."""
    make_multi_bundle(tmp_path / "duo")
    files = {name: tmp_path / "duo" / name for name in ("bundle.json", "model-onnx-fp32.onnx")}
    final = Slots(tmp_path / "slots").stage("a", files, variant_id="onnx-fp32")
    assert variant_in(final) == "onnx-fp32"
    assert sorted(p.name for p in final.iterdir()) == [".variant", "bundle.json", "model-onnx-fp32.onnx"]


def test_an_invalid_bundle_is_refused_saying_why(tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1")
    (tmp_path / "v1" / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(FatalError, match=r"^BUNDLE_INVALID: staged bundle is invalid: .*model\.onnx is 7 bytes"):
        Slots(tmp_path / "slots").stage("a", _files(tmp_path / "v1"), variant_id="onnx-fp32")


def test_clean_is_best_effort(tmp_path: Path) -> None:
    """A leftover it cannot remove (here a stray link under a staging name) does not stop the start-up."""
    slots = Slots(tmp_path / "slots")
    (slots.root / ".staging-b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", slots.root / ".staging-a")  # rmtree refuses symbolic links
    os.symlink("b", slots.root / ".current-7")
    slots.clean()
    assert sorted(p.name for p in slots.root.iterdir()) == [".staging-a"]
    assert (tmp_path / "elsewhere").is_dir()  # what the link points at is never followed


def test_the_manifest_of_a_slot_holding_some_variants_is_read_without_looking_for_the_others(tmp_path: Path) -> None:
    make_multi_bundle(tmp_path / "duo")
    files = {name: tmp_path / "duo" / name for name in ("bundle.json", "model-onnx-int8.onnx")}
    slots = Slots(tmp_path / "slots")
    slots.stage("b", files, variant_id="onnx-int8")
    manifest = slots.manifest("b")  # files not re-hashed: the absent fp32 file is not looked for
    assert manifest is not None and [v.id for v in manifest.variants] == ["onnx-fp32", "onnx-int8"]
