"""Crash-safe journal and agent-state files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.errors import JournalError, ReasonCode
from edge_agent.trust.assignment import TargetRef
from edge_agent.update.core import Record, State, StepOutcome, Update
from edge_agent.update.journal import (
    AgentState,
    Journal,
    StateFile,
    remove_stale_temps,
    write_atomic,
)

UPDATE = Update(
    release=1,
    name="tiny",
    version="1.0.0",
    rollout_id=None,
    variant="onnx-fp32",
    manifest=TargetRef("tiny/1.0.0/bundle.json", 10, "c" * 64),
    target=TargetRef("tiny/1.0.0/model.onnx", 20, "d" * 64),
    slot="a",
)


def test_missing_journal_means_idle(tmp_path: Path) -> None:
    assert Journal(tmp_path / "journal.json").load() == Record()


def test_journal_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.json")
    rec = Record(State.STAGING, UPDATE, 1, StepOutcome(ReasonCode.SLOW_RETRIEVAL, "slow"))
    j.save(rec)
    assert j.load() == rec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_corrupt_journal_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "journal.json").write_text('{"state": "nonsense"}')
    with pytest.raises(JournalError, match="invalid record"):
        Journal(tmp_path / "journal.json").load()
    (tmp_path / "journal.json").write_text("{not json")
    with pytest.raises(JournalError, match="cannot read"):
        Journal(tmp_path / "journal.json").load()


def test_an_unknown_reason_code_in_the_journal_is_an_error_not_a_default(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.json")
    j.save(
        Record(
            State.BENCHMARKING,
            UPDATE,
            0,
            StepOutcome(
                ReasonCode.NOT_ENOUGH_FRAMES, "timeout", {"frames": 3.0}, {"agreement": {"decision": "continue"}}
            ),
        )
    )
    assert j.load().outcome.reason is ReasonCode.NOT_ENOUGH_FRAMES
    data = json.loads((tmp_path / "journal.json").read_text())
    data["outcome"]["reason"] = "NOT_ENOUGH_FRMAES"
    (tmp_path / "journal.json").write_text(json.dumps(data))
    with pytest.raises(JournalError, match="unknown reason code 'NOT_ENOUGH_FRMAES'"):
        j.load()


def test_state_file_is_private_and_round_trips(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "agent-state.json")
    st = AgentState(nonce="ab" * 16, etag='"x"', highest_release=4).with_settled("4:" + "e" * 64, "committed")
    sf.save(st)
    assert sf.load() == st
    assert (tmp_path / "agent-state.json").stat().st_mode & 0o777 == 0o600


def test_settled_keeps_only_recent_entries() -> None:
    st = AgentState()
    for i in range(30):
        st = st.with_settled(f"{i}:x", "failed", keep=5)
    assert list(st.settled) == [f"{i}:x" for i in range(25, 30)]


WRITER = """
import sys, json
from pathlib import Path
from edge_agent.update.journal import write_atomic
i = 0
while True:
    write_atomic(Path(sys.argv[1]), json.dumps({"i": i, "pad": "x" * 20000}).encode())
    i += 1
"""


def test_kill_during_writes_never_leaves_a_torn_file(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites the file in a loop: the file always parses."""
    target = tmp_path / "j.json"
    write_atomic(target, b'{"i": -1, "pad": ""}')
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=Path(__file__).resolve().parents[3])
        deadline = time.monotonic() + 60
        while json.loads(target.read_text())["i"] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # let it rewrite the file a few times first
        time.sleep(0.05 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = json.loads(target.read_text())  # parses: old or new, never torn
        assert data["i"] >= 5 and len(data["pad"]) == 20000
        remove_stale_temps(target)  # what the agent does at start
        assert [p.name for p in tmp_path.iterdir()] == ["j.json"]
        write_atomic(target, b'{"i": -1, "pad": ""}')
