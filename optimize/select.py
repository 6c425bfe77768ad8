"""Variant selection and default gates: pure functions over recorded measurements.

Per hardware class the preferred order is:

1. only variants the class can run (accelerator; an engine only on the GPU it
   was built for; INT8 only from compute capability 6.1, so not a Jetson Nano);
2. only variants within ``max_drop`` accuracy points of the FP32 reference;
3. where latency was measured on this kind of hardware (the variants timed
   interleaved, per-query thread CPU time): a variant comes before FP32 only
   when the **lower bound** of the confidence interval of its speedup over
   FP32 (:func:`models.stats.prefer_faster`, a paired bootstrap of the ratio
   of medians) is at least ``min_speedup``; those that do, fastest first. A
   1.14x point estimate whose interval reaches down to 1.02x is noise, not a
   speedup, so a busy host cannot flip the choice between two runs. CPU time
   decides because a neighbour stealing the core inflates wall time, not the
   thread's CPU time; the wall-time interval is recorded beside it;
4. where it was not (a GPU class on a CPU-only build host): the order
   TensorRT favours — engine, INT8 Q/DQ built on device, FP16, FP32 — and the
   device's shadow benchmark has the last word;
5. the FP32 baseline always last, as the fallback.

Frame-form twins (:mod:`optimize.frame_input`: the same network with the
preprocessing in the graph) do not compete in steps 3-4: the order is decided
on the tensor forms, then each frame twin goes right before its tensor form
unless the tensor form is *significantly faster* per frame — the lower bound
of the tensor form's CPU-time speedup over its twin at least 1.0 (the same
interval rule, with the numpy preprocessing counted in the tensor form's
queries); then the twin is left out, so the tensor FP32 stays last. The two
compute the same outputs (to float32 rounding, checked by the parity tests)
and the frame form takes the numpy work off the camera thread, so it needs
no margin to be preferred; only evidence that it is slower leaves it out.
A twin whose tensor form is not in the order (too inaccurate, not faster)
is left out with it. Not measured (GPU classes on a CPU build host): each
twin before its tensor form, and the device times them.

Every decision carries its reason, written to ``manifest.selection`` and the
report. No I/O, no clocks: tests feed recorded measurements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from models.bundle import Format, Gates, InputForm, Precision, SelectionEntry, SpeedupEvidence
from models.stats import SpeedupVerdict, prefer_faster

__all__ = ["Candidate", "Decision", "choose", "default_gates", "evidence_of", "CLASS_ACCELERATOR", "CLASS_COMPUTE"]

CLASS_ACCELERATOR = {
    "cpu-x86_64": "cpu",
    "cpu-aarch64": "cpu",
    "cuda": "cuda",
    "jetson-orin": "jetson",
    "jetson-xavier": "jetson",
    "jetson-nano": "jetson",
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
    cpu_ms: tuple[float, ...] = ()  # per-query thread CPU time, timed interleaved with the others
    wall_ms: tuple[float, ...] = ()  # per-query wall time of the same queries
    measured_class: str | None = None  # hardware class of the host that measured the latency
    build_on_device: bool = False
    engine_class: str | None = None  # TensorRT engines: the class they were built for
    input_form: InputForm = InputForm.TENSOR
    twin: str | None = None  # a frame-form variant: the tensor-form variant it was built from


def evidence_of(v: SpeedupVerdict) -> SpeedupEvidence:
    """The manifest's record of a verdict (the point kept inside its percentile interval)."""
    i = v.interval
    point = round(i.point, 4)
    return SpeedupEvidence(
        candidate=v.candidate,
        baseline=v.baseline,
        metric=v.metric,
        speedup=point,
        low=min(round(i.low, 4), point),
        high=max(round(i.high, 4), point),
        confidence=i.confidence,
        queries=v.queries,
        preferred=v.preferred,
    )


@dataclass(frozen=True)
class Decision:
    hardware_class: str
    order: tuple[str, ...]
    reason: str
    rejected: Mapping[str, str] = field(default_factory=dict)
    min_speedup: float = 1.1
    evidence: tuple[SpeedupVerdict, ...] = ()  # CPU-time verdicts: these decided
    wall: tuple[SpeedupVerdict, ...] = ()  # the same comparisons on wall time, for the record

    def entry(self) -> SelectionEntry:
        return SelectionEntry(
            order=self.order,
            reason=self.reason,
            min_speedup=self.min_speedup,
            evidence=tuple(evidence_of(v) for v in self.evidence),
        )


