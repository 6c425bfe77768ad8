"""Gate evidence as the shared kernel produces it, and bundles that carry agreement expectations.

The evidence comes from a real :class:`models.stats.AgreementTest` fed a recorded sequence and
a real :func:`models.stats.prefer_faster` on recorded timings, so the server's validation is
tested against what the agent actually sends, not against a copy of its shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.bundle import AgreementExpectation, Manifest, write_bundle
from models.stats import (
    AgreementTest,
    ClassAgreementTest,
    ClassExpectation,
    Verdict,
    prefer_faster,
    slowed_down,
)
from tests.bundles import make_bundle, make_onnx

FP32_SHA256 = hashlib.sha256(make_onnx("ok")).hexdigest()  # the file every "ok" test bundle serves


def refusal_gate(*, baseline: str = "m@1.0.0", variant: str = "onnx-fp32") -> dict[str, Any]:
    """The evidence of a refusal: a candidate agreeing on 2 frames of 10 with an expectation of 94 %."""
    test = AgreementTest(p0=0.89, effect=0.15, alpha=0.01, beta=0.01, min_frames=10, max_frames=50)
    for x in [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0] * 5:
        if test.add(x) is not Verdict.CONTINUE:
            break
    assert test.verdict is Verdict.REFUSE
    agreement = dict(
        test.evidence(),
        expected=0.94,
        baseline=baseline,
        judged_against="active",
        confusion=[
            {"active": "red", "candidate": "green", "count": 7},
            {"active": "blue", "candidate": "other", "count": 1},
        ],
    )
    timing = prefer_faster(
        "onnx-fp32", [1.00, 1.02, 0.98, 1.01] * 10, "onnx-int8", [0.97, 1.0, 0.96, 0.99] * 10, min_speedup=1.1
    )
    return {"agreement": agreement, "variant": variant, "timing": [timing.to_dict()]}


def rollback_gate() -> dict[str, Any]:
    """The evidence of a health-window rollback: CPU time 3x the shadow run's on recorded timings."""
    verdict = slowed_down([1.0, 1.1, 0.9, 1.05] * 10, [3.0, 3.2, 2.9, 3.1] * 12, max_ratio=1.5)
    assert verdict.regressed
    return {"latency": verdict.to_dict()}


def class_refusal_gate(*, classes: int = 12) -> dict[str, Any]:
    """The evidence of a per-class refusal: ``classes`` classes expected at 97 %, class "c3" never predicted."""
    overall = AgreementTest(p0=0.92, effect=0.15, alpha=0.01, beta=0.01, min_frames=10, max_frames=350)
    test = ClassAgreementTest(overall, [ClassExpectation(f"c{i}", 0.97, 100) for i in range(classes)], tolerance=0.05)
    for i in range(10 * classes):
        label = f"c{i % classes}"
        if test.add(0.0 if label == "c3" else 1.0, label) is not Verdict.CONTINUE:
            break
    assert test.verdict is Verdict.REFUSE and test.decided_by == "c3"
    agreement = dict(
        test.evidence(),
        expected=0.97,
        baseline="m@1.0.0",
        baseline_variant="onnx-int8",
        judged_against="active",
        why="expectation against m@1.0.0/onnx-int8: expected 97.0%",
        confusion=[{"active": "c3", "candidate": "c4", "count": 4}],
    )
    return {"agreement": agreement, "variant": "onnx-fp32", "timing": refusal_gate()["timing"]}


def make_bundle_expecting(
    directory: Path, *, name: str, version: str, baselines: Sequence[tuple[str, str]]
) -> Manifest:
    """A one-variant test bundle whose ``expectations`` name each (``name@version``, sha256)."""
    manifest = make_bundle(directory, name=name, version=version)
    expectations = tuple(
        AgreementExpectation(
            variant="onnx-fp32",
            baseline=release,
            baseline_variant="onnx-fp32",
            baseline_sha256=sha,
            heldout=0.97,
            heldout_frames=200,
        )
        for release, sha in baselines
    )
    manifest = dataclasses.replace(manifest, expectations=expectations)
    write_bundle(directory, manifest)
    return manifest
