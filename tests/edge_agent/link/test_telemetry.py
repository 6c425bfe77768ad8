"""Telemetry outbox: durable, in order, each report id sent once, kept while the server is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ServerUnreachable
from edge_agent.link.client import ServerClient
from edge_agent.link.telemetry import Outbox, make_report
from tests.edge_agent.update_harness import RepoSim, SimServer


@pytest.fixture
def server() -> Any:
    srv = SimServer(RepoSim())
    yield srv
    srv.close()


def test_reports_persist_across_reopen_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    ids = []
    for i in range(5):
        r = make_report("transition", state="downloading", release=i)
        ids.append(r["id"])
        box.add(r)
    box.add({**make_report("heartbeat"), "id": ids[0]})  # same id again: ignored
    box.close()
    box = Outbox(tmp_path / "outbox.sqlite")
    assert [r["id"] for r in box.pending()] == ids and box.count() == 5


def test_flush_sends_in_order_and_removes_acknowledged(tmp_path: Path, server: SimServer) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    reports = [make_report("transition", state="committed", release=i) for i in range(7)]
    for r in reports:
        box.add(r)
    client = ServerClient(server.url, token="t")
    assert box.flush(lambda rs: client.post_reports("dev_1", rs), batch=3) == 7
    assert [r["id"] for r in server.reports] == [r["id"] for r in reports]
    assert box.count() == 0


def test_server_down_keeps_reports_and_a_resend_is_deduplicated(tmp_path: Path, server: SimServer) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    first = make_report("heartbeat")
    box.add(first)
    client = ServerClient(server.url, token="t")
    server.knobs.fail_reports = True
    with pytest.raises(ServerUnreachable):
        box.flush(lambda rs: client.post_reports("dev_1", rs))
    assert box.count() == 1
    server.knobs.fail_reports = False
    box.flush(lambda rs: client.post_reports("dev_1", rs))
    box.add(first)  # a crash after sending but before deleting would resend the same id
    answer = client.post_reports("dev_1", box.pending())
    assert answer == {"accepted": [], "duplicates": [first["id"]]}
    assert [r["id"] for r in server.reports] == [first["id"]]


def test_unreachable_server_raises_a_transient_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(make_report("heartbeat"))
    with pytest.raises(ServerUnreachable):
        box.flush(lambda rs: ServerClient("http://127.0.0.1:9", timeout_s=1).post_reports("d", rs))
    assert box.count() == 1


def test_a_report_carries_the_reason_code_the_chosen_variant_and_the_gate_evidence(tmp_path: Path) -> None:
    from edge_agent.errors import ReasonCode

    gate = {
        "agreement": {
            "decision": "refuse",
            "frames": 10,
            "judged_against": "active",
            "confusion": [{"active": "red", "candidate": "green", "count": 10}],
        }
    }
    r = make_report("gate", state="failed", reason_code=ReasonCode.LOW_AGREEMENT, variant="onnx-int8", gate=gate)
    assert (r["reason_code"], r["variant"], r["gate"]) == ("LOW_AGREEMENT", "onnx-int8", gate)
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(r)
    assert box.pending()[0]["gate"]["agreement"]["confusion"][0]["candidate"] == "green"  # JSON-ready
    plain = make_report("heartbeat")
    assert "variant" not in plain and "gate" not in plain and plain["reason_code"] is None
