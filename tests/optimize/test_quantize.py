"""optimize.quantize: real ONNX Runtime static quantization on the trained model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.runtime.onnxrt import OrtRuntime
from optimize.checkpoint import build_torch_model, read_checkpoint
from optimize.config import CalibMethod
from optimize.data import load_samples, open_split
from optimize.export import export_onnx
from optimize.quantize import (
    Int8Flavor,
    QuantSettings,
    convert_fp16,
    make_calibration_reader,
    quantizable_nodes,
    quantize_int8,
    search_int8,
)


@pytest.fixture(scope="module")
def fp32(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    ck = read_checkpoint(trained_run)
    d = tmp_path_factory.mktemp("quant")
    export_onnx(build_torch_model(ck), ck.input_spec, d / "fp32.onnx", task=ck.task)
    calib = load_samples(open_split(ck.dataset, "train"), 16, ck.input_spec).inputs
    val = load_samples(open_split(ck.dataset, "val"), 32, ck.input_spec)
    return d / "fp32.onnx", calib, val, d


@pytest.fixture(scope="module")
def fitted(trained_run: Path):  # type: ignore[no-untyped-def]
    """All 256 training images: the few-step model is near chance on the held-out split (about 0.24
    for 10 classes) but fits these (about 0.56), so only here does a lost accuracy show."""
    ck = read_checkpoint(trained_run)
    return load_samples(open_split(ck.dataset, "train"), 256, ck.input_spec)


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _top1(path: Path, val) -> float:  # type: ignore[no-untyped-def]
    out = OrtRuntime(path).run(val.inputs)["logits"]
    return float(np.mean(out.argmax(1) == np.array([s.label for s in val.samples])))


def test_calibration_reader_batches_and_rewinds() -> None:
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    r = make_calibration_reader(x, "input", batch_size=2)
    shapes = []
    while (item := r.get_next()) is not None:
        shapes.append(item["input"].shape[0])
    assert shapes == [2, 2, 1] and len(r) == 3
    r.rewind()
    np.testing.assert_array_equal(r.get_next()["input"], x[:2])


def test_cpu_int8_is_a_valid_per_channel_qdq_model(fp32, fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, calib, val, _ = fp32
    out = quantize_int8(src, tmp_path / "int8.onnx", calib, QuantSettings(CalibMethod.MINMAX))
    ops = _ops(out)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "QLinearConv" not in ops
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_dq = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4
    ]
    assert weight_dq and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in weight_dq)
    assert all(inits[n.input[0]].dtype == np.int8 for n in weight_dq)
    res = OrtRuntime(out).run(val.inputs[:4])["logits"]
    assert res.shape[0] == 4 and np.all(np.isfinite(res))
    # INT8 keeps the FP32 accuracy within three binomial standard errors of it on the same images;
    # the test has power only if FP32 is far above what a model that has lost its weights scores
    n = len(fitted.samples)
    labels = np.array([s.label for s in fitted.samples])
    acc_fp32, acc_int8 = _top1(src, fitted), _top1(out, fitted)
    margin = 3 * math.sqrt(acc_fp32 * (1 - acc_fp32) / n)
    majority = float(np.bincount(labels).max()) / n  # what a constant prediction scores
    assert acc_fp32 - 2 * margin > majority, (acc_fp32, margin, majority)
    assert acc_int8 >= acc_fp32 - margin, (acc_int8, acc_fp32, margin)


def test_tensorrt_flavour_is_symmetric_and_leaves_biases_float(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, calib, _, _ = fp32
    out = quantize_int8(src, tmp_path / "trt.onnx", calib, QuantSettings(CalibMethod.MINMAX, Int8Flavor.TENSORRT))
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q
    zero_points = [inits[n.input[2]] for n in q]
    assert all(z.dtype == np.int8 and not np.any(z) for z in zero_points)  # symmetric int8 activations
    assert not any(v.dtype == np.int32 for v in inits.values())  # no quantized biases
    consumers = {n.input[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert consumers <= dq_out  # every weighted op reads a Q/DQ-ed activation


def _activation_scales(path: Path) -> dict[str, float]:
    """The scale of each QuantizeLinear, by the float tensor it quantizes (weights are initializers)."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].ndim == 0
    }


