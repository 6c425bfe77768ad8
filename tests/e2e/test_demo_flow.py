"""The reduced ``make demo`` flow, end to end, with real processes.

``scripts/demo.py --quick --agents 2``: a real OTA server under gunicorn, two
real ``edge-agent`` processes on real video files, tiny real ONNX bundles
(``models/tiny.py``) instead of training. 1.0.0 installs everywhere, 1.1.0
rolls out in stages, 1.2.0 (classes permuted) must be refused by the vehicles'
shadow gates and halted, and never become active anywhere. The agents' own
on-disk state is checked afterwards with ``edge-agent status --json``, the
report must show each vehicle's gate decision with its evidence as the server
holds it, and no process the demo started may survive the demo — not after
success, not after Ctrl-C. The pieces the full flow adds (camera frames for
calibration, the optimizer's arguments, the final checks, the repeat tool's
tables) are tested on their own below.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import demo_build
import demo_media
import demo_repeat
from demo_flow import final_checks
from demo_report import FleetRow, ModelFacts, RolloutRecord, gate_table

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO = [sys.executable, str(ROOT / "scripts" / "demo.py")]


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose argv contains ``text`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv and str(os.getpid()) != entry.name:
            found.append(f"{entry.name}: {argv}")
    return found


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo") / "out"
    # a bound for a stuck demo, not an expectation of speed: the host may be busy with other work
    proc = subprocess.run(
        [*DEMO, "--quick", "--agents", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    return out, proc


@pytest.mark.slow
def test_quick_demo_passes_and_halts_the_bad_release(quick_demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_demo
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "total wall time" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    statuses = {r["version"]: r["status"] for r in summary["rollouts"]}
    assert statuses == {"1.0.0": "completed", "1.1.0": "completed", "1.2.0": "halted"}
    bad = summary["rollouts"][-1]
    assert "LOW_AGREEMENT" in json.dumps(bad["failure_reasons"]) + str(bad["final"].get("halt_reason"))
    staged = summary["rollouts"][1]
    kinds = [e["kind"] for e in staged["events"]]
    assert kinds[0] == "created" and kinds[-1] == "completed", kinds
    # the first stage holds one vehicle, unless both hash into it (then there is nothing to advance)
    first_stage = staged["final"]["progress"][0]["devices"]
    assert kinds.count("stage-advanced") == 1 or first_stage == 2, (kinds, first_stage)
    assert [d["version"] for d in summary["fleet"]] == ["1.1.0", "1.1.0"]
    assert all(c["ok"] for c in summary["checks"]), summary["checks"]


@pytest.mark.slow
def test_gate_evidence_of_every_vehicle_comes_from_the_server(
    quick_demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = quick_demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    staged, bad = summary["rollouts"][1], summary["rollouts"][2]
    assert sorted(g["vehicle"] for g in staged["gates"]) == ["veh-1", "veh-2"], staged["gates"]
    for g in staged["gates"]:
        assert g["decision"] == "accept" and g["variant"] in ("onnx-fp32-frame", "onnx-fp32"), g  # either input form
        assert g["frames"] >= 1 and g["p0"] is not None and g["judged_against"] in ("active", "own-fp32"), g
    refused = [g for g in bad["gates"] if g["decision"] == "refuse"]
    assert refused, bad["gates"]
    for g in refused:
        assert g["reason_code"] == "LOW_AGREEMENT" and g["agreement"] < g["p0"], g
        assert g["flipped"] != "-", g  # the classes that flipped most, from the vehicle's confusion table
    report = (out / "report.md").read_text()
    assert "Gate decisions" in report and "## Releases" in report


@pytest.mark.slow
def test_agents_on_disk_never_activated_the_bad_release(
    quick_demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = quick_demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent_dirs = sorted((out / "agents").iterdir())
    assert len(agent_dirs) == 2
    tried = []
    for d in agent_dirs:
        status = subprocess.run(
            [str(BIN / "edge-agent"), "status", "--data-dir", str(d), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["model"]["version"] == "1.1.0", f"{d.name} is not on 1.1.0: {info}"
        # the bad release reached the vehicle that was in its first stage and was refused there
        last = info.get("last_update") or {}
        if last.get("version") == "1.2.0":
            assert last["state"] in ("failed", "refused", "rolled-back"), last
            tried.append(d.name)
    assert tried, "no vehicle ever received the bad release: the halt was not the vehicles' doing"


@pytest.mark.slow
def test_report_and_charts_are_written(quick_demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    for needle in ("## Fleet", "veh-1", "veh-2", "halted", "LOW_AGREEMENT", "rollouts.png"):
        assert needle in report, f"report.md lacks {needle!r}"
    for chart in ("rollouts.png", "fleet.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
    # nothing the demo started is still alive, and its server port is closed
    summary = json.loads((out / "summary.json").read_text())
    assert not _port_open(summary["server"]), f"server {summary['server']} still answers"
    assert not _processes_mentioning(str(out)), _processes_mentioning(str(out))


@pytest.mark.slow
def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*DEMO, "--quick", "--agents", "2", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "(gunicorn, SQLite)" in line:  # the server is up: a long-running child to clean up
                break
        assert _processes_mentioning(str(out)), "expected demo children to be running"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 5
    while _processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(out)), _processes_mentioning(str(out))


def test_demo_refuses_a_foreign_output_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run(
        [*DEMO, "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "was not made by the demo" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_rejects_a_fleet_of_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*DEMO, "--quick", "--agents", "1", "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--agents must be at least 2" in proc.stderr


def test_a_failing_step_stops_the_demo_with_its_log_tail(tmp_path: Path) -> None:
    """The server cannot bind a port that is taken: the demo names the step and shows the server's log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*DEMO, "--quick", "--out", str(tmp_path / "out"), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED: server" in proc.stderr
    assert f"--- last lines of {tmp_path / 'out' / 'logs' / 'server.log'}" in proc.stderr
    assert str(port) in proc.stderr  # the tail shows the server's own complaint about its address
    assert not _processes_mentioning(str(tmp_path / "out")), _processes_mentioning(str(tmp_path / "out"))


