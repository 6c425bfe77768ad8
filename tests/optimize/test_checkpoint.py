"""optimize.checkpoint: locating and validating checkpoints; mismatches are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.bundle import Task
from optimize.checkpoint import build_torch_model, locate_checkpoint, read_checkpoint
from optimize.errors import InputError


def test_reads_run_dir_pt_and_sidecar(trained_run: Path) -> None:
    ck = read_checkpoint(trained_run)
    assert ck.arch == "mobilenet_v3_small" and ck.task is Task.CLASSIFICATION
    assert ck.pt_path.name == "best.pt" and len(ck.labels) == ck.num_classes
    assert read_checkpoint(ck.pt_path).sha256 == read_checkpoint(ck.sidecar_path).sha256 == ck.sha256
    model = build_torch_model(ck)
    assert not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, ck.num_classes)


def test_last_pt_is_used_without_best(tmp_path: Path, trained_run: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for suffix in (".pt", ".json"):
        shutil.copy(trained_run / "checkpoints" / f"best{suffix}", run / "checkpoints" / f"last{suffix}")
    assert locate_checkpoint(run)[0].name == "last.pt"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nope", "does not exist"),
        (lambda d: d, "without checkpoints/best.pt"),
        (lambda d: _write(d / "x.txt", "hi"), "is not a checkpoint"),
    ],
)
def test_bad_sources(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message):
        read_checkpoint(make(tmp_path))


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    return dst


def test_random_bytes_are_not_a_checkpoint(tmp_path: Path, trained_run: Path) -> None:
    run = _copy_run(trained_run, tmp_path)
    (run / "checkpoints" / "best.pt").write_bytes(b"\x00garbage" * 100)
    side = json.loads((run / "checkpoints" / "best.json").read_text())
    side["checkpoint_sha256"] = None
    (run / "checkpoints" / "best.json").write_text(json.dumps(side))
    ck = read_checkpoint(run)
    with pytest.raises(InputError, match="is not a readable checkpoint"):
        build_torch_model(ck)


def test_missing_sidecar_and_bad_fields(tmp_path: Path, trained_run: Path) -> None:
    run = _copy_run(trained_run, tmp_path)
    side_path = run / "checkpoints" / "best.json"
    good = json.loads(side_path.read_text())
    side_path.unlink()
    with pytest.raises(InputError, match="best.json next to .* does not exist"):
        read_checkpoint(run)
    for key, value, message in [
        ("format", "other/1", "format must be 'edgefleet.checkpoint/1'"),
        ("task", "dance", "task must be one of"),
        ("labels", [], "labels must be a non-empty list"),
        ("num_classes", "8", "field 'num_classes' must be a int"),
        ("checkpoint_sha256", "0" * 64, "do not belong together"),
    ]:
        side_path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(InputError, match=message):
            read_checkpoint(run)
    bad_input = {**good, "input": {**good["input"], "shape": [None, 3, 32]}}
    side_path.write_text(json.dumps(bad_input))
    with pytest.raises(InputError, match=r"input.shape: expected 4 dimensions"):
        read_checkpoint(run)


def test_sidecar_not_matching_the_weights(tmp_path: Path, trained_run: Path) -> None:
    run = _copy_run(trained_run, tmp_path)
    side_path = run / "checkpoints" / "best.json"
    good = json.loads(side_path.read_text())
    side_path.write_text(json.dumps({**good, "arch": "resnet18"}))
    with pytest.raises(InputError, match="do not match arch 'resnet18'"):
        build_torch_model(read_checkpoint(run))
    side_path.write_text(json.dumps({**good, "num_classes": 3, "labels": ["a", "b", "c"]}))
    with pytest.raises(InputError, match="with 3 classes"):
        build_torch_model(read_checkpoint(run))
    side_path.write_text(json.dumps({**good, "arch": "alexnet"}))
    with pytest.raises(InputError, match="unknown arch 'alexnet'"):
        build_torch_model(read_checkpoint(run))
