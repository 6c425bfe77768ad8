"""Device identity: enrollment makes the device's key, keeps it private, and every report is signed."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentPaths
from edge_agent.errors import ConfigError, ServerError
from edge_agent.link.client import ServerClient
from edge_agent.link.identity import device_key_path, enroll, load_device_key
from edge_agent.link.telemetry import make_report
from models.device_reports import public_key_hex, verify_report
from tests.edge_agent.update_harness import RepoSim, SimServer


@pytest.fixture
def server() -> Any:
    srv = SimServer(RepoSim())
    yield srv
    srv.close()


def test_enrollment_keeps_the_private_key_on_the_device(tmp_path: Path, server: SimServer) -> None:
    paths = AgentPaths(tmp_path / "dev")
    identity = enroll(paths, server=server.url, token="ef_enroll_sim", name="dev")
    key_file = device_key_path(paths)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = load_device_key(paths)
    # the server got the public half, never the private key
    assert server.device_keys[identity.device_id] == public_key_hex(key)
    assert key_file.read_bytes() not in paths.identity.read_bytes()


def test_reports_are_signed_and_a_tampered_one_is_refused(tmp_path: Path, server: SimServer) -> None:
    paths = AgentPaths(tmp_path / "dev")
    identity = enroll(paths, server=server.url, token="ef_enroll_sim", name="dev")
    client = ServerClient(server.url, token=identity.device_token)
    client.device_key = load_device_key(paths)
    report = dict(
        make_report("transition", state="committed", rollout_id="ro_1", release=3), assignment_digest="a" * 64
    )
    assert client.post_reports(identity.device_id, [report])["accepted"] == [report["id"]]
    sent = server.reports[-1]
    assert verify_report(server.device_keys[identity.device_id], identity.device_id, sent)
    assert not verify_report(server.device_keys[identity.device_id], identity.device_id, dict(sent, state="failed"))
    unsigned = ServerClient(server.url, token=identity.device_token)  # no key: the server refuses it
    with pytest.raises(ServerError, match="401"):
        unsigned.post_reports(identity.device_id, [make_report("heartbeat")])


def test_a_device_without_a_key_is_told_to_re_enroll(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="re-enroll"):
        load_device_key(AgentPaths(tmp_path / "never-enrolled"))
