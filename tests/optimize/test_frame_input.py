"""Frame-form variants: preprocessing in the graph against ``models.preprocess`` on real decoded video.

Tolerances come from float32 rounding. The prepended nodes do the float32 operations numpy
does (a cast, one multiply and one add per value, with the same float32 constants), so the
network inputs may differ by at most the rounding of those two operations: 2 ulp of the
largest input (``2 * eps * max|x|``). An output may then differ by what the network makes
of a perturbation that size; the test measures that on the tensor-form model itself (every
input value moved by 2 ulp, alternately up and down) and allows 4 times it, plus the
rounding of the output's own magnitude (``16 * eps * max|y|``). A swapped channel, a wrong
mean or a transposed layout moves the inputs by ~0.1 and the outputs by orders of magnitude
more.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnx.utils
import pytest

from models.bundle import ColorOrder, InputForm, InputSpec, Layout, Precision, ResizeMode, Task, read_bundle
from models.datasets import DatasetSpec, open_dataset
from models.preprocess import Preprocessor
from models.runtime import Model
from models.runtime.errors import InferenceError
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from optimize.__main__ import main
from optimize.checkpoint import build_torch_model, read_checkpoint
from optimize.errors import ExportError
from optimize.export import export_onnx
from optimize.frame_input import PREPROCESSED, frame_file, frame_id, prepend_preprocessing, write_frame_variant
from optimize.quantize import Int8Flavor, QuantSettings, quantize_int8
from tests.optimize.checkpoints import FAST_OPTIMIZE

EPS = float(np.finfo(np.float32).eps)
FRAME_SIZE = (96, 72)  # w, h: not square, so letterbox pads and center-crop cuts
MODES = [
    (ResizeMode.STRETCH, None),
    (ResizeMode.LETTERBOX, None),
    (ResizeMode.CENTER_CROP, 40),  # short side to 40, then the 32x32 crop
]
ORDERS = [ColorOrder.RGB, ColorOrder.BGR]
CPU = OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=1, allow_spinning=False)


@pytest.fixture(scope="module")
def video_frames(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The run's val images upscaled to 96x72, written as an MJPG video and decoded back with OpenCV."""
    side = json.loads((trained_run / "checkpoints" / "best.json").read_text())
    ds = open_dataset(DatasetSpec.from_dict(side["dataset"]), "val")
    path = tmp_path_factory.mktemp("video") / "signs.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, FRAME_SIZE)
    assert writer.isOpened()
    for i in range(24):
        writer.write(cv2.resize(ds[i].image, FRAME_SIZE, interpolation=cv2.INTER_LINEAR))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 24 and frames[0].shape == (72, 96, 3) and frames[0].dtype == np.uint8
    return frames


@pytest.fixture(scope="module")
def classifier(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InputSpec]:
    """The trained 32 px MobileNetV3-small exported to FP32 ONNX, and its sidecar's input spec."""
    ckpt = read_checkpoint(trained_run)
    path = tmp_path_factory.mktemp("cls") / "model-fp32.onnx"
    export_onnx(build_torch_model(ckpt), ckpt.input_spec, path, task=Task.CLASSIFICATION)
    return path, ckpt.input_spec


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InputSpec]:
    """An FCOS detector (64 px, fixed seed) exported to FP32 ONNX: boxes and scores."""
    import torch

    from models.zoo import build_model, default_input_spec

    torch.manual_seed(0)
    model = build_model("fcos_mnv3", "detection", 4, image_size=64).eval()
    spec = dataclasses.replace(default_input_spec("fcos_mnv3", "detection"), shape=(None, 3, 64, 64))
    path = tmp_path_factory.mktemp("det") / "model-fp32.onnx"
    export_onnx(model, spec, path, task=Task.DETECTION)
    return path, spec


def _spec(base: InputSpec, mode: ResizeMode, resize_to: int | None, order: ColorOrder) -> InputSpec:
    short = None if resize_to is None else round(resize_to * base.height / 32)
    return dataclasses.replace(base, resize=mode, resize_to=short, color_order=order)


