"""The child-process prepare gate with real ONNX Runtime children and real resource limits."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ReasonCode, StopRequested
from edge_agent.perception import GateResult
from edge_agent.perception.samples import sample_frames
from edge_agent.update.prepare import PrepareLimits, check_in_child, choose_variant
from models.bundle import Gates
from tests.bundles import make_bundle, make_multi_bundle
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
    assert result.metrics["nan_frames"] == 0 and result.metrics["p95_ms"] > 0  # under the budget: it passed


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


def test_a_stop_request_kills_the_model_check_and_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child runs a model that never ends, with limits far past the test's wait: only the stop ends it."""
    make_bundle_with(tmp_path / "spin", name="spin", version="1.0.0", data=make_runaway_onnx())
    limits = PrepareLimits(timeout_s=3600, cpu_s=3600, frames=2, queries=2, duration_s=0.01)
    children: list[subprocess.Popen[str]] = []
    started = threading.Event()
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        children.append(real_popen(*args, **kwargs))
        started.set()
        return children[-1]

    monkeypatch.setattr("edge_agent.update.prepare.subprocess.Popen", recording_popen)
    stop = threading.Event()
    outcome: list[BaseException | GateResult] = []

    def check() -> None:
        try:
            outcome.append(check_in_child(tmp_path / "spin", "onnx-fp32", GATES, limits, stop=stop))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    try:
        assert started.wait(60), "the model check never started its child"
        stop.set()  # SIGTERM arrived while the child spins: no verdict comes back
        worker.join(60)  # bounds the wait only: without the stop the check would run for an hour
        assert not worker.is_alive(), "the stop request did not end the model check"
    finally:
        for child in children:  # a failed test leaves no spinning child behind
            if child.poll() is None:
                child.kill()
                child.wait()
    (result,) = outcome
    assert isinstance(result, StopRequested), result
    (child,) = children
    assert child.returncode == -signal.SIGKILL  # killed by the stop and reaped, not finished


# --------------------------------------------------------------------------- the device's variant choice

ROUNDS = 40