@dataclass(frozen=True)
class _Rule:
    """The interval rule's settings, and its verdicts computed once per candidate."""

    min_speedup: float
    confidence: float
    cache: dict[tuple[str, str], SpeedupVerdict] = field(default_factory=dict)

    def verdict(self, base: Candidate, c: Candidate, metric: str) -> SpeedupVerdict:
        key = (c.id, metric)
        if key not in self.cache:
            b, x = (base.cpu_ms, c.cpu_ms) if metric == "cpu" else (base.wall_ms, c.wall_ms)
            self.cache[key] = prefer_faster(
                base.id,
                b,
                c.id,
                x,
                min_speedup=self.min_speedup,
                metric=metric,
                confidence=self.confidence,
                paired=len(b) == len(x),
            )
        return self.cache[key]


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


def _timed(
    ok: Sequence[Candidate], base: Candidate, rule: _Rule, rejected: dict[str, str]
) -> tuple[list[Candidate], tuple[SpeedupVerdict, ...], tuple[SpeedupVerdict, ...]]:
    """Candidates whose CPU-time speedup interval clears the rule, fastest first, and the verdicts."""
    fast: list[tuple[float, str, Candidate]] = []
    cpu: list[SpeedupVerdict] = []
    wall: list[SpeedupVerdict] = []
    for c in ok:
        if not c.cpu_ms:
            rejected[c.id] = "latency not measured"
            continue
        v = rule.verdict(base, c, "cpu")
        cpu.append(v)
        if c.wall_ms and base.wall_ms:
            wall.append(rule.verdict(base, c, "wall"))
        if v.preferred:
            fast.append((-v.interval.point, c.id, c))
        else:
            rejected[c.id] = f"{v.reason}: not preferred over {base.id}"
    return [c for *_, c in sorted(fast)], tuple(cpu), tuple(wall)


def _decide(
    hw: str, cands: Sequence[Candidate], base: Candidate, host_class: str, max_drop: float, rule: _Rule
) -> Decision:
    rejected: dict[str, str] = {}
    ok: list[Candidate] = []
    twins = [c for c in cands if c.twin is not None]
    for c in cands:
        if c.twin is not None:
            continue
        why = _runnable(c, hw) or _accuracy_problem(c, base.id, max_drop)
        if why:
            rejected[c.id] = why
        elif c.id != base.id:
            ok.append(c)
    on_cpu = CLASS_ACCELERATOR[hw] == "cpu"
    measured = on_cpu and CLASS_ACCELERATOR.get(host_class) == "cpu" and bool(base.cpu_ms)
    evidence: tuple[SpeedupVerdict, ...] = ()
    wall: tuple[SpeedupVerdict, ...] = ()
    if measured:
        ok, evidence, wall = _timed(ok, base, rule, rejected)
    else:
        ok = sorted(ok, key=lambda c: (_gpu_rank(c), c.id))
    order = tuple(c.id for c in ok) + (() if base.id in rejected else (base.id,))
    by_id = {v.candidate: v for v in evidence}
    reason = _reason(hw, ok, base, measured, host_class, rejected, max_drop, by_id)
    order, forms = _with_twins(hw, order, cands, twins, base.id, measured, max_drop, rule, rejected)
    placed = [f"{v.baseline} before {v.candidate} ({v.reason})" for v in forms if not v.preferred]
    if placed:
        reason += "; " + "; ".join(placed)
    elif not measured and any(t.id in order for t in twins):
        reason += "; each frame-form twin before its tensor form"
    for t in twins:
        if t.id in rejected:
            reason += f"; {t.id} rejected: {rejected[t.id]}"
    return Decision(hw, order, reason, rejected, rule.min_speedup, evidence + forms, wall)