def test_calibration_frames_are_the_decoded_camera_frames(tmp_path: Path) -> None:
    videos = [tmp_path / "cams" / f"veh-{i + 1}.avi" for i in range(2)]
    counts = [demo_media.write_camera_video(v, vehicle=i, seconds=1.0, fps=10) for i, v in enumerate(videos)]
    assert counts == [10, 10]
    n = demo_media.extract_frames(videos, tmp_path / "calib", every=3)
    files = sorted((tmp_path / "calib").iterdir())
    assert n == len(files) == 8  # frames 0, 3, 6, 9 of each video
    assert files[0].name == "veh-1-00000.png" and files[-1].name == "veh-2-00009.png"
    cap = cv2.VideoCapture(str(videos[1]))
    for _ in range(4):  # frame 3 of veh-2, as OpenCV decodes it for the agent
        ok, frame = cap.read()
    cap.release()
    assert ok and np.array_equal(cv2.imread(str(tmp_path / "calib" / "veh-2-00003.png")), frame)
    # vehicles film different signs
    assert not np.array_equal(cv2.imread(str(files[0])), cv2.imread(str(files[4])))


def test_calibration_frames_from_a_file_that_is_not_a_video(tmp_path: Path) -> None:
    (tmp_path / "veh-1.avi").write_bytes(b"not a video")
    with pytest.raises(OSError, match="veh-1.avi"):
        demo_media.extract_frames([tmp_path / "veh-1.avi"], tmp_path / "calib")


def test_optimize_arguments_name_the_camera_frames_and_the_release_replaced(tmp_path: Path) -> None:
    argv = demo_build.optimize_argv(
        tmp_path / "run",
        tmp_path / "b",
        name="signs",
        version="1.1.0",
        calib_dir=tmp_path / "calib",
        calib_samples=360,
        latency_budget_ms=250.0,
        baseline_release="signs@1.0.0",
        server_url="http://127.0.0.1:1",
        trusted_root=tmp_path / "root.json",
    )
    pairs = dict(zip(argv, argv[1:], strict=False))
    assert pairs["--calib-data"] == str(tmp_path / "calib") and pairs["--calib-samples"] == "360"
    assert pairs["--baseline-release"] == "signs@1.0.0" and pairs["--trusted-root"] == str(tmp_path / "root.json")
    assert pairs["--latency-budget-ms"] == "250.0"  # the bundle's gate: a rollout may only tighten it
    first = demo_build.optimize_argv(
        tmp_path / "run",
        tmp_path / "b",
        name="signs",
        version="1.0.0",
        calib_dir=tmp_path / "calib",
        calib_samples=360,
        latency_budget_ms=250.0,
    )
    assert "--baseline-release" not in first
    with pytest.raises(ValueError, match="server URL"):
        demo_build.optimize_argv(
            tmp_path / "run",
            tmp_path / "b",
            name="signs",
            version="1.1.0",
            calib_dir=tmp_path / "calib",
            calib_samples=1,
            latency_budget_ms=250.0,
            baseline_release="signs@1.0.0",
        )


def _row(name: str, version: str = "1.1.0") -> FleetRow:
    return FleetRow(
        name=name,
        device_id=f"dev_{name}",
        hardware="cpu-x86_64",
        profile="x86-a",
        version=version,
        state="committed",
        p95_ms=1.0,
        fps=10.0,
        agreement=None,
        agent_version=f"signs@{version}",
    )


