"""SIGTERM stops ``edge-agent run --source VIDEO`` promptly mid-update, and a restart resumes it.

A real agent process, a real server and a real video: the stop lands during
the health watch of one update and during the shadow run of the next; each
time the agent must log that the stop cut that step short (the step itself
would run far longer than the test waits), exit 0, leave the journal at the
interrupted step, and a restart must carry the update to a valid end. The
refused update's reason code and detail must then show in ``status``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

from tests.bundles import make_bundle
from tests.edge_agent.media import write_video
from tests.edge_agent.update_harness import check_slots, run_agent, start_agent
from tests.live_server import live_server

EXIT_WAIT_S = 60.0  # only bounds the wait for the exit: the steps stopped here would run far longer
ONCE = ["run", "--once", "--health-window", "1", "--bench-queries", "5", "--bench-duration", "0.05"]


def _journal_state(data: Path) -> str:
    return str(json.loads((data / "journal.json").read_text())["state"])


def _stop_when_logged(proc: subprocess.Popen[str], marker: str, *, timeout: float = 90) -> str:
    """Read the agent's log until ``marker``; SIGTERM it; wait for the exit; return the whole log."""
    assert proc.stdout is not None
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not seen.wait(timeout):
            raise AssertionError(f"agent never logged {marker!r}:\n{''.join(lines)[-3000:]}")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGTERM did not stop the agent:\n{''.join(lines)[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    return "".join(lines)


def _assert_cut_short(log: str, marker: str, step: str) -> None:
    """The log shows, in this order: the step began, the signal came, the step was cut short, the agent stopped."""
    events = [marker, "signal 15: stopping", f"stop requested during the {step}", "agent stopped"]
    at = [log.find(e) for e in events]
    assert -1 not in at and at == sorted(at), (dict(zip(events, at, strict=True)), log[-3000:])


def test_sigterm_during_health_watch_and_shadow_run_exits_promptly_and_resumes(tmp_path: Path) -> None:
    video = write_video(tmp_path / "road.avi", [("red", 30), ("green", 30), ("blue", 30)])
    data = tmp_path / "truck"
    with live_server(tmp_path) as srv:
        out = run_agent(data, "enroll", "--server", srv.url, "--token", srv.credential("cam"), "--group", "cam")
        assert out.returncode == 0, out.stderr
        make_bundle(tmp_path / "v1", name="cam", version="1.0.0")
        make_bundle(tmp_path / "v2", name="cam", version="2.0.0")
        make_bundle(tmp_path / "v3", name="cam", version="3.0.0", behaviour="permuted")
        srv.publish(tmp_path / "v1")
        srv.create_rollout(model="cam", version="1.0.0", group="cam", stages=[100])
        out = run_agent(data, *ONCE, "--source", str(video))
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == "cam@1.0.0"

        # 1. stop inside an hour-long health window: cut short, exit 0, journal still at health-watch
        srv.publish(tmp_path / "v2")
        srv.create_rollout(model="cam", version="2.0.0", group="cam", stages=[100])
        proc = start_agent(
            data,
            "run",
            "--source",
            str(video),
            "--health-window",
            "3600",
            "--bench-queries",
            "5",
            "--bench-duration",
            "0.05",
        )
        log = _stop_when_logged(proc, "health watch of cam@2.0.0")
        assert proc.returncode == 0, log[-3000:]
        _assert_cut_short(log, "health watch of cam@2.0.0", "health watch of cam@2.0.0")
        assert _journal_state(data) == "health-watch"
        assert check_slots(data) == "cam@2.0.0"  # switched; the window is not over yet
        out = run_agent(data, *ONCE, "--source", str(video))
        assert out.returncode == 0, out.stderr
        assert "resuming" in out.stderr and _journal_state(data) == "idle"
        assert check_slots(data) == "cam@2.0.0"

        # 2. stop inside a slow shadow run (40 frames at 2 fps): cut short, exit 0, journal still at benchmarking
        srv.publish(tmp_path / "v3")
        srv.create_rollout(model="cam", version="3.0.0", group="cam", stages=[100], gates={"shadow_frames": 40})
        proc = start_agent(
            data, "run", "--source", str(video), "--max-fps", "2", "--bench-queries", "5", "--bench-duration", "0.05"
        )
        log = _stop_when_logged(proc, "shadow run of cam@3.0.0")
        assert proc.returncode == 0, log[-3000:]
        _assert_cut_short(log, "shadow run of cam@3.0.0", "shadow run of cam@3.0.0")
        assert "LOW_AGREEMENT" not in log  # no verdict: the run never reached its 40th frame
        assert _journal_state(data) == "benchmarking"
        assert check_slots(data) == "cam@2.0.0"
        out = run_agent(data, *ONCE, "--source", str(video))
        assert out.returncode == 3, out.stderr  # resumed, shadowed again, refused
        assert "LOW_AGREEMENT" in out.stderr and _journal_state(data) == "idle"
        assert check_slots(data) == "cam@2.0.0"

    # 3. status names the refusal's reason code and detail, as JSON and for people
    out = run_agent(data, "status", "--json")
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout)["last_update"]
    assert last["state"] == "failed" and last["version"] == "3.0.0"
    assert last["reason"] == "LOW_AGREEMENT" and "agrees with the active model" in last["detail"]
    out = run_agent(data, "status")
    assert out.returncode == 0, out.stderr
    assert "failed (LOW_AGREEMENT)" in out.stdout and "agrees with the active model" in out.stdout
