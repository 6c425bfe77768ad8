"""Variant selection and default gates: pure functions over recorded measurements.

Per hardware class the preferred order is:

1. only variants the class can run (accelerator; an engine only on the GPU it
   was built for; INT8 only from compute capability 6.1, so not a Jetson Nano);
2. only variants within ``max_drop`` accuracy points of the FP32 reference;
3. where latency was measured on this kind of hardware: fastest first, and
   **never a variant slower than the FP32 baseline measured on the same
   host** (it must beat FP32 by ``min_speedup``, so noise cannot flip the
   choice between two runs);
4. where it was not (a GPU class on a CPU-only build host): the order
   TensorRT favours — engine, INT8 Q/DQ built on device, FP16, FP32 — and the
   device's shadow benchmark has the last word;
5. the FP32 baseline always last, as the fallback.

Every decision carries its reason, written to ``manifest.selection`` and the
report. No I/O, no clocks: tests feed recorded measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from models.bundle import Format, Gates, Precision, SelectionEntry

__all__ = ["Candidate", "Decision", "choose", "default_gates", "CLASS_ACCELERATOR", "CLASS_COMPUTE"]

CLASS_ACCELERATOR = {
    "cpu-x86_64": "cpu", "cpu-aarch64": "cpu", "cuda": "cuda",
    "jetson-orin": "jetson", "jetson-xavier": "jetson", "jetson-nano": "jetson",
}
# nominal compute capability per class (None: any discrete GPU)
CLASS_COMPUTE = {"jetson-orin": (8, 7), "jetson-xavier": (7, 2), "jetson-nano": (5, 3)}
INT8_MIN_COMPUTE = (6, 1)


@dataclass(frozen=True)
class Candidate:
    """What selection needs to know about one variant."""

    id: str
    precision: Precision
    format: Format = Format.ONNX
    accelerators: tuple[str, ...] = ("cpu",)
    accuracy: float | None = None  # fraction
    accuracy_delta: float | None = None  # points vs FP32 (negative = worse)
    p50_ms: float | None = None
    p95_ms: float | None = None
    measured_class: str | None = None  # hardware class of the host that measured the latency
    build_on_device: bool = False
    engine_class: str | None = None  # TensorRT engines: the class they were built for


@dataclass(frozen=True)
class Decision:
    hardware_class: str
    order: tuple[str, ...]
    reason: str
    rejected: Mapping[str, str] = field(default_factory=dict)

    def entry(self) -> SelectionEntry:
        return SelectionEntry(order=self.order, reason=self.reason)


def _runnable(c: Candidate, hw: str) -> str | None:
    """None when class ``hw`` can run ``c``, else why not."""
    if CLASS_ACCELERATOR[hw] not in c.accelerators:
        return f"needs {list(c.accelerators)}, {hw} is {CLASS_ACCELERATOR[hw]}"
    if c.engine_class is not None and c.engine_class != hw:
        return f"engine built for {c.engine_class}"
    cc = CLASS_COMPUTE.get(hw)
    if c.precision is Precision.INT8 and CLASS_ACCELERATOR[hw] != "cpu" and cc is not None and cc < INT8_MIN_COMPUTE:
        return f"INT8 needs compute capability >= 6.1, {hw} has {cc[0]}.{cc[1]}"
    return None


def _accuracy_problem(c: Candidate, baseline_id: str, max_drop: float) -> str | None:
    if c.id == baseline_id:
        return None
    if c.accuracy_delta is None or math.isnan(c.accuracy_delta):
        return "accuracy not measured"
    if -c.accuracy_delta > max_drop:
        return f"accuracy drop {-c.accuracy_delta:.2f} points > limit {max_drop:g}"
    return None


def _gpu_rank(c: Candidate) -> tuple[int, int]:
    fmt = 0 if c.format is Format.TENSORRT_ENGINE else 1
    prec = {Precision.INT8: 0, Precision.FP16: 1, Precision.FP32: 2}[c.precision]
    return fmt, prec


def _decide(hw: str, cands: Sequence[Candidate], base: Candidate, host_class: str, max_drop: float,
            min_speedup: float) -> Decision:
    rejected: dict[str, str] = {}
    ok: list[Candidate] = []
    for c in cands:
        why = _runnable(c, hw) or _accuracy_problem(c, base.id, max_drop)
        if why:
            rejected[c.id] = why
        elif c.id != base.id:
            ok.append(c)
    on_cpu = CLASS_ACCELERATOR[hw] == "cpu"
    measured = on_cpu and CLASS_ACCELERATOR.get(host_class) == "cpu" and base.p50_ms is not None
    if measured:
        fast: list[Candidate] = []
        for c in ok:
            if c.p50_ms is None:
                rejected[c.id] = "latency not measured"
            elif c.p50_ms * min_speedup > (base.p50_ms or 0.0):
                rejected[c.id] = (f"not faster than FP32 on this host ({(base.p50_ms or 0.0) / c.p50_ms:.2f}x, "
                                  f"needs >= {min_speedup:g}x): never slower than the baseline")
            else:
                fast.append(c)
        ok = sorted(fast, key=lambda c: (c.p50_ms, c.id))
    else:
        ok = sorted(ok, key=lambda c: (_gpu_rank(c), c.id))
    order = tuple(c.id for c in ok) + (() if base.id in rejected else (base.id,))
    return Decision(hw, order, _reason(hw, ok, base, measured, host_class, rejected, max_drop), rejected)


def _reason(hw: str, ok: Sequence[Candidate], base: Candidate, measured: bool, host_class: str,
            rejected: Mapping[str, str], max_drop: float) -> str:
    parts: list[str] = []
    if ok and measured:
        best = ok[0]
        proxy = "" if hw == host_class else f" (measured on {host_class} as a proxy)"
        parts.append(f"{best.id}: {(base.p50_ms or 0) / (best.p50_ms or 1):.2f}x faster than {base.id} "
                     f"(p50 {best.p50_ms:.2f} vs {base.p50_ms:.2f} ms){proxy}, "
                     f"accuracy {best.accuracy_delta:+.2f} points (limit -{max_drop:g})")
    elif ok:
        parts.append(f"{ok[0].id} first: latency not measured for {hw} on this host; preference "
                     "TensorRT engine > INT8 Q/DQ > FP16 > FP32, confirmed by the device's shadow benchmark")
    else:
        parts.append(f"{base.id}: no other variant qualifies")
    parts += [f"{vid} rejected: {why}" for vid, why in sorted(rejected.items())]
    return "; ".join(parts)


def choose(candidates: Sequence[Candidate], *, baseline_id: str, targets: Sequence[str], host_class: str,
           max_drop: float = 1.0, min_speedup: float = 1.1) -> dict[str, Decision]:
    """One :class:`Decision` per target hardware class. ``ValueError`` without the baseline."""
    base = next((c for c in candidates if c.id == baseline_id), None)
    if base is None:
        raise ValueError(f"baseline {baseline_id!r} is not among the candidates {[c.id for c in candidates]}")
    out = {}
    for hw in targets:
        if hw not in CLASS_ACCELERATOR:
            raise ValueError(f"unknown hardware class {hw!r}; known: {sorted(CLASS_ACCELERATOR)}")
        d = _decide(hw, candidates, base, host_class, max_drop, min_speedup)
        if d.order:
            out[hw] = d
    return out


def default_gates(baseline_p95_ms: float, *, headroom: float = 4.0, agreement: float | None = None,
                  min_agreement: float = 0.9, shadow_frames: int = 50, health_window_s: float = 30.0) -> Gates:
    """Gates for the manifest: a latency budget of ``headroom`` x the FP32 p95 measured here
    (devices are slower than a build host), and a minimum agreement no stricter than what
    the chosen INT8 variant reached against FP32 here, minus a margin of 0.05."""
    budget = max(5.0, math.ceil(baseline_p95_ms * headroom * 10) / 10)
    agree = min_agreement if agreement is None else max(0.5, min(min_agreement, round(agreement - 0.05, 2)))
    return Gates(latency_budget_ms=budget, min_agreement=agree, shadow_frames=shadow_frames,
                 health_window_s=health_window_s)
