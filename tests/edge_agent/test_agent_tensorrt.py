"""A simulated Jetson: the engine built on the device is what the gate times, the shadow runs and the camera serves.

The agent runs as real processes (``edge-agent`` and its ``python -m
edge_agent.update.prepare`` child) against the real server, with the fake TensorRT 10
(tests/models/fake_tensorrt.py, ONNX Runtime underneath) on their
``PYTHONPATH``. The fake appends every engine build and load to a log, so the
tests see which process built what, for which TensorRT version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.perception.runtimes import EngineOptions
from edge_agent.update.prepare import PrepareLimits, check_in_child
from models.bundle import Gates, read_bundle
from models.hardware import HardwareProfile
from models.reasons import ReasonCode
from models.runtime.trt_build import BatchProfile
from tests.edge_agent.media import write_video
from tests.edge_agent.update_harness import check_slots, run_agent
from tests.live_server import live_server
from tests.models import fake_tensorrt
from tests.trt_bundles import JETSON_ORIN, QDQ_ID, make_qdq_onnx, make_trt_bundle

ORIN = HardwareProfile.from_dict({**JETSON_ORIN, "tensorrt_version": "10.3.0"})
LIMITS = PrepareLimits(timeout_s=120, cpu_s=60, frames=4, queries=5, duration_s=0.05)


def _engines(data: Path) -> list[str]:
    d = data / "engines"
    return sorted(p.name for p in d.glob("*.engine")) if d.is_dir() else []


def _results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _served(path: Path) -> dict[str, set[str]]:
    """model version → the runtimes that served its frames."""
    out: dict[str, set[str]] = {}
    for r in _results(path):
        out.setdefault(r["model"], set()).add(r.get("runtime", "?"))
    return out


def _builds(log: Path) -> list[tuple[str, str]]:
    return [
        (e["onnx_sha256"][:12], e["tensorrt_version"]) for e in fake_tensorrt.read_log(log) if e["event"] == "build"
    ]


# --------------------------------------------------------------------------- the child-process gate alone


@pytest.fixture
def fake_trt_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The prepare child inherits this process's environment: put the fake TensorRT on its path."""
    log = tmp_path / "trt.log"
    for k, v in fake_tensorrt.subprocess_env(log=log).items():
        monkeypatch.setenv(k, v)
    return log


def test_child_gate_builds_and_times_the_engine(tmp_path: Path, fake_trt_env: Path) -> None:
    make_trt_bundle(tmp_path / "slot", fallback=False)
    opts = EngineOptions(BatchProfile(1, 1, 4))
    result = check_in_child(
        tmp_path / "slot",
        [QDQ_ID],
        Gates(latency_budget_ms=250.0),
        LIMITS,
        engines_dir=tmp_path / "engines",
        profile=ORIN,
        engine=opts,
    )
    assert result.passed, result.detail
    assert result.evidence["variant"] == QDQ_ID
    events = fake_tensorrt.read_log(fake_trt_env)
    assert [e["event"] for e in events] == ["build", "load"]  # built once in the child, then run from the engine
    assert events[0]["flags"] == ["FP16", "INT8"] and events[0]["profile"]["input"][2] == [4, 3, 32, 32]
    assert len(_engines(tmp_path)) == 1
    again = check_in_child(
        tmp_path / "slot",
        [QDQ_ID],
        Gates(latency_budget_ms=250.0),
        LIMITS,
        engines_dir=tmp_path / "engines",
        profile=ORIN,
        engine=opts,
    )
    assert again.passed and [e["event"] for e in fake_tensorrt.read_log(fake_trt_env)] == ["build", "load", "load"]


