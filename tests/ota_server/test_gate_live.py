"""Against the real server (gunicorn): publish and rollout warnings for releases a bundle has no
expectation for, gate evidence through the API and ``ota-ctl``, and reason codes checked on the wire."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from models.device_reports import assignment_digest
from ota_server.client.ctl import main
from tests.live_server import LiveServer, bundle_tar, live_server
from tests.ota_server.evidence_cases import FP32_SHA256, make_bundle_expecting, refusal_gate


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    tmp = tmp_path_factory.mktemp("gates")
    with live_server(tmp) as srv:
        make_bundle_expecting(tmp / "b1.0.0", name="sig", version="1.0.0", baselines=[])
        srv.publish(tmp / "b1.0.0")
        yield srv


def _ctl(server: LiveServer, role: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["--server", server.url, "--token", server.tokens[role], *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _poll(server: LiveServer, dev: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = server.api(
        "GET", f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}", token=dev["device_token"]
    )
    assert status == 200, body
    return dict(body["signed"])


def _send(server: LiveServer, dev: dict[str, Any], *reports: dict[str, Any]) -> tuple[int, Any]:
    status, body, _ = server.post_reports(dev, reports)
    return status, body


def _transition(signed: dict[str, Any], state: str, **fields: Any) -> dict[str, Any]:
    release = signed["release"]
    running = (
        {"name": release["name"], "version": release["version"], "release": release["counter"]}
        if state == "committed"
        else None
    )
    return {
        "id": str(uuid.uuid4()),
        "time": "2026-11-27T10:00:00Z",
        "type": "transition",
        "state": state,
        "rollout_id": signed["rollout_id"],
        "release": release["counter"],
        "reason_code": None,
        "running": running,
        "assignment_digest": assignment_digest(signed),
        **fields,
    }


def _run_release(server: LiveServer, devs: list[dict[str, Any]], version: str, group: str) -> None:
    server.create_rollout(model="sig", version=version, group=group, stages=[100])
    for d in devs:
        status, body = _send(server, d, _transition(_poll(server, d), "committed"))
        assert status == 200 and body["accepted"], body


def test_publish_and_rollout_warn_about_releases_without_expectation(
    server: LiveServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    eu = [server.enroll(name=f"eu{i}", group="eu") for i in range(3)]
    us = [server.enroll(name="us0", group="us")]
    _run_release(server, eu, "1.0.0", "eu")
    _run_release(server, us, "1.0.0", "us")

    make_bundle_expecting(tmp_path / "own", name="sig", version="1.1.0", baselines=[("sig@1.1.0", FP32_SHA256)])
    rc, out, err = _ctl(server, "publisher", "--json", "publish", str(tmp_path / "own"), capsys=capsys)
    assert rc == 0, err
    assert json.loads(out)["version"] == "1.1.0"
    assert (
        f"ota-ctl: warning: 3 devices in group eu run sig@1.0.0 (onnx-fp32, sha256 {FP32_SHA256[:12]}…): "
        "the bundle has no agreement expectation for it; they will judge it against its own FP32"
    ) in err
    assert "1 device in group us runs sig@1.0.0" in err

    rc, out, err = _ctl(
        server,
        "operator",
        "--json",
        "rollout",
        "create",
        "sig@1.1.0",
        "--group",
        "eu",
        "--stages",
        "100",
        capsys=capsys,
    )
    assert rc == 0, err
    view = json.loads(out)
    assert [(w["group"], w["devices"], w["release"]) for w in view["warnings"]] == [("eu", 3, "sig@1.0.0")]
    assert "3 devices in group eu run sig@1.0.0" in err and "group us" not in err
    assert any(e["kind"] == "warning" and "group eu" in e["detail"] for e in view["events"])

    # a bundle that was measured against what the fleet runs draws no warning
    make_bundle_expecting(
        tmp_path / "cov",
        name="sig",
        version="1.2.0",
        baselines=[("sig@1.0.0", FP32_SHA256), ("sig@1.2.0", FP32_SHA256)],
    )
    status, body, _ = server.api(
        "POST",
        "/api/v1/releases",
        data=bundle_tar(tmp_path / "cov"),
        token=server.tokens["publisher"],
        headers={"Content-Type": "application/x-tar"},
    )
    assert status == 201 and body["warnings"] == [], body
    assert "Traceback" not in server.log_text()


def test_gate_evidence_reaches_the_api_and_ota_ctl(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle_expecting(tmp_path / "g", name="gated", version="1.0.0", baselines=[])
    server.publish(tmp_path / "g")
    a, b = server.enroll(name="ga", group="gated"), server.enroll(name="gb", group="gated")
    rollout = server.create_rollout(model="gated", version="1.0.0", group="gated", stages=[100], max_failure_rate=1.0)
    gate = refusal_gate(baseline="gated@0.9.0")
    status, body = _send(
        server, a, _transition(_poll(server, a), "refused", reason_code="LOW_AGREEMENT", variant="onnx-fp32", gate=gate)
    )
    assert status == 200, body
    signed = _poll(server, b)
    status, body = _send(server, b, _transition(signed, "committed", variant="onnx-fp32"))
    assert status == 200, body

    status, dev, _ = server.api("GET", f"/api/v1/devices/{a['device_id']}", token=server.tokens["viewer"])
    assert status == 200 and dev["gate"]["agreement"] == gate["agreement"] and dev["gate"]["variant"] == "onnx-fp32"
    rc, out, _ = _ctl(server, "viewer", "rollout", "status", rollout["id"], capsys=capsys)
    assert rc == 0
    assert "variants chosen: onnx-fp32 x2" in out
    assert "LOW_AGREEMENT x1" in out and "significantly below what the bundle expects" in out
    assert "refuse after 10 frames (99% confidence), agreement 20.0%" in out
    assert f"{a['device_id']} flipped: red -> green x7, blue -> other x1" in out
    rc, out, _ = _ctl(server, "viewer", "devices", "show", a["device_id"], capsys=capsys)
    assert rc == 0
    assert "last gate: release" in out and "refused LOW_AGREEMENT" in out
    assert "vs 94.0% expected (threshold 89.0%) against gated@0.9.0" in out
    assert "flipped: red -> green x7" in out and "onnx-int8 vs onnx-fp32: cpu speedup" in out
    rc, out, _ = _ctl(server, "viewer", "devices", "show", b["device_id"], capsys=capsys)
    assert rc == 0 and "runs gated@1.0.0 (release" in out and "variant onnx-fp32)" in out


def test_an_unknown_reason_code_is_refused_on_the_wire_and_nothing_is_stored(server: LiveServer) -> None:
    dev = server.enroll(name="codes", group="codes")
    good = {"id": "good-1", "time": "2026-11-27T10:00:00Z", "type": "heartbeat", "reason_code": "SOURCE_ENDED"}
    bad = dict(good, id="bad-1", reason_code="LATENCY")
    status, body = _send(server, dev, good, bad)
    assert status == 400 and body["error"]["field"] == "reports[1].reason_code", body
    assert "SOURCE_ENDED" in body["error"]["message"]  # it says which codes exist
    oversized = dict(good, id="big-1", gate=dict(refusal_gate(), timing=[refusal_gate()["timing"][0]] * 9))
    status, body = _send(server, dev, oversized)
    assert status == 400 and body["error"]["field"] == "reports[0].gate.timing", body
    status, body = _send(server, dev, good)  # the batch was refused whole: the good one is new
    assert status == 200 and body == {"accepted": ["good-1"], "duplicates": []}


def test_min_agreement_help_says_it_is_a_floor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "create", "--help"]) == 0
    assert "a floor under the agreement the device expects" in capsys.readouterr().out
