"""optimize.select: selection rules on recorded measurements (pure)."""

from __future__ import annotations

import pytest

from models.bundle import Format, Precision
from optimize.select import Candidate, choose, default_gates

ALL = ("cpu-x86_64", "cpu-aarch64", "cuda", "jetson-orin", "jetson-xavier", "jetson-nano")
GPU = ("cuda", "jetson")


def _cands(int8_p50: float, int8_delta: float = -0.3) -> list[Candidate]:
    return [
        Candidate("onnx-fp32", Precision.FP32, accelerators=("cpu", "cuda", "jetson"), accuracy=0.95,
                  accuracy_delta=0.0, p50_ms=10.0, p95_ms=12.0, measured_class="cpu-x86_64"),
        Candidate("onnx-int8", Precision.INT8, accelerators=("cpu",), accuracy=0.947, accuracy_delta=int8_delta,
                  p50_ms=int8_p50, measured_class="cpu-x86_64"),
        Candidate("onnx-int8-qdq", Precision.INT8, accelerators=GPU, accuracy=0.946, accuracy_delta=-0.4,
                  p50_ms=30.0, measured_class="cpu-x86_64", build_on_device=True),
        Candidate("onnx-fp16", Precision.FP16, accelerators=GPU, accuracy=0.95, accuracy_delta=0.0, p50_ms=9.0,
                  measured_class="cpu-x86_64"),
    ]


def test_resnet_like_int8_is_chosen_for_cpus_when_faster_and_accurate() -> None:
    d = choose(_cands(4.0), baseline_id="onnx-fp32", targets=ALL, host_class="cpu-x86_64")
    assert d["cpu-x86_64"].order == ("onnx-int8", "onnx-fp32")
    assert "2.50x faster than onnx-fp32" in d["cpu-x86_64"].reason
    assert "as a proxy" in d["cpu-aarch64"].reason and "as a proxy" not in d["cpu-x86_64"].reason


def test_never_slower_than_fp32_on_the_host_it_was_measured_on() -> None:
    # MobileNetV3-small: INT8 slower than FP32 on this CPU
    d = choose(_cands(12.0), baseline_id="onnx-fp32", targets=("cpu-x86_64",), host_class="cpu-x86_64")
    assert d["cpu-x86_64"].order == ("onnx-fp32",)
    assert "never slower than the baseline" in d["cpu-x86_64"].rejected["onnx-int8"]
    # barely faster is noise: it must win by min_speedup
    d = choose(_cands(9.5), baseline_id="onnx-fp32", targets=("cpu-x86_64",), host_class="cpu-x86_64")
    assert d["cpu-x86_64"].order == ("onnx-fp32",)
    d = choose(_cands(9.5), baseline_id="onnx-fp32", targets=("cpu-x86_64",), host_class="cpu-x86_64",
               min_speedup=1.0)
    assert d["cpu-x86_64"].order == ("onnx-int8", "onnx-fp32")


def test_accuracy_limit_rejects_and_names_the_drop() -> None:
    d = choose(_cands(4.0, int8_delta=-1.6), baseline_id="onnx-fp32", targets=("cpu-x86_64",),
               host_class="cpu-x86_64", max_drop=1.0)
    assert d["cpu-x86_64"].order == ("onnx-fp32",)
    assert d["cpu-x86_64"].rejected["onnx-int8"] == "accuracy drop 1.60 points > limit 1"
    d = choose(_cands(4.0, int8_delta=-1.6), baseline_id="onnx-fp32", targets=("cpu-x86_64",),
               host_class="cpu-x86_64", max_drop=2.0)
    assert d["cpu-x86_64"].order[0] == "onnx-int8"


def test_gpu_classes_prefer_int8_qdq_then_fp16_and_nano_has_no_int8() -> None:
    d = choose(_cands(4.0), baseline_id="onnx-fp32", targets=ALL, host_class="cpu-x86_64")
    assert d["jetson-orin"].order == ("onnx-int8-qdq", "onnx-fp16", "onnx-fp32")
    assert d["cuda"].order == ("onnx-int8-qdq", "onnx-fp16", "onnx-fp32")
    assert d["jetson-nano"].order == ("onnx-fp16", "onnx-fp32")
    assert "compute capability >= 6.1" in d["jetson-nano"].rejected["onnx-int8-qdq"]
    assert "latency not measured" in d["jetson-orin"].reason


def test_engines_only_for_their_class_and_first() -> None:
    engine = Candidate("trt-int8-sm87", Precision.INT8, Format.TENSORRT_ENGINE, accelerators=("jetson",),
                       accuracy=0.946, accuracy_delta=-0.4, engine_class="jetson-orin")
    d = choose([*_cands(4.0), engine], baseline_id="onnx-fp32", targets=("jetson-orin", "jetson-xavier"),
               host_class="jetson-orin")
    assert d["jetson-orin"].order[0] == "trt-int8-sm87"
    assert "trt-int8-sm87" not in d["jetson-xavier"].order
    assert d["jetson-xavier"].rejected["trt-int8-sm87"] == "engine built for jetson-orin"


def test_unmeasured_accuracy_is_rejected_and_missing_baseline_is_an_error() -> None:
    cands = _cands(4.0)
    cands[3] = Candidate("onnx-fp16", Precision.FP16, accelerators=GPU)
    d = choose(cands, baseline_id="onnx-fp32", targets=("cuda",), host_class="cpu-x86_64")
    assert d["cuda"].rejected["onnx-fp16"] == "accuracy not measured"
    with pytest.raises(ValueError, match="baseline 'x'"):
        choose(cands, baseline_id="x", targets=("cuda",), host_class="cpu-x86_64")
    with pytest.raises(ValueError, match="unknown hardware class 'tpu'"):
        choose(cands, baseline_id="onnx-fp32", targets=("tpu",), host_class="cpu-x86_64")


def test_default_gates_have_headroom_and_follow_agreement() -> None:
    g = default_gates(12.34, headroom=4.0)
    assert g.latency_budget_ms == pytest.approx(49.4) and g.min_agreement == 0.9
    assert default_gates(0.2).latency_budget_ms == 5.0
    assert default_gates(10, agreement=0.9).min_agreement == 0.85
    assert default_gates(10, agreement=0.99).min_agreement == 0.9
    assert default_gates(10, agreement=0.2).min_agreement == 0.5
