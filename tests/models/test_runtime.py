"""models.runtime: real ONNX Runtime sessions on real bundles, TensorRT through a fake module."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.bundle import (
    DecoderKind,
    DecoderSpec,
    Format,
    InputSpec,
    OutputSpec,
    Precision,
    ResizeMode,
    Task,
    TensorSpec,
    Variant,
    read_bundle,
    write_bundle,
)
from models.hardware import HardwareProfile
from models.runtime import (
    Backend,
    BackendUnavailable,
    InferenceError,
    Model,
    ModelLoadError,
    Runtime,
    open_variant,
)
from models.runtime.tensorrt import TrtRuntime
from tests.bundles import make_bundle
from tests.models import fake_tensorrt


def _frame(channel: int, h: int = 48, w: int = 64) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 2 - channel] = 255  # BGR frame, channel index in RGB order
    return f


@pytest.fixture(scope="module")
def ok_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ok")
    make_bundle(d)
    return d


def test_open_variant_runs_the_model(ok_bundle: Path) -> None:
    rt = open_variant(ok_bundle, threads=1)
    assert isinstance(rt, Runtime)
    assert rt.input_name == "input" and rt.output_names == ("logits",)
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[0, 1] = 1.0
    out = rt.run(x)["logits"]
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], [0.0, 4.0, 0.0, 1.3], atol=1e-5)
    rt.close()
    with pytest.raises(InferenceError, match="closed"):
        rt.run(x)


def test_model_predicts_each_colour_with_timings(ok_bundle: Path) -> None:
    with Model(ok_bundle) as model:
        assert model.name == "tiny@1.0.0" and model.variant.id == "onnx-fp32"
        for channel in range(3):
            pred = model.predict(_frame(channel))
            assert pred.kind is DecoderKind.TOPK
            assert pred.top1 == channel and len(pred.top_k or ()) == 2
            assert pred.raw["logits"].shape == (4,)
            assert {"preprocess", "infer", "postprocess", "total"} <= set(pred.timings_ms)
            assert pred.timings_ms["total"] >= pred.timings_ms["infer"] > 0
        batch = model.predict_batch([_frame(0), _frame(1), _frame(2)])
        assert [p.top1 for p in batch] == [0, 1, 2]
        assert batch[0].timings_ms["batch_size"] == 3


def test_two_models_side_by_side_disagree(tmp_path: Path, ok_bundle: Path) -> None:
    make_bundle(tmp_path / "perm", behaviour="permuted", version="1.1.0")
    active, candidate = Model(ok_bundle), Model(tmp_path / "perm")
    f = _frame(0)
    assert active.predict(f).top1 == 0
    assert candidate.predict(f).top1 == 1
    active.close()
    candidate.close()


def test_nan_model_is_visible_in_the_prediction(tmp_path: Path) -> None:
    make_bundle(tmp_path, behaviour="nan")
    with Model(tmp_path) as model:
        assert model.predict(_frame(0)).has_nan()


def test_model_is_safe_for_concurrent_callers(ok_bundle: Path) -> None:
    model = Model(ok_bundle)
    errors: list[str] = []

    def worker(channel: int) -> None:
        for _ in range(20):
            if model.predict(_frame(channel, 40 + channel * 8, 50)).top1 != channel:
                errors.append(f"channel {channel}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model.close()
    assert errors == []


def test_not_onnx_file_is_a_load_error(tmp_path: Path) -> None:
    make_bundle(tmp_path, behaviour="not-onnx")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        open_variant(tmp_path)


def test_tampered_file_is_refused_before_parsing(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    data = bytearray((tmp_path / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"refusing to load model.onnx: variants\[0\].sha256"):
        Model(tmp_path)


def test_missing_bundle_unknown_variant_and_backend(tmp_path: Path, ok_bundle: Path) -> None:
    with pytest.raises(ModelLoadError, match="bundle.json"):
        open_variant(tmp_path)
    with pytest.raises(ModelLoadError, match="no variant 'onnx-int8'"):
        open_variant(ok_bundle, "onnx-int8")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        open_variant(ok_bundle, providers=["CUDAExecutionProvider"])
    with pytest.raises(ModelLoadError, match="not a TensorRT engine"):
        open_variant(ok_bundle, backend=Backend.TENSORRT)


def test_no_compatible_variant_for_profile(tmp_path: Path) -> None:
    manifest = make_bundle(tmp_path)
    data = manifest.to_dict()
    data["variants"][0]["requires"]["accelerators"] = ["jetson"]
    (tmp_path / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="no variant of tiny@1.0.0 runs on cpu-x86_64"):
        open_variant(tmp_path, profile=HardwareProfile(arch="x86_64"))


def test_bad_inputs_are_inference_errors(ok_bundle: Path) -> None:
    rt = open_variant(ok_bundle)
    with pytest.raises(InferenceError, match="must be float32, got float64"):
        rt.run(np.zeros((1, 3, 32, 32)))
    with pytest.raises(InferenceError, match="4 dimensions"):
        rt.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(InferenceError, match="ONNX Runtime failed"):
        rt.run(np.zeros((1, 5, 32, 32), np.float32))
    with Model(ok_bundle) as model, pytest.raises(InferenceError, match="frame 0 cannot be preprocessed"):
        model.predict(np.zeros((32, 32), np.uint8))


# ----------------------------------------------------------------------------- detection end to end


def _detection_bundle(directory: Path) -> None:
    """A real ONNX detector with fixed anchors: two overlapping boxes of class 0, one of class 1."""
    boxes = np.array([[[8, 8, 24, 24], [9, 9, 25, 25], [8, 8, 24, 24]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.1], [0.0, 0.7]]], np.float32)
    inits = [
        numpy_helper.from_array(boxes, "B"),
        numpy_helper.from_array(scores, "S"),
        numpy_helper.from_array(np.zeros((), np.float32), "Z"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "Z"], ["zero"]),
        helper.make_node("Add", ["B", "zero"], ["boxes"]),
        helper.make_node("Add", ["S", "zero"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    manifest = make_bundle(directory)
    (directory / "model.onnx").write_bytes(data)
    variant = Variant(
        "onnx-fp32",
        Format.ONNX,
        Precision.FP32,
        "model.onnx",
        hashlib.sha256(data).hexdigest(),
        len(data),
        manifest.variants[0].requires,
    )
    det = dataclasses.replace(
        manifest,
        task=Task.DETECTION,
        labels=("car", "sign"),
        input=InputSpec(shape=(1, 3, 32, 32), resize=ResizeMode.LETTERBOX),
        output=OutputSpec(
            tensors=(TensorSpec("boxes", (1, 3, 4), "boxes_xyxy"), TensorSpec("scores", (1, 3, 2), "scores")),
            decoder=DecoderSpec(kind=DecoderKind.BOXES, score_threshold=0.3, iou_threshold=0.5),
        ),
        variants=(variant,),
    )
    write_bundle(directory, det)


def test_detection_model_decodes_nms_and_maps_boxes_through_letterbox(tmp_path: Path) -> None:
    _detection_bundle(tmp_path)
    assert read_bundle(tmp_path).task is Task.DETECTION
    with Model(tmp_path) as model:
        pred = model.predict(np.zeros((32, 64, 3), np.uint8))  # 64x32 frame → scale 0.5, pad_y 8
    dets = pred.boxes
    assert dets is not None and len(dets) == 2  # the 0.8 duplicate of class 0 is suppressed
    assert dets.labels.tolist() == [0, 1]
    np.testing.assert_allclose(dets.scores, [0.9, 0.7], atol=1e-6)
    np.testing.assert_allclose(dets.boxes[0], [16, 0, 48, 32], atol=1e-4)


# ----------------------------------------------------------------------------- TensorRT (fake module)


def _fake_engine(onnx_bytes: bytes, *, max_batch: int = 4, version: str = "10.3.0") -> bytes:
    """A plan of the fake TensorRT, built through its builder API as the device builds one."""
    from models.runtime.trt_build import BatchProfile, EngineSpec, build_serialized_engine

    with fake_tensorrt.install(version):
        return build_serialized_engine(
            onnx_bytes,
            EngineSpec("input", (3, 32, 32), BatchProfile(1, 1, max_batch), Precision.FP32),
            source="model.onnx",
        )


def test_tensorrt_runtime_runs_the_engine_like_onnx_runtime(tmp_path: Path) -> None:
    from models.runtime.onnxrt import OrtRuntime
    from tests.bundles import make_onnx

    onnx_bytes = make_onnx("ok")
    engine = tmp_path / "model.engine"
    engine.write_bytes(_fake_engine(onnx_bytes))
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    expected = OrtRuntime(onnx_bytes).run(x)["logits"]
    with fake_tensorrt.install():
        rt = TrtRuntime(engine)
        assert rt.input_name == "input" and rt.output_names == ("logits",) and rt.max_batch == 4
        np.testing.assert_allclose(rt.run(x)["logits"], expected, rtol=1e-6)
        np.testing.assert_allclose(rt.run(x[:1])["logits"], expected[:1], rtol=1e-6)  # buffers reused
        with pytest.raises(InferenceError, match="optimization profile"):
            rt.run(np.zeros((5, 3, 32, 32), np.float32))
        with pytest.raises(InferenceError, match="must have shape"):
            rt.run(np.zeros((1, 3, 8, 8), np.float32))
        rt.close()
        assert fake_tensorrt.Device.contexts[-1].detached
        with pytest.raises(InferenceError, match="closed"):
            rt.run(x)


def test_model_serves_an_engine_and_splits_batches_over_its_profile(tmp_path: Path, ok_bundle: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(_fake_engine((ok_bundle / "model.onnx").read_bytes(), max_batch=4))
    frames = [_frame(i % 3) for i in range(10)]
    with Model(ok_bundle, threads=1) as onnx_model:
        expected = [p.top1 for p in onnx_model.predict_batch(frames)]
    with fake_tensorrt.install(), Model(ok_bundle, "onnx-fp32", engine=engine) as model:
        assert model.backend is Backend.TENSORRT and model.engine_path == engine
        preds = model.predict_batch(frames)  # 10 frames through a profile of at most 4
    assert [p.top1 for p in preds] == expected == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert Model(ok_bundle, threads=1).backend is Backend.ONNXRUNTIME


def test_tensorrt_runtime_refuses_foreign_engines_and_a_missing_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.bundles import make_onnx

    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(b"built elsewhere")
    old = tmp_path / "old.engine"
    old.write_bytes(_fake_engine(make_onnx("ok"), version="10.3.0"))
    with fake_tensorrt.install(), pytest.raises(ModelLoadError, match="cannot deserialize"):
        TrtRuntime(foreign)
    with fake_tensorrt.install("10.4.0"), pytest.raises(ModelLoadError, match="another TensorRT version or GPU"):
        TrtRuntime(old)  # TensorRT refuses plans of another version
    with fake_tensorrt.install(compute_capability=(7, 2)), pytest.raises(ModelLoadError, match="cannot deserialize"):
        TrtRuntime(old)  # ... and of another GPU
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a host without TensorRT
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        TrtRuntime(old)


@pytest.mark.tensorrt
def test_tensorrt_runtime_on_a_real_engine(tmp_path: Path) -> None:
    """Builds a real engine from the tiny ONNX model and compares it with ONNX Runtime."""
    from optimize.tensorrt import TrtBuildConfig, build_engine
    from tests.bundles import make_onnx

    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(make_onnx("ok"))
    engine = tmp_path / "model.engine"
    build_engine(onnx_path, engine, TrtBuildConfig(input_shape=(3, 32, 32), max_batch=4))
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    from models.runtime.onnxrt import OrtRuntime

    expected = OrtRuntime(onnx_path).run(x)["logits"]
    rt = TrtRuntime(engine)
    np.testing.assert_allclose(rt.run(x)["logits"], expected, atol=1e-3)
    rt.close()


@pytest.mark.tensorrt
def test_device_build_of_a_qdq_onnx_on_real_tensorrt(tmp_path: Path) -> None:
    """The on-device builder (INT8 flags, batch profile) on real TensorRT, against ONNX Runtime on the Q/DQ graph."""
    from models.runtime.onnxrt import OrtRuntime
    from models.runtime.trt_build import BatchProfile, EngineSpec, build_serialized_engine
    from tests.trt_bundles import make_qdq_onnx

    qdq = make_qdq_onnx()
    engine = tmp_path / "qdq.engine"
    engine.write_bytes(
        build_serialized_engine(
            qdq, EngineSpec("input", (3, 32, 32), BatchProfile(1, 2, 8), Precision.INT8), source="qdq.onnx"
        )
    )
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    rt = TrtRuntime(engine)
    assert rt.max_batch == 8
    got = rt.run(x)["logits"]
    rt.close()
    expected = OrtRuntime(qdq).run(x)["logits"]
    np.testing.assert_allclose(got, expected, atol=0.05)  # INT8 kernels round differently from ONNX Runtime's
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_session_options_threads_and_no_spinning(ok_bundle: Path) -> None:
    from models.runtime.onnxrt import GraphOptimization, OrtOptions, OrtRuntime, default_providers

    assert default_providers()[-1] == "CPUExecutionProvider"
    opts = OrtOptions(intra_op_threads=1, allow_spinning=False, graph_optimization=GraphOptimization.DISABLED)
    rt = OrtRuntime(ok_bundle / "model.onnx", opts)
    assert rt.providers == ("CPUExecutionProvider",) and rt.input_shape[1:] == (3, 32, 32)
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 2] = 1.0
    assert int(np.argmax(rt.run(x)["logits"])) == 2
    with pytest.raises(ModelLoadError, match="does not exist"):
        OrtRuntime(ok_bundle / "missing.onnx")
