"""The TUF check, pinned down target by target and error by error (what mutation testing found loose).

:class:`~edge_agent.trust.tuf_client.TufClient` against a real TUF repository (python-tuf metadata,
Ed25519 keys) served over HTTP on 127.0.0.1 by the update harness: the verified view of each
target, exactly; every python-tuf failure mapped to its reason code and error class; the cache
directory created as needed and reused.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient.updater import Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from edge_agent.errors import FatalError, ReasonCode, TransientError
from edge_agent.trust import tuf_client
from edge_agent.trust.tuf_client import TufClient, TufTarget, _map_error, target_url
from tests.edge_agent.update_harness import RepoSim, SimServer, utc

R = ReasonCode
CUSTOM = {"edgefleet": {"bundle": "tiny", "version": "1.0.0", "release": 1, "kind": "variant", "variant": "fp32"}}


@pytest.fixture
def repo() -> Iterator[tuple[RepoSim, SimServer]]:
    sim = RepoSim()
    tf = TargetFile.from_data("tiny/1.0.0/model.onnx", b"model bytes", ["sha256"])
    tf.unrecognized_fields["custom"] = CUSTOM
    sim.targets.signed.targets[tf.path] = tf
    sim.targets.signed.targets["tiny/1.0.0/plain.bin"] = TargetFile.from_data("tiny/1.0.0/plain.bin", b"xy", ["sha256"])
    sim.publish()
    srv = SimServer(sim)
    yield sim, srv
    srv.close()


def client(srv: SimServer, metadata_dir: Path, **over: Any) -> TufClient:
    kwargs: dict[str, Any] = {
        "metadata_dir": metadata_dir,
        "metadata_url": srv.url + "/tuf/metadata/",
        "targets_url": srv.url + "/tuf/targets/",
        "pinned_root": srv.sim.root_bytes,
    }
    kwargs.update(over)
    return TufClient(**kwargs)


def test_lookup_gives_each_targets_verified_view_and_none_for_an_unknown_path(
    repo: tuple[RepoSim, SimServer], tmp_path: Path
) -> None:
    sim, srv = repo
    meta = tmp_path / "not" / "yet" / "there"  # parents are created
    c = client(srv, meta)
    found = c.lookup(["tiny/1.0.0/model.onnx", "tiny/1.0.0/plain.bin", "tiny/1.0.0/absent.onnx"])
    model = sim.targets.signed.targets["tiny/1.0.0/model.onnx"]
    assert found == {
        "tiny/1.0.0/model.onnx": TufTarget("tiny/1.0.0/model.onnx", len(b"model bytes"), dict(model.hashes), CUSTOM),
        "tiny/1.0.0/plain.bin": TufTarget(
            "tiny/1.0.0/plain.bin", 2, dict(sim.targets.signed.targets["tiny/1.0.0/plain.bin"].hashes), {}
        ),
        "tiny/1.0.0/absent.onnx": None,
    }
    assert isinstance(found["tiny/1.0.0/plain.bin"].custom, dict)  # type: ignore[union-attr]
    assert (meta / "timestamp.json").is_file() and (meta / "root.json").is_file()
    # the cache is reused: a second check over the existing directory refreshes from it
    assert c.lookup(["tiny/1.0.0/plain.bin"])["tiny/1.0.0/plain.bin"] is not None


@pytest.mark.parametrize(("timeout_s", "socket_timeout"), [(7.9, 7), (0.2, 1), (None, 10)])
def test_the_updater_gets_the_pinned_root_the_urls_and_the_timeout_in_whole_seconds(
    repo: tuple[RepoSim, SimServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    timeout_s: float | None,
    socket_timeout: int,
) -> None:
    _, srv = repo
    made: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class Recording(Updater):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append((args, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tuf_client, "Updater", Recording)
    over = {} if timeout_s is None else {"timeout_s": timeout_s}
    client(srv, tmp_path / "m", **over).lookup([])
    ((args, kwargs),) = made
    assert args == (str(tmp_path / "m"), srv.url + "/tuf/metadata/")
    assert kwargs["target_base_url"] == srv.url + "/tuf/targets/"
    assert kwargs["bootstrap"] == srv.sim.root_bytes
    assert isinstance(kwargs["fetcher"], Urllib3Fetcher)
    assert kwargs["fetcher"].socket_timeout == socket_timeout


def test_an_expired_timestamp_is_a_freeze(repo: tuple[RepoSim, SimServer], tmp_path: Path) -> None:
    sim, srv = repo
    sim.republish_timestamp(expires=utc(-60))
    with pytest.raises(FatalError) as e:
        client(srv, tmp_path).lookup(["tiny/1.0.0/model.onnx"])
    assert e.value.reason is R.TUF_EXPIRED
    assert "expired" in str(e.value)


def test_older_metadata_than_the_cached_is_a_rollback(repo: tuple[RepoSim, SimServer], tmp_path: Path) -> None:
    sim, srv = repo
    old = sim.metadata["timestamp.json"]
    client(srv, tmp_path).lookup([])
    sim.publish()
    client(srv, tmp_path).lookup([])
    srv.knobs.metadata_override["timestamp.json"] = old
    with pytest.raises(FatalError) as e:
        client(srv, tmp_path).lookup(["tiny/1.0.0/model.onnx"])
    assert e.value.reason is R.TUF_ROLLBACK
    assert "rollback" in str(e.value)


def test_metadata_that_does_not_verify_is_refused(repo: tuple[RepoSim, SimServer], tmp_path: Path) -> None:
    sim, srv = repo
    forged = json.loads(sim.metadata["timestamp.json"])
    forged["signed"]["version"] += 1  # changed after signing
    srv.knobs.metadata_override["timestamp.json"] = json.dumps(forged).encode()
    with pytest.raises(FatalError) as e:
        client(srv, tmp_path).lookup(["tiny/1.0.0/model.onnx"])
    assert e.value.reason is R.TUF_METADATA_INVALID
    assert "did not verify" in str(e.value)


def test_endless_metadata_is_cut_at_its_limit_and_refused(repo: tuple[RepoSim, SimServer], tmp_path: Path) -> None:
    _, srv = repo
    srv.knobs.endless_metadata = True
    with pytest.raises(FatalError) as e:
        client(srv, tmp_path).lookup([])
    assert e.value.reason is R.TUF_METADATA_INVALID


def test_an_unreachable_repository_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = TufClient(
        metadata_dir=tmp_path,
        metadata_url=f"http://127.0.0.1:{port}/tuf/metadata/",
        targets_url=f"http://127.0.0.1:{port}/tuf/targets/",
        pinned_root=RepoSim().root_bytes,
        timeout_s=1.0,
    )
    with pytest.raises(TransientError) as e:
        c.lookup([])
    assert e.value.reason is R.SLOW_RETRIEVAL  # python-tuf's fetcher reports a refused connection so


def test_missing_metadata_is_a_transient_download_failure(repo: tuple[RepoSim, SimServer], tmp_path: Path) -> None:
    sim, srv = repo
    del sim.metadata["timestamp.json"]  # the server answers 404
    with pytest.raises(TransientError) as e:
        client(srv, tmp_path).lookup([])
    assert e.value.reason is R.DOWNLOAD_FAILED
    assert "download failed" in str(e.value)


def test_a_cache_that_cannot_be_written_is_a_transient_io_failure(
    repo: tuple[RepoSim, SimServer], tmp_path: Path
) -> None:
    _, srv = repo
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TransientError) as e:
        client(srv, blocker / "metadata").lookup([])
    assert e.value.reason is R.DOWNLOAD_FAILED
    assert "cache I/O" in str(e.value)


def test_a_pinned_root_that_is_not_metadata_is_refused_as_invalid(
    repo: tuple[RepoSim, SimServer], tmp_path: Path
) -> None:
    _, srv = repo
    with pytest.raises(FatalError) as e:
        client(srv, tmp_path, pinned_root=b"{}").lookup([])
    assert e.value.reason is R.TUF_METADATA_INVALID


@pytest.mark.parametrize(
    ("error", "kind", "reason", "words"),
    [
        (tuf_exc.ExpiredMetadataError("x"), FatalError, R.TUF_EXPIRED, "freeze attack"),
        (tuf_exc.BadVersionNumberError("x"), FatalError, R.TUF_ROLLBACK, "older than the cached"),
        (tuf_exc.EqualVersionNumberError("x"), FatalError, R.TUF_ROLLBACK, "rollback"),
        (tuf_exc.UnsignedMetadataError("x"), FatalError, R.TUF_METADATA_INVALID, "did not verify"),
        (tuf_exc.LengthOrHashMismatchError("x"), FatalError, R.TUF_METADATA_INVALID, "did not verify"),
        (tuf_exc.SlowRetrievalError("x"), TransientError, R.SLOW_RETRIEVAL, "too slow"),
        (tuf_exc.DownloadLengthMismatchError("x"), FatalError, R.TUF_METADATA_INVALID, "longer than allowed"),
        (tuf_exc.DownloadHTTPError("x", 503), TransientError, R.DOWNLOAD_FAILED, "download failed"),
        (tuf_exc.DownloadError("x"), TransientError, R.DOWNLOAD_FAILED, "download failed"),
    ],
)
def test_each_tuf_error_maps_to_its_reason_and_kind(
    error: Exception, kind: type[Exception], reason: ReasonCode, words: str
) -> None:
    mapped = _map_error(error)
    assert type(mapped) is kind
    assert mapped.reason is reason
    assert words in str(mapped) and str(error) in str(mapped)


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        (
            "http://h/tuf/targets",
            "tiny/1.0.0/model.onnx",
            "http://h/tuf/targets/tiny/1.0.0/" + "a" * 64 + ".model.onnx",
        ),
        ("http://h/tuf/targets/", "tiny/model.onnx", "http://h/tuf/targets/tiny/" + "a" * 64 + ".model.onnx"),
        ("http://h/t//", "model.onnx", "http://h/t/" + "a" * 64 + ".model.onnx"),
        ("http://h/X", "model.onnx", "http://h/X/" + "a" * 64 + ".model.onnx"),  # only slashes are trimmed
    ],
)
def test_target_url_is_the_consistent_snapshot_name(base: str, path: str, url: str) -> None:
    assert target_url(base, path, "a" * 64) == url


def test_a_refresh_logs_which_paths_are_targets(
    repo: tuple[RepoSim, SimServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, srv = repo
    with caplog.at_level(logging.DEBUG, logger="edge_agent.trust.tuf_client"):
        client(srv, tmp_path).lookup(["tiny/1.0.0/model.onnx", "tiny/1.0.0/absent.onnx"])
    assert [r.getMessage() for r in caplog.records if r.name == "edge_agent.trust.tuf_client"] == [
        "TUF refreshed: {'tiny/1.0.0/model.onnx': True, 'tiny/1.0.0/absent.onnx': False}"
    ]


def test_metadata_that_python_tuf_cannot_parse_is_invalid(
    repo: tuple[RepoSim, SimServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError out of ngclient's parsing (not one of its own errors) is malformed metadata."""
    _, srv = repo

    class Unparsable(Updater):
        def refresh(self) -> None:
            raise ValueError("bad length -1")

    monkeypatch.setattr(tuf_client, "Updater", Unparsable)
    with pytest.raises(FatalError) as e:
        client(srv, tmp_path).lookup([])
    assert str(e.value) == "TUF_METADATA_INVALID: TUF metadata is malformed: bad length -1"