def _records(good: list[str], bad: list[str]) -> list[RolloutRecord]:
    recs = [
        RolloutRecord(
            label=f"r{v}",
            version=v,
            rollout_id=f"ro_{v}",
            expected=e,
            final={"status": e, "failure_reasons": {"LOW_AGREEMENT": 1} if v == "1.2.0" else {}},
        )
        for v, e in (("1.0.0", "completed"), ("1.1.0", "completed"), ("1.2.0", "halted"))
    ]
    recs[1].gates = {f"dev_v{i}": {"agreement": {"decision": d}} for i, d in enumerate(good)}
    recs[2].gates = {f"dev_v{i}": {"agreement": {"decision": d}} for i, d in enumerate(bad)}
    return recs


def _facts(old: float, new: float) -> dict[str, ModelFacts]:
    return {
        v: ModelFacts(version=v, source="", top1=t, heldout_frames=500) for v, t in (("1.0.0", old), ("1.1.0", new))
    }


@pytest.mark.parametrize(
    ("top1", "good", "bad", "failing"),
    [
        ((0.73, 0.79), ["accept", "accept"], ["refuse"], []),
        ((0.79, 0.79), ["accept", "accept"], ["refuse"], ["1.1.0 is better than 1.0.0 on the held-out split"]),
        ((0.73, 0.79), ["accept"], ["refuse"], ["every vehicle's gate accepted 1.1.0 (server's evidence)"]),
        ((0.73, 0.79), ["accept", "refuse"], ["refuse"], ["every vehicle's gate accepted 1.1.0 (server's evidence)"]),
        ((0.73, 0.79), ["accept", "accept"], [], ["the vehicles that tried 1.2.0 refused it with evidence"]),
        ((0.73, 0.79), ["accept", "accept"], ["None"], ["the vehicles that tried 1.2.0 refused it with evidence"]),
    ],
)
def test_final_checks(top1: tuple[float, float], good: list[str], bad: list[str], failing: list[str]) -> None:
    rows = [_row("v0"), _row("v1")]
    checks = final_checks(rows, _records(good, bad), _facts(*top1))
    assert [name for name, ok, _ in checks if not ok] == failing


def test_final_checks_catch_a_vehicle_on_the_bad_release() -> None:
    checks = final_checks(
        [_row("v0"), _row("v1", "1.2.0")], _records(["accept", "accept"], ["refuse"]), _facts(0.7, 0.8)
    )
    failing = {name for name, ok, _ in checks if not ok}
    assert {"no vehicle runs 1.2.0 (server view)", "every vehicle runs 1.1.0"} <= failing


def test_gate_table_shows_the_evidence() -> None:
    rec = RolloutRecord(label="bad", version="1.2.0", rollout_id="ro_1", expected="halted")
    rec.gates = {
        "dev_a": {
            "variant": "onnx-int8",
            "outcome": "failed",
            "reason_code": "LOW_AGREEMENT",
            "agreement": {
                "decision": "refuse",
                "frames": 12,
                "agreement": 0.083,
                "agreement_ci95": [0.01, 0.35],
                "expected": 0.0,
                "p0": 0.5,
                "judged_against": "active",
                "baseline": "signs@1.1.0",
                "confusion": [{"active": "stop", "candidate": "yield", "count": 5}],
            },
        }
    }
    [header, _, row] = gate_table(rec, {"dev_a": "veh-1"})
    assert "decision" in header
    for needle in (
        "veh-1",
        "onnx-int8",
        "active (signs@1.1.0)",
        "refuse",
        "| 12 |",
        "0.083 [0.01, 0.35]",
        "0.000 → 0.500",
        "failed LOW_AGREEMENT",
        "stop→yield ×5",
    ):
        assert needle in row, (needle, row)


def test_demo_repeat_tables_count_passes_per_mode() -> None:
    runs = [
        demo_repeat.RunResult("idle", 1, 0, 300.0, 0.5, "o/idle-1"),
        demo_repeat.RunResult("loaded", 1, 1, 420.0, 1.6, "o/loaded-1", failed_checks=["every vehicle runs 1.1.0"]),
        demo_repeat.RunResult("idle", 2, 0, 310.0, 0.4, "o/idle-2"),
        demo_repeat.RunResult("loaded", 2, 0, 400.0, 1.5, "o/loaded-2"),
    ]
    by_mode = demo_repeat.mode_summary(runs)
    assert by_mode["idle"] == {"runs": 2, "passed": 2, "median_s": 305.0, "min_s": 300.0, "max_s": 310.0}
    assert by_mode["loaded"]["passed"] == 1
    text = demo_repeat.render(runs)
    assert "| loaded | 1/2 |" in text and "every vehicle runs 1.1.0" in text


def test_demo_repeat_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--runs", "0"], ["--modes", "busy"], ["--", "--out", "x"]):
        with pytest.raises(SystemExit) as e:
            demo_repeat.main(argv)
        assert e.value.code == 2, argv
    assert "--out is set per run" in capsys.readouterr().err
