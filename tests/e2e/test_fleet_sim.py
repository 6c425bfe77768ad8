"""The fleet simulation against a real server (gunicorn, SQLite) from ``tests/live_server.py``.

Small fleets, real HTTP: enrollment, signed assignments (signature, device id and
nonce checked by the simulator), ETag polling, target downloads checked by
sha256, reports; the server stages, advances and halts the rollouts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ota_server.client import simulate
from ota_server.client.simulator import verify_assignment
from tests.bundles import make_bundle, make_onnx
from tests.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fleet-sim")
    with live_server(tmp) as srv:
        for version, behaviour in (("1.0.0", "ok"), ("1.1.0", "permuted")):
            make_bundle(tmp / version, name="tiny", version=version, behaviour=behaviour)
            srv.publish(tmp / version)
        yield srv


def _argv(srv: LiveServer, group: str, *extra: str) -> list[str]:
    return [
        "--server",
        srv.url,
        "--enroll-token",
        srv.credential(group),
        "--api-token",
        srv.tokens["operator"],
        "--group",
        group,
        "--name-prefix",
        group,
        "--workers",
        "8",
        "--poll-interval",
        "0.5",
        "--apply-delay",
        "0.2",
        "--duration",
        "90",
        *extra,
    ]


def test_staged_rollout_completes_across_the_fleet(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sim.json"
    code = simulate.main(
        _argv(
            server,
            "fleet-a",
            "--devices",
            "40",
            "--start-rollout",
            "tiny@1.0.0",
            "--stages",
            "10,50,100",
            "--hardware-mix",
            "cpu-x86_64=3,jetson-orin=1",
            "--json-out",
            str(out),
        )
    )
    assert code == 0, capsys.readouterr()
    summary = json.loads(out.read_text())
    assert summary["rollout"]["status"] == "completed"
    assert summary["versions"] == {"1.0.0": 40}
    counts = summary["counts"]
    assert counts["committed"] == 40 and counts.get("failed", 0) == 0
    assert counts.get("assignments_rejected", 0) == 0 and counts.get("errors", 0) == 0
    assert counts["poll_304"] > 0, "devices keeping their nonce should get 304s"
    assert counts["bytes_downloaded"] == 40 * len(make_onnx("ok")), "each device fetched the model once"
    kinds = [e["kind"] for e in summary["rollout"]["events"]]
    assert kinds.count("stage-advanced") == 2 and kinds[-1] == "completed", kinds
    assert "poll throughput" in capsys.readouterr().out


def test_failing_release_halts_and_reaches_no_device(server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    code = simulate.main(
        _argv(
            server,
            "fleet-b",
            "--devices",
            "30",
            "--start-rollout",
            "tiny@1.1.0",
            "--stages",
            "10,50,100",
            "--max-failure-rate",
            "0.2",
            "--version-failure-rates",
            "1.1.0=1.0",
            "--failure-reason",
            "LOW_AGREEMENT",
            "--json-out",
            str(out),
        )
    )
    assert code == 0
    summary = json.loads(out.read_text())
    rollout = summary["rollout"]
    assert rollout["status"] == "halted", rollout
    assert "LOW_AGREEMENT" in rollout["halt_reason"]
    assert rollout["failure_reasons"].get("LOW_AGREEMENT", 0) >= 1
    assert rollout["stage"] == 0, "a halted first stage must not advance"
    assert summary["versions"] == {"none": 30}
    devices = server.as_role("viewer").devices()
    fleet_b = [d for d in devices if d["group"] == "fleet-b"]
    assert len(fleet_b) == 30
    assert not [d for d in fleet_b if (d.get("running") or {}).get("version") == "1.1.0"]


def test_tampered_assignment_is_rejected(server: LiveServer) -> None:
    dev = server.enroll(name="probe", group="probe")
    nonce = "ab" * 16
    status, _, body = server.client.assignment(dev["device_id"], token=dev["device_token"], nonce=nonce)
    assert status == 200 and body is not None
    key = dev["director_public_key"]["keyval"]["public"]
    assert verify_assignment(body, key, device_id=dev["device_id"], nonce=nonce) is None
    assert verify_assignment(body, key, device_id=dev["device_id"], nonce="cd" * 16) == "NONCE_MISMATCH"
    tampered = {**body, "signed": {**body["signed"], "expires": "2099-01-01T00:00:00Z"}}
    assert verify_assignment(tampered, key, device_id=dev["device_id"], nonce=nonce) == "SIGNATURE_INVALID"


def test_bad_arguments_are_named(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        simulate.main(_argv(server, "x", "--hardware-mix", "quantum=1"))
    assert exc.value.code == 2
    assert "--hardware-mix class must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        simulate.main(["--server", server.url, "--enroll-token", "t", "--start-rollout", "tiny@1.0.0"])
    assert "need --api-token" in capsys.readouterr().err
