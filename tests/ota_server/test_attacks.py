"""The server-side attack suite: each security finding's attack, against a real server.

Every case that attacks a finding's fix carries ``@pytest.mark.finding("<id>")``. The cases live
where their rig does: :data:`ATTACK_FILES` lists the files, and
:func:`test_every_finding_has_an_attack_case` collects them and fails when a finding of
:data:`FINDINGS` has no case (or a case names an unknown finding). This file holds the attacks of
fake and hostile devices: a crowd of fakes enrolled with an enrollment credential posts
``committed`` to push a release the real vehicles refused, or ``failed`` to halt a security fix.
Each fake has a key of its own and signs its reports; what it was never issued is the rollout's
assignment, so none of its reports count. Real devices poll, are issued the assignment and count.
A hostile device's name, tags, hardware profile and report details reach the operator's terminal
through ``ota-ctl`` escaped, never raw.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.device_reports import assignment_digest, public_key_hex, sign_report
from ota_server.cli import main as server_main
from ota_server.client.ctl import main as ctl_main
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server
from tests.ota_server.evidence_cases import refusal_gate

HW = {"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2"]}
ROOT = Path(__file__).resolve().parents[2]

FINDINGS = {
    "H1": "slow clients (slowloris) hold no worker",
    "H2": "failed authentications are throttled per client address",
    "H3": "fake devices: per-device keys, signed reports, enrollment credentials",
    "M4": "revoked tokens and devices are refused on every worker",
    "M5": "telemetry quotas per device",
    "M6": "a sparse or crowded tar cannot outgrow the upload limit",
    "M7": "the agent caps every reply",
    "M8": "an unauthenticated 304 vouches for nothing",
    "M9": "release counter and gates bound to TUF",
    "M10": "key rotation, the offline targets key included",
    "L11": "device strings reach the terminal escaped",
    "L12": "the dashboard token is never in a URL",
    "L13": "publish errors name no server path",
    "L14": "deeply nested JSON is a 400",
    "L15": "a device's change re-signs only its own assignment",
    "L16": "a corrupt download is retried a bounded number of times",
    "L17": "a target hash is checked before it is used as a path",
}
ATTACK_FILES = (  # every file holding a case marked ``finding``, relative to the repository root
    "tests/ota_server/test_attacks.py",
    "tests/edge_agent/test_attacks.py",
    "tests/ota_server/test_hostile_input.py",
    "tests/ota_server/serving/test_slow_clients.py",
    "tests/ota_server/serving/test_auth.py",
    "tests/ota_server/serving/test_cache_scope.py",
    "tests/ota_server/test_report_quota_live.py",
    "tests/ota_server/test_dashboard_live.py",
    "tests/ota_server/trust/test_trust_live.py",
    "tests/ota_server/trust/test_offline_targets_live.py",
    "tests/ota_server/client/test_ctl_escape.py",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    tmp = tmp_path_factory.mktemp("fleet-attacks")
    with live_server(tmp) as srv:
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            make_bundle(tmp / f"b{version}", name="veh", version=version)
            srv.publish(tmp / f"b{version}")
        yield srv


def _enroll(server: LiveServer, name: str, token: str | None = None, **fields: Any) -> dict[str, Any]:
    """Enroll over raw HTTP with the default-group credential of ``ota-server init``."""
    key = Ed25519PrivateKey.generate()
    body = {"name": name, "hardware": HW, "public_key": public_key_hex(key), **fields}
    status, answer, _ = server.api("POST", "/api/v1/devices/enroll", json=body, token=token or server.enrollment_token)
    assert status == 201, answer
    return dict(answer, device_key=key)


def _poll(server: LiveServer, dev: dict[str, Any]) -> dict[str, Any]:
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}"
    status, body, _ = server.api("GET", path, token=dev["device_token"])
    assert status == 200, body
    return dict(body["signed"])


def _report(
    server: LiveServer,
    dev: dict[str, Any],
    state: str,
    *,
    rollout_id: str,
    release: int,
    digest: str | None,
    reason: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    rep = {
        "id": str(uuid.uuid4()),
        "time": "2026-11-27T10:00:00Z",
        "type": "transition",
        "state": state,
        "rollout_id": rollout_id,
        "release": release,
        "reason_code": reason,
        "detail": detail,
        "metrics": {},
        "running": None,
        "assignment_digest": digest,
    }
    signed = sign_report(dev["device_key"], dev["device_id"], rep)
    path = f"/api/v1/devices/{dev['device_id']}/reports"
    status, body, _ = server.api("POST", path, json={"reports": [signed]}, token=dev["device_token"])
    assert status == 200, body
    return dict(body)


def _release(server: LiveServer, version: str) -> int:
    status, body, _ = server.api("GET", "/api/v1/releases?name=veh", token=server.tokens["viewer"])
    assert status == 200, body
    return next(int(r["counter"]) for r in body["releases"] if r["version"] == version)


@pytest.mark.finding("H3")
def test_fake_commits_do_not_complete_a_release_the_vehicles_refused(server: LiveServer) -> None:
    real = [_enroll(server, f"vehicle-{i}") for i in range(2)]
    ro = server.create_rollout(
        model="veh", version="1.1.0", group="default", stages=[100], success_quota=0.9, max_failure_rate=0.05
    )
    signed = [_poll(server, d) for d in real]
    assert all(s["rollout_id"] == ro["id"] for s in signed)
    stolen = assignment_digest(signed[0])  # even a real vehicle's assignment digest does not help
    fakes = [_enroll(server, f"fake-{i}") for i in range(150)]
    answers = [  # they never poll: no assignment was issued to them
        _report(server, fake, "committed", rollout_id=ro["id"], release=ro["release"], digest=stolen) for fake in fakes
    ]
    for dev, s in zip(real, signed, strict=True):
        _report(
            server,
            dev,
            "refused",
            rollout_id=ro["id"],
            release=ro["release"],
            digest=assignment_digest(s),
            reason="SIGNATURE_INVALID",
        )
    state = server.rollout(ro["id"])
    if state["status"] != "completed":  # the next test's rollout needs the group free
        server.api("POST", f"/api/v1/rollouts/{ro['id']}/abort", token=server.tokens["operator"], json={})
    assert state["status"] == "halted", state
    assert state["totals"]["success"] == 0 and state["totals"]["failure"] == 2
    assert all(a["not_counted"] == a["accepted"] for a in answers)
    # the enrollment spike inside the active rollout's selection is shown and counted
    assert state["enrolled_since_created"] >= 150
    status, metrics, _ = server.api("GET", "/metrics", token=server.tokens["viewer"])
    assert status == 200
    line = next(
        x for x in metrics.decode().splitlines() if x.startswith("edgefleet_enrollments_in_active_rollout_total")
    )
    assert float(line.split()[-1]) >= 150


@pytest.mark.finding("H3")
def test_fake_failures_do_not_halt_a_security_fix(server: LiveServer) -> None:
    real = [_enroll(server, f"fixed-{i}") for i in range(2)]
    ro = server.create_rollout(model="veh", version="1.2.0", group="default", stages=[100], success_quota=0.01)
    signed = [_poll(server, d) for d in real]
    fakes = [_enroll(server, f"saboteur-{i}") for i in range(5)]
    for fake in fakes:
        _report(server, fake, "failed", rollout_id=ro["id"], release=ro["release"], digest=None, reason="NAN_OUTPUT")
    assert server.rollout(ro["id"])["status"] == "active"
    for dev, s in zip(real, signed, strict=True):
        _report(server, dev, "committed", rollout_id=ro["id"], release=ro["release"], digest=assignment_digest(s))
    state = server.rollout(ro["id"])
    assert state["status"] == "completed", state
    assert state["totals"]["failure"] == 0


@pytest.mark.finding("H3")
def test_unsigned_and_forged_reports_are_refused(server: LiveServer) -> None:
    dev = _enroll(server, "honest")
    other = _enroll(server, "other")
    rep = {"id": "u-1", "time": "2026-11-27T10:00:00Z", "type": "heartbeat", "metrics": {}}
    path = f"/api/v1/devices/{dev['device_id']}/reports"
    status, body, _ = server.api("POST", path, json={"reports": [rep]}, token=dev["device_token"])
    assert status == 401 and body["error"]["field"] == "reports[0].signature", body
    forged = sign_report(other["device_key"], dev["device_id"], rep)  # another device's key
    status, body, _ = server.api("POST", path, json={"reports": [forged]}, token=dev["device_token"])
    assert status == 401 and "does not verify" in body["error"]["message"], body
    good = sign_report(dev["device_key"], dev["device_id"], rep)
    tampered = dict(good, type="transition", state="committed")
    status, body, _ = server.api("POST", path, json={"reports": [tampered]}, token=dev["device_token"])
    assert status == 401, body
    status, body, _ = server.api("POST", path, json={"reports": [good]}, token=dev["device_token"])
    assert status == 200 and body["accepted"] == ["u-1"], body


@pytest.mark.finding("H3")
def test_enrollment_needs_a_public_key(server: LiveServer) -> None:
    body = {"name": "keyless", "hardware": HW}
    status, answer, _ = server.api("POST", "/api/v1/devices/enroll", json=body, token=server.enrollment_token)
    assert status == 400 and answer["error"]["field"] == "public_key", answer


@pytest.mark.finding("H3")
def test_credentials_bind_group_and_tags_and_limit_uses(server: LiveServer, tmp_path: Path) -> None:
    token = server.enrollment_credential(group="depot", tags=["eu", "bus"], uses=2)
    dev = _enroll(server, "bound", token)
    assert (dev["group"], dev["tags"]) == ("depot", ["bus", "eu"])
    status, answer, _ = server.api(
        "POST",
        "/api/v1/devices/enroll",
        json={"name": "chooser", "hardware": HW, "public_key": "ab" * 32, "group": "default"},
        token=token,
    )
    assert status == 403 and answer["error"]["field"] == "group", answer
    status, answer, _ = server.api(
        "POST",
        "/api/v1/devices/enroll",
        json={"name": "tagger", "hardware": HW, "public_key": "ab" * 32, "tags": ["canary"]},
        token=token,
    )
    assert status == 403 and answer["error"]["field"] == "tags", answer
    _enroll(server, "second", token, group="depot", tags=["eu", "bus"])
    status, answer, _ = server.api(
        "POST", "/api/v1/devices/enroll", json={"name": "third", "hardware": HW, "public_key": "ab" * 32}, token=token
    )
    assert status == 403 and "used up" in answer["error"]["message"], answer


@pytest.mark.finding("H3")
def test_expired_and_revoked_credentials_enroll_nothing(server: LiveServer) -> None:
    from ota_server.config import ServerConfig
    from ota_server.provision import create_enroll_credential, list_enroll_credentials, revoke_enroll_credential
    from ota_server.settings import load_settings

    config = load_settings(ServerConfig(data_dir=server.data_dir.resolve()))
    expired = create_enroll_credential(config, name="short", expires_s=1)
    revoked = create_enroll_credential(config, name="gone")
    revoke_enroll_credential(config, revoked["id"])
    listed = {c["id"]: c for c in list_enroll_credentials(config)}
    assert listed[revoked["id"]]["revoked"] and "token" not in listed[revoked["id"]]
    import time

    time.sleep(1.5)
    body = {"name": "late", "hardware": HW, "public_key": "ab" * 32}
    status, answer, _ = server.api("POST", "/api/v1/devices/enroll", json=body, token=expired["token"])
    assert status == 403 and "expired" in answer["error"]["message"], answer
    status, answer, _ = server.api("POST", "/api/v1/devices/enroll", json=body, token=revoked["token"])
    assert status in (401, 403), answer


@pytest.mark.finding("H3")
def test_pending_devices_wait_for_approval(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    token = server.enrollment_credential(group="vetted", approval=True)
    dev = _enroll(server, "newcomer", token)
    assert dev["status"] == "pending"
    made = server.create_rollout(model="veh", version="1.0.0", group="vetted", stages=[100])
    assert made["selected_devices"] == 0  # a pending device is in no rollout's selection
    server.api("POST", f"/api/v1/rollouts/{made['id']}/abort", token=server.tokens["operator"], json={})
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}"
    status, answer, _ = server.api("GET", path, token=dev["device_token"])
    assert status == 403 and "pending approval" in answer["error"]["message"], answer
    status, answer, _ = server.api("POST", f"/api/v1/devices/{dev['device_id']}/approve", token=server.tokens["viewer"])
    assert status == 403, answer
    argv = ["--server", server.url, "--token", server.tokens["operator"], "devices", "approve", dev["device_id"]]
    assert ctl_main(argv) == 0
    assert "approved" in capsys.readouterr().out
    assert server.as_role("viewer").device(dev["device_id"])["status"] == "active"
    assert _poll(server, dev)["device_id"] == dev["device_id"]
    assert ctl_main(argv) == 1  # not pending any more: 409


@pytest.mark.finding("H3")
def test_enroll_token_commands(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(server.data_dir)
    argv = ["enroll-token", "create", "--data-dir", data, "--name", "depot-7", "--group", "depot"]
    assert server_main([*argv, "--tags", "eu,bus", "--uses", "3", "--expires", "7d", "--approval", "--json"]) == 0
    cred = json.loads(capsys.readouterr().out)
    assert (cred["group"], cred["tags"], cred["max_uses"], cred["approval"]) == ("depot", ["bus", "eu"], 3, True)
    assert cred["token"].startswith("ef_enroll_") and cred["expires_at"]
    assert server_main(["enroll-token", "create", "--data-dir", data, "--expires", "soon"]) == 1
    assert server_main(["enroll-token", "create", "--data-dir", data, "--uses", "0"]) == 1
    capsys.readouterr()
    assert server_main(["enroll-token", "list", "--data-dir", data]) == 0
    listing = capsys.readouterr().out
    assert cred["id"] in listing and "uses 0/3" in listing and cred["token"] not in listing
    assert server_main(["enroll-token", "revoke", "--data-dir", data, cred["id"]]) == 0
    assert server_main(["enroll-token", "revoke", "--data-dir", data, "enr_nope"]) == 1
    capsys.readouterr()
    assert server_main(["enroll-token", "list", "--data-dir", data, "--json"]) == 0
    listed = {c["id"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed[cred["id"]]["revoked"] is True
    assert any(c["name"] == "fleet" and c["group"] == "default" and c["max_uses"] is None for c in listed.values())


HOSTILE = "\x1b[2J\x1b]0;owned\x07\rfake\x9b31m\u202e\x00\x7f\nline"
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")  # every control character but \t and \n


def _ctl(server: LiveServer, *argv: str) -> str:
    """``ota-ctl`` as the operator runs it (its own process) against ``server``; its stdout."""
    cmd = [sys.executable, "-m", "ota_server.client.ctl", "--server", server.url, "--token", server.tokens["viewer"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.finding("L11")
def test_a_hostile_devices_strings_reach_the_operators_terminal_escaped(server: LiveServer) -> None:
    """A device enrolls and reports with terminal control sequences (ESC, C1, bidi) in its name and
    tags, its refusal's detail and its gate evidence (its hardware profile is refused with them):
    ``ota-ctl``'s tables and its ``--json`` show them escaped, never raw."""
    token = server.enrollment_credential(group="tty", tags=["t" + HOSTILE])
    for field in ("board", "gpu_name"):  # the hardware profile is checked on the way in: printable only
        body = {"name": "n", "hardware": {**HW, field: HOSTILE}, "public_key": "ab" * 32}
        status, answer, _ = server.api("POST", "/api/v1/devices/enroll", json=body, token=token)
        assert status == 400 and answer["error"]["field"] == f"hardware.{field}", answer
    dev = _enroll(server, "n" + HOSTILE, token)
    shown = server.as_role("viewer").device(dev["device_id"])
    assert (shown["name"], shown["tags"]) == ("n" + HOSTILE, ["t" + HOSTILE])
    ro = server.create_rollout(model="veh", version="1.0.0", group="tty", stages=[100])
    signed = _poll(server, dev)
    assert signed["rollout_id"] == ro["id"], signed
    digest = assignment_digest(signed)
    gate = refusal_gate()
    gate["agreement"]["why"] = HOSTILE  # free text of the device's gate evidence
    evidence = {
        "id": str(uuid.uuid4()),
        "time": "2026-11-27T10:00:00Z",
        "type": "gate",
        "state": "refused",
        "rollout_id": ro["id"],
        "release": ro["release"],
        "reason_code": "LOW_AGREEMENT",
        "variant": gate["variant"],
        "gate": gate,
        "assignment_digest": digest,
    }
    status, body, _ = server.post_reports(dev, [evidence])
    assert status == 200 and body["accepted"] == [evidence["id"]], body
    _report(
        server,
        dev,
        "refused",
        rollout_id=ro["id"],
        release=ro["release"],
        digest=digest,
        reason="LOW_AGREEMENT",
        detail=HOSTILE,
    )
    try:
        outputs = {
            "devices list": _ctl(server, "devices", "list", "--group", "tty"),
            "devices show": _ctl(server, "devices", "show", dev["device_id"]),
            "rollout status": _ctl(server, "rollout", "status", ro["id"]),
            "--json devices show": _ctl(server, "--json", "devices", "show", dev["device_id"]),
        }
    finally:
        server.api("POST", f"/api/v1/rollouts/{ro['id']}/abort", token=server.tokens["operator"], json={})
    for command, text in outputs.items():
        assert not RAW.search(text), f"ota-ctl {command} printed a raw control character: {text!r}"
        assert not any(line.startswith("line") for line in text.split("\n")), text  # no line of the device's
    for command in ("devices list", "devices show"):  # rollout status shows none of the device's free text
        assert "\\x1b[2J" in outputs[command], f"ota-ctl {command} does not show the escaped sequence"
    assert "n\\x1b[2J" in outputs["devices list"] and "n\\x1b[2J" in outputs["devices show"]
    assert "why this comparison: \\x1b[2J" in outputs["devices show"]  # the gate evidence's free text
    assert "\\u202e" in outputs["devices show"] and dev["device_id"] in outputs["rollout status"]
    assert json.loads(outputs["--json devices show"])["tags"] == ["t" + HOSTILE]  # escaped, and exact


def test_every_finding_has_an_attack_case(tmp_path: Path) -> None:
    """Collect :data:`ATTACK_FILES` (pytest's own collection, in a process of its own) and read each
    case's ``finding`` marker: every finding has a case, every marker names a finding, every file one."""
    out = tmp_path / "findings.json"
    env = {**os.environ, "EDGEFLEET_FINDINGS_OUT": str(out)}
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ATTACK_FILES]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    marked: dict[str, list[str]] = json.loads(out.read_text())
    cases: dict[str, list[str]] = {finding: [] for finding in FINDINGS}
    unknown: list[str] = []
    for nodeid, findings in marked.items():
        for finding in findings:
            cases.get(finding, unknown).append(nodeid)
    assert not unknown, f"cases marked with a finding not in FINDINGS: {unknown}"
    missing = [finding for finding, ids in cases.items() if not ids]
    assert not missing, f"findings without an attack case: {missing}"
    files = {nodeid.split("::")[0] for nodeid, findings in marked.items() if findings}
    assert files == set(ATTACK_FILES), f"ATTACK_FILES without a marked case: {set(ATTACK_FILES) - files}"
