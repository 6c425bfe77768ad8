"""optimize.select with frame-form twins: the form decided per pair on the interval rule (pure)."""

from __future__ import annotations

import numpy as np

from models.bundle import InputForm, Precision
from optimize.select import Candidate, choose

N = 200


def _times(median_ms: float, *, seed: int, spread: float = 0.02) -> tuple[float, ...]:
    x = np.exp(np.random.default_rng(seed).normal(0.0, spread, N))
    x *= median_ms / np.median(x)
    return tuple(float(v) for v in x)


def _cand(vid: str, ms: float, seed: int, *, precision: Precision = Precision.FP32, delta: float = 0.0) -> Candidate:
    frame = vid.endswith("-frame")
    accel = ("cpu", "cuda", "jetson") if precision is Precision.FP32 else ("cpu",)
    return Candidate(
        vid,
        precision,
        accelerators=accel,
        accuracy=0.9 + delta / 100,
        accuracy_delta=delta,
        cpu_ms=_times(ms, seed=seed),
        wall_ms=_times(ms, seed=seed),
        measured_class="cpu-x86_64",
        input_form=InputForm.FRAME if frame else InputForm.TENSOR,
        twin=vid.removesuffix("-frame") if frame else None,
    )


def _choose(*cands: Candidate, targets: tuple[str, ...] = ("cpu-x86_64",)) -> dict[str, tuple[str, ...]]:
    d = choose(list(cands), baseline_id="onnx-fp32", targets=targets, host_class="cpu-x86_64")
    return {hw: x.order for hw, x in d.items()}


def test_a_twin_as_fast_as_its_tensor_form_goes_first() -> None:
    order = _choose(_cand("onnx-fp32", 10.0, 1), _cand("onnx-fp32-frame", 10.0, 2))
    assert order["cpu-x86_64"] == ("onnx-fp32-frame", "onnx-fp32")


def test_a_twin_the_tensor_form_beats_significantly_is_left_out() -> None:
    d = choose(
        [_cand("onnx-fp32", 9.0, 1), _cand("onnx-fp32-frame", 10.0, 2)],
        baseline_id="onnx-fp32",
        targets=("cpu-x86_64",),
        host_class="cpu-x86_64",
    )["cpu-x86_64"]
    assert d.order == ("onnx-fp32",)
    assert "onnx-fp32 is faster per frame" in d.rejected["onnx-fp32-frame"]
    (form,) = [v for v in d.evidence if v.baseline == "onnx-fp32-frame"]
    assert form.candidate == "onnx-fp32" and form.preferred and form.interval.low >= 1.0
    entry = d.entry()
    assert any(e.baseline == "onnx-fp32-frame" and e.preferred for e in entry.evidence)


def test_the_int8_decision_is_made_on_the_tensor_forms_and_the_twins_follow() -> None:
    order = _choose(
        _cand("onnx-fp32", 10.0, 1),
        _cand("onnx-int8", 5.0, 3, precision=Precision.INT8, delta=-0.2),
        _cand("onnx-fp32-frame", 9.5, 2),
        _cand("onnx-int8-frame", 4.5, 4, precision=Precision.INT8, delta=-0.2),
    )
    assert order["cpu-x86_64"] == ("onnx-int8-frame", "onnx-int8", "onnx-fp32-frame", "onnx-fp32")


def test_the_twin_of_a_rejected_variant_is_rejected_with_it() -> None:
    d = choose(
        [
            _cand("onnx-fp32", 10.0, 1),
            _cand("onnx-int8", 9.8, 3, precision=Precision.INT8),  # not 1.1x faster
            _cand("onnx-int8-frame", 4.0, 4, precision=Precision.INT8),  # fast, but its tensor form lost
        ],
        baseline_id="onnx-fp32",
        targets=("cpu-x86_64",),
        host_class="cpu-x86_64",
    )["cpu-x86_64"]
    assert d.order == ("onnx-fp32",)
    assert d.rejected["onnx-int8-frame"] == "its tensor form onnx-int8 is not in the order"


def test_a_twin_too_inaccurate_is_rejected_on_its_own_accuracy() -> None:
    d = choose(
        [_cand("onnx-fp32", 10.0, 1), _cand("onnx-fp32-frame", 10.0, 2, delta=-3.0)],
        baseline_id="onnx-fp32",
        targets=("cpu-x86_64",),
        host_class="cpu-x86_64",
    )["cpu-x86_64"]
    assert d.order == ("onnx-fp32",) and "accuracy drop 3.00 points" in d.rejected["onnx-fp32-frame"]


def test_unmeasured_gpu_classes_put_every_twin_before_its_tensor_form() -> None:
    gpu = ("cuda", "jetson")

    def g(vid: str, precision: Precision) -> Candidate:
        frame = vid.endswith("-frame")
        return Candidate(
            vid,
            precision,
            accelerators=gpu if precision is not Precision.FP32 else ("cpu", *gpu),
            accuracy=0.9,
            accuracy_delta=0.0,
            input_form=InputForm.FRAME if frame else InputForm.TENSOR,
            twin=vid.removesuffix("-frame") if frame else None,
        )

    cands = [
        _cand("onnx-fp32", 10.0, 1),
        g("onnx-int8-qdq", Precision.INT8),
        g("onnx-fp16", Precision.FP16),
        _cand("onnx-fp32-frame", 10.0, 2),
        g("onnx-int8-qdq-frame", Precision.INT8),
        g("onnx-fp16-frame", Precision.FP16),
    ]
    order = _choose(*cands, targets=("jetson-orin", "jetson-nano"))
    assert order["jetson-orin"] == (
        "onnx-int8-qdq-frame",
        "onnx-int8-qdq",
        "onnx-fp16-frame",
        "onnx-fp16",
        "onnx-fp32-frame",
        "onnx-fp32",
    )
    assert order["jetson-nano"] == ("onnx-fp16-frame", "onnx-fp16", "onnx-fp32-frame", "onnx-fp32")  # no INT8
