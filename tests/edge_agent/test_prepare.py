"""The child-process prepare gate with real ONNX Runtime children and real resource limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import StopRequested
from edge_agent.prepare import PrepareLimits, check_in_child, sample_frames
from models.bundle import Gates
from tests.bundles import make_bundle
from tests.edge_agent.update_harness import make_bundle_with, make_runaway_onnx

FAST = PrepareLimits(timeout_s=60, cpu_s=20, frames=4, queries=5, duration_s=0.05)
GATES = Gates(latency_budget_ms=25.0)


def test_sample_frames_are_deterministic() -> None:
    a, b = sample_frames(5), sample_frames(5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].dtype == np.uint8 and a[0].shape == (96, 128, 3)


def test_a_good_model_passes_with_metrics(tmp_path: Path) -> None:
    make_bundle(tmp_path / "ok")
    result = check_in_child(tmp_path / "ok", "onnx-fp32", GATES, FAST)
    assert result.passed, result.detail
    assert result.metrics["nan_frames"] == 0 and 0 < result.metrics["p95_ms"] < 25.0


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("not-onnx", "MODEL_LOAD_FAILED"), ("nan", "NAN_OUTPUT"), ("slow", "LATENCY_OVER_BUDGET")],
)
def test_bad_models_are_refused(tmp_path: Path, behaviour: str, reason: str) -> None:
    make_bundle(tmp_path / behaviour, behaviour=behaviour)
    gates = Gates(latency_budget_ms=5.0) if behaviour == "slow" else GATES
    result = check_in_child(tmp_path / behaviour, "onnx-fp32", gates, FAST)
    assert (result.passed, result.reason_code) == (False, reason), result.detail


def test_a_runaway_model_kills_only_the_child(tmp_path: Path) -> None:
    """The Loop never ends; RLIMIT_CPU makes the kernel kill the child with SIGXCPU."""
    make_bundle_with(tmp_path / "spin", name="spin", version="1.0.0", data=make_runaway_onnx())
    limits = PrepareLimits(timeout_s=60, cpu_s=2, frames=2, queries=2, duration_s=0.01)
    result = check_in_child(tmp_path / "spin", "onnx-fp32", GATES, limits)
    assert (result.passed, result.reason_code) == (False, "RUNTIME_CRASHED")
    assert "SIGXCPU" in result.detail or "SIGKILL" in result.detail


def test_a_hung_child_is_killed_at_the_timeout(tmp_path: Path) -> None:
    make_bundle_with(tmp_path / "spin", name="spin", version="1.0.0", data=make_runaway_onnx())
    limits = PrepareLimits(timeout_s=2, cpu_s=60, frames=2, queries=2, duration_s=0.01)
    result = check_in_child(tmp_path / "spin", "onnx-fp32", GATES, limits)
    assert (result.passed, result.reason_code) == (False, "RUNTIME_CRASHED") and "hung" in result.detail


def test_a_missing_bundle_is_a_load_failure(tmp_path: Path) -> None:
    result = check_in_child(tmp_path / "nothing", "onnx-fp32", GATES, FAST)
    assert (result.passed, result.reason_code) == (False, "MODEL_LOAD_FAILED")


def test_a_stop_request_kills_the_model_check_and_raises(tmp_path: Path) -> None:
    make_bundle(tmp_path / "ok")
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: whatever the child is doing, no verdict comes back
    t0 = time.monotonic()
    with pytest.raises(StopRequested):
        check_in_child(tmp_path / "ok", "onnx-fp32", GATES, FAST, stop=stop)
    assert time.monotonic() - t0 < 5.0
