"""Hostile uploads and bodies against the real server: sparse tar members, member floods, deep JSON.

Each is refused with a 4xx naming what was wrong, never with the server's own paths, and
leaves ``tmp/``, the artifact store and the TUF metadata as they were.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server

LIMIT_MB = 1
TAR = {"Content-Type": "application/x-tar"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("hostile")
    with live_server(tmp, init_args=["--max-upload-mb", str(LIMIT_MB)]) as srv:
        make_bundle(tmp / "base", name="base", version="1.0.0")
        srv.publish(tmp / "base")
        yield srv


def _state(server: LiveServer) -> dict[str, Any]:
    files = sorted(
        str(p.relative_to(server.data_dir))
        for p in server.data_dir.rglob("*")
        if p.is_file() and "run" not in p.parts and "locks" not in p.parts and not p.name.startswith("server.db")
    )
    status, releases, _ = server.api("GET", "/api/v1/releases", token=server.tokens["viewer"])
    assert status == 200
    ts = (server.data_dir / "tuf" / "metadata" / "timestamp.json").read_bytes()
    return {"files": files, "releases": releases, "timestamp": ts}


def _regular(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _sparse(name: str, data: bytes, realsize: int) -> bytes:
    """An old-GNU sparse member ('S'): ``data`` stored once, at the end of a file of
    ``realsize`` bytes that is a hole up to there (what ``tar --sparse`` writes)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    # the sparse map (offset, numbytes) x 4 at 386, isextended at 482, realsize at 483
    header[386:398] = tarfile.itn(realsize - len(data), 12, tarfile.GNU_FORMAT)
    header[398:410] = tarfile.itn(len(data), 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _end() -> bytes:
    return b"\0" * (2 * tarfile.BLOCKSIZE)


def _sparse_bundle(bundle: Path, realsize: int) -> bytes:
    """The bundle with its model replaced by a ``realsize``-byte sparse member whose manifest
    entry is right: a 4.5 KB upload that extracts to ``realsize`` bytes."""
    tail = b"\x01" * 512
    digest = hashlib.sha256()
    zeros = b"\0" * (1 << 20)
    left = realsize - len(tail)
    while left:
        n = min(left, len(zeros))
        digest.update(zeros[:n])
        left -= n
    digest.update(tail)
    manifest = json.loads((bundle / "bundle.json").read_bytes())
    manifest["variants"][0].update(size=realsize, sha256=digest.hexdigest())
    return _regular("bundle.json", json.dumps(manifest).encode()) + _sparse("model.onnx", tail, realsize) + _end()


def _publish(server: LiveServer, data: bytes) -> tuple[int, Any]:
    status, body, _ = server.api("POST", "/api/v1/releases", data=data, token=server.tokens["publisher"], headers=TAR)
    return status, body


def _assert_refused(
    server: LiveServer, status: int, body: Any, expected: int, *mentions: str, field: str = "body"
) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]["field"] == field, body
    for text in mentions:
        assert text in body["error"]["message"], body
    assert str(server.data_dir) not in json.dumps(body), body
    assert list((server.data_dir / "tmp").iterdir()) == []


@pytest.mark.finding("M6")
def test_a_sparse_member_cannot_outgrow_the_upload_limit(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", name="sparse", version="1.0.0")
    before = _state(server)
    data = _sparse_bundle(tmp_path / "b", 8 * LIMIT_MB << 20)
    assert len(data) < 8 * 1024
    status, body = _publish(server, data)
    _assert_refused(server, status, body, 400, "model.onnx", "sparse")
    assert _state(server) == before


@pytest.mark.finding("M6")
def test_too_many_members_are_refused(server: LiveServer, tmp_path: Path) -> None:
    before = _state(server)
    data = b"".join(_regular(f"f{i}.bin", b"x") for i in range(300)) + _end()
    status, body = _publish(server, data)
    _assert_refused(server, status, body, 400, "members")
    assert _state(server) == before


@pytest.mark.finding("L13")
def test_publish_errors_never_show_the_servers_paths(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", name="paths", version="1.0.0")
    manifest = (tmp_path / "b" / "bundle.json").read_bytes()
    before = _state(server)
    for data, mention, field in (
        (_regular("bundle.json", manifest) + _end(), "model.onnx", "variants[0].file"),  # a variant the tar lacks
        (_regular("model.onnx", (tmp_path / "b" / "model.onnx").read_bytes()) + _end(), "bundle.json", "bundle.json"),
    ):
        status, body = _publish(server, data)
        _assert_refused(server, status, body, 400, mention, field=field)
        assert not re.search(r"tmp/|bundle\.[0-9a-f]{32}", body["error"]["message"]), body
    assert _state(server) == before


@pytest.mark.finding("L14")
@pytest.mark.parametrize("depth", [100_000, 200])
def test_deeply_nested_json_is_a_400_naming_the_body(server: LiveServer, depth: int) -> None:
    log_before = len(server.log_text())
    for path, token in (
        ("/api/v1/rollouts", server.tokens["operator"]),
        ("/api/v1/tokens", server.tokens["admin"]),
        ("/api/v1/devices/enroll", server.enrollment_token),
    ):
        status, body, _ = server.api(
            "POST", path, data=b"[" * depth + b"]" * depth, token=token, headers={"Content-Type": "application/json"}
        )
        assert status == 400, (path, body)
        assert body["error"]["field"] == "body" and "nested" in body["error"]["message"], body
    log = server.log_text()[log_before:]
    assert "Traceback" not in log and "RecursionError" not in log, log[-2000:]


@pytest.mark.finding("M6")
def test_members_together_stay_under_the_limit(tmp_path: Path) -> None:
    from ota_server.errors import PayloadTooLarge
    from ota_server.fleet.publish import extract

    tar = tmp_path / "two.tar"
    tar.write_bytes(_regular("a.bin", b"a" * 600) + _regular("b.bin", b"b" * 600) + _end())
    (tmp_path / "out").mkdir()
    with pytest.raises(PayloadTooLarge, match="'b.bin'") as e:
        extract(tar, tmp_path / "out", limit=1000)
    assert e.value.field == "body"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin"]
