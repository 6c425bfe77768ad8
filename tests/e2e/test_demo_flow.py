"""The reduced ``make demo`` flow, end to end, with real processes.

``scripts/demo.py --quick --agents 2``: a real OTA server under gunicorn, two
real ``edge-agent`` processes on real video files, tiny real ONNX bundles
(``tests/bundles.py``) instead of training. 1.0.0 installs everywhere, 1.1.0
rolls out in stages, 1.2.0 (classes permuted) must be refused by the vehicles'
shadow gates and halted, and never become active anywhere. The agents' own
on-disk state is checked afterwards with ``edge-agent status --json``, and no
process the demo started may survive it — not after success, not after Ctrl-C.
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

import pytest

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
    proc = subprocess.run([*DEMO, "--quick", "--agents", "2", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
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
def test_agents_on_disk_never_activated_the_bad_release(quick_demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = quick_demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent_dirs = sorted((out / "agents").iterdir())
    assert len(agent_dirs) == 2
    tried = []
    for d in agent_dirs:
        status = subprocess.run([str(BIN / "edge-agent"), "status", "--data-dir", str(d), "--json"],
                                capture_output=True, text=True, timeout=60)
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
    proc = subprocess.Popen([*DEMO, "--quick", "--agents", "2", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    proc = subprocess.run([*DEMO, "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "was not made by the demo" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_rejects_a_fleet_of_one(tmp_path: Path) -> None:
    proc = subprocess.run([*DEMO, "--quick", "--agents", "1", "--out", str(tmp_path / "o")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--agents must be at least 2" in proc.stderr


def test_a_failing_step_stops_the_demo_with_its_log_tail(tmp_path: Path) -> None:
    """The server cannot bind a port that is taken: the demo names the step and shows the server's log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*DEMO, "--quick", "--out", str(tmp_path / "out"), "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED: server" in proc.stderr
    assert f"--- last lines of {tmp_path / 'out' / 'logs' / 'server.log'}" in proc.stderr
    assert str(port) in proc.stderr  # the tail shows the server's own complaint about its address
    assert not _processes_mentioning(str(tmp_path / "out")), _processes_mentioning(str(tmp_path / "out"))
