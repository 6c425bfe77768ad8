"""Variant selection and default gates, pinned down where mutation testing found them loose.

Each class's accelerator and compute capability is the documented one; every rejection and every
reason says exactly why; the interval rule gets the settings asked for and pairs only queries of
the same count; the fastest candidate goes first; the manifest's evidence is rounded to 4 places
inside its interval; the default budget is headroom x p95 rounded up to 0.1 ms, at least 5 ms.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import Format, Gates, InputForm, Precision, SelectionEntry, SpeedupEvidence
from models.stats import Interval, SpeedupVerdict, prefer_faster
from optimize import select as sel

N = 60


def _times(median_ms: float, *, seed: int, spread: float = 0.02, n: int = N) -> tuple[float, ...]:
    x = np.exp(np.random.default_rng(seed).normal(0.0, spread, n))
    x *= median_ms / np.median(x)
    return tuple(float(v) for v in x)


BASE_MS = _times(10.0, seed=1)


def _base(**over: object) -> sel.Candidate:
    fields: dict[str, object] = {
        "accelerators": ("cpu", "cuda", "jetson"),
        "accuracy": 0.95,
        "accuracy_delta": 0.0,
        "cpu_ms": BASE_MS,
        "wall_ms": BASE_MS,
        "measured_class": "cpu-x86_64",
        **over,
    }
    return sel.Candidate("fp32", Precision.FP32, **fields)  # type: ignore[arg-type]


def _cand(vid: str, ms: float, seed: int, precision: Precision = Precision.INT8, **over: object) -> sel.Candidate:
    times = _times(ms, seed=seed)
    fields: dict[str, object] = {
        "accelerators": ("cpu",),
        "accuracy_delta": -0.25,
        "cpu_ms": times,
        "wall_ms": times,
        **over,
    }
    return sel.Candidate(vid, precision, **fields)  # type: ignore[arg-type]


def _verdict(base: sel.Candidate, c: sel.Candidate, metric: str = "cpu", min_speedup: float = 1.1) -> SpeedupVerdict:
    b, x = (base.cpu_ms, c.cpu_ms) if metric == "cpu" else (base.wall_ms, c.wall_ms)
    return prefer_faster(
        base.id, b, c.id, x, min_speedup=min_speedup, metric=metric, confidence=0.95, paired=len(b) == len(x)
    )


def _one(cands: list[sel.Candidate], hw: str = "cpu-x86_64", host: str = "cpu-x86_64", **kw: float) -> sel.Decision:
    return sel.choose(cands, baseline_id="fp32", targets=(hw,), host_class=host, **kw)[hw]


# ----------------------------------------------------------------------------- tables


def test_the_class_tables_are_the_documented_ones() -> None:
    assert sel.CLASS_ACCELERATOR == {
        "cpu-x86_64": "cpu",
        "cpu-aarch64": "cpu",
        "cuda": "cuda",
        "jetson-orin": "jetson",
        "jetson-xavier": "jetson",
        "jetson-nano": "jetson",
    }
    assert sel.CLASS_COMPUTE == {"jetson-orin": (8, 7), "jetson-xavier": (7, 2), "jetson-nano": (5, 3)}
    assert sel.INT8_MIN_COMPUTE == (6, 1)


def test_a_candidate_s_defaults() -> None:
    c = sel.Candidate("x", Precision.FP16)
    assert (c.format, c.accelerators, c.accuracy, c.accuracy_delta, c.cpu_ms, c.wall_ms) == (
        Format.ONNX,
        ("cpu",),
        None,
        None,
        (),
        (),
    )
    assert (c.measured_class, c.build_on_device, c.engine_class, c.input_form, c.twin) == (
        None,
        False,
        None,
        InputForm.TENSOR,
        None,
    )


# ----------------------------------------------------------------------------- runnable, accuracy


def test_a_variant_without_the_class_accelerator_is_rejected_saying_so() -> None:
    d = _one([_base(), _cand("gpu", 5.0, 2, accelerators=("cuda", "jetson"))])
    assert d.rejected == {"gpu": "needs ['cuda', 'jetson'], cpu-x86_64 is cpu"}
    assert d.order == ("fp32",)


def test_int8_needs_compute_6_1_on_a_gpu_only() -> None:
    int8 = _cand("int8", 5.0, 2, accelerators=("cpu", "cuda", "jetson"))
    fp16 = _cand("fp16", 5.0, 3, Precision.FP16, accelerators=("jetson",))
    d = sel.choose(
        [_base(), int8, fp16], baseline_id="fp32", targets=tuple(sel.CLASS_ACCELERATOR), host_class="cpu-x86_64"
    )
    assert d["jetson-nano"].rejected == {"int8": "INT8 needs compute capability >= 6.1, jetson-nano has 5.3"}
    assert d["jetson-nano"].order == ("fp16", "fp32")
    for hw in ("jetson-orin", "jetson-xavier"):
        assert d[hw].rejected == {} and d[hw].order == ("int8", "fp16", "fp32")
    assert d["cuda"].order == ("int8", "fp32")  # any discrete GPU runs INT8


def test_int8_exactly_at_compute_6_1_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sel.CLASS_COMPUTE, "jetson-nano", (6, 1))
    d = _one([_base(), _cand("int8", 5.0, 2, accelerators=("jetson",))], hw="jetson-nano")
    assert d.order == ("int8", "fp32")
    monkeypatch.setitem(sel.CLASS_COMPUTE, "jetson-nano", (6, 0))
    d = _one([_base(), _cand("int8", 5.0, 2, accelerators=("jetson",))], hw="jetson-nano")
    assert d.rejected == {"int8": "INT8 needs compute capability >= 6.1, jetson-nano has 6.0"}


def test_an_engine_runs_only_on_its_class() -> None:
    engine = _cand("trt", 5.0, 2, Precision.FP16, format=Format.TENSORRT_ENGINE, accelerators=("jetson",))
    built = sel.Candidate(**{**engine.__dict__, "engine_class": "jetson-orin"})
    assert _one([_base(), built], hw="jetson-orin").order == ("trt", "fp32")
    assert _one([_base(), built], hw="jetson-xavier").rejected == {"trt": "engine built for jetson-orin"}
    assert _one([_base(), engine], hw="jetson-xavier").order == ("trt", "fp32")  # no class named: any


def test_the_accuracy_limit_is_inclusive_and_nan_is_not_measured() -> None:
    at = _cand("at", 5.0, 2, accuracy_delta=-1.0, accelerators=("cuda",))
    over = _cand("over", 5.0, 3, accuracy_delta=-1.01, accelerators=("cuda",))
    nan = _cand("nan", 5.0, 4, accuracy_delta=float("nan"), accelerators=("cuda",))
    none = _cand("none", 5.0, 5, accuracy_delta=None, accelerators=("cuda",))
    d = _one([_base(), at, over, nan, none], hw="cuda", max_drop=1.0)
    assert d.order == ("at", "fp32")
    assert d.rejected == {
        "over": "accuracy drop 1.01 points > limit 1",
        "nan": "accuracy not measured",
        "none": "accuracy not measured",
    }
    better = _cand("better", 5.0, 6, accuracy_delta=3.0, accelerators=("cuda",))
    assert _one([_base(), better], hw="cuda", max_drop=0.0).order == ("better", "fp32")


def test_the_baseline_needs_no_accuracy_but_must_be_runnable() -> None:
    d = _one([_base(accuracy_delta=None, accelerators=("cuda",)), _cand("int8", 5.0, 2)])
    assert d.rejected == {"fp32": "needs ['cuda'], cpu-x86_64 is cpu"}
    assert d.order == ("int8",)
    assert _one([_base(accuracy_delta=None)], hw="cuda").order == ("fp32",)


def test_a_class_that_runs_nothing_gets_no_decision() -> None:
    d = sel.choose(
        [_base(accelerators=("cpu",))], baseline_id="fp32", targets=("cuda", "cpu-x86_64"), host_class="cuda"
    )
    assert list(d) == ["cpu-x86_64"]


def test_errors_name_the_baseline_and_the_known_classes() -> None:
    with pytest.raises(ValueError) as info:
        sel.choose([_base()], baseline_id="x", targets=("cuda",), host_class="cuda")
    assert str(info.value) == "baseline 'x' is not among the candidates ['fp32']"
    with pytest.raises(ValueError) as info:
        sel.choose([_base()], baseline_id="fp32", targets=("tpu",), host_class="cuda")
    assert str(info.value) == f"unknown hardware class 'tpu'; known: {sorted(sel.CLASS_ACCELERATOR)}"


# ----------------------------------------------------------------------------- unmeasured (GPU) order


def test_unmeasured_classes_rank_engine_then_int8_fp16_fp32_then_by_id() -> None:
    gpu = ("cuda", "jetson")
    cands = [
        _base(),
        _cand("b-fp16", 9.0, 2, Precision.FP16, accelerators=gpu),
        _cand("a-fp16", 9.0, 3, Precision.FP16, accelerators=gpu),
        _cand("alt-fp32", 9.0, 4, Precision.FP32, accelerators=gpu),
        _cand("int8", 9.0, 5, accelerators=gpu),
        _cand("trt-fp32", 9.0, 6, Precision.FP32, format=Format.TENSORRT_ENGINE, accelerators=gpu),
        _cand("trt-fp16", 9.0, 7, Precision.FP16, format=Format.TENSORRT_ENGINE, accelerators=gpu),
    ]
    d = _one(cands, hw="cuda")
    assert d.order == ("trt-fp16", "trt-fp32", "int8", "a-fp16", "b-fp16", "alt-fp32", "fp32")
    assert d.reason == (
        "trt-fp16 first: latency not measured for cuda on this host; preference "
        "TensorRT engine > INT8 Q/DQ > FP16 > FP32, confirmed by the device's own timing"
    )
    assert (d.evidence, d.wall) == ((), ())


def test_a_cpu_class_on_a_gpu_host_or_without_a_baseline_time_is_not_measured() -> None:
    cands = [_base(), _cand("int8", 12.0, 2)]  # slower: a measured class would reject it
    assert _one(cands, host="cuda").order == ("int8", "fp32")
    assert _one([_base(cpu_ms=()), _cand("int8", 12.0, 2)]).order == ("int8", "fp32")
    assert _one(cands, hw="cpu-aarch64", host="cpu-x86_64").order == ("fp32",)


# ----------------------------------------------------------------------------- measured order


def test_the_fastest_preferred_goes_first_with_the_exact_reason() -> None:
    base = _base()
    fast, faster, slow = _cand("fast", 7.0, 2), _cand("faster", 5.0, 3), _cand("slow", 9.8, 4, accuracy_delta=-0.5)
    d = _one([base, fast, slow, faster], max_drop=1.5)
    vf, vff, vs = _verdict(base, fast), _verdict(base, faster), _verdict(base, slow)
    assert d.order == ("faster", "fast", "fp32")
    assert d.rejected == {"slow": f"{vs.reason}: not preferred over fp32"}
    assert d.reason == (
        f"{vff.reason}; accuracy -0.25 points (limit -1.5); slow rejected: {vs.reason}: not preferred over fp32"
    )
    assert d.evidence == (vf, vs, vff)
    assert d.wall == (_verdict(base, fast, "wall"), _verdict(base, slow, "wall"), _verdict(base, faster, "wall"))
    assert d.min_speedup == 1.1
    assert d.hardware_class == "cpu-x86_64"


def test_equal_speedups_go_in_id_order() -> None:
    d = _one([_base(), _cand("b", 5.0, 2), _cand("a", 5.0, 2)])
    assert d.order == ("a", "b", "fp32")


def test_a_proxy_class_says_where_it_was_measured() -> None:
    base, fast = _base(), _cand("fast", 5.0, 2)
    d = _one([base, fast], hw="cpu-aarch64")
    assert (
        d.reason
        == f"{_verdict(base, fast).reason} (measured on cpu-x86_64 as a proxy); accuracy -0.25 points (limit -1)"
    )
    d = _one([base, _cand("slow", 12.0, 2)], hw="cpu-aarch64")
    assert d.reason.startswith("fp32: no other variant qualifies (measured on cpu-x86_64 as a proxy); slow rejected: ")
    assert _one([base], hw="cpu-x86_64").reason == "fp32: no other variant qualifies"
    assert _one([base], hw="cuda").reason == "fp32: no other variant qualifies"


def test_min_speedup_and_confidence_reach_the_rule() -> None:
    base, c = _base(), _cand("c", 9.0, 2)
    d = _one([base, c], min_speedup=1.05)
    assert d.order == ("c", "fp32") and d.min_speedup == 1.05
    assert d.evidence == (_verdict(base, c, min_speedup=1.05),)
    loose = sel.choose([base, c], baseline_id="fp32", targets=("cpu-x86_64",), host_class="cpu-x86_64", confidence=0.5)
    (v,) = loose["cpu-x86_64"].evidence
    assert v.interval.confidence == 0.5
    assert loose["cpu-x86_64"].entry().min_speedup == 1.1


def test_unequal_query_counts_are_compared_unpaired() -> None:
    base, c = _base(), _cand("c", 5.0, 2, cpu_ms=_times(5.0, seed=2, n=N - 7), wall_ms=())
    d = _one([base, c])
    assert d.evidence == (_verdict(base, c),)
    assert d.wall == ()  # no wall time of the candidate: no wall comparison
    d = _one([_base(wall_ms=()), _cand("c", 5.0, 2)])
    assert d.wall == ()


def test_verdicts_are_computed_once_per_candidate_over_the_classes() -> None:
    base, c = _base(), _cand("c", 5.0, 2)
    d = sel.choose([base, c], baseline_id="fp32", targets=("cpu-x86_64", "cpu-aarch64"), host_class="cpu-x86_64")
    assert d["cpu-x86_64"].evidence[0] is d["cpu-aarch64"].evidence[0]


def test_the_rule_caches_each_metric_separately() -> None:
    base, c = _base(), _cand("c", 5.0, 2, wall_ms=_times(9.5, seed=9))
    rule = sel._Rule(1.1, 0.95)
    cpu, wall = rule.verdict(base, c, "cpu"), rule.verdict(base, c, "wall")
    assert (cpu.metric, wall.metric) == ("cpu", "wall")
    assert cpu == _verdict(base, c) and wall == _verdict(base, c, "wall")
    assert rule.verdict(base, c, "cpu") is cpu and set(rule.cache) == {("c", "cpu"), ("c", "wall")}


# ----------------------------------------------------------------------------- the manifest's record


def _made(point: float, low: float, high: float, preferred: bool = True) -> SpeedupVerdict:
    return SpeedupVerdict(
        candidate="c",
        baseline="b",
        metric="cpu",
        interval=Interval(point=point, low=low, high=high, confidence=0.9),
        min_speedup=1.1,
        queries=40,
        preferred=preferred,
    )


def test_evidence_is_rounded_to_4_places_and_kept_around_its_point() -> None:
    assert sel.evidence_of(_made(1.23456, 1.11114, 1.33336)) == SpeedupEvidence(
        candidate="c",
        baseline="b",
        metric="cpu",
        speedup=1.2346,
        low=1.1111,
        high=1.3334,
        confidence=0.9,
        queries=40,
        preferred=True,
    )
    # a percentile interval that rounds past its point is widened to it
    e = sel.evidence_of(_made(1.00004, 1.00004, 1.00004, preferred=False))
    assert (e.speedup, e.low, e.high, e.preferred) == (1.0, 1.0, 1.0, False)
    e = sel.evidence_of(_made(1.23456, 1.23458, 1.23452))
    assert (e.speedup, e.low, e.high) == (1.2346, 1.2346, 1.2346)


def test_the_decision_entry_is_what_the_manifest_keeps() -> None:
    v = _made(1.5, 1.2, 1.8)
    d = sel.Decision("cpu-x86_64", ("c", "b"), "why", {}, 1.2, (v,), (_made(2.0, 1.9, 2.1),))
    assert d.entry() == SelectionEntry(order=("c", "b"), reason="why", min_speedup=1.2, evidence=(sel.evidence_of(v),))
    assert sel.Decision("cuda", ("b",), "r").min_speedup == 1.1
    assert sel.Decision("cuda", ("b",), "r").rejected == {}


# ----------------------------------------------------------------------------- frame-form twins


def _twin(of: sel.Candidate, ms: float, seed: int, **over: object) -> sel.Candidate:
    times = _times(ms, seed=seed)
    fields = {**of.__dict__, "id": f"{of.id}-frame", "cpu_ms": times, "wall_ms": times, "twin": of.id, **over}
    fields["input_form"] = InputForm.FRAME
    return sel.Candidate(**fields)


def test_a_twin_is_placed_or_left_out_with_the_verdict_that_decided() -> None:
    base = _base()
    fast = _cand("fast", 5.0, 2)
    near, slow = _twin(fast, 5.0, 3), _twin(base, 14.0, 4)
    d = _one([base, fast, near, slow])
    v_near = prefer_faster(near.id, near.cpu_ms, "fast", fast.cpu_ms, min_speedup=1.0, metric="cpu", confidence=0.95)
    v_slow = prefer_faster(slow.id, slow.cpu_ms, "fp32", base.cpu_ms, min_speedup=1.0, metric="cpu", confidence=0.95)
    assert not v_near.preferred and v_slow.preferred
    assert d.order == ("fast-frame", "fast", "fp32")
    assert d.evidence == (_verdict(base, fast), v_near, v_slow)
    assert d.rejected == {"fp32-frame": f"{v_slow.reason}: fp32 is faster per frame"}
    assert d.reason == (
        f"{_verdict(base, fast).reason}; accuracy -0.25 points (limit -1); "
        f"fast-frame before fast ({v_near.reason}); fp32-frame rejected: {v_slow.reason}: fp32 is faster per frame"
    )


def test_an_unmeasured_class_puts_each_twin_before_its_tensor_form_and_says_so() -> None:
    base = _base()
    d = _one([base, _twin(base, 14.0, 4)], hw="cuda")
    assert d.order == ("fp32-frame", "fp32")
    assert d.reason == "fp32: no other variant qualifies; each frame-form twin before its tensor form"
    assert d.rejected == {}


def test_a_twin_that_cannot_run_or_is_inaccurate_or_unmeasured_is_rejected_on_its_own() -> None:
    base = _base()
    d = _one([base, _twin(base, 10.0, 4, accelerators=("cuda",))])
    assert d.order == ("fp32",) and d.rejected == {"fp32-frame": "needs ['cuda'], cpu-x86_64 is cpu"}
    assert d.reason == "fp32: no other variant qualifies; fp32-frame rejected: needs ['cuda'], cpu-x86_64 is cpu"
    d = _one([base, _twin(base, 10.0, 4, accuracy_delta=-2.0)])
    assert d.rejected == {"fp32-frame": "accuracy drop 2.00 points > limit 1"}
    d = _one([base, _twin(base, 10.0, 4, cpu_ms=())])
    assert d.order == ("fp32",) and d.rejected == {"fp32-frame": "latency not measured"}
    assert d.evidence == ()


def test_the_twin_of_a_variant_not_in_the_order_is_rejected_saying_so() -> None:
    base, slow = _base(), _cand("slow", 12.0, 2)
    d = _one([base, slow, _twin(slow, 5.0, 3)])
    assert d.order == ("fp32",)
    assert d.rejected["slow-frame"] == "its tensor form slow is not in the order"
    assert d.reason.endswith("; slow-frame rejected: its tensor form slow is not in the order")


def test_twins_of_unequal_query_counts_are_compared_unpaired() -> None:
    base = _base()
    twin = _twin(base, 10.0, 4, cpu_ms=_times(10.0, seed=4, n=N - 5))
    d = _one([base, twin])
    v = prefer_faster(
        twin.id, twin.cpu_ms, "fp32", base.cpu_ms, min_speedup=1.0, metric="cpu", confidence=0.95, paired=False
    )
    assert d.evidence == (v,)


# ----------------------------------------------------------------------------- default gates


def test_default_gates_round_the_budget_up_to_a_tenth_and_keep_5_ms_at_least() -> None:
    assert sel.default_gates(12.301).latency_budget_ms == 49.3  # 49.204 rounded up
    assert sel.default_gates(12.3, headroom=2.0).latency_budget_ms == 24.6
    assert sel.default_gates(1.25).latency_budget_ms == 5.0
    assert sel.default_gates(1.26).latency_budget_ms == 5.1
    assert sel.default_gates(0.0, budget_ms=3.0).latency_budget_ms == 3.0


def test_default_gates_carry_every_setting() -> None:
    g = sel.default_gates(10.0)
    assert g == Gates(
        latency_budget_ms=40.0, min_agreement=0.5, shadow_frames=Gates.shadow_frames, health_window_s=30.0
    )
    g = sel.default_gates(10.0, min_agreement=0.8, shadow_frames=77, health_window_s=12.0)
    assert (g.min_agreement, g.shadow_frames, g.health_window_s) == (0.8, 77, 12.0)


def test_an_unmeasured_candidate_does_not_hide_the_ones_after_it() -> None:
    d = _one([_base(), _cand("none", 5.0, 2, cpu_ms=()), _cand("fast", 5.0, 3)])
    assert d.order == ("fast", "fp32")
    assert d.rejected == {"none": "latency not measured"}


def test_a_twin_listed_first_does_not_hide_the_variants_after_it() -> None:
    base, fast = _base(), _cand("fast", 5.0, 2)
    d = _one([base, _twin(fast, 5.0, 3), fast])
    assert d.order == ("fast-frame", "fast", "fp32")


def test_every_twin_placed_before_its_tensor_form_is_named_in_the_reason() -> None:
    base, fast = _base(), _cand("fast", 5.0, 2)
    t1, t2 = _twin(fast, 5.0, 3), _twin(base, 10.0, 4)
    d = _one([base, fast, t1, t2])
    assert d.order == ("fast-frame", "fast", "fp32-frame", "fp32")
    v1 = prefer_faster(t1.id, t1.cpu_ms, "fast", fast.cpu_ms, min_speedup=1.0, metric="cpu", confidence=0.95)
    v2 = prefer_faster(t2.id, t2.cpu_ms, "fp32", base.cpu_ms, min_speedup=1.0, metric="cpu", confidence=0.95)
    assert d.reason.endswith(f"; fast-frame before fast ({v1.reason}); fp32-frame before fp32 ({v2.reason})")


@pytest.mark.parametrize("over", [{"accelerators": ("cuda",)}, {"cpu_ms": ()}])
def test_a_rejected_twin_does_not_hide_the_variants_after_it(over: dict[str, object]) -> None:
    base, fast = _base(), _cand("fast", 5.0, 2)
    d = _one([base, fast, _twin(fast, 5.0, 3, **over), _twin(base, 10.0, 4)])
    assert d.order == ("fast", "fp32-frame", "fp32")


def test_twins_are_judged_at_the_confidence_asked_for() -> None:
    base = _base()
    twin = _twin(base, 10.0, 4)
    d = sel.choose([base, twin], baseline_id="fp32", targets=("cpu-x86_64",), host_class="cpu-x86_64", confidence=0.5)
    (v,) = d["cpu-x86_64"].evidence
    assert v.interval.confidence == 0.5