def _rounds(base: float, n: int = ROUNDS, *, jitter: float = 0.02, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(base * (1.0 + rng.uniform(-jitter, jitter, size=n)))


@pytest.mark.parametrize(
    ("name", "samples", "chosen", "cleared"),
    [
        ("identical timings keep the preference", {"fp32": _rounds(1.0), "int8": _rounds(1.0, seed=1)}, "fp32", []),
        ("a clear speedup switches", {"fp32": _rounds(1.0), "int8": _rounds(0.5, seed=1)}, "int8", ["int8"]),
        (
            "a speedup below min_speedup keeps the preference",
            {"fp32": _rounds(1.0), "int8": _rounds(0.95, seed=1)},
            "fp32",
            [],
        ),
        ("a slower alternate is never chosen", {"fp32": _rounds(1.0), "int8": _rounds(3.0, seed=1)}, "fp32", []),
        (
            "the fastest of several that clear",
            {"fp32": _rounds(1.0), "int8": _rounds(0.6, seed=1), "fp16": _rounds(0.4, seed=2)},
            "fp16",
            ["int8", "fp16"],
        ),
        # a 1.2x point estimate that noise makes uncertain: the lower bound decides, not the point
        (
            "a noisy speedup keeps the preference",
            {"fp32": _rounds(1.0, jitter=0.6), "int8": _rounds(0.83, jitter=0.6, seed=1)},
            "fp32",
            [],
        ),
    ],
)
def test_the_interval_rule_chooses_on_recorded_timings(
    name: str, samples: dict[str, list[float]], chosen: str, cleared: list[str]
) -> None:
    order = list(samples)
    choice = choose_variant(order, samples, min_speedup=1.1, metric="cpu")
    assert choice.variant == chosen, choice.reason
    assert [(v.baseline, v.candidate) for v in choice.verdicts] == [(order[0], c) for c in order[1:]]
    assert [v.candidate for v in choice.verdicts if v.preferred] == cleared


def test_one_variant_is_chosen_without_a_verdict() -> None:
    choice = choose_variant(["fp32"], {"fp32": _rounds(1.0)}, min_speedup=1.1, metric="cpu")
    assert (choice.variant, choice.verdicts) == ("fp32", ())
    with pytest.raises(ValueError, match="no variant"):
        choose_variant([], {}, min_speedup=1.1, metric="cpu")


TIMED = PrepareLimits(timeout_s=90, cpu_s=40, frames=4, queries=ROUNDS, duration_s=0.05)


def _gate(tmp_path: Path, variants: tuple[tuple[str, str], ...], *, gates: Gates = GATES) -> GateResult:
    bundle = tmp_path / "duo"
    make_multi_bundle(bundle, variants=variants)
    return check_in_child(bundle, [vid for vid, _ in variants], gates, TIMED)


def test_the_gate_times_every_variant_and_serves_a_faster_alternate(tmp_path: Path) -> None:
    """The server prefers FP32, which is several times slower here: the device serves the INT8."""
    result = _gate(tmp_path, (("onnx-fp32", "slow"), ("onnx-int8", "ok")))
    assert result.passed, result.detail
    assert result.evidence["variant"] == "onnx-int8"
    (verdict,) = result.evidence["timing"]
    assert (verdict["candidate"], verdict["baseline"], verdict["metric"], verdict["preferred"]) == (
        "onnx-int8",
        "onnx-fp32",
        "cpu",
        True,
    )
    assert verdict["speedup"]["low"] >= verdict["min_speedup"] and verdict["queries"] >= ROUNDS
    assert result.metrics["variants_timed"] == 2 and result.metrics["nan_frames"] == 0


def test_a_slower_alternate_is_never_chosen(tmp_path: Path) -> None:
    result = _gate(tmp_path, (("onnx-fp32", "ok"), ("onnx-int8", "slow")))
    assert result.passed and result.evidence["variant"] == "onnx-fp32", result.detail
    assert [v["preferred"] for v in result.evidence["timing"]] == [False]
    assert "kept the server's preference onnx-fp32" in result.detail


@pytest.mark.parametrize("order", [("onnx-fp32", "onnx-int8"), ("onnx-int8", "onnx-fp32")])
def test_two_identical_variants_keep_the_servers_preference(tmp_path: Path, order: tuple[str, str]) -> None:
    result = _gate(tmp_path, tuple((vid, "ok") for vid in order))
    assert result.passed and result.evidence["variant"] == order[0], result.detail
    (verdict,) = result.evidence["timing"]
    assert verdict["preferred"] is False and verdict["speedup"]["low"] < 1.1


@pytest.mark.parametrize("broken", ["not-onnx", "nan"])
def test_a_variant_that_fails_falls_back_to_the_next(tmp_path: Path, broken: str) -> None:
    result = _gate(tmp_path, (("onnx-fp32", broken), ("onnx-int8", "ok")))
    assert result.passed and result.evidence["variant"] == "onnx-int8", result.detail
    assert result.evidence["timing"] == []  # the survivor was timed alone
    reason = "MODEL_LOAD_FAILED" if broken == "not-onnx" else "NAN_OUTPUT"
    assert f"not served: onnx-fp32 ({reason}" in result.detail


def test_when_every_variant_fails_the_first_variants_reason_is_reported(tmp_path: Path) -> None:
    result = _gate(tmp_path, (("onnx-fp32", "nan"), ("onnx-int8", "not-onnx")))
    assert (result.passed, result.reason_code) == (False, ReasonCode.NAN_OUTPUT), result.detail
    assert result.detail.startswith("onnx-fp32: ") and "onnx-int8 (MODEL_LOAD_FAILED" in result.detail


def test_the_chosen_variant_must_still_meet_the_budget(tmp_path: Path) -> None:
    result = _gate(tmp_path, (("onnx-fp32", "slow"), ("onnx-int8", "slow")), gates=Gates(latency_budget_ms=0.01))
    assert (result.passed, result.reason_code) == (False, ReasonCode.LATENCY_OVER_BUDGET), result.detail
    assert result.evidence["variant"] == "onnx-fp32" and len(result.evidence["timing"]) == 1
