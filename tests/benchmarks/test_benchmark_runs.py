"""Short real runs of the benchmarks that interleave their scenarios: each against a real server
(``ota-server serve`` under gunicorn on 127.0.0.1), its JSON read back.

What is checked is the shape of a run — every scenario measured in every round, the order
rotated from round to round, per-scenario intervals present — never a time or a rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _interval_ok(iv: dict[str, Any]) -> bool:
    return iv["low"] <= iv["point"] <= iv["high"] and iv["confidence"] == 0.95


def test_server_costs_measures_reads_and_reports_in_rotated_rounds(tmp_path: Path) -> None:
    proc = _run(
        "server_costs.py", "--quick", "--devices", "4", "--rounds", "2", "--reads", "30", "--out", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "server_costs.json").read_text())
    databases = {r["database"] for r in result["reads"]}
    assert "sqlite" in databases
    if os.environ.get("EDGEFLEET_REQUIRE_POSTGRES") == "1":
        assert "postgresql" in databases, result["notes"]
    for r in result["reads"]:
        assert r["n"] >= 30 and r["cpu_us"]["point"] > 0
        assert r["cpu_us"]["low"] <= r["cpu_us"]["point"] <= r["cpu_us"]["high"]
        # each pooled read is compared with its own-connection twin, measured in the same rounds
        assert (r["cpu_vs_own"] is not None) == ("pooled" in r["read"])
    reports = result["reports"]
    assert reports["round_order"] == [["report", "ingest", "poll-304"], ["ingest", "poll-304", "report"]]
    assert {r["scenario"]: r["requests"] for r in reports["rows"]} == {"report": 8, "ingest": 8, "poll-304": 8}
    for r in reports["rows"]:
        assert len(r["rounds"]) == 2 and _interval_ok(r["cpu_ms"])
    assert "generation reads" in proc.stdout and "ingest" in proc.stdout


def test_server_load_interleaves_the_poll_scenarios(tmp_path: Path) -> None:
    proc = _run(
        "server_load.py",
        *("--devices", "40", "--clients", "2", "--duration", "1.2", "--rounds", "2", "--artifact-mb", "1"),
        *("--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "server_load.json").read_text())
    polls = result["polls"]
    errors = [e for m in ("poll-sign", "poll-200", "poll-304") for e in polls[m]["errors"]]
    # a run across the assignments' re-signing moment (on the hour and the half hour) sees 200s
    # in poll-304, reported as errors: the only failure this test lets pass
    assert proc.returncode == 0 or all(": 200 " in e for e in errors), proc.stdout + proc.stderr
    assert polls["round_order"] == [["poll-sign", "poll-200", "poll-304"], ["poll-200", "poll-304", "poll-sign"]]
    assert len(polls["rewarm_s"]) == 2  # one untimed re-warm after each poll-sign
    for mode, position in (("poll-sign", [0, 2]), ("poll-200", [1, 0]), ("poll-304", [2, 1])):
        m = polls[mode]
        assert [r["position"] for r in m["rounds"]] == position
        assert m["requests"] == sum(r["requests"] for r in m["rounds"]) > 0
        lo, hi = m["per_s_ci95"]
        assert lo <= hi


def test_fleet_rollout_alternates_the_polling_modes(tmp_path: Path) -> None:
    out = tmp_path / "fleet_rollout.json"
    proc = _run(
        "fleet_rollout.py",
        *("--quick", "--devices", "40", "--stages", "50,100", "--rounds", "2", "--failure-rate", "0"),
        *("--out", str(out)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["round"], r["mode"]) for r in result["rows"]] == [
        (0, "baseline"),
        (0, "etag"),
        (1, "etag"),
        (1, "baseline"),
    ]
    assert len({r["version"] for r in result["rows"]}) == 4  # a release of its own per rollout
    assert all(r["rollout_status"] == "completed" for r in result["rows"])
    summary = {s["mode"]: s for s in result["summary"]}
    assert summary.keys() == {"baseline", "etag"}
    for s in summary.values():
        assert s["rounds"] == 2 and _interval_ok(s["rollout_s"])
    assert "mean over the rounds" in proc.stdout