def _with_twins(
    hw: str,
    order: tuple[str, ...],
    cands: Sequence[Candidate],
    twins: Sequence[Candidate],
    base_id: str,
    measured: bool,
    max_drop: float,
    rule: _Rule,
    rejected: dict[str, str],
) -> tuple[tuple[str, ...], tuple[SpeedupVerdict, ...]]:
    """``order`` with each frame twin right before its tensor form, unless the tensor form is
    significantly faster per frame (then the twin is left out, so the tensor FP32 stays last); the
    verdicts that decided, the tensor form as the candidate."""
    by_id = {c.id: c for c in cands}
    out: list[str] = []
    forms: list[SpeedupVerdict] = []
    for vid in order:
        twin = next((t for t in twins if t.twin == vid), None)
        if twin is None:
            out.append(vid)
            continue
        why = _runnable(twin, hw) or _accuracy_problem(twin, base_id, max_drop)
        if why:
            rejected[twin.id] = why
            out.append(vid)
            continue
        tensor = by_id[vid]
        if not measured:
            out += [twin.id, vid]
            continue
        if not twin.cpu_ms or not tensor.cpu_ms:
            rejected[twin.id] = "latency not measured"
            out.append(vid)
            continue
        v = prefer_faster(
            twin.id,
            twin.cpu_ms,
            vid,
            tensor.cpu_ms,
            min_speedup=1.0,
            metric="cpu",
            confidence=rule.confidence,
            paired=len(twin.cpu_ms) == len(tensor.cpu_ms),
        )
        forms.append(v)
        if v.preferred:
            rejected[twin.id] = f"{v.reason}: {vid} is faster per frame"
            out.append(vid)
        else:
            out += [twin.id, vid]
    for t in twins:
        if t.id not in out and t.id not in rejected:
            rejected[t.id] = f"its tensor form {t.twin} is not in the order"
    return tuple(out), tuple(forms)


def _reason(
    hw: str,
    ok: Sequence[Candidate],
    base: Candidate,
    measured: bool,
    host_class: str,
    rejected: Mapping[str, str],
    max_drop: float,
    verdicts: Mapping[str, SpeedupVerdict],
) -> str:
    parts: list[str] = []
    if ok and measured:
        best = ok[0]
        proxy = "" if hw == host_class else f" (measured on {host_class} as a proxy)"
        parts.append(
            f"{verdicts[best.id].reason}{proxy}; accuracy {best.accuracy_delta:+.2f} points (limit -{max_drop:g})"
        )
    elif ok:
        parts.append(
            f"{ok[0].id} first: latency not measured for {hw} on this host; preference "
            "TensorRT engine > INT8 Q/DQ > FP16 > FP32, confirmed by the device's own timing"
        )
    else:
        proxy = "" if hw == host_class or not measured else f" (measured on {host_class} as a proxy)"
        parts.append(f"{base.id}: no other variant qualifies{proxy}")
    parts += [f"{vid} rejected: {why}" for vid, why in sorted(rejected.items())]
    return "; ".join(parts)


def choose(
    candidates: Sequence[Candidate],
    *,
    baseline_id: str,
    targets: Sequence[str],
    host_class: str,
    max_drop: float = 1.0,
    min_speedup: float = 1.1,
    confidence: float = 0.95,
) -> dict[str, Decision]:
    """One :class:`Decision` per target hardware class. ``ValueError`` without the baseline."""
    base = next((c for c in candidates if c.id == baseline_id), None)
    if base is None:
        raise ValueError(f"baseline {baseline_id!r} is not among the candidates {[c.id for c in candidates]}")
    out = {}
    rule = _Rule(min_speedup, confidence)
    for hw in targets:
        if hw not in CLASS_ACCELERATOR:
            raise ValueError(f"unknown hardware class {hw!r}; known: {sorted(CLASS_ACCELERATOR)}")
        d = _decide(hw, candidates, base, host_class, max_drop, rule)
        if d.order:
            out[hw] = d
    return out


def default_gates(
    baseline_p95_ms: float,
    *,
    headroom: float = 4.0,
    min_agreement: float = 0.5,
    shadow_frames: int = Gates.shadow_frames,
    health_window_s: float = 30.0,
    budget_ms: float | None = None,
) -> Gates:
    """Gates for the manifest: a latency budget of ``budget_ms``, else ``headroom`` x the FP32 p95
    (wall) measured here (devices are slower than a build host), and ``min_agreement`` as the
    floor under the agreement expectations. What agreement to expect is the expectations' job
    (:mod:`optimize.expect`), judged on the device by a sequential test."""
    budget = budget_ms if budget_ms is not None else max(5.0, math.ceil(baseline_p95_ms * headroom * 10) / 10)
    return Gates(
        latency_budget_ms=budget,
        min_agreement=min_agreement,
        shadow_frames=shadow_frames,
        health_window_s=health_window_s,
    )