def test_child_gate_reports_a_failed_build_or_falls_back_as_the_selection_allows(
    tmp_path: Path, fake_trt_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fake_tensorrt.ENV_FAIL, "1")
    make_trt_bundle(tmp_path / "strict", fallback=False)
    failed = check_in_child(
        tmp_path / "strict",
        [QDQ_ID],
        Gates(latency_budget_ms=250.0),
        LIMITS,
        engines_dir=tmp_path / "engines",
        profile=ORIN,
    )
    assert not failed.passed and failed.reason_code is ReasonCode.ENGINE_BUILD_FAILED
    assert "TensorRT failed to build model.int8.qdq.onnx" in failed.detail
    make_trt_bundle(tmp_path / "open", fallback=True)
    fell_back = check_in_child(
        tmp_path / "open",
        [QDQ_ID, "onnx-fp32"],
        Gates(latency_budget_ms=250.0),
        LIMITS,
        engines_dir=tmp_path / "engines",
        profile=ORIN,
    )
    assert fell_back.passed, fell_back.detail
    assert fell_back.evidence["variant"] == "onnx-fp32" and "ENGINE_BUILD_FAILED" in fell_back.detail
    assert _engines(tmp_path) == []


# --------------------------------------------------------------------------- the whole agent


def test_jetson_agent_builds_caches_serves_swaps_and_rebuilds_engines(tmp_path: Path) -> None:
    video = write_video(tmp_path / "road.avi", [("red", 30), ("green", 30), ("blue", 30)])
    data, log = tmp_path / "orin", tmp_path / "trt.log"
    profile = tmp_path / "orin.json"
    profile.write_text(json.dumps(JETSON_ORIN))  # TensorRT version and GPU: detected through the fake
    trt_10_3 = fake_tensorrt.subprocess_env(version="10.3.0", log=log)

    def run(results: str, env: dict[str, str]) -> Any:
        return run_agent(
            data,
            "run",
            "--once",
            "--source",
            str(video),
            "--results",
            str(tmp_path / results),
            "--health-window",
            "1",
            "--bench-queries",
            "5",
            "--bench-duration",
            "0.05",
            "--engine-max-batch",
            "4",
            env=env,
            timeout=240,
        )

    with live_server(tmp_path) as srv:
        out = run_agent(
            data,
            "enroll",
            "--server",
            srv.url,
            "--token",
            srv.credential("orin"),
            "--group",
            "orin",
            "--hardware-profile",
            str(profile),
            env=trt_10_3,
        )
        assert out.returncode == 0, out.stderr

        # 1. first install: the child gate builds the Q/DQ engine, the camera serves it from the cache
        make_trt_bundle(tmp_path / "v1", name="cam", version="1.0.0", fallback=False)
        qdq_v1 = read_bundle(tmp_path / "v1").variant(QDQ_ID).sha256[:12]
        srv.publish(tmp_path / "v1")
        srv.create_rollout(model="cam", version="1.0.0", group="orin", stages=[100])
        out = run("r1.jsonl", trt_10_3)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.0.0" and "(variant onnx-int8-qdq, tensorrt)" in out.stderr
        assert _builds(log) == [(qdq_v1, "10.3.0")]
        assert len(_engines(data)) == 1 and "-trt10.3.0-Orin_nvgpu-sm87-int8-b1-1-4.engine" in _engines(data)[0]

        # 2. the same ONNX in a new release: cache hit in the gate and the shadow run, engine-to-engine swap
        make_trt_bundle(tmp_path / "v11", name="cam", version="1.1.0", fallback=False)
        srv.publish(tmp_path / "v11")
        srv.create_rollout(model="cam", version="1.1.0", group="orin", stages=[100])
        out = run("r2.jsonl", trt_10_3)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.1.0"
        assert _builds(log) == [(qdq_v1, "10.3.0")] and len(_engines(data)) == 1
        assert _served(tmp_path / "r2.jsonl") == {"cam@1.0.0": {"tensorrt"}, "cam@1.1.0": {"tensorrt"}}

        # 3. TensorRT upgraded: the active model's engine and the candidate's are rebuilt for 10.4.0
        make_trt_bundle(
            tmp_path / "v12", name="cam", version="1.2.0", fallback=False, qdq=make_qdq_onnx(seed_tag="-1.2.0")
        )
        qdq_v12 = read_bundle(tmp_path / "v12").variant(QDQ_ID).sha256[:12]
        srv.publish(tmp_path / "v12")
        srv.create_rollout(model="cam", version="1.2.0", group="orin", stages=[100])
        trt_10_4 = fake_tensorrt.subprocess_env(version="10.4.0", log=log)
        out = run("r3.jsonl", trt_10_4)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.2.0"
        assert _builds(log)[1:] == [(qdq_v1, "10.4.0"), (qdq_v12, "10.4.0")] and len(_engines(data)) == 3
        assert _served(tmp_path / "r3.jsonl")["cam@1.2.0"] == {"tensorrt"}

        # 4. the build fails; the selection lists FP32 after the Q/DQ engine, so FP32 serves
        make_trt_bundle(
            tmp_path / "v13", name="cam", version="1.3.0", fallback=True, qdq=make_qdq_onnx(seed_tag="-1.3.0")
        )
        srv.publish(tmp_path / "v13")
        srv.create_rollout(model="cam", version="1.3.0", group="orin", stages=[100])
        failing = fake_tensorrt.subprocess_env(version="10.4.0", log=log, fail=True)
        out = run("r4.jsonl", failing)
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.3.0" and "ENGINE_BUILD_FAILED" in out.stderr
        assert _served(tmp_path / "r4.jsonl")["cam@1.3.0"] == {"onnxruntime"}
        assert len(_builds(log)) == 3  # nothing new got built
        assert [n[:12] for n in _engines(data)] == [qdq_v12]  # 1.1.0's slot was overwritten: its engines went

        # 5. the build fails and the selection allows no other variant: the update fails
        make_trt_bundle(
            tmp_path / "v14", name="cam", version="1.4.0", fallback=False, qdq=make_qdq_onnx(seed_tag="-1.4.0")
        )
        srv.publish(tmp_path / "v14")
        rollout = srv.create_rollout(model="cam", version="1.4.0", group="orin", stages=[100])
        out = run("r5.jsonl", failing)
        assert out.returncode == 3, out.stderr
        assert check_slots(data) == "cam@1.3.0"
        progress = srv.rollout(rollout["id"])
        assert progress["totals"]["failure"] == 1 and "ENGINE_BUILD_FAILED" in str(progress["failure_reasons"])
        status = json.loads(run_agent(data, "status", "--json").stdout)
        assert status["last_update"]["reason"] == "ENGINE_BUILD_FAILED"
        assert _engines(data) == []  # 1.2.0's slot took the failed 1.4.0, and 1.3.0 serves no engine


