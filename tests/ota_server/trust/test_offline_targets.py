"""The offline TUF targets key, in-process on real python-tuf metadata, SQLite and PostgreSQL:
``init --offline-targets``, publishes and rollbacks that stage, rollouts refused until
``targets sign``, the air-gapped export/sign/import with its refusals, the rotations, and the
expiry: ``targets stage-refresh``, the warnings, and the online key re-signing by itself."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root  # type: ignore[attr-defined]

from ota_server.cli import main as server_main
from ota_server.config import ServerConfig
from ota_server.errors import Conflict, RepositoryError, SetupError
from ota_server.fleet import service
from ota_server.fleet.director import build_signed
from ota_server.provision import init_data_dir
from ota_server.rules import rollouts as ro
from ota_server.services import Services, build_services
from ota_server.serving.auth import token_digest
from ota_server.storage import store as st
from ota_server.trust import repository
from ota_server.trust.keys import DIRECTOR_TARGET, director_public_json, load_private, tuf_public, tuf_signer
from ota_server.trust.offline import targets_expiry
from ota_server.trust.repository import Repository, rotate_key
from tests.bundles import make_bundle
from tests.live_server import bundle_tar


@dataclasses.dataclass
class Offline:
    config: ServerConfig
    key: Path  # the offline targets key
    services: Services
    tmp: Path

    @property
    def data(self) -> str:
        return str(self.config.data_dir)

    def publish(self, name: str, version: str) -> dict[str, Any]:
        bundle = self.tmp / f"{name}-{version}"
        make_bundle(bundle, name=name, version=version)
        tar = self.tmp / f"{name}-{version}.tar"
        tar.write_bytes(bundle_tar(bundle))
        return self.services.publisher.publish_tar(tar, actor="test")

    def rollout(self, name: str, version: str, group: str = "g") -> dict[str, Any]:
        spec = ro.parse_rollout({"model": name, "version": version, "group": group, "stages": [100]})
        with self.services.store.tx() as conn:
            return service.create_rollout(conn, spec, actor="test")

    def sign(self, *extra: str) -> int:
        return server_main(["targets", "sign", "--data-dir", self.data, "--targets-key", str(self.key), *extra])


@pytest.fixture
def offline(tmp_path: Path, db_url: str | None) -> Iterator[Offline]:
    config = ServerConfig(data_dir=tmp_path / "data", db_url=db_url)
    key = tmp_path / "usb" / "targets.pem"
    init_data_dir(config, offline_targets=key)
    services = build_services(config)
    yield Offline(config, key, services, tmp_path)
    services.store.dispose()


def _root(config: ServerConfig) -> Metadata[Root]:
    return Repository(config).root()


def _device(group: str = "g") -> dict[str, Any]:
    return {
        "id": "dev_" + secrets.token_hex(4),
        "token_digest": token_digest(secrets.token_hex(8)),
        "name": "d",
        "group_name": group,
        "tags": [],
        "hardware": {"arch": "x86_64"},
        "hardware_class": "cpu-x86_64",
        "enrolled_at": st.utcnow(),
        "last_seen": None,
        "state": None,
        "running_name": None,
        "running_version": None,
        "running_release": None,
        "last_metrics": None,
    }


def test_init_writes_the_targets_key_only_to_the_offline_path(offline: Offline, tmp_path: Path) -> None:
    assert offline.key.stat().st_mode & 0o777 == 0o600
    assert not (offline.config.keys_dir / "targets.pem").exists()
    repo = Repository(offline.config)
    assert repo.offline_targets
    keyid = tuf_public(load_private(offline.key)).keyid
    root = repo.root()
    assert root.signed.roles["targets"].keyids == [keyid]
    root.verify_delegate("targets", repo.targets())  # version 1, signed by the offline key
    with pytest.raises(SetupError, match="refusing to overwrite a targets key"):
        init_data_dir(ServerConfig(data_dir=tmp_path / "other"), offline_targets=offline.key)
    assert not (tmp_path / "other").exists()


def test_publishes_stage_until_the_offline_key_signs(offline: Offline, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(offline.config)
    timestamp = (offline.config.metadata_dir / "timestamp.json").read_bytes()
    first = offline.publish("m", "1.0.0")
    second = offline.publish("m", "1.1.0")
    assert first["awaiting_signature"] and second["awaiting_signature"]
    # nothing signed moved: devices see the repository as before
    assert (offline.config.metadata_dir / "timestamp.json").read_bytes() == timestamp
    assert set(repo.targets().signed.targets) == {DIRECTOR_TARGET}
    staged = repo.staged()
    assert staged is not None and staged.signed.version == 2 and not staged.signatures
    assert set(staged.signed.targets) == {DIRECTOR_TARGET} | {f["path"] for f in first["files"] + second["files"]}

    with pytest.raises(Conflict, match=r"awaits the offline TUF targets signature.*ota-server targets sign"):
        offline.rollout("m", "1.1.0")

    assert server_main(["targets", "status", "--data-dir", offline.data, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["offline_targets"] and status["signed_version"] == 1 and status["staged_version"] == 2
    assert [r["counter"] for r in status["awaiting_releases"]] == [first["counter"], second["counter"]]
    assert {c["change"] for c in status["changes"]} == {"added"} and len(status["changes"]) == 4

    wrong = offline.tmp / "wrong.pem"
    wrong.write_bytes(offline.config.keys_dir.joinpath("snapshot.pem").read_bytes())
    wrong.chmod(0o600)
    assert server_main(["targets", "sign", "--data-dir", offline.data, "--targets-key", str(wrong)]) == 1
    assert "is not this repository's targets key" in capsys.readouterr().err
    assert repo.staged_path.exists() and repo.targets().signed.version == 1

    assert offline.sign() == 0
    assert "releases signed: 1, 2" in capsys.readouterr().out
    targets = repo.targets()
    assert targets.signed.version == 2 and set(targets.signed.targets) == set(staged.signed.targets)
    root = repo.root()
    root.verify_delegate("targets", targets)
    root.verify_delegate("snapshot", repo.snapshot())
    root.verify_delegate("timestamp", repo.timestamp())
    assert not repo.staged_path.exists()
    with offline.services.store.read() as conn:
        assert st.awaiting_releases(conn) == []
    assert offline.rollout("m", "1.1.0")["status"] == "active"
    assert offline.sign() == 3  # nothing staged
    assert "nothing is staged" in capsys.readouterr().err


def test_a_failed_publish_leaves_no_staged_entry(offline: Offline, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository(offline.config)

    class Boom(RuntimeError):
        pass

    def fail(*args: Any, **kwargs: Any) -> None:
        raise Boom("injected")

    with monkeypatch.context() as m:
        m.setattr(st, "audit", fail)
        with pytest.raises(Boom):
            offline.publish("m", "1.0.0")
    assert not repo.staged_path.exists()
    offline.publish("m", "1.0.0")
    before = repo.staged_path.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(st, "bump_generation", fail)  # after the staging is written, before the commit
        with pytest.raises(Boom):
            offline.publish("m", "1.1.0")
    assert repo.staged_path.read_bytes() == before
    with offline.services.store.read() as conn:
        assert [r["version"] for r in st.list_releases(conn)] == ["1.0.0"]


def test_air_gapped_export_sign_import(offline: Offline, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(offline.config)
    offline.publish("m", "1.0.0")
    exported, signed = offline.tmp / "staged.json", offline.tmp / "signed.json"
    assert server_main(["targets", "export", "--data-dir", offline.data, "--out", str(exported)]) == 0
    assert exported.read_bytes() == repo.staged_path.read_bytes()
    # the offline machine has no data directory
    assert server_main(["targets", "sign", str(exported), "--targets-key", str(offline.key), "--out", str(signed)]) == 0

    tampered = offline.tmp / "tampered.json"
    doc = json.loads(signed.read_text())
    doc["signed"]["targets"]["m/1.0.0/model.onnx"]["length"] += 1
    tampered.write_text(json.dumps(doc))
    assert server_main(["targets", "import", "--data-dir", offline.data, str(tampered)]) == 1
    assert "does not sign the staged targets" in capsys.readouterr().err

    other = offline.tmp / "other.pem"
    other.write_bytes(offline.config.keys_dir.joinpath("timestamp.pem").read_bytes())
    other.chmod(0o600)
    badsig = offline.tmp / "badsig.json"
    assert server_main(["targets", "sign", str(exported), "--targets-key", str(other), "--out", str(badsig)]) == 0
    assert server_main(["targets", "import", "--data-dir", offline.data, str(badsig)]) == 1
    assert "not signed by the targets key root lists" in capsys.readouterr().err
    assert repo.targets().signed.version == 1

    offline.publish("m", "1.1.0")  # the staging changed since the export
    assert server_main(["targets", "import", "--data-dir", offline.data, str(signed)]) == 1
    assert "staging changed since it was exported" in capsys.readouterr().err

    exported2, signed2 = offline.tmp / "staged2.json", offline.tmp / "signed2.json"
    assert server_main(["targets", "export", "--data-dir", offline.data, "--out", str(exported2)]) == 0
    assert (
        server_main(["targets", "sign", str(exported2), "--targets-key", str(offline.key), "--out", str(signed2)]) == 0
    )
    assert server_main(["targets", "import", "--data-dir", offline.data, str(signed2)]) == 0
    assert repo.targets().signed.version == 2 and "m/1.1.0/bundle.json" in repo.targets().signed.targets
    repo.root().verify_delegate("targets", repo.targets())
    assert server_main(["targets", "import", "--data-dir", offline.data, str(signed2)]) == 3  # nothing staged
    capsys.readouterr()
    # usage errors
    assert server_main(["targets", "sign", str(exported2), "--targets-key", str(offline.key)]) == 1
    assert "needs --out" in capsys.readouterr().err


def test_a_stale_staging_is_refused(offline: Offline, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(offline.config)
    offline.publish("m", "1.0.0")
    staged = repo.staged()
    assert staged is not None
    staged.signed.version = 7  # as if the signed targets had moved under it
    repo.write_staged(staged)
    assert offline.sign() == 1
    assert "stale" in capsys.readouterr().err
    assert repo.targets().signed.version == 1


def test_refresh_needs_no_targets_key(offline: Offline) -> None:
    offline.publish("m", "1.0.0")
    repo = Repository(dataclasses.replace(offline.config, timestamp_ttl_s=10**9))  # half its life is gone
    staged = repo.staged_path.read_bytes()
    version = repo.timestamp().signed.version
    assert repo.refresh_if_needed()
    assert repo.timestamp().signed.version == version + 1
    repo.root().verify_delegate("timestamp", repo.timestamp())
    assert repo.staged_path.read_bytes() == staged


def test_a_rollback_stages_and_the_director_waits_for_the_signature(offline: Offline) -> None:
    for version in ("1.0.0", "1.1.0"):
        offline.publish("m", version)
        assert offline.sign() == 0
    rollout = offline.rollout("m", "1.1.0")
    dev = _device()
    with offline.services.store.tx() as conn:
        st.insert_devices(conn, [dict(dev, running_release=rollout["release"], running_name="m")])
    repo = offline.services.repo
    created: list[Path] = []
    with repo.locked(), offline.services.store.tx() as conn:
        result = service.rollback(conn, rollout["id"], {"to_version": "1.0.0"}, actor="t", repo=repo, created=created)
    counter = result["release"]["counter"]
    assert result["release"]["awaiting_signature"]
    assert repo.targets().signed.targets["m/1.0.0/bundle.json"].custom["edgefleet"]["release"] == 1
    with offline.services.store.read() as conn:
        signed = build_signed(conn, st.get_device(conn, dev["id"]), "ab" * 16, ttl_s=60)
    # TUF does not list the rollback release yet: the device is told to keep what it runs
    assert signed["release"]["counter"] == rollout["release"] and signed["rollout_id"] is None
    assert offline.sign() == 0
    with offline.services.store.read() as conn:
        signed = build_signed(conn, st.get_device(conn, dev["id"]), "ab" * 16, ttl_s=60)
    assert signed["release"]["counter"] == counter and signed["rollout_id"] == result["rollout"]["id"]
    assert repo.targets().signed.targets["m/1.0.0/bundle.json"].custom["edgefleet"]["release"] == counter


def test_targets_key_rotation_needs_the_old_and_new_key(offline: Offline, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(offline.config)
    rotate = ["keys", "rotate", "--data-dir", offline.data, "--role", "targets"]
    assert server_main(rotate) == 1
    assert "--targets-key" in capsys.readouterr().err
    with pytest.raises(RepositoryError, match="offline"):
        rotate_key(offline.config, "targets", root_key_path=offline.config.keys_dir / "root.pem")
    new_key = offline.tmp / "usb" / "targets-2.pem"
    offline.publish("m", "1.0.0")
    assert server_main([*rotate, "--targets-key", str(offline.key), "--new-key-out", str(new_key)]) == 1
    assert "staged; sign them first" in capsys.readouterr().err and not new_key.exists()
    assert offline.sign() == 0
    capsys.readouterr()
    root_before = repo.root()

    assert server_main([*rotate, "--targets-key", str(offline.key), "--new-key-out", str(new_key), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert new_key.stat().st_mode & 0o777 == 0o600
    root = repo.root()
    assert root.signed.version == root_before.signed.version + 1 == result["root_version"]
    root_before.verify_delegate("root", root)
    assert root.signed.roles["targets"].keyids == [tuf_public(load_private(new_key)).keyid] == [result["new_keyid"]]
    targets = repo.targets()
    root_before.verify_delegate("targets", targets)  # devices still on root N verify it
    root.verify_delegate("targets", targets)  # and so do those on N+1
    targets.sign(tuf_signer(load_private(offline.key)), append=False)
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate("targets", targets)  # the old key alone no longer counts
    assert server_main([*rotate, "--targets-key", str(new_key), "--new-key-out", str(new_key)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err

    offline.publish("m", "1.1.0")
    assert offline.sign() == 1  # the old key is no longer root's
    assert "not this repository's targets key" in capsys.readouterr().err
    assert server_main(["targets", "sign", "--data-dir", offline.data, "--targets-key", str(new_key)]) == 0


def test_director_rotation_goes_through_the_staging(offline: Offline, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(offline.config)
    director_pem = offline.config.keys_dir / "director.pem"
    old = director_public_json(load_private(director_pem).public_key())
    rotate = ["keys", "rotate", "--data-dir", offline.data, "--role", "director", "--json"]
    assert server_main(rotate) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pending"] and result["old_keyid"] == old["keyid"]
    # not signed yet: the server still signs assignments with the old key
    assert director_public_json(load_private(director_pem).public_key()) == old
    assert [k["keyid"] for k in repo.director_keys()] == [old["keyid"]]
    assert server_main(rotate) == 1
    assert "awaits the offline targets signature already" in capsys.readouterr().err

    assert offline.sign() == 0
    assert "switched to director key" in capsys.readouterr().out
    assert [k["keyid"] for k in repo.director_keys()] == [result["new_keyid"], old["keyid"]]
    assert director_public_json(load_private(director_pem).public_key())["keyid"] == result["new_keyid"]
    provisioned = json.loads((offline.config.provisioning_dir / "director.pub.json").read_text())
    assert provisioned["keyid"] == result["new_keyid"]
    staged = repo.staged()
    assert staged is not None  # the removal of the old key
    assert [k["keyid"] for k in staged.signed.targets[DIRECTOR_TARGET].custom["edgefleet"]["keys"]] == [
        result["new_keyid"]
    ]
    assert offline.sign() == 0
    assert [k["keyid"] for k in repo.director_keys()] == [result["new_keyid"]]
    assert not (offline.config.keys_dir / "director.pem.new").exists()


def test_online_mode_refuses_offline_flags(
    initialized: tuple[ServerConfig, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = initialized
    assert not Repository(config).offline_targets
    args = ["keys", "rotate", "--data-dir", str(config.data_dir), "--role", "targets"]
    assert server_main([*args, "--targets-key", str(config.keys_dir / "targets.pem")]) == 1
    assert "for --role targets with the targets key offline" in capsys.readouterr().err
    assert server_main(["targets", "status", "--data-dir", str(config.data_dir)]) == 0
    assert "targets key: online" in capsys.readouterr().out
    assert server_main(["targets", "stage-refresh", "--data-dir", str(config.data_dir)]) == 1
    assert "the server re-signs the targets itself" in capsys.readouterr().err
    assert not Repository(config).staged_path.exists()


def test_init_cli_with_an_offline_targets_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "usb" / "targets.pem"
    assert server_main(["init", "--data-dir", str(tmp_path / "a"), "--offline-targets", str(key)]) == 0
    out = capsys.readouterr().out
    assert f"The TUF targets key is at {key}" in out and "ota-server targets sign" in out
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert server_main(["init", "--data-dir", str(tmp_path / "b"), "--offline-targets", str(key)]) == 1
    assert "refusing to overwrite a targets key" in capsys.readouterr().err
    assert key.read_bytes() == before
    both = tmp_path / "same.pem"
    argv = ["init", "--data-dir", str(tmp_path / "c"), "--offline-targets", str(both), "--offline-root", str(both)]
    assert server_main(argv) == 1
    assert "must be two files" in capsys.readouterr().err


def _targets_dict(md: Metadata[Any]) -> dict[str, Any]:
    return {path: t.to_dict() for path, t in md.signed.targets.items()}


def test_stage_refresh_renews_the_expiry_through_the_usual_signing(
    tmp_path: Path, db_url: str | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", db_url=db_url, targets_ttl_s=20 * 86400)
    key = tmp_path / "usb" / "targets.pem"
    init_data_dir(config, offline_targets=key)
    data = str(config.data_dir)
    repo = Repository(config)
    first = repo.targets()
    status = ["targets", "status", "--data-dir", data, "--warn-days", "7"]
    assert server_main([*status, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["expiry_warning"] is None  # 20 days left

    later = first.signed.expires - timedelta(days=5)  # 15 days on
    monkeypatch.setattr(repository, "_now", lambda: later)
    assert server_main([*status, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["signed_expires_in_days"] == 5 and f"targets stage-refresh --data-dir {data}" in out["expiry_warning"]
    assert server_main(["targets", "sign", "--data-dir", data, "--targets-key", str(key)]) == 3  # nothing staged
    capsys.readouterr()

    assert server_main(["targets", "stage-refresh", "--data-dir", data]) == 0
    assert "staged targets version 2 unchanged" in capsys.readouterr().out
    staged = repo.staged()
    assert staged is not None and staged.signed.version == 2 and _targets_dict(staged) == _targets_dict(first)
    assert repo.targets().signed.version == 1  # devices see nothing new until it is signed
    assert server_main(status) == 0
    out_text = capsys.readouterr().out
    assert "staged: version 2, 0 change(s) (an expiry refresh)" in out_text
    assert "WARNING: the signed TUF targets expire in 5.0 days" in out_text and "sign the staging" in out_text
    before = repo.staged_path.read_bytes()
    assert server_main(["targets", "stage-refresh", "--data-dir", data, "--json"]) == 0  # staged already
    assert json.loads(capsys.readouterr().out) == {"version": 2, "staged": False, "changes": 0}
    assert repo.staged_path.read_bytes() == before

    assert server_main(["targets", "sign", "--data-dir", data, "--targets-key", str(key)]) == 0
    assert "installed signed targets version 2; releases signed: none" in capsys.readouterr().out
    signed = repo.targets()
    assert signed.signed.version == 2 and signed.signed.expires == later + timedelta(days=20)
    assert _targets_dict(signed) == _targets_dict(first)
    root = repo.root()
    root.verify_delegate("targets", signed)
    root.verify_delegate("snapshot", repo.snapshot())
    root.verify_delegate("timestamp", repo.timestamp())
    assert not repo.staged_path.exists()
    assert server_main([*status, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["expiry_warning"] is None and out["signed_expires_in_days"] == 20

    expired = targets_expiry(repo, now=signed.signed.expires + timedelta(hours=1))
    assert "EXPIRED at" in expired["warning"] and "devices refuse every update" in expired["warning"]
    assert server_main([*status[:-2], "--warn-days", "-1"]) == 1
    assert "--warn-days must be >= 0" in capsys.readouterr().err


def test_a_publish_after_a_refresh_joins_its_staging(offline: Offline, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repository(offline.config)
    assert server_main(["targets", "stage-refresh", "--data-dir", offline.data]) == 0
    release = offline.publish("m", "1.0.0")
    staged = repo.staged()
    assert staged is not None and staged.signed.version == 2
    assert {f["path"] for f in release["files"]} <= set(staged.signed.targets)
    assert offline.sign() == 0
    assert f"releases signed: {release['counter']}" in capsys.readouterr().out
    assert repo.targets().signed.version == 2


def test_the_online_key_re_signs_targets_once_half_their_lifetime_is_gone(
    initialized: tuple[ServerConfig, dict[str, str]],
) -> None:
    config, _ = initialized
    before = Repository(config).targets()
    assert not Repository(config).refresh_if_needed()  # everything fresh
    aged = Repository(dataclasses.replace(config, targets_ttl_s=10**9))  # over half their life is gone
    assert aged.refresh_if_needed()
    after = aged.targets()
    assert after.signed.version == before.signed.version + 1 and after.signed.expires > before.signed.expires
    assert _targets_dict(after) == _targets_dict(before)
    root = aged.root()
    root.verify_delegate("targets", after)
    root.verify_delegate("snapshot", aged.snapshot())
    root.verify_delegate("timestamp", aged.timestamp())
    assert aged.snapshot().signed.meta["targets.json"].version == after.signed.version
    assert not aged.refresh_if_needed()  # renewed: nothing more to do


def test_offline_targets_near_expiry_are_not_re_signed_but_warned_about(
    tmp_path: Path, db_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    config = ServerConfig(data_dir=tmp_path / "data", db_url=db_url, targets_ttl_s=10 * 86400)
    init_data_dir(config, offline_targets=tmp_path / "usb" / "targets.pem")
    repo = Repository(dataclasses.replace(config, timestamp_ttl_s=10**9))  # the timestamp is due
    with caplog.at_level(logging.WARNING, logger="ota_server.trust.repository"):
        assert repo.refresh_if_needed()
    assert repo.timestamp().signed.version == 2 and repo.targets().signed.version == 1
    assert "targets stage-refresh" in caplog.text and "the targets key is offline" in caplog.text


def test_serve_warns_at_start_when_the_targets_expire_soon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ota_server.serving import gunicorn_app

    config = ServerConfig(data_dir=tmp_path / "data", targets_ttl_s=10 * 86400)
    init_data_dir(config, offline_targets=tmp_path / "usb" / "targets.pem")
    served: list[ServerConfig] = []

    def run_gunicorn(config: ServerConfig, **kwargs: Any) -> int:
        served.append(config)
        return 0

    monkeypatch.setattr(gunicorn_app, "run_gunicorn", run_gunicorn)
    for name in ("EDGEFLEET_DATA_DIR", "PROMETHEUS_MULTIPROC_DIR"):  # serve sets them for its workers
        monkeypatch.setenv(name, "")
    with caplog.at_level(logging.WARNING, logger="ota_server"):
        assert server_main(["serve", "--data-dir", str(config.data_dir)]) == 0
    assert len(served) == 1
    assert "the signed TUF targets expire in 10.0 days" in caplog.text and "targets stage-refresh" in caplog.text
