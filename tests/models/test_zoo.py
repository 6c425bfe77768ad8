"""models.zoo: every arch builds offline, returns raw tensors, exports to ONNX, loads weights."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.bundle import InputSpec
from models.zoo import ARCHS, ZooError, build_model, default_input_spec


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # small tensors: one thread avoids spin-waiting when the CPU is shared
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("arch", "task", "size", "shape"),
    [
        ("mobilenet_v3_small", "classification", 32, (2, 5)),
        ("mobilenet_v3_large", "classification", 32, (2, 5)),
        ("resnet18", "classification", 32, (2, 5)),
        ("efficientnet_b0", "classification", 32, (2, 5)),
        ("lraspp_mobilenet_v3_large", "segmentation", 64, (2, 5, 64, 64)),
    ],
)
def test_arch_builds_offline_and_returns_raw_tensor(arch: str, task: str, size: int, shape: tuple[int, ...]) -> None:
    model = build_model(arch, task, 5, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == shape
    assert torch.isfinite(out).all()


def test_detector_eval_returns_boxes_and_probabilities() -> None:
    model = build_model("fcos_mnv3", "detection", 4, image_size=64).eval()
    with torch.no_grad():
        boxes, scores = model(torch.randn(3, 3, 64, 64))
    assert tuple(boxes.shape) == (3, 64, 4) and tuple(scores.shape) == (3, 64, 4)  # 8x8 locations
    assert (scores >= 0).all() and (scores <= 1).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()


def test_detector_train_mode_returns_a_loss_dict_that_learns() -> None:
    torch.manual_seed(0)
    model = build_model("fcos_mnv3", "detection", 3, image_size=64).train()
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss_dict = model(images, targets)
        assert set(loss_dict) == {"loss_cls", "loss_box", "loss_ctr"}
        loss = sum(loss_dict.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    with pytest.raises(ZooError, match="needs targets"):
        model(images)


def test_detector_exports_to_onnx_unchanged(tmp_path: Path) -> None:
    model = build_model("fcos_mnv3", "detection", 4, image_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "det.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["boxes", "scores"],
        opset_version=17,
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = model(x)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)


def test_unknown_arch_or_task_lists_what_exists() -> None:
    with pytest.raises(ZooError, match="unknown arch 'vgg99'.*mobilenet_v3_small"):
        build_model("vgg99", "classification", 3)
    with pytest.raises(ZooError, match=r"supports tasks \['classification'\], got task 'detection'"):
        build_model("resnet18", "detection", 3)
    with pytest.raises(ZooError, match="num_classes"):
        build_model("resnet18", "classification", 0)
    with pytest.raises(ZooError, match="extra keyword"):
        build_model("resnet18", "classification", 3, dropout_rate=0.3)
    with pytest.raises(ZooError, match="multiple of 32"):
        build_model("fcos_mnv3", "detection", 3, image_size=100)


def test_default_input_spec_round_trips_the_bundle_contract() -> None:
    for arch, info in ARCHS.items():
        spec = default_input_spec(arch, info.tasks[0], 96)
        assert spec.height == spec.width == 96
        assert InputSpec.from_dict(spec.to_dict()) == spec
    assert default_input_spec("resnet18", "classification").height == 224


def test_init_weights_load_exactly(tmp_path: Path) -> None:
    src = build_model("mobilenet_v3_small", "classification", 6)
    path = tmp_path / "w.pt"
    torch.save({"model": src.state_dict(), "epoch": 3}, path)  # a training checkpoint works too
    dst = build_model("mobilenet_v3_small", "classification", 6, init_weights=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_init_weights_skip_the_head_when_the_class_count_differs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = build_model("mobilenet_v3_small", "classification", 10)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="models.zoo"):
        dst = build_model("mobilenet_v3_small", "classification", 4, init_weights=path)
    assert "skipping the classifier head" in caplog.text and "classifier.3.weight" in caplog.text
    assert torch.equal(dst.state_dict()["features.0.0.weight"], src.state_dict()["features.0.0.weight"])
    assert dst.state_dict()["classifier.3.weight"].shape == (4, 1024)


def test_mismatched_init_weights_list_keys_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(build_model("resnet18", "classification", 3).state_dict(), path)
    with pytest.raises(ZooError, match="missing keys.*unexpected keys.*'fc.weight'"):
        build_model("mobilenet_v3_small", "classification", 3, init_weights=path)
    sd = build_model("mobilenet_v3_small", "classification", 3).state_dict()
    sd["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(sd, path)
    with pytest.raises(ZooError, match=r"features.0.0.weight: file \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        build_model("mobilenet_v3_small", "classification", 3, init_weights=path)
    with pytest.raises(ZooError, match="do not exist"):
        build_model("resnet18", "classification", 3, init_weights=tmp_path / "missing.pt")


def test_init_weights_refuse_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": Path("/etc")}, path)  # needs full unpickling
    with pytest.raises(ZooError, match="weights-only"):
        build_model("resnet18", "classification", 3, init_weights=path)