def _run(path: Path | bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    rt = OrtRuntime(path, CPU)
    try:
        return rt.run(x)
    finally:
        rt.close()


def _ulp_nudged(x: np.ndarray, ulps: int) -> np.ndarray:
    """Every value moved by ``ulps`` ulp, alternately up and down."""
    y = x.copy()
    flat = y.reshape(-1)
    for _ in range(ulps):
        flat[0::2] = np.nextafter(flat[0::2], np.float32(np.inf))
        flat[1::2] = np.nextafter(flat[1::2], np.float32(-np.inf))
    return y


def _forms(spec: InputSpec, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    tensor, frame = Preprocessor(spec), Preprocessor(spec, InputForm.FRAME)
    return np.stack([tensor(f) for f in frames]), np.stack([frame(f) for f in frames])


def _tolerances(model: Path, x: np.ndarray, ref: dict[str, np.ndarray]) -> dict[str, float]:
    nudged = _run(model, _ulp_nudged(x, 2))
    return {
        k: 4.0 * float(np.abs(nudged[k] - ref[k]).max()) + 16 * EPS * max(1.0, float(np.abs(ref[k]).max())) for k in ref
    }


@pytest.mark.parametrize("mode,resize_to", MODES, ids=[m.value for m, _ in MODES])
@pytest.mark.parametrize("order", ORDERS, ids=[o.value for o in ORDERS])
def test_graph_preprocessing_matches_numpy_on_decoded_video(
    classifier: tuple[Path, InputSpec],
    video_frames: list[np.ndarray],
    tmp_path: Path,
    mode: ResizeMode,
    resize_to: int | None,
    order: ColorOrder,
) -> None:
    fp32, base = classifier
    spec = _spec(base, mode, resize_to, order)
    frame_model = write_frame_variant(fp32, tmp_path / "model-fp32-frame.onnx", spec)
    x, frames = _forms(spec, video_frames)
    assert frames.dtype == np.uint8 and frames.shape == (24, 32, 32, 3)

    # the prepended nodes alone: a graph that stops at the tensor the original input received
    pre = tmp_path / "pre.onnx"
    onnx.utils.extract_model(str(frame_model), str(pre), [spec.name], [PREPROCESSED])
    rt = OrtRuntime(pre, CPU)
    got = rt._session.run(None, {spec.name: frames})[0]
    rt.close()
    assert got.dtype == np.float32 and got.shape == x.shape
    assert float(np.abs(got - x).max()) <= 2 * EPS * float(np.abs(x).max())

    # the whole network: frame form vs tensor form fed by numpy
    ref = _run(fp32, x)
    out = _run(frame_model, frames)
    tol = _tolerances(fp32, x, ref)
    for k in ref:
        assert float(np.abs(out[k] - ref[k]).max()) <= tol[k], (k, float(np.abs(out[k] - ref[k]).max()), tol[k])
    assert np.array_equal(out["logits"].argmax(1), ref["logits"].argmax(1))


@pytest.mark.parametrize("mode,resize_to", MODES, ids=[m.value for m, _ in MODES])
@pytest.mark.parametrize("order", ORDERS, ids=[o.value for o in ORDERS])
def test_detector_boxes_and_scores_match(
    detector: tuple[Path, InputSpec],
    video_frames: list[np.ndarray],
    tmp_path: Path,
    mode: ResizeMode,
    resize_to: int | None,
    order: ColorOrder,
) -> None:
    fp32, base = detector
    spec = _spec(base, mode, resize_to, order)
    frame_model = write_frame_variant(fp32, tmp_path / "det-frame.onnx", spec)
    x, frames = _forms(spec, video_frames[:8])
    ref = _run(fp32, x)
    out = _run(frame_model, frames)
    assert set(out) == {"boxes", "scores"}
    tol = _tolerances(fp32, x, ref)
    for k in ("boxes", "scores"):
        assert float(np.abs(out[k] - ref[k]).max()) <= tol[k], (k, float(np.abs(out[k] - ref[k]).max()), tol[k])


def test_a_wrong_channel_order_is_caught_by_the_same_tolerance(
    classifier: tuple[Path, InputSpec], video_frames: list[np.ndarray], tmp_path: Path
) -> None:
    """The check can fail: a graph built for BGR fed to an RGB model's numpy reference."""
    fp32, base = classifier
    rgb = dataclasses.replace(base, color_order=ColorOrder.RGB)
    wrong = write_frame_variant(fp32, tmp_path / "wrong.onnx", dataclasses.replace(rgb, color_order=ColorOrder.BGR))
    x, frames = _forms(rgb, video_frames)
    ref = _run(fp32, x)
    tol = _tolerances(fp32, x, ref)
    assert float(np.abs(_run(wrong, frames)["logits"] - ref["logits"]).max()) > tol["logits"]


@pytest.mark.parametrize("flavor", [Int8Flavor.CPU, Int8Flavor.TENSORRT], ids=["int8", "int8-qdq"])
def test_int8_frame_form_agrees_top1_with_int8_tensor_form(
    classifier: tuple[Path, InputSpec],
    video_frames: list[np.ndarray],
    tmp_path: Path,
    flavor: Int8Flavor,
) -> None:
    fp32, base = classifier
    spec = _spec(base, ResizeMode.LETTERBOX, None, ColorOrder.RGB)
    x, frames = _forms(spec, video_frames)
    int8 = quantize_int8(fp32, tmp_path / "model-int8.onnx", x, QuantSettings(flavor=flavor))
    frame_int8 = write_frame_variant(int8, tmp_path / "model-int8-frame.onnx", spec)
    a = _run(int8, x)["logits"].argmax(1)
    b = _run(frame_int8, frames)["logits"].argmax(1)
    assert float(np.mean(a == b)) == 1.0, (a, b)


def test_frame_model_takes_uint8_nhwc_with_the_batch_kept(classifier: tuple[Path, InputSpec], tmp_path: Path) -> None:
    fp32, spec = classifier
    path = write_frame_variant(fp32, tmp_path / frame_file("model-fp32.onnx"), spec)
    assert path.name == "model-fp32-frame.onnx" and frame_id("onnx-int8") == "onnx-int8-frame"
    (inp,) = onnx.load(str(path)).graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 32, 32, 3]
    rt = OrtRuntime(path, CPU)
    assert rt.input_dtype == np.uint8
    assert rt.run(np.zeros((3, 32, 32, 3), np.uint8))["logits"].shape[0] == 3
    with pytest.raises(InferenceError, match="must be uint8, got float32"):
        rt.run(np.zeros((1, 32, 32, 3), np.float32))
    rt.close()


def test_prepending_refuses_a_model_the_spec_does_not_describe(classifier: tuple[Path, InputSpec]) -> None:
    fp32, spec = classifier
    model = onnx.load(str(fp32))
    with pytest.raises(ExportError, match=r"input spec says \[N, \(3, 48, 48\)\]"):
        prepend_preprocessing(model, dataclasses.replace(spec, shape=(None, 3, 48, 48)))
    with pytest.raises(ExportError, match="the input spec says 'image'"):
        prepend_preprocessing(model, dataclasses.replace(spec, name="image"))
    twice = prepend_preprocessing(model, spec)
    with pytest.raises(ExportError, match="input 'input' has shape"):
        prepend_preprocessing(twice, spec)  # its input is now the uint8 frame


def test_nhwc_spec_gets_no_transpose(tmp_path: Path) -> None:
    """A model whose tensor input is NHWC: the graph casts and normalises only."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 8, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8, 8, 3])
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "g", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "nhwc.onnx"
    onnx.save(model, str(src))
    spec = InputSpec(shape=(None, 8, 8, 3), layout=Layout.NHWC, color_order=ColorOrder.RGB)
    path = write_frame_variant(src, tmp_path / "nhwc-frame.onnx", spec)
    assert "Transpose" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x_np, fr = _forms(spec, list(frames))
    assert float(np.abs(_run(path, fr)["out"] - x_np).max()) <= 2 * EPS * float(np.abs(x_np).max())


# --------------------------------------------------------------------------- through edge-optimize


@pytest.fixture(scope="module")
def both_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frame-bundles") / "signs-2.0.0"
    args = [str(trained_run), "--out", str(out), "--name", "signs", "--version", "2.0.0", *FAST_OPTIMIZE]
    assert main([*args, "--targets", "cpu,jetson-orin"]) == 0
    return out


def test_optimizer_emits_a_frame_twin_of_every_onnx_variant(both_bundle: Path, video_frames: list[np.ndarray]) -> None:
    m = read_bundle(both_bundle)
    tensor = [v for v in m.variants if v.input_form is InputForm.TENSOR]
    frames = {v.id: v for v in m.variants if v.input_form is InputForm.FRAME}
    assert {v.id for v in tensor} >= {"onnx-fp32", "onnx-int8", "onnx-int8-qdq", "onnx-fp16"}
    assert set(frames) == {frame_id(v.id) for v in tensor}
    for v in tensor:
        twin = frames[frame_id(v.id)]
        assert twin.precision is v.precision and twin.requires == v.requires and twin.file == frame_file(v.file)
        assert twin.details["tensor_form"] == v.id and twin.measurement is not None
    for hw, entry in m.selection.items():
        assert entry.order[-1] == "onnx-fp32", hw  # the tensor FP32 stays every class's fallback
        for i, vid in enumerate(entry.order):
            if vid.endswith("-frame"):  # a twin sits right before its tensor form
                assert entry.order[i + 1] == vid.removesuffix("-frame"), (hw, entry.order)
    # the GPU class is not measured here: every twin goes before its tensor form
    orin = m.selection["jetson-orin"].order
    assert orin[:2] == ("onnx-int8-qdq-frame", "onnx-int8-qdq") and orin[-2:] == ("onnx-fp32-frame", "onnx-fp32")
    # the CPU decision between the forms is recorded as an interval verdict
    cpu = m.selection["cpu-x86_64"]
    forms = [e for e in cpu.evidence if e.baseline == "onnx-fp32-frame"]
    assert len(forms) == 1 and forms[0].candidate == "onnx-fp32" and forms[0].low <= forms[0].speedup <= forms[0].high
    assert ("onnx-fp32-frame" in cpu.order) is not forms[0].preferred

    # models.runtime feeds each form its own input: same predictions
    with Model(both_bundle, "onnx-fp32") as t, Model(both_bundle, "onnx-fp32-frame") as f:
        assert f.input_spec.dtype == "uint8" and f.input_spec.shape == (None, 32, 32, 3)
        assert t.input_spec == m.input
        for frame in video_frames[:8]:
            a, b = t.predict(frame), f.predict(frame)
            assert a.top_k[0][0] == b.top_k[0][0]
            assert abs(a.top_k[0][1] - b.top_k[0][1]) <= 1e-5
    with Model(both_bundle, "onnx-int8") as t, Model(both_bundle, "onnx-int8-frame") as f:
        assert [t.predict(x).top_k[0][0] for x in video_frames] == [f.predict(x).top_k[0][0] for x in video_frames]


def test_input_form_tensor_builds_no_twins(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "signs-tensor"
    args = [str(trained_run), "--out", str(out), "--name", "signs", "--version", "2.0.1", *FAST_OPTIMIZE]
    assert main([*args, "--targets", "cpu", "--no-int8", "--input-form", "tensor"]) == 0
    m = read_bundle(out)
    assert [v.id for v in m.variants] == ["onnx-fp32"] and m.variants[0].input_form is InputForm.TENSOR
    assert not list(out.glob("*-frame.onnx"))


def test_bad_input_form_exits_2(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    with pytest.raises(SystemExit) as e:
        main([str(trained_run), "--out", str(out), "--name", "s", "--version", "1.0.0", "--input-form", "nchw"])
    assert e.value.code == 2 and "--input-form: invalid choice: 'nchw'" in capsys.readouterr().err
    assert not out.exists()


def test_precision_is_kept_by_the_twin(both_bundle: Path) -> None:
    m = read_bundle(both_bundle)
    assert m.variant("onnx-int8-frame").precision is Precision.INT8
    assert m.variant("onnx-fp16-frame").precision is Precision.FP16


def test_engines_are_built_from_the_frame_twins_too(
    classifier: tuple[Path, InputSpec], video_frames: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Jetson build host (fake TensorRT): an engine per form, the frame one taking uint8 NHWC."""
    from models.bundle import Format
    from models.hardware import HardwareProfile
    from models.runtime.tensorrt import TrtRuntime
    from optimize import engines
    from optimize.config import OptimizeConfig
    from optimize.quantize import convert_fp16
    from optimize.variants import REQUIREMENTS, BuiltVariant
    from tests.models import fake_tensorrt, fake_tensorrt_builder

    fp32, spec = classifier
    fp16 = convert_fp16(fp32, tmp_path / "model-fp16.onnx")
    twin = write_frame_variant(fp16, tmp_path / "model-fp16-frame.onnx", spec)
    req = REQUIREMENTS["onnx-fp16"]
    built = [
        BuiltVariant("onnx-fp16", fp16, Format.ONNX, Precision.FP16, req),
        BuiltVariant(
            "onnx-fp16-frame", twin, Format.ONNX, Precision.FP16, req, input_form=InputForm.FRAME, twin="onnx-fp16"
        ),
    ]
    orin = HardwareProfile(arch="aarch64", accelerator="jetson", compute_capability="8.7")
    monkeypatch.setattr(engines, "detect_profile", lambda: orin)
    cfg = OptimizeConfig(source=tmp_path, out=tmp_path / "out", name="signs", version="1.0.0", targets=("jetson-orin",))
    with fake_tensorrt.install():
        out = engines.build_engines(cfg, built, spec, tmp_path, tmp_path, lambda _: None)
        profile = fake_tensorrt_builder.Builder.last.config.profiles[0].shapes["input"]  # type: ignore[union-attr]
    assert [b.id for b in out] == ["trt-fp16-sm87", "trt-fp16-sm87-frame"]
    assert out[1].input_form is InputForm.FRAME and out[1].twin == "trt-fp16-sm87" and out[0].twin is None
    assert out[1].path.name == "model-fp16-sm87-frame.engine" and out[1].details["source"] == "onnx-fp16-frame"
    assert profile == ((1, 32, 32, 3), (1, 32, 32, 3), (8, 32, 32, 3))  # the frame layout, dynamic batch
    frames = np.stack([Preprocessor(spec, InputForm.FRAME)(f) for f in video_frames[:4]])
    with fake_tensorrt.install():
        rt = TrtRuntime(out[1].path)
        got = rt.run(frames)["logits"]
        rt.close()
    np.testing.assert_allclose(got, _run(twin, frames)["logits"], rtol=1e-5, atol=1e-5)
