"""Building, measuring and describing the bundle's variants (the optimizer's adapters).

Each :class:`BuiltVariant` is one model file in the staging directory plus
what was measured about it on this host. The orchestration lives in
:mod:`optimize.pipeline`; selection rules in :mod:`optimize.select`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bench import BenchConfig, LatencyStats, measure_with
from models.bundle import (
    Format,
    HardwareRequirements,
    Measurement,
    OutputSpec,
    Precision,
    Task,
    Variant,
    sha256_file,
)
from models.runtime.errors import ModelRuntimeError
from models.runtime.onnxrt import OrtOptions, OrtRuntime
from optimize.data import SampleSet
from optimize.evaluate import Score, infer_all, metric_name, score_outputs
from optimize.select import Candidate

__all__ = ["BuiltVariant", "Evaluator", "host_description", "REQUIREMENTS"]

REQUIREMENTS = {
    "onnx-fp32": HardwareRequirements(accelerators=("cpu", "cuda", "jetson")),
    "onnx-int8": HardwareRequirements(accelerators=("cpu",)),
    "onnx-int8-qdq": HardwareRequirements(accelerators=("cuda", "jetson"), min_compute_capability="6.1",
                                          build_on_device=True),
    "onnx-fp16": HardwareRequirements(accelerators=("cuda", "jetson"), min_compute_capability="5.3",
                                      execution_providers=("CUDAExecutionProvider", "TensorrtExecutionProvider")),
}


def host_description(threads: int | None) -> str:
    """``"x86_64 AMD EPYC / onnxruntime 1.32.0 CPUExecutionProvider / 2 threads"``."""
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.machine()} {cpu}".strip() + f" / onnxruntime {ort.__version__} CPUExecutionProvider"
            f" / {threads or os.cpu_count()} threads")


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

    def variant(self, reference: float | None, host: str, measured_at: str, metric: str) -> Variant:
        acc = self.score.value if self.score else None
        delta = None if acc is None or reference is None else round((acc - reference) * 100, 4)
        lat = self.latency
        meas = Measurement(
            metric=metric, accuracy=None if acc is None else round(acc, 6), accuracy_delta=delta,
            latency_p50_ms=None if lat is None else round(lat.p50_ms, 4),
            latency_p99_ms=None if lat is None else round(lat.p99_ms, 4),
            throughput_qps=None if lat is None else round(lat.throughput_qps, 3),
            host=host, measured_at=measured_at,
        )
        return Variant(id=self.id, format=self.format, precision=self.precision, file=self.path.name,
                       sha256=sha256_file(self.path), size=self.path.stat().st_size, requires=self.requires,
                       measurement=meas, details=self.details)

    def candidate(self, reference: float | None, host_class: str) -> Candidate:
        acc = self.score.value if self.score else None
        return Candidate(
            id=self.id, precision=self.precision, format=self.format, accelerators=self.requires.accelerators,
            accuracy=acc, accuracy_delta=None if acc is None or reference is None else (acc - reference) * 100,
            p50_ms=self.latency.p50_ms if self.latency else None,
            p95_ms=self.latency.p95_ms if self.latency else None,
            measured_class=host_class if self.latency else None,
            build_on_device=self.requires.build_on_device, engine_class=self.engine_class,
        )


class Evaluator:
    """Accuracy and latency of ONNX files on this host's CPU (ONNX Runtime)."""

    def __init__(self, task: Task, output: OutputSpec, evalset: SampleSet, *, num_classes: int,
                 threads: int | None, bench: BenchConfig) -> None:
        self.task, self.output, self.evalset = task, output, evalset
        self.num_classes, self.threads, self.bench = num_classes, threads, bench
        self.metric = metric_name(task)
        self.reference_outputs: dict[str, np.ndarray] | None = None

    def _runtime(self, path: Path, *, timing: bool = False) -> OrtRuntime:
        # accuracy runs do not spin-wait: on a shared build host that only steals CPU from others
        return OrtRuntime(path, OrtOptions(providers=("CPUExecutionProvider",), intra_op_threads=self.threads,
                                           allow_spinning=timing))

    def outputs(self, path: Path) -> dict[str, np.ndarray]:
        rt = self._runtime(path)
        try:
            batch = 1 if isinstance(rt.input_shape[0], int) else 32
            return infer_all(rt.run, self.evalset.inputs, batch_size=batch)
        finally:
            rt.close()

    def score(self, path: Path) -> Score:
        out = self.outputs(path)
        return self.score_of(out)

    def score_of(self, out: dict[str, np.ndarray]) -> Score:
        e = self.evalset
        return score_outputs(self.task, out, self.output, e.samples, e.transforms, e.sizes,
                             num_classes=self.num_classes, reference=self.reference_outputs)

    def agreement(self, out: dict[str, np.ndarray]) -> float | None:
        if self.task is not Task.CLASSIFICATION or self.reference_outputs is None:
            return None
        a = np.argmax(out["logits"], axis=1)
        b = np.argmax(self.reference_outputs["logits"], axis=1)
        return float(np.mean(a == b))

    def measure(self, bv: BuiltVariant) -> None:
        """Fill accuracy, agreement and latency of ``bv``; a model ORT cannot run here stays unmeasured."""
        try:
            out = self.outputs(bv.path)
        except ModelRuntimeError as e:
            bv.details["not_measured"] = f"ONNX Runtime (CPU) cannot run it here: {str(e)[:200]}"
            return
        bv.score = self.score_of(out)
        bv.agreement = self.agreement(out)
        rt = self._runtime(bv.path, timing=True)
        x = self.evalset.inputs[:1]
        try:
            bv.latency = measure_with(lambda: rt.run(x), self.bench, label=bv.id)
        finally:
            rt.close()