def test_headless_jetson_agent_watches_the_engine_it_built(tmp_path: Path) -> None:
    data, log = tmp_path / "orin", tmp_path / "trt.log"
    profile = tmp_path / "orin.json"
    profile.write_text(json.dumps(JETSON_ORIN))
    env = fake_tensorrt.subprocess_env(log=log)
    with live_server(tmp_path) as srv:
        out = run_agent(
            data,
            "enroll",
            "--server",
            srv.url,
            "--token",
            srv.credential("orin"),
            "--group",
            "orin",
            "--hardware-profile",
            str(profile),
            env=env,
        )
        assert out.returncode == 0, out.stderr
        make_trt_bundle(tmp_path / "v1", name="box", version="1.0.0", fallback=False)
        srv.publish(tmp_path / "v1")
        srv.create_rollout(model="box", version="1.0.0", group="orin", stages=[100])
        out = run_agent(
            data,
            "run",
            "--once",
            "--health-window",
            "0.5",
            "--bench-queries",
            "5",
            "--bench-duration",
            "0.05",
            env=env,
            timeout=240,
        )
        assert out.returncode == 0, out.stderr
    assert check_slots(data) == "box@1.0.0"
    # built and loaded by the child gate, loaded again (from the cache) by the health watch in the agent
    assert [e["event"] for e in fake_tensorrt.read_log(log)] == ["build", "load", "load"]
