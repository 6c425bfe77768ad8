"""Building, measuring and describing the bundle's variants (the optimizer's adapters).

Each :class:`BuiltVariant` is one model file in the staging directory plus
what was measured about it on this host. The orchestration lives in
:mod:`optimize.pipeline`; selection rules in :mod:`optimize.select`.

Latency: every ONNX variant this host can run is timed *interleaved* in one
process (:func:`models.bench.measure_interleaved`: after warm-up, one query of
each per round, the order rotated), in single-threaded sessions, so the
per-query thread CPU time is exact. A query starts from the frame resized to
the input size (uint8 BGR, what OpenCV's resize gives both forms): a
tensor-form variant's query includes the numpy preprocessing
(:class:`models.preprocess.Preprocessor`) that a frame-form variant does in its
graph, so the two forms are compared like with like. Wall time is recorded too
(the measurement's p50/p99); the selection decides on CPU time, which a
neighbour process stealing the core does not inflate.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bench import BenchConfig, Interleaved, LatencyStats, measure_interleaved
from models.bundle import (
    Format,
    HardwareRequirements,
    InputForm,
    InputSpec,
    Measurement,
    OutputSpec,
    Precision,
    Task,
    Variant,
    sha256_file,
)
from models.preprocess import Preprocessor
from models.runtime.errors import ModelRuntimeError
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from optimize.data import SampleSet
from optimize.evaluate import Score, infer_all, metric_name, score_outputs
from optimize.expect import FrameSets, decode_outputs
from optimize.select import Candidate

__all__ = ["BuiltVariant", "Evaluator", "host_description", "REQUIREMENTS"]

REQUIREMENTS = {
    "onnx-fp32": HardwareRequirements(accelerators=("cpu", "cuda", "jetson")),
    "onnx-int8": HardwareRequirements(accelerators=("cpu",)),
    "onnx-int8-qdq": HardwareRequirements(
        accelerators=("cuda", "jetson"), min_compute_capability="6.1", build_on_device=True
    ),
    "onnx-fp16": HardwareRequirements(
        accelerators=("cuda", "jetson"),
        min_compute_capability="5.3",
        execution_providers=("CUDAExecutionProvider", "TensorrtExecutionProvider"),
    ),
}


def host_description(threads: int | None) -> str:
    """``"x86_64 AMD EPYC / onnxruntime 1.32.0 CPUExecutionProvider / 2 threads"``."""
    import onnxruntime as ort

    n = threads or os.cpu_count() or 1
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()} {cpu}".strip() + f" / onnxruntime {ort.__version__} CPUExecutionProvider"
        f" / {n} thread{'' if n == 1 else 's'}"
    )


@dataclass
class BuiltVariant:
    id: str
    path: Path
    format: Format
    precision: Precision
    requires: HardwareRequirements
    details: dict[str, Any] = field(default_factory=dict)
    score: Score | None = None
    latency: LatencyStats | None = None
    agreement: float | None = None  # top-1 agreement with FP32 (classification)
    engine_class: str | None = None
    timing: Interleaved | None = None  # per-query wall and thread-CPU times, timed interleaved
    frames: FrameSets | None = None  # decoded outputs on the held-out and calibration frames
    input_form: InputForm = InputForm.TENSOR
    twin: str | None = None  # a frame-form variant: the tensor-form variant it was built from

    def variant(self, reference: float | None, host: str, measured_at: str, metric: str) -> Variant:
        acc = self.score.value if self.score else None
        delta = None if acc is None or reference is None else round((acc - reference) * 100, 4)
        lat = self.latency
        meas = Measurement(
            metric=metric,
            accuracy=None if acc is None else round(acc, 6),
            accuracy_delta=delta,
            latency_p50_ms=None if lat is None else round(lat.p50_ms, 4),
            latency_p99_ms=None if lat is None else round(lat.p99_ms, 4),
            throughput_qps=None if lat is None else round(lat.throughput_qps, 3),
            host=host,
            measured_at=measured_at,
        )
        return Variant(
            id=self.id,
            format=self.format,
            precision=self.precision,
            file=self.path.name,
            sha256=sha256_file(self.path),
            size=self.path.stat().st_size,
            requires=self.requires,
            measurement=meas,
            details=self.details,
            input_form=self.input_form,
        )

    def candidate(self, reference: float | None, host_class: str) -> Candidate:
        acc = self.score.value if self.score else None
        return Candidate(
            id=self.id,
            precision=self.precision,
            format=self.format,
            accelerators=self.requires.accelerators,
            accuracy=acc,
            accuracy_delta=None if acc is None or reference is None else (acc - reference) * 100,
            cpu_ms=self.timing.cpu_ms if self.timing else (),
            wall_ms=self.timing.wall_ms if self.timing else (),
            measured_class=host_class if self.timing else None,
            build_on_device=self.requires.build_on_device,
            engine_class=self.engine_class,
            input_form=self.input_form,
            twin=self.twin,
        )


class Evaluator:
    """Accuracy, decoded outputs and latency of ONNX files on this host's CPU (ONNX Runtime)."""

    def __init__(
        self,
        task: Task,
        output: OutputSpec,
        evalset: SampleSet,
        *,
        num_classes: int,
        threads: int | None,
        bench: BenchConfig,
        calibset: SampleSet | None = None,
        input_spec: InputSpec | None = None,
    ) -> None:
        self.task, self.output, self.evalset, self.calibset = task, output, evalset, calibset
        self.input_spec = input_spec  # the bundle's: timing preprocesses with it (None: time on the tensors)
        self.num_classes, self.threads, self.bench = num_classes, threads, bench
        self.metric = metric_name(task)
        self.reference_outputs: dict[str, np.ndarray] | None = None

    def _runtime(self, path: Path, *, threads: int | None) -> OrtRuntime:
        # no spin-waiting: on a shared build host that only steals CPU from others
        return OrtRuntime(
            path, OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads, allow_spinning=False)
        )

    def outputs(self, path: Path, inputs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Raw outputs on ``inputs`` (the held-out set by default)."""
        rt = self._runtime(path, threads=self.threads)
        try:
            batch = 1 if isinstance(rt.input_shape[0], int) else 32
            return infer_all(rt.run, self.evalset.inputs if inputs is None else inputs, batch_size=batch)
        finally:
            rt.close()

    def score(self, path: Path) -> Score:
        out = self.outputs(path)
        return self.score_of(out)

    def score_of(self, out: dict[str, np.ndarray]) -> Score:
        e = self.evalset
        return score_outputs(
            self.task,
            out,
            self.output,
            e.samples,
            e.transforms,
            e.sizes,
            num_classes=self.num_classes,
            reference=self.reference_outputs,
        )

    def agreement(self, out: dict[str, np.ndarray]) -> float | None:
        if self.task is not Task.CLASSIFICATION or self.reference_outputs is None:
            return None
        a = np.argmax(out["logits"], axis=1)
        b = np.argmax(self.reference_outputs["logits"], axis=1)
        return float(np.mean(a == b))

    def evaluate(self, bv: BuiltVariant) -> bool:
        """Fill accuracy, agreement and the decoded frames of ``bv``; False (and a note in its
        details) when ONNX Runtime cannot run it here."""
        form = bv.input_form
        try:
            out = self.outputs(bv.path, self.evalset.inputs_for(form))
            calib = self.outputs(bv.path, self.calibset.inputs_for(form)) if self.calibset is not None else None
        except ModelRuntimeError as e:
            bv.details["not_measured"] = f"ONNX Runtime (CPU) cannot run it here: {str(e)[:200]}"
            return False
        bv.score = self.score_of(out)
        bv.agreement = self.agreement(out)
        held, c = self.evalset, self.calibset
        bv.frames = FrameSets(
            decode_outputs(out, self.output, held.transforms, held.sizes),
            () if calib is None or c is None else decode_outputs(calib, self.output, c.transforms, c.sizes),
        )
        return True

    def time_interleaved(self, variants: list[BuiltVariant]) -> None:
        """Time ``variants`` round-robin in single-threaded sessions; fills ``timing`` and ``latency``
        (wall statistics). ``bench``'s durations are per variant."""
        if not variants:
            return
        runtimes = {bv.id: self._runtime(bv.path, threads=1) for bv in variants}
        n = len(variants)
        try:
            timed = measure_interleaved(
                {bv.id: self._query(bv, runtimes[bv.id]) for bv in variants},
                warmup_queries=self.bench.warmup_queries,
                min_rounds=self.bench.min_queries,
                min_duration_s=self.bench.min_duration_s * n,
                max_duration_s=self.bench.max_duration_s * n,
            )
        finally:
            for rt in runtimes.values():
                rt.close()
        for bv in variants:
            bv.timing = timed[bv.id]
            bv.latency = bv.timing.wall

    def _query(self, bv: BuiltVariant, rt: OrtRuntime) -> Callable[[], object]:
        """One timed query of ``bv``: from the resized frame when the samples carry it (the numpy
        preprocessing counts against a tensor-form variant), else on the preprocessed tensor."""
        frames, spec = self.evalset.frames, self.input_spec
        if frames is None or spec is None:
            return functools.partial(rt.run, self.evalset.inputs_for(bv.input_form)[:1])
        frame, pre = frames[0], Preprocessor(spec, bv.input_form)

        def query() -> object:
            return rt.run(pre(frame)[None])

        return query