def test_search_tries_all_methods_then_excludes_sensitive_nodes(  # type: ignore[no-untyped-def]
    fp32, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, calib, _, _ = fp32
    workdir = tmp_path / "search"
    workdir.mkdir()
    images_read: list[list[int]] = []  # per calibration reader quantize_int8 makes: images it handed out

    def counting_reader(inputs: np.ndarray, input_name: str, *, batch_size: int = 1) -> object:
        inner, count = make_calibration_reader(inputs, input_name, batch_size=batch_size), [0]
        images_read.append(count)

        class Counting:
            def get_next(self) -> dict[str, np.ndarray] | None:
                item: dict[str, np.ndarray] | None = inner.get_next()
                count[0] += 0 if item is None else next(iter(item.values())).shape[0]
                return item

            def rewind(self) -> None:
                inner.rewind()

            def __len__(self) -> int:
                return len(inner)

        return Counting()

    monkeypatch.setattr("optimize.quantize.make_calibration_reader", counting_reader)

    # an evaluator that pretends INT8 loses 5 points unless the first layer stays float
    def evaluate(path: Path) -> float:
        graph = onnx.load(str(path)).graph
        dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        first_conv = next(n for n in graph.node if n.op_type == "Conv")
        return 0.75 if first_conv.input[1] in dq_outputs else 0.80

    res = search_int8(
        src,
        workdir,
        calib,
        evaluate,
        reference=0.80,
        max_drop_points=1.0,
        methods=[CalibMethod.MINMAX, CalibMethod.PERCENTILE],
        flavor=Int8Flavor.CPU,
        max_rounds=2,
    )
    methods = [a.settings.method for a in res.attempts]
    assert methods[:2] == [CalibMethod.MINMAX, CalibMethod.PERCENTILE]
    assert len(res.attempts) == 3 and res.within_limit
    assert res.best.settings.exclude[:1] and res.best.accuracy == 0.80
    # both methods calibrated; the retry with excluded nodes read the minmax ranges from the cache and
    # not one calibration image, and its Q/DQ nodes carry the very scales of the first minmax model
    assert [c[0] for c in images_read] == [len(calib), len(calib), 0], images_read
    first, retry = _activation_scales(res.attempts[0].path), _activation_scales(res.attempts[2].path)
    shared = set(first) & set(retry)
    assert len(shared) >= len(first) // 2, (sorted(first), sorted(retry))
    assert {t: retry[t] for t in shared} == {t: first[t] for t in shared}
    details = res.details(0.80)
    assert details["excluded_nodes"] == list(res.best.settings.exclude) and len(details["tried"]) == 3


def test_search_reports_when_nothing_meets_the_limit(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, calib, _, workdir = fp32
    res = search_int8(
        src,
        workdir,
        calib,
        lambda p: 0.5,
        reference=0.9,
        max_drop_points=1.0,
        methods=[CalibMethod.MINMAX],
        flavor=Int8Flavor.CPU,
        max_rounds=1,
    )
    assert not res.within_limit and len(res.attempts) == 2


def test_fp16_keeps_float32_io_and_runs(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _, val, _ = fp32
    out = convert_fp16(src, tmp_path / "fp16.onnx")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    a = OrtRuntime(out).run(val.inputs[:8])["logits"]
    b = OrtRuntime(src).run(val.inputs[:8])["logits"]
    np.testing.assert_allclose(a, b, atol=0.05 * float(np.abs(b).max()) + 1e-2)


def test_quantizable_nodes_are_the_weighted_ops_in_order(fp32) -> None:  # type: ignore[no-untyped-def]
    src = fp32[0]
    names = quantizable_nodes(src)
    ops = {n.name: n.op_type for n in onnx.load(str(src)).graph.node}
    assert names and all(ops[n] in ("Conv", "Gemm", "MatMul") for n in names)
    assert ops[names[0]] == "Conv" and ops[names[-1]] == "Gemm"
