"""The INT8 accuracy rule as the optimizer pipeline wires it: measured accuracies in, manifest out.

:func:`optimize.pipeline._finish` is the step of :func:`optimize.pipeline.optimize`
that turns the built and measured variants into the manifest and report: it
computes each variant's accuracy delta against FP32, hands the candidates to
the selection rule and writes the deltas into the manifest. Here it gets real
ONNX files with recorded measurements (an INT8 variant 2.5x faster on CPU time
and 15 points less accurate), so the test does not depend on how well a few
training steps happen to quantize, and checks what the pipeline wrote.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.bench import Interleaved
from models.bundle import Format, Manifest, Precision, Task
from models.hardware import detect_profile, hardware_class
from optimize.checkpoint import Checkpoint
from optimize.config import OptimizeConfig
from optimize.data import SampleSet
from optimize.evaluate import Score
from optimize.pipeline import _finish
from optimize.variants import REQUIREMENTS, BuiltVariant, Evaluator
from tests.bundles import make_multi_bundle

FP32_TOP1 = 0.90
ROUNDS = 200  # interleaved timing rounds


def _timing(label: str, median_ms: float, seed: int) -> Interleaved:
    x = np.exp(np.random.default_rng(seed).normal(0.0, 0.02, ROUNDS))
    times = tuple(float(v) for v in x * (median_ms / np.median(x)))
    return Interleaved(label, times, times)


def _run(tmp: Path, int8_top1: float) -> tuple[Manifest, dict[str, Any], str]:
    src = make_multi_bundle(tmp / "src", name="signs", version="2.0.0")
    files = {v.id: tmp / "src" / v.file for v in src.variants}
    built = []
    for vid, precision, top1, ms, seed in (
        ("onnx-fp32", Precision.FP32, FP32_TOP1, 10.0, 1),
        ("onnx-int8", Precision.INT8, int8_top1, 4.0, 2),
    ):
        timing = _timing(vid, ms, seed)
        built.append(
            BuiltVariant(
                vid,
                files[vid],
                Format.ONNX,
                precision,
                REQUIREMENTS[vid],
                score=Score("top1", top1),
                latency=timing.wall,
                timing=timing,
            )
        )
    pt = tmp / "best.pt"
    pt.write_bytes(b"weights")
    ckpt = Checkpoint(
        pt_path=pt,
        sidecar_path=tmp / "best.json",
        sidecar={"run": "run-1", "code_version": "test"},
        arch="mobilenet_v3_small",
        task=Task.CLASSIFICATION,
        num_classes=len(src.labels),
        labels=src.labels,
        model_kwargs={},
        input_spec=src.input,
        dataset={"fingerprint": "f" * 16},
        sha256=hashlib.sha256(b"weights").hexdigest(),
    )
    shape = (0, *(int(d or 1) for d in src.input.shape[1:]))
    empty = SampleSet(np.zeros(shape, dtype=np.float32), (), (), ())
    cfg = OptimizeConfig(source=tmp, out=tmp / "out", name="signs", version="2.0.0", targets=("cpu",))
    ev = Evaluator(Task.CLASSIFICATION, src.output, empty, num_classes=len(src.labels), threads=1, bench=cfg.bench)
    manifest, report = _finish(cfg, ckpt, built, {}, src.input, ev, "test host", (), {})
    return manifest, report, hardware_class(detect_profile())


def test_an_int8_variant_15_points_worse_is_reported_worse_and_never_selected(tmp_path: Path) -> None:
    manifest, report, host_class = _run(tmp_path, FP32_TOP1 - 0.15)
    int8 = manifest.variant("onnx-int8")
    assert int8.measurement is not None and int8.measurement.accuracy_delta == pytest.approx(-15.0)
    assert manifest.selection[host_class].order == ("onnx-fp32",)
    assert "accuracy drop 15.00 points" in str(report), report
    row = next(r for r in report["variants"] if r["variant"] == "onnx-int8")
    assert row["delta_points"] == pytest.approx(-15.0)


def test_the_same_int8_within_the_limit_is_selected(tmp_path: Path) -> None:
    """The control: with its accuracy within 1 point, the faster INT8 wins on this host class."""
    manifest, _, host_class = _run(tmp_path, FP32_TOP1 - 0.005)
    int8 = manifest.variant("onnx-int8")
    assert int8.measurement is not None and int8.measurement.accuracy_delta == pytest.approx(-0.5)
    assert manifest.selection[host_class].order[0] == "onnx-int8"
