"""Variant.input_form: the manifest field, the frame-form preprocessor and the runtimes feeding uint8."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from models.bundle import (
    BundleError,
    ColorOrder,
    InputForm,
    InputSpec,
    Layout,
    Manifest,
    ResizeMode,
    read_bundle,
    write_bundle,
)
from models.preprocess import Preprocessor, resize_frame
from models.runtime import Model
from models.runtime.errors import InferenceError
from models.runtime.tensorrt import TrtRuntime
from optimize.frame_input import write_frame_variant
from tests.bundles import make_bundle
from tests.models import fake_tensorrt


def _frame(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def two_forms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a frame-form twin of its variant (``onnx-fp32-frame``)."""
    d = tmp_path_factory.mktemp("forms")
    base = make_bundle(d)
    path = write_frame_variant(d / "model.onnx", d / "model-frame.onnx", base.input)
    data = path.read_bytes()
    twin = dataclasses.replace(
        base.variants[0],
        id="onnx-fp32-frame",
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        input_form=InputForm.FRAME,
    )
    write_bundle(d, dataclasses.replace(base, variants=(*base.variants, twin)))
    return d


def test_old_manifests_load_as_tensor_form_and_the_field_round_trips(two_forms: Path) -> None:
    m = read_bundle(two_forms)
    assert m.variant("onnx-fp32").input_form is InputForm.TENSOR
    assert m.variant("onnx-fp32-frame").input_form is InputForm.FRAME
    data = json.loads(m.to_json())
    assert [v["input_form"] for v in data["variants"]] == ["tensor", "frame"]
    del data["variants"][0]["input_form"]  # a manifest written before the field existed
    assert Manifest.from_dict(data).variants[0].input_form is InputForm.TENSOR
    data["variants"][1]["input_form"] = "nhwc"
    with pytest.raises(BundleError, match=r"variants\[1\]\.input_form: must be one of \['tensor', 'frame'\]"):
        Manifest.from_dict(data)
    data["variants"][1]["input_form"] = 1
    with pytest.raises(BundleError, match=r"variants\[1\]\.input_form: expected str, got int"):
        Manifest.from_dict(data)


def test_frame_spec_is_the_resized_uint8_bgr_frame() -> None:
    spec = InputSpec(shape=(None, 3, 24, 40), resize=ResizeMode.LETTERBOX, pad_value=7, color_order=ColorOrder.RGB)
    f = spec.frame_spec()
    assert f.shape == (None, 24, 40, 3) and f.layout is Layout.NHWC and f.dtype == "uint8"
    assert (f.height, f.width) == (24, 40) and f.color_order is ColorOrder.BGR
    assert (f.resize, f.pad_value, f.name) == (ResizeMode.LETTERBOX, 7, "input")
    assert spec.for_form(InputForm.TENSOR) is spec and spec.for_form(InputForm.FRAME) == f
    assert InputSpec.from_dict(f.to_dict()) == f  # a valid input spec in its own right


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_frame_form_preprocessor_only_resizes(mode: ResizeMode) -> None:
    spec = InputSpec(shape=(None, 3, 32, 32), resize=mode, resize_to=40 if mode is ResizeMode.CENTER_CROP else None)
    frame = _frame()
    pre, tensor = Preprocessor(spec, InputForm.FRAME), Preprocessor(spec)
    out = pre(frame)
    resized, transform = resize_frame(frame, spec)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3) and out.flags.c_contiguous
    assert np.array_equal(out, resized)  # BGR kept, no scaling
    tensor(frame)
    assert pre.last_transform == transform == tensor.last_transform  # same geometry for the boxes
    assert pre.spec == spec.frame_spec() and pre.form is InputForm.FRAME
    with pytest.raises(ValueError, match="must be uint8"):
        pre(frame.astype(np.float32))


