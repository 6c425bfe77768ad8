"""Telemetry outbox: durable, in order, each report id sent once, kept while the server is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.errors import ServerUnreachable
from edge_agent.link.client import ServerClient
from edge_agent.link.telemetry import Outbox, make_report
from models.device_reports import public_key_hex
from tests.edge_agent.update_harness import RepoSim, SimServer


@pytest.fixture
def server() -> Any:
    srv = SimServer(RepoSim())
    yield srv
    srv.close()


def _client(server: SimServer) -> ServerClient:
    """A client of device ``dev_1``, which signs its reports with the key the server knows."""
    key = Ed25519PrivateKey.generate()
    server.device_keys["dev_1"] = public_key_hex(key)
    client = ServerClient(server.url, token="t")
    client.device_key = key
    return client


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
    client = _client(server)
    assert box.flush(lambda rs: client.post_reports("dev_1", rs), batch=3) == 7
    assert [r["id"] for r in server.reports] == [r["id"] for r in reports]
    assert box.count() == 0


def test_server_down_keeps_reports_and_a_resend_is_deduplicated(tmp_path: Path, server: SimServer) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    first = make_report("heartbeat")
    box.add(first)
    client = _client(server)
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


def test_an_agent_over_its_report_quota_waits_for_retry_after(tmp_path: Path) -> None:
    """Against the real server: the outbox floods the largest batches until the server answers
    429; the client raises RateLimited with the server's Retry-After, and the outbox sends nothing
    more until it passed, keeping every report."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.errors import RateLimited
    from models.device_reports import public_key_hex
    from tests.live_server import live_server

    now = [0.0]
    box = Outbox(tmp_path / "outbox.sqlite", clock=lambda: now[0])
    with live_server(tmp_path / "srv") as srv:
        key = Ed25519PrivateKey.generate()
        hardware = {"arch": "x86_64", "accelerator": "cpu"}
        enrolled = ServerClient(srv.url).enroll(
            srv.enrollment_token, {"name": "chatty", "hardware": hardware, "public_key": public_key_hex(key)}
        )
        client = ServerClient(srv.url, token=enrolled["device_token"], timeout_s=30)
        client.device_key = key
        posts: list[int] = []

        def send(reports: list[dict[str, Any]]) -> Any:
            posts.append(len(reports))
            return client.post_reports(enrolled["device_id"], reports)

        with pytest.raises(RateLimited) as refused:
            for _ in range(20):  # the default burst holds 1000 reports: the third batch is refused
                for _ in range(500):
                    box.add(make_report("heartbeat", detail="x" * 2000))
                box.flush(send)
        assert refused.value.status == 429 and refused.value.retry_after_s >= 1
        assert len(posts) <= 3 and box.count() >= 500
        waiting, calls = box.count(), len(posts)
        now[0] += refused.value.retry_after_s - 0.5
        assert box.flush(send) == 0 and len(posts) == calls and box.count() == waiting
        assert 0 < box.hold_s() <= 0.5
        now[0] += 1.0  # Retry-After passed: the outbox tries again (and the server, still full, refuses)
        with pytest.raises(RateLimited):
            box.flush(send)
        assert len(posts) == calls + 1 and box.count() == waiting
