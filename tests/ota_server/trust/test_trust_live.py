"""The trust chain against a running fleet (gunicorn and a real ``edge-agent`` CLI): a fleet
rollback re-signs its TUF targets with its new release counter, and ``ota-server keys rotate``
replaces each online key while the agent keeps updating through TUF's root chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from ota_server.cli import main as server_main
from ota_server.trust.keys import load_private, tuf_signer
from tests.bundles import make_bundle
from tests.edge_agent.update_harness import FAST_RUN, check_slots, enroll_agent, run_agent
from tests.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("rotation")) as srv:
        yield srv


def _root(server: LiveServer) -> Metadata[Root]:
    meta = server.data_dir / "tuf" / "metadata"
    latest = max(int(p.name.split(".")[0]) for p in meta.glob("*.root.json"))
    return Metadata.from_bytes((meta / f"{latest}.root.json").read_bytes())


def _rotate(server: LiveServer, role: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    old_key = load_private(server.data_dir / "keys" / f"{role}.pem")
    before = _root(server)
    assert server_main(["keys", "rotate", "--data-dir", str(server.data_dir), "--role", role, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    root = _root(server)
    assert root.signed.version == before.signed.version + 1 == result["root_version"]
    before.verify_delegate("root", root)  # signed by the root key the fleet already trusts
    assert root.signed.roles[role].keyids == [result["new_keyid"]]
    assert result["old_keyid"] not in root.signed.keys
    # the role's metadata verifies under the new root; signed by the old key alone, it no longer does
    current = _latest(server, role)
    root.verify_delegate(role, current)
    current.sign(tuf_signer(old_key), append=False)
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate(role, current)
    return result


def _latest(server: LiveServer, role: str) -> Metadata[Any]:
    meta = server.data_dir / "tuf" / "metadata"
    if role == "timestamp":
        return Metadata.from_bytes((meta / "timestamp.json").read_bytes())
    latest = max(int(p.name.split(".")[0]) for p in meta.glob(f"*.{role}.json"))
    return Metadata.from_bytes((meta / f"{latest}.{role}.json").read_bytes())


def _run(data: Path, expected: str) -> None:
    out = run_agent(data, "run", "--once", *FAST_RUN)
    assert out.returncode == 0, out.stderr
    assert check_slots(data) == expected, out.stderr


def _director_keys(server: LiveServer) -> list[dict[str, Any]]:
    targets = _latest(server, "targets")
    return list(targets.signed.targets["edgefleet/director.json"].custom["edgefleet"]["keys"])


def _tuf_release(server: LiveServer, path: str) -> int:
    targets = _latest(server, "targets")
    return int(targets.signed.targets[path].custom["edgefleet"]["release"])


@pytest.mark.finding("M9")
def test_a_fleet_rollback_re_signs_its_targets_with_the_new_counter(server: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "van"
    enroll_agent(server, data, "back")
    for version in ("1.0.0", "1.1.0"):
        make_bundle(tmp_path / version, name="back", version=version)
        server.publish(tmp_path / version)
        rollout = server.create_rollout(model="back", version=version, group="back", stages=[100])
        _run(data, f"back@{version}")
    code, body, _ = server.api(
        "POST",
        f"/api/v1/rollouts/{rollout['id']}/rollback",
        json={"to_version": "1.0.0"},
        token=server.tokens["operator"],
    )
    assert code == 201, body
    counter = body["release"]["counter"]
    assert {f["custom"]["edgefleet"]["release"] for f in body["release"]["files"]} == {counter}
    assert _tuf_release(server, "back/1.0.0/bundle.json") == counter  # signed by the targets key
    _run(data, "back@1.0.0")  # the agent requires the director's counter to be TUF's


@pytest.mark.finding("M10")
def test_every_role_rotates_and_updates_continue(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "truck"
    enroll_agent(server, data, "rot")

    def update(version: str) -> None:
        make_bundle(tmp_path / version, name="rot", version=version)
        server.publish(tmp_path / version)
        server.create_rollout(model="rot", version=version, group="rot", stages=[100])
        _run(data, f"rot@{version}")

    update("1.0.0")
    _rotate(server, "timestamp", capsys)
    _rotate(server, "snapshot", capsys)
    update("1.1.0")  # the agent follows root 2 and 3
    _rotate(server, "targets", capsys)
    update("1.2.0")
    old_director = server.director_public_key()
    assert _director_keys(server) == [old_director]  # init lists the director key in TUF
    assert server_main(["keys", "rotate", "--data-dir", str(server.data_dir), "--role", "director", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["old_keyid"] == old_director["keyid"] != result["new_keyid"]
    assert [k["keyid"] for k in _director_keys(server)] == [result["new_keyid"]]  # the old key is dropped
    assert server.director_public_key()["keyid"] == result["new_keyid"]  # provisioning/director.pub.json
    update("1.3.0")  # the running server signs with the new key; the agent learned it from TUF
    history = data / "tuf" / "root_history"
    assert max(int(p.name.split(".")[0]) for p in history.glob("*.root.json")) == _root(server).signed.version
