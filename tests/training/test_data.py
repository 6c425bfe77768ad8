"""training.data: the eval transform IS models.preprocess.Preprocessor; augmentation replays."""

from __future__ import annotations

import numpy as np
import torch

from models.datasets import DatasetSpec, open_dataset
from models.preprocess import Preprocessor
from models.zoo import default_input_spec
from training.data import AugmentConfig, ClassificationData, DetectionData, detection_collate


def _signs(split: str = "val") -> ClassificationData:
    reader = open_dataset(DatasetSpec(image_size=40, train_size=16, val_size=16), split)
    spec = default_input_spec("mobilenet_v3_small", "classification", 32)
    return ClassificationData(reader, spec, train=split == "train", augment=AugmentConfig(), seed=0)


def test_val_transform_is_the_runtime_preprocessor_bit_for_bit() -> None:
    data = _signs("val")
    pre = Preprocessor(default_input_spec("mobilenet_v3_small", "classification", 32))
    for i in range(4):
        x, label = data[i]
        expected = pre(data.reader[i].image)
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32)
        assert np.array_equal(x.numpy(), expected)
        assert label == data.reader[i].label


def test_train_augmentation_replays_per_epoch_and_changes_between_epochs() -> None:
    a, b = _signs("train"), _signs("train")
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a[5][0], b[5][0])
    b.set_epoch(4)
    assert not torch.equal(a[5][0], b[5][0])
    plain = Preprocessor(default_input_spec("mobilenet_v3_small", "classification", 32))(a.reader[5].image)
    assert not np.array_equal(a[5][0].numpy(), plain)


def test_detection_targets_are_in_input_pixels_and_collate_keeps_lists() -> None:
    reader = open_dataset(DatasetSpec(name="synthetic-scenes", image_size=80, train_size=4, val_size=4), "val")
    spec = default_input_spec("fcos_mnv3", "detection", 64)
    data = DetectionData(reader, spec, train=False, augment=AugmentConfig(), seed=0)
    x, target = data[1]
    raw = reader[1]
    assert raw.boxes is not None
    np.testing.assert_allclose(target["boxes"].numpy(), raw.boxes * (64 / 80), rtol=1e-6)
    assert target["transform"].tolist() == [0.8, 0.8, 0.0, 0.0]
    images, targets = detection_collate([data[0], data[1], data[2]])
    assert tuple(images.shape) == (3, 3, 64, 64) and len(targets) == 3
    assert [int(t["image_id"]) for t in targets] == [0, 1, 2]