def test_model_feeds_each_form_its_input_and_predicts_alike(two_forms: Path) -> None:
    frames = [_frame(seed=i) for i in range(6)]
    with Model(two_forms, "onnx-fp32", threads=1) as t, Model(two_forms, "onnx-fp32-frame", threads=1) as f:
        assert t.input_spec == t.manifest.input and f.input_spec == t.manifest.input.frame_spec()
        a, b = t.predict_batch(frames), f.predict_batch(frames)
    for x, y in zip(a, b, strict=True):
        assert x.top_k is not None and y.top_k is not None
        assert [c for c, _ in x.top_k] == [c for c, _ in y.top_k]
        np.testing.assert_allclose(x.raw["logits"], y.raw["logits"], rtol=0, atol=1e-6)


def test_tensorrt_engine_of_a_frame_form_onnx_takes_uint8(two_forms: Path, tmp_path: Path) -> None:
    """Built through the device builder from the bundle's (C, H, W); the engine's tensor dtype decides."""
    from models.bundle import Precision
    from models.runtime.onnxrt import OrtRuntime
    from models.runtime.trt_build import BatchProfile, EngineSpec, build_serialized_engine

    onnx_bytes = (two_forms / "model-frame.onnx").read_bytes()
    with fake_tensorrt.install():
        plan = build_serialized_engine(
            onnx_bytes, EngineSpec("input", (3, 32, 32), BatchProfile(1, 1, 4), Precision.FP32), source="frame.onnx"
        )
    engine = tmp_path / "frame.engine"
    engine.write_bytes(plan)
    x = np.stack([_frame(32, 32, seed=i) for i in range(3)])
    expected = OrtRuntime(onnx_bytes).run(x)["logits"]
    with fake_tensorrt.install():
        rt = TrtRuntime(engine)
        assert rt.max_batch == 4
        np.testing.assert_allclose(rt.run(x)["logits"], expected, rtol=1e-6)
        with pytest.raises(InferenceError, match="must be uint8 \\(the engine's tensor dtype\\), got float32"):
            rt.run(x.astype(np.float32))  # never cast silently
        rt.close()
        with Model(two_forms, "onnx-fp32-frame", engine=engine) as model:
            preds = model.predict_batch([_frame(seed=i) for i in range(6)])  # 6 frames over a profile of 4
    with Model(two_forms, "onnx-fp32-frame", threads=1) as ort_model:
        want = ort_model.predict_batch([_frame(seed=i) for i in range(6)])
    assert [p.top1 for p in preds] == [p.top1 for p in want]


def test_device_builder_refuses_a_frame_onnx_of_another_size(two_forms: Path) -> None:
    from models.bundle import Precision
    from models.runtime.errors import EngineBuildError
    from models.runtime.trt_build import EngineSpec, build_serialized_engine

    with fake_tensorrt.install(), pytest.raises(EngineBuildError, match=r"the bundle says \[batch, 48, 48, 3\]"):
        build_serialized_engine(
            (two_forms / "model-frame.onnx").read_bytes(),
            EngineSpec("input", (3, 48, 48), precision=Precision.FP32),
            source="frame.onnx",
        )


@pytest.mark.tensorrt
def test_real_tensorrt_builds_and_runs_a_frame_form_engine(two_forms: Path) -> None:
    """On real TensorRT 10: the uint8 [N, H, W, 3] input is kept as the engine's tensor dtype."""
    from models.bundle import Precision
    from models.runtime.onnxrt import OrtRuntime
    from models.runtime.trt_build import BatchProfile, EngineSpec, build_serialized_engine

    onnx_bytes = (two_forms / "model-frame.onnx").read_bytes()
    plan = build_serialized_engine(
        onnx_bytes, EngineSpec("input", (3, 32, 32), BatchProfile(1, 1, 4), Precision.FP32), source="frame.onnx"
    )
    x = np.stack([_frame(32, 32, seed=i) for i in range(3)])
    rt = TrtRuntime(plan)
    try:
        assert rt._input.dtype == np.uint8 and rt.max_batch == 4
        np.testing.assert_allclose(rt.run(x)["logits"], OrtRuntime(onnx_bytes).run(x)["logits"], atol=1e-3)
        with pytest.raises(InferenceError, match="must be uint8"):
            rt.run(x.astype(np.float32))
    finally:
        rt.close()
