"""Bad user input reaches the user as a clear error (exit 2), through the real CLI
and real files; recoverable problems (unreadable images) are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.zoo import build_model
from training.__main__ import main

FAST = [
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--no-progress",
    "--threads",
    "1",
]


def _imagefolder(root: Path, *, bad: int = 0) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 60, (24, 24, 3)).astype(np.uint8)
            img[:, :12] += 150 if c == 0 else 0
            img[:, 12:] += 150 if c == 1 else 0
            assert cv2.imwrite(str(root / name / f"{i}.png"), img)
    for i in range(bad):
        (root / "left" / f"corrupt{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def test_imagefolder_trains_with_unreadable_images_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _imagefolder(tmp_path / "data", bad=3)
    args = [
        "--data",
        "imagefolder",
        "--data-root",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path),
        "--name",
        "folder",
        *FAST,
    ]
    assert main(args) == 0
    assert "skipped" in caplog.text and "unreadable image(s)" in caplog.text
    side = json.loads((tmp_path / "folder" / "checkpoints" / "last.json").read_text())
    assert side["labels"] == ["left", "right"] and side["dataset"]["name"] == "imagefolder"


def test_missing_data_dir_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--data", "imagefolder", "--data-root", str(tmp_path / "absent"), *FAST]) == 2
    assert f"{tmp_path / 'absent'} does not exist" in caplog.text


def test_empty_class_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _imagefolder(tmp_path / "data")
    (tmp_path / "data" / "stop").mkdir()
    assert main(["--data", "imagefolder", "--data-root", str(tmp_path / "data"), *FAST]) == 2
    assert "stop has no images" in caplog.text


def test_all_images_unreadable_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "data" / name / f"{i}.jpg").write_bytes(b"not an image")
    assert main(["--data", "imagefolder", "--data-root", str(tmp_path / "data"), *FAST]) == 2
    assert "could be decoded" in caplog.text or "no readable image" in caplog.text


def test_bad_coco_box_names_the_annotation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "img").mkdir()
    assert cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    ann = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "car"}],
        "annotations": [{"id": 77, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    args = [
        "--data",
        "coco",
        "--data-root",
        str(tmp_path / "img"),
        "--ann-file",
        str(tmp_path / "ann.json"),
        "--arch",
        "fcos_mnv3",
        *FAST,
    ]
    assert main(args) == 2
    assert "annotation 77: bbox must be 4 finite numbers" in caplog.text


def test_mismatched_init_weights_list_the_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.save(build_model("resnet18", "classification", 10).state_dict(), tmp_path / "r18.pt")
    args = [
        "--init-weights",
        str(tmp_path / "r18.pt"),
        "--train-size",
        "16",
        "--val-size",
        "8",
        *FAST,
    ]
    assert main(args) == 2
    assert "missing keys" in caplog.text and "unexpected keys" in caplog.text and "fc.weight" in caplog.text


def test_detection_trains_end_to_end_and_reports_map(tmp_path: Path) -> None:
    args = [
        "--data",
        "synthetic-scenes",
        "--arch",
        "fcos_mnv3",
        "--image-size",
        "64",
        "--train-size",
        "24",
        "--val-size",
        "8",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--no-progress",
        "--threads",
        "1",
        "--output",
        str(tmp_path),
        "--name",
        "det",
    ]
    assert main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "det" / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= {"map50", "map", "train_loss"} and 0.0 <= rows[0]["map50"] <= 1.0
    side = json.loads((tmp_path / "det" / "checkpoints" / "last.json").read_text())
    assert side["main_metric"] == "map50" and set(side["metrics"]) == {"map50", "map"}
    model = build_model(side["arch"], side["task"], side["num_classes"], **side["model_kwargs"])
    model.load_state_dict(torch.load(tmp_path / "det" / "checkpoints" / "last.pt", weights_only=True)["model"])
