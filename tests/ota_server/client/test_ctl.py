"""ota-ctl against the real server: publish with progress, rollouts, devices, audit, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ota_server.client.bundle import bundle_files
from ota_server.client.ctl import main
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with live_server(tmp_path_factory.mktemp("ctl")) as srv:
        yield srv


def _ctl(server: LiveServer, role: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["--server", server.url, "--token", server.tokens[role], *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_publish_rollout_and_read_back(server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_bundle(tmp_path / "b", name="ctl", version="1.0.0")
    rc, out, _ = _ctl(server, "publisher", "--json", "publish", str(tmp_path / "b"), capsys=capsys)
    assert rc == 0
    release = json.loads(out)
    assert release["name"] == "ctl" and len(release["files"]) == 2

    rc, out, _ = _ctl(server, "viewer", "releases", capsys=capsys)
    assert rc == 0 and "ctl" in out and "COUNTER" in out

    server.enroll(name="c1", group="ctl-group")
    rc, out, _ = _ctl(
        server,
        "operator",
        "--json",
        "rollout",
        "create",
        "ctl@1.0.0",
        "--group",
        "ctl-group",
        "--stages",
        "50,100",
        "--max-failure-rate",
        "10%",
        capsys=capsys,
    )
    assert rc == 0, out
    rollout = json.loads(out)
    assert rollout["stages"] == [50, 100] and rollout["max_failure_rate"] == 0.1

    rc, out, _ = _ctl(server, "viewer", "rollout", "status", rollout["id"], capsys=capsys)
    assert rc == 0 and rollout["id"] in out and "IN_PROGRESS" in out and "created" in out
    rc, out, _ = _ctl(server, "operator", "rollout", "pause", rollout["id"], capsys=capsys)
    assert rc == 0 and "status paused" in out
    rc, out, _ = _ctl(server, "viewer", "rollout", "list", capsys=capsys)
    assert rc == 0 and rollout["id"] in out
    rc, out, _ = _ctl(server, "viewer", "devices", "list", "--group", "ctl-group", capsys=capsys)
    assert rc == 0 and "c1" in out
    rc, out, _ = _ctl(server, "admin", "audit", capsys=capsys)
    assert rc == 0 and "rollout.pause" in out and "release.publish" in out


def test_publish_leaves_out_files_the_manifest_does_not_name(
    server: LiveServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bundle = tmp_path / "opt"
    make_bundle(bundle, name="ctl-opt", version="1.0.0")
    (bundle / "report.md").write_text("# optimizer report\n")  # what edge-optimize writes beside the bundle
    (bundle / "report.json").write_text("{}")
    files, extra = bundle_files(bundle)
    assert {p.name for p in files} == {"bundle.json", "model.onnx"} and extra == ["report.json", "report.md"]
    with caplog.at_level("WARNING", logger="ota_ctl"):
        rc, out, err = _ctl(server, "publisher", "--json", "publish", str(bundle), capsys=capsys)
    assert rc == 0, (out, err)
    assert json.loads(out)["name"] == "ctl-opt"
    assert "report.json, report.md" in caplog.text
    # the test helper packs the same way (the server itself stays strict: see test_api_errors)
    make_bundle(tmp_path / "opt2", name="ctl-opt", version="1.0.1")
    (tmp_path / "opt2" / "report.md").write_text("x")
    assert server.publish(tmp_path / "opt2")["version"] == "1.0.1"


def test_exit_codes(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, err = _ctl(server, "viewer", "rollout", "pause", "ro_nope", capsys=capsys)
    assert rc == 1 and "403" in err  # viewer may not pause
    rc, _, err = _ctl(server, "operator", "rollout", "pause", "ro_nope", capsys=capsys)
    assert rc == 1 and "404" in err and "ro_nope" in err
    rc, _, err = _ctl(server, "operator", "rollout", "create", "no-version", capsys=capsys)
    assert rc == 2 and "MODEL@VERSION" in err
    assert main(["rollout", "bogus-subcommand"]) == 2
    capsys.readouterr()
    rc = main(["--server", "http://127.0.0.1:9", "--token", server.tokens["viewer"], "releases"])
    assert rc == 3 and "cannot reach" in capsys.readouterr().err

    # env and config file
    monkeypatch.setenv("EDGEFLEET_SERVER", server.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", server.tokens["viewer"])
    assert main(["--json", "releases"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    monkeypatch.delenv("EDGEFLEET_SERVER")
    monkeypatch.delenv("EDGEFLEET_TOKEN")
    cfg = tmp_path / "ota-ctl.yaml"
    cfg.write_text(f"server: {server.url}\ntoken: {server.tokens['admin']}\n")
    assert main(["--config", str(cfg), "--json", "audit"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["action"] == "server.init"


def test_entry_point_runs() -> None:
    out = subprocess.run([str(BIN / "ota-ctl"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Exit codes" in out.stdout
