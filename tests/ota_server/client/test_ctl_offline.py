"""ota-ctl against a real server whose TUF targets key is offline: releases show whether they are
signed, and a rollout of one awaiting the signature fails with the server's 409 and exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ota_server.cli import main as server_main
from ota_server.client.ctl import main
from ota_server.client.ctl_render import AWAITING
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server


def _ctl(server: LiveServer, role: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["--server", server.url, "--token", server.tokens[role], *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_releases_awaiting_the_offline_signature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "usb" / "targets.pem"
    with live_server(tmp_path, init_args=["--offline-targets", str(key)]) as server:
        make_bundle(tmp_path / "b", name="offc", version="1.0.0")
        rc, out, err = _ctl(server, "publisher", "publish", str(tmp_path / "b"), capsys=capsys)
        assert rc == 0, err
        assert "awaits the offline TUF targets signature" in out and "ota-server targets sign" in out

        rc, out, _ = _ctl(server, "viewer", "releases", capsys=capsys)
        header, row = out.splitlines()
        assert rc == 0 and "SIGNED" in header and AWAITING in row and "offc" in row
        rc, out, _ = _ctl(server, "viewer", "--json", "releases", "--name", "offc", capsys=capsys)
        assert rc == 0 and [r["awaiting_signature"] for r in json.loads(out)] == [True]
        rc, out, _ = _ctl(server, "viewer", "releases", "offc@1.0.0", capsys=capsys)
        assert rc == 0 and f"signed: {AWAITING}" in out and "offc/1.0.0/model.onnx" in out

        server.enroll(name="o1", group="offc")
        create = ("rollout", "create", "offc@1.0.0", "--group", "offc", "--stages", "100")
        rc, out, err = _ctl(server, "operator", *create, capsys=capsys)
        assert rc == 1 and out == ""
        assert err.startswith("ota-ctl: server said 409 ")
        assert "offc@1.0.0" in err and "awaits the offline TUF targets signature" in err
        assert "ota-server targets sign" in err

        assert server_main(["targets", "sign", "--data-dir", str(server.data_dir), "--targets-key", str(key)]) == 0
        capsys.readouterr()
        rc, out, _ = _ctl(server, "viewer", "releases", "offc@1.0.0", capsys=capsys)
        assert rc == 0 and "signed: yes" in out and "awaits" not in out
        rc, out, err = _ctl(server, "operator", "--json", *create, capsys=capsys)
        assert rc == 0, err
        assert json.loads(out)["status"] == "active"

        rc, _, err = _ctl(server, "viewer", "releases", "offc@1.0.0", "--name", "offc", capsys=capsys)
        assert rc == 2 and "not both" in err
        rc, _, err = _ctl(server, "viewer", "releases", "offc@9.9.9", capsys=capsys)
        assert rc == 1 and "404" in err
