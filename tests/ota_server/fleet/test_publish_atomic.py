"""A publish that fails at any step leaves no trace: no release row, no artifact, no metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ota_server.config import ServerConfig
from ota_server.errors import RepositoryError
from ota_server.services import build_services
from ota_server.storage import store as st
from ota_server.trust.keys import DIRECTOR_TARGET
from ota_server.trust.repository import Repository
from tests.bundles import make_bundle
from tests.live_server import bundle_tar


def _state(config: ServerConfig) -> dict[str, Any]:
    files = sorted(
        str(p.relative_to(config.data_dir))
        for p in config.data_dir.rglob("*")
        if p.is_file() and p.parts[-2] not in ("locks", "run") and not p.name.startswith("server.db")
    )
    return {"files": files, "timestamp": (config.metadata_dir / "timestamp.json").read_bytes()}


def _upload(tmp: Path, bundle: Path) -> Path:
    path = tmp / "upload.tar"
    path.write_bytes(bundle_tar(bundle))
    return path


class Boom(RuntimeError):
    pass


FAILURES = {
    "second-artifact": ("ota_server.trust.artifacts.ArtifactStore.put", 2),
    "audit-insert": ("ota_server.storage.store.audit", 1),
    "targets-link": ("ota_server.trust.repository.os.link", 1),
    "snapshot-write": ("ota_server.trust.repository.Repository._bump_snapshot", 1),
    "timestamp-write": ("ota_server.trust.repository.Repository._bump_timestamp", 1),
}


@pytest.mark.parametrize("point", sorted(FAILURES))
def test_failure_midway_leaves_no_trace(
    point: str, initialized: tuple[ServerConfig, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = initialized
    services = build_services(config)
    make_bundle(tmp_path / "b", name="atomic", version="1.0.0")
    before = _state(config)

    target, fail_on_call = FAILURES[point]
    module_path, attr = target.rsplit(".", 1)
    import importlib

    try:
        owner: Any = importlib.import_module(module_path)
    except ModuleNotFoundError:
        mod, cls = module_path.rsplit(".", 1)
        owner = getattr(importlib.import_module(mod), cls)
    real = getattr(owner, attr)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise Boom(f"injected failure at {point}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, failing)
    with pytest.raises(Boom):
        services.publisher.publish_tar(_upload(tmp_path, tmp_path / "b"), actor="test")
    monkeypatch.undo()

    assert calls["n"] >= fail_on_call
    assert _state(config) == before
    with services.store.read() as conn:
        assert st.list_releases(conn) == []
        assert [a["action"] for a in st.audit_log(conn)] == ["server.init"]
    # TUF still loads and verifies the same versions as before
    repo = Repository(config)
    assert repo.timestamp().signed.version == 1 and set(repo.targets().signed.targets) == {DIRECTOR_TARGET}

    # and the next publish works, taking counter 1
    release = services.publisher.publish_tar(_upload(tmp_path, tmp_path / "b"), actor="test")
    assert release["counter"] == 1
    assert set(repo.targets().signed.targets) == {
        "atomic/1.0.0/bundle.json",
        "atomic/1.0.0/model.onnx",
        DIRECTOR_TARGET,
    }
    services.store.dispose()


def test_artifact_store_refuses_a_wrong_digest(tmp_path: Path) -> None:
    from ota_server.trust.artifacts import ArtifactStore

    f = tmp_path / "x"
    f.write_bytes(b"hello")
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(RepositoryError, match="sha256"):
        store.put(f, "0" * 64)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*0000*"))
    import hashlib

    path, created = store.put(f, hashlib.sha256(b"hello").hexdigest())
    assert created and path.read_bytes() == b"hello" and path.parent.name == path.name[:2]
