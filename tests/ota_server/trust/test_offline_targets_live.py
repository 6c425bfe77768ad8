"""The offline targets key against a running server (gunicorn), on SQLite and PostgreSQL: a stock
``tuf.ngclient.Updater`` sees a published release only after ``ota-server targets sign``, a
rollout of the unsigned release is refused with 409 (and the dashboard shows it unsigned), the
director assigns only what TUF lists, and director and targets key rotations reach the client through TUF."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from tuf.ngclient import Updater  # type: ignore[attr-defined]

from ota_server.cli import main as server_main
from ota_server.trust.keys import DIRECTOR_TARGET, verify_envelope
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server


def _updater(server: LiveServer, tmp: Path) -> Updater:
    """A stock ngclient over ``tmp`` (its metadata cache persists between calls), bootstrapped
    from the root the vehicles pin."""
    meta = tmp / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (tmp / "targets").mkdir(exist_ok=True)
    bootstrap = None if (meta / "root.json").exists() else server.root_json.read_bytes()
    updater = Updater(
        metadata_dir=str(meta),
        metadata_base_url=server.url + "/tuf/metadata/",
        target_base_url=server.url + "/tuf/targets/",
        target_dir=str(tmp / "targets"),
        bootstrap=bootstrap,
    )
    updater.refresh()
    return updater


def _assignment(server: LiveServer, dev: dict[str, Any]) -> dict[str, Any]:
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}"
    status, body, _ = server.api("GET", path, token=dev["device_token"])
    assert status == 200, body
    return dict(body)


def _cli(*argv: str) -> int:
    return server_main(list(argv))


@pytest.mark.finding("M10")
def test_offline_targets_ceremony_against_a_live_server(db_url: str | None, tmp_path: Path) -> None:
    key = tmp_path / "usb" / "targets.pem"
    with live_server(tmp_path, db_url=db_url, init_args=["--offline-targets", str(key)]) as server:
        data = str(server.data_dir)
        client = tmp_path / "client"
        assert not (server.data_dir / "keys" / "targets.pem").exists() and key.exists()
        dev = server.enroll(name="van", group="off")

        make_bundle(tmp_path / "b1", name="off", version="1.0.0")
        release = server.publish(tmp_path / "b1")
        assert release["awaiting_signature"] is True
        paths = [f["path"] for f in release["files"]]
        assert _updater(server, client).get_targetinfo(paths[0]) is None  # TUF does not list it yet

        status, body, _ = server.api(
            "POST",
            "/api/v1/rollouts",
            json={"model": "off", "version": "1.0.0", "group": "off", "stages": [100]},
            token=server.tokens["operator"],
        )
        assert status == 409, body
        assert "awaits the offline TUF targets signature" in body["error"]["message"]
        assert "ota-server targets sign" in body["error"]["message"]
        assert _assignment(server, dev)["signed"]["target"] is None
        status, page, _ = server.api("GET", "/dashboard", token=server.tokens["viewer"])
        assert status == 200 and b"no: awaiting the offline targets signature" in page

        assert _cli("targets", "sign", "--data-dir", data, "--targets-key", str(key)) == 0
        status, page, _ = server.api("GET", "/dashboard", token=server.tokens["viewer"])
        assert status == 200 and b"awaiting" not in page and b"<td>yes</td>" in page
        updater = _updater(server, client)
        for path in paths:
            info = updater.get_targetinfo(path)
            assert info is not None and info.custom["edgefleet"]["release"] == release["counter"]
            local = updater.download_target(info)
            assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == info.hashes["sha256"]
        status, body, _ = server.api("GET", "/api/v1/releases/off/1.0.0", token=server.tokens["viewer"])
        assert status == 200 and body["awaiting_signature"] is False
        first = server.create_rollout(model="off", version="1.0.0", group="off", stages=[100])
        assignment = _assignment(server, dev)
        assert assignment["signed"]["target"]["path"] in paths
        old_director = server.director_public_key()
        assert verify_envelope(old_director, assignment)

        # the director key rotates through the staging: no switch before the signature
        assert _cli("keys", "rotate", "--data-dir", data, "--role", "director") == 0
        assert verify_envelope(old_director, _assignment(server, dev))
        assert _cli("targets", "sign", "--data-dir", data, "--targets-key", str(key)) == 0
        new_director = server.director_public_key()
        assert new_director["keyid"] != old_director["keyid"]
        listed = _updater(server, client).get_targetinfo(DIRECTOR_TARGET)
        assert listed is not None
        assert [k["keyid"] for k in listed.custom["edgefleet"]["keys"]] == [
            new_director["keyid"],
            old_director["keyid"],
        ]
        assert verify_envelope(new_director, _assignment(server, dev))  # workers sign with the new key
        assert _cli("targets", "sign", "--data-dir", data, "--targets-key", str(key)) == 0  # the removal
        listed = _updater(server, client).get_targetinfo(DIRECTOR_TARGET)
        assert listed is not None and [k["keyid"] for k in listed.custom["edgefleet"]["keys"]] == [
            new_director["keyid"]
        ]

        # the targets key rotates with both keys given; the client follows root 2
        new_key = tmp_path / "usb" / "targets-2.pem"
        rotate = ["keys", "rotate", "--data-dir", data, "--role", "targets", "--targets-key", str(key)]
        assert _cli(*rotate, "--new-key-out", str(new_key)) == 0
        make_bundle(tmp_path / "b2", name="off", version="1.1.0")
        second = server.publish(tmp_path / "b2")
        exported, signed = tmp_path / "staged.json", tmp_path / "signed.json"
        assert _cli("targets", "export", "--data-dir", data, "--out", str(exported)) == 0
        assert _cli("targets", "sign", str(exported), "--targets-key", str(new_key), "--out", str(signed)) == 0
        assert _cli("targets", "import", "--data-dir", data, str(signed)) == 0
        updater = _updater(server, client)
        info = updater.get_targetinfo(second["files"][0]["path"])
        assert info is not None and info.custom["edgefleet"]["release"] == second["counter"]
        root = json.loads((client / "meta" / "root.json").read_text())
        assert root["signed"]["version"] == 2
        status, body, _ = server.api("POST", f"/api/v1/rollouts/{first['id']}/abort", token=server.tokens["operator"])
        assert status == 200, body
        rollout = server.create_rollout(model="off", version="1.1.0", group="off", stages=[100])
        assert _assignment(server, dev)["signed"]["release"]["counter"] == second["counter"]

        # a rollback stages its re-pointed targets; the director assigns it once they are signed
        status, body, _ = server.api(
            "POST",
            f"/api/v1/rollouts/{rollout['id']}/rollback",
            json={"to_version": "1.0.0"},
            token=server.tokens["operator"],
        )
        assert status == 201 and body["release"]["awaiting_signature"] is True, body
        back = body["release"]["counter"]
        info = _updater(server, client).get_targetinfo(paths[0])
        assert info is not None and info.custom["edgefleet"]["release"] == release["counter"]
        assert _assignment(server, dev)["signed"]["release"] is None  # TUF does not list the rollback yet
        assert _cli("targets", "sign", "--data-dir", data, "--targets-key", str(new_key)) == 0
        info = _updater(server, client).get_targetinfo(paths[0])
        assert info is not None and info.custom["edgefleet"]["release"] == back
        assert _assignment(server, dev)["signed"]["release"]["counter"] == back
