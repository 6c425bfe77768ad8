"""models.datasets: synthetic generators, ImageFolder and COCO readers (real files, real OpenCV)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.datasets import (
    SCENE_CLASSES,
    SIGN_CLASSES,
    AnnotationError,
    DatasetError,
    DatasetSpec,
    EmptyDatasetError,
    dataset_task,
    open_dataset,
)


def _signs(**kw: object) -> DatasetSpec:
    base: dict[str, object] = {
        "name": "synthetic-signs",
        "image_size": 48,
        "train_size": 64,
        "val_size": 32,
    }
    base.update(kw)
    return DatasetSpec(**base)  # type: ignore[arg-type]


def test_signs_are_deterministic_per_seed_split_and_index() -> None:
    a = open_dataset(_signs(), "train")
    b = open_dataset(_signs(), "train")
    for i in (0, 5, 63):
        assert np.array_equal(a[i].image, b[i].image)
        assert a[i].label == b[i].label
    val = open_dataset(_signs(), "val")
    other_seed = open_dataset(_signs(seed=1), "train")
    assert not np.array_equal(a[0].image, val[0].image)
    assert not np.array_equal(a[0].image, other_seed[0].image)


def test_signs_samples_cover_every_class_with_valid_images() -> None:
    ds = open_dataset(_signs(train_size=300), "train")
    assert len(ds.labels) >= 8 and ds.labels == SIGN_CLASSES
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.dtype == np.uint8 and s.image.shape == (48, 48, 3)
        assert s.boxes is None and s.label is not None
        seen.add(s.label)
    assert seen == set(range(len(SIGN_CLASSES)))
    assert dataset_task(_signs()) == "classification"


def test_scenes_have_boxes_inside_the_image() -> None:
    spec = DatasetSpec(name="synthetic-scenes", image_size=96, train_size=40, val_size=8)
    ds = open_dataset(spec, "train")
    assert ds.labels == SCENE_CLASSES and dataset_task(spec) == "detection"
    classes = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (96, 96, 3)
        assert s.boxes is not None and s.labels is not None
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
        assert s.boxes.shape == (len(s.labels), 4)
        assert (s.boxes >= 0).all() and (s.boxes <= 96).all()
        assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
        classes.update(s.labels.tolist())
    assert {SCENE_CLASSES.index("car"), SCENE_CLASSES.index("truck")} & classes
    assert len(classes) >= 5


def test_fingerprint_is_stable_and_names_what_changes() -> None:
    fp = open_dataset(_signs(), "val").fingerprint()
    assert fp.startswith("sha256:") and len(fp) == 71
    assert fp == open_dataset(_signs(), "val").fingerprint()
    assert fp != open_dataset(_signs(seed=3), "val").fingerprint()
    assert fp != open_dataset(_signs(), "train").fingerprint()
    assert fp == open_dataset(_signs(cache_dir="/tmp/x-unused"), "val").fingerprint()


def test_cache_round_trips_and_regenerates_damaged_entries(tmp_path: Path) -> None:
    spec = DatasetSpec(name="synthetic-scenes", image_size=64, train_size=4, val_size=4, cache_dir=str(tmp_path))
    fresh = open_dataset(DatasetSpec(name="synthetic-scenes", image_size=64, train_size=4, val_size=4), "val")
    cached = open_dataset(spec, "val")
    first = cached[2]
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1
    files[0].write_bytes(b"damaged")
    again = open_dataset(spec, "val")[2]
    for s in (first, again):
        assert np.array_equal(s.image, fresh[2].image)
        assert s.boxes is not None and np.array_equal(s.boxes, fresh[2].boxes)


def test_spec_round_trip_and_validation() -> None:
    spec = _signs(seed=7)
    d = spec.to_dict() | {"fingerprint": "sha256:abc"}
    assert DatasetSpec.from_dict(d) == spec
    with pytest.raises(DatasetError, match="unknown dataset spec field.*'colour'"):
        DatasetSpec.from_dict(spec.to_dict() | {"colour": 1})
    with pytest.raises(DatasetError, match="dataset name must be one of"):
        DatasetSpec(name="mnist")
    with pytest.raises(DatasetError, match="needs a root"):
        DatasetSpec(name="imagefolder")
    with pytest.raises(DatasetError, match="split must be one of"):
        open_dataset(spec, "test")
    with pytest.raises(IndexError):
        open_dataset(spec, "val")[32]


# --------------------------------------------------------------------------- imagefolder


def _write(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((*size, 3), np.uint8)
    img[:] = colour
    assert cv2.imwrite(str(path), img)


def _folder(root: Path, per_class: int = 6) -> None:
    for name, colour in (("red", (0, 0, 255)), ("blue", (255, 0, 0))):
        for i in range(per_class):
            _write(root / name / f"{i}.png", colour)


def test_imagefolder_reads_classes_and_splits_by_hash(tmp_path: Path) -> None:
    _folder(tmp_path, per_class=20)
    spec = DatasetSpec(name="imagefolder", root=str(tmp_path), val_fraction=0.3)
    train, val = open_dataset(spec, "train"), open_dataset(spec, "val")
    assert train.labels == ("blue", "red")
    assert len(train) + len(val) == 40 and len(val) > 0
    s = val[0]
    assert s.image.shape == (20, 30, 3) and s.label in (0, 1)
    assert int(s.image[0, 0, 0]) == (255 if s.label == 0 else 0)
    assert train.fingerprint() != val.fingerprint()


def test_imagefolder_explicit_train_val_folders(tmp_path: Path) -> None:
    _folder(tmp_path / "train", 3)
    _folder(tmp_path / "val", 2)
    spec = DatasetSpec(name="imagefolder", root=str(tmp_path))
    assert len(open_dataset(spec, "train")) == 6 and len(open_dataset(spec, "val")) == 4


def test_imagefolder_missing_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does-not-exist"):
        open_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path / "does-not-exist")), "train")


def test_imagefolder_empty_class_is_an_error_naming_it(tmp_path: Path) -> None:
    _folder(tmp_path / "train", 2)
    _folder(tmp_path / "val", 2)
    (tmp_path / "train" / "green").mkdir()
    with pytest.raises(EmptyDatasetError, match="green"):
        open_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path)), "train")


def test_imagefolder_skips_and_counts_unreadable_images(tmp_path: Path) -> None:
    _folder(tmp_path / "train", 3)
    _folder(tmp_path / "val", 1)
    (tmp_path / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "train" / "blue" / "empty.png").write_bytes(b"")
    ds = open_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path)), "train")
    assert len(ds) == 6 and ds.skipped == 2


def test_imagefolder_all_unreadable_is_an_error(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(EmptyDatasetError, match="could be decoded|no readable"):
        open_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path), val_fraction=0.01), "train")


# --------------------------------------------------------------------------- coco


def _coco(tmp_path: Path, anns: list[dict[str, object]], *, bad_image: bool = False) -> DatasetSpec:
    images = []
    for i in range(4):
        _write(tmp_path / "img" / f"{i}.jpg", (40 * i, 80, 120), size=(50, 60))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 60, "height": 50})
    if bad_image:
        (tmp_path / "img" / "3.jpg").write_bytes(b"nope")
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "stop"}],
    }
    for split in ("train", "val"):
        (tmp_path / f"ann_{split}.json").write_text(json.dumps(doc))
    return DatasetSpec(name="coco", root=str(tmp_path / "img"), ann_file=str(tmp_path / "ann_{split}.json"))


def test_coco_boxes_are_converted_clipped_and_degenerate_dropped(tmp_path: Path) -> None:
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 40, 30, 30]},  # clipped
        {
            "id": 3,
            "image_id": 2,
            "category_id": 3,
            "bbox": [70, 10, 5, 5],
        },  # fully outside → dropped
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [1, 1, 0, 5]},  # zero width → dropped
    ]
    ds = open_dataset(_coco(tmp_path, anns), "train")
    assert ds.labels == ("stop", "car") and len(ds) == 4
    s = ds[0]
    assert s.boxes is not None and s.labels is not None
    np.testing.assert_allclose(s.boxes, [[5, 6, 15, 26], [50, 40, 60, 50]])
    assert s.labels.tolist() == [1, 0]
    assert ds.clipped_boxes == 2 and ds.dropped_boxes == 2
    assert ds[1].boxes is not None and ds[1].boxes.shape == (0, 4)


def test_coco_malformed_box_names_the_annotation(tmp_path: Path) -> None:
    anns = [{"id": 42, "image_id": 1, "category_id": 7, "bbox": [1, 2, "x", 4]}]
    with pytest.raises(AnnotationError, match="annotation 42") as info:
        open_dataset(_coco(tmp_path, anns), "train")
    assert info.value.annotation_id == 42
    anns = [{"id": 43, "image_id": 1, "category_id": 7, "bbox": [1, 2, -3, 4]}]
    with pytest.raises(AnnotationError, match="annotation 43"):
        open_dataset(_coco(tmp_path, anns), "train")
    anns = [{"id": 44, "image_id": 1, "category_id": 99, "bbox": [1, 2, 3, 4]}]
    with pytest.raises(AnnotationError, match="annotation 44.*category_id 99"):
        open_dataset(_coco(tmp_path, anns), "train")


def test_coco_unreadable_image_is_skipped_and_missing_file_named(tmp_path: Path) -> None:
    ds = open_dataset(_coco(tmp_path, [], bad_image=True), "val")
    assert len(ds) == 3 and ds.skipped == 1
    spec = DatasetSpec(name="coco", root=str(tmp_path / "img"), ann_file=str(tmp_path / "nope.json"))
    with pytest.raises(DatasetError, match="nope.json does not exist"):
        open_dataset(spec, "train")
    (tmp_path / "bad.json").write_text("{not json")
    spec = DatasetSpec(name="coco", root=str(tmp_path / "img"), ann_file=str(tmp_path / "bad.json"))
    with pytest.raises(DatasetError, match="not readable JSON"):
        open_dataset(spec, "train")
