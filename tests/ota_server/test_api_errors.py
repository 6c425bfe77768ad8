"""Auth matrix and bad input against the real server: 4xx JSON errors, and nothing changes."""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.bundles import make_bundle
from tests.live_server import LiveServer, bundle_tar, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    tmp = tmp_path_factory.mktemp("errors")
    with live_server(tmp, init_args=["--max-upload-mb", "0.25"]) as srv:
        make_bundle(tmp / "base", name="base", version="1.0.0")
        srv.publish(tmp / "base")
        yield srv


def _snapshot(server: LiveServer) -> dict[str, Any]:
    """Everything a failed request must leave untouched."""
    status, releases, _ = server.api("GET", "/api/v1/releases", token=server.tokens["viewer"])
    assert status == 200
    files = sorted(
        str(p.relative_to(server.data_dir))
        for p in server.data_dir.rglob("*")
        if p.is_file() and "run" not in p.parts and "locks" not in p.parts and not p.name.startswith("server.db")
    )
    ts = (server.data_dir / "tuf" / "metadata" / "timestamp.json").read_bytes()
    return {"releases": releases, "files": files, "timestamp": ts}


def _assert_error(status: int, body: Any, expected: int, field: str | None = "any") -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["message"]
    if field != "any":
        assert body["error"]["field"] == field, body


ENDPOINTS = [  # (method, path, minimal role, what an allowed role gets: status and, for a 400, the field)
    ("GET", "/api/v1/releases", "viewer", (200, None)),
    ("GET", "/api/v1/rollouts", "viewer", (200, None)),
    ("GET", "/api/v1/devices", "viewer", (200, None)),
    ("GET", "/api/v1/fleet/summary", "viewer", (200, None)),
    ("GET", "/metrics", "viewer", (200, None)),
    ("POST", "/api/v1/rollouts", "operator", (400, "model")),  # allowed, and the empty body names its first gap
    ("GET", "/api/v1/audit", "admin", (200, None)),
    ("POST", "/api/v1/tokens", "admin", (400, "role")),
]
ROLES = ["viewer", "publisher", "operator", "admin"]


@pytest.mark.parametrize(("method", "path", "needed", "allowed"), ENDPOINTS)
def test_auth_matrix_for_roles(
    server: LiveServer, method: str, path: str, needed: str, allowed: tuple[int, str | None]
) -> None:
    body = {} if method == "POST" else None
    for role in ROLES:
        status, out, _ = server.api(method, path, token=server.tokens[role], json=body)
        if ROLES.index(role) >= ROLES.index(needed):
            expected, field = allowed
            if expected == 200:
                assert status == 200, (role, status, out)
            else:  # the role passed the auth check and the request reached validation
                _assert_error(status, out, expected, field)
        else:
            _assert_error(status, out, 403)
    _assert_error(*server.api(method, path, json=body)[:2], 401, "Authorization")
    _assert_error(*server.api(method, path, json=body, token="ef_api_" + "A" * 43)[:2], 401, "Authorization")
    _assert_error(*server.api(method, path, json=body, headers={"Authorization": "Basic abc"})[:2], 401)
    dev = server.enroll(name="matrix")
    _assert_error(*server.api(method, path, json=body, token=dev["device_token"])[:2], 403)


def test_publish_needs_publisher_and_device_endpoints_need_the_device(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", name="authz", version="1.0.0")
    tar = bundle_tar(tmp_path / "b")
    for role in ("viewer",):
        status, body, _ = server.api(
            "POST",
            "/api/v1/releases",
            data=tar,
            token=server.tokens[role],
            headers={"Content-Type": "application/x-tar"},
        )
        _assert_error(status, body, 403)
    a, b = server.enroll(name="a"), server.enroll(name="b")
    nonce = secrets.token_hex(16)
    for method, path, payload in (
        ("GET", f"/api/v1/devices/{b['device_id']}/assignment?nonce={nonce}", None),
        ("POST", f"/api/v1/devices/{b['device_id']}/reports", {"reports": []}),
        ("PUT", f"/api/v1/devices/{b['device_id']}/hardware", {"arch": "x86_64"}),
        ("GET", f"/api/v1/devices/{b['device_id']}", None),
    ):
        _assert_error(*server.api(method, path, json=payload, token=a["device_token"])[:2], 403)
        status, out, _ = server.api(method, path, json=payload, token=server.tokens["admin"])
        if path.endswith(b["device_id"]):  # the fleet view of a device is for API tokens
            assert status == 200 and out["id"] == b["device_id"]
        else:  # only the device itself polls and reports
            _assert_error(status, out, 403)
    # the enrollment token enrolls and does nothing else; API and device tokens cannot enroll
    _assert_error(*server.api("GET", "/api/v1/releases", token=server.enrollment_token)[:2], 403)
    enroll_body = {"name": "x", "hardware": {"arch": "x86_64"}}
    _assert_error(
        *server.api("POST", "/api/v1/devices/enroll", json=enroll_body, token=server.tokens["admin"])[:2], 403
    )
    _assert_error(*server.api("POST", "/api/v1/devices/enroll", json=enroll_body, token=a["device_token"])[:2], 403)


def test_public_endpoints_need_no_auth(server: LiveServer) -> None:
    assert server.api("GET", "/healthz")[:2] == (200, {"status": "ok", "db": "ok"})
    status, body, _ = server.api("GET", "/tuf/metadata/1.root.json")
    assert status == 200 and body["signed"]["_type"] == "root"
    _assert_error(*server.api("GET", "/tuf/metadata/../keys/root.pem")[:2], 404)
    _assert_error(*server.api("GET", "/tuf/targets/x/../../keys/" + "a" * 64 + ".pem")[:2], 404)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _bad_tars(bundle: Path) -> dict[str, bytes]:
    good = {p.name: p.read_bytes() for p in bundle.iterdir()}

    def file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        return info, data

    link = tarfile.TarInfo("model.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    corrupt = bytearray(good["model.onnx"])
    corrupt[100] ^= 0xFF
    manifest = json.loads(good["bundle.json"])
    manifest["variants"][0]["sha256"] = "z" * 64
    return {
        "traversal": _tar([file("../evil", b"x"), file("bundle.json", good["bundle.json"])]),
        "absolute": _tar([file("/tmp/evil", b"x")]),
        "symlink": _tar([file("bundle.json", good["bundle.json"]), (link, None)]),
        "hash-mismatch": _tar([file("bundle.json", good["bundle.json"]), file("model.onnx", bytes(corrupt))]),
        "missing-variant": _tar([file("bundle.json", good["bundle.json"])]),
        "extra-file": _tar(
            [file("bundle.json", good["bundle.json"]), file("model.onnx", good["model.onnx"]), file("notes.txt", b"hi")]
        ),
        "bad-manifest": _tar(
            [file("bundle.json", json.dumps(manifest).encode()), file("model.onnx", good["model.onnx"])]
        ),
        "not-a-tar": b"this is not a tar archive" * 40,
    }


def test_bad_uploads_get_400_and_change_nothing(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", name="evil", version="1.0.0")
    before = _snapshot(server)
    for case, data in _bad_tars(tmp_path / "b").items():
        status, body, _ = server.api(
            "POST",
            "/api/v1/releases",
            data=data,
            token=server.tokens["publisher"],
            headers={"Content-Type": "application/x-tar"},
        )
        assert status == 400, (case, body)
        _assert_error(status, body, 400)
    status, body, _ = server.api(
        "POST",
        "/api/v1/releases",
        data=bundle_tar(tmp_path / "b"),
        token=server.tokens["publisher"],
        headers={"Content-Type": "text/plain"},
    )
    _assert_error(status, body, 400, "Content-Type")
    assert _snapshot(server) == before
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_oversized_upload_gets_413_and_changes_nothing(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "big", name="big", version="1.0.0")
    (tmp_path / "big" / "pad.bin").write_bytes(secrets.token_bytes(300 * 1024))
    before = _snapshot(server)
    buf = io.BytesIO()  # every file, pad.bin included (bundle_tar would leave it out)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted((tmp_path / "big").iterdir()):
            tar.add(path, arcname=path.name)
    status, body, _ = server.api(
        "POST",
        "/api/v1/releases",
        data=buf.getvalue(),
        token=server.tokens["publisher"],
        headers={"Content-Type": "application/x-tar"},
    )
    _assert_error(status, body, 413)
    big_json = {"model": "x" * (3 * 1024 * 1024)}
    _assert_error(*server.api("POST", "/api/v1/rollouts", json=big_json, token=server.tokens["operator"])[:2], 413)
    assert _snapshot(server) == before


def test_duplicate_and_lower_versions_are_409(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "v2", name="mono", version="2.0.0")
    server.publish(tmp_path / "v2")
    before = _snapshot(server)
    for version in ("2.0.0", "1.9.9"):
        make_bundle(tmp_path / version, name="mono", version=version)
        status, body, _ = server.api(
            "POST",
            "/api/v1/releases",
            data=bundle_tar(tmp_path / version),
            token=server.tokens["publisher"],
            headers={"Content-Type": "application/x-tar"},
        )
        _assert_error(status, body, 409, "version")
    assert _snapshot(server) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "1.0.0"}, "model"),
        ({"model": "base", "version": "9.9.9"}, "version"),
        ({"model": "base", "version": "1.0.0", "stages": [10, 5, 100]}, "stages[1]"),
        ({"model": "base", "version": "1.0.0", "stages": [1, 50]}, "stages"),
        ({"model": "base", "version": "1.0.0", "max_failure_rate": 3}, "max_failure_rate"),
        ({"model": "base", "version": "1.0.0", "hardware_classes": ["gpu-x"]}, "hardware_classes[0]"),
        ({"model": "base", "version": "1.0.0", "colour": "red"}, "colour"),
        ({"model": "base", "version": "1.0.0", "gates": {"min_agreement": 2}}, "gates.min_agreement"),
        # overrides may only tighten the bundle's gates (budget 250 ms, error rate 0.01, health 3 s)
        ({"model": "base", "version": "1.0.0", "gates": {"latency_budget_ms": 1000}}, "gates.latency_budget_ms"),
        ({"model": "base", "version": "1.0.0", "gates": {"max_error_rate": 1.0}}, "gates.max_error_rate"),
        ({"model": "base", "version": "1.0.0", "gates": {"health_window_s": 0}}, "gates.health_window_s"),
    ],
)
def test_malformed_rollouts_are_400_with_the_field(server: LiveServer, body: dict[str, Any], field: str) -> None:
    before = server.api("GET", "/api/v1/rollouts", token=server.tokens["viewer"])[1]
    status, out, _ = server.api("POST", "/api/v1/rollouts", json=body, token=server.tokens["operator"])
    _assert_error(status, out, 400, field)
    assert server.api("GET", "/api/v1/rollouts", token=server.tokens["viewer"])[1] == before


def test_malformed_device_requests(server: LiveServer) -> None:
    dev = server.enroll(name="bad")
    did, tok = dev["device_id"], dev["device_token"]
    _assert_error(*server.api("GET", f"/api/v1/devices/{did}/assignment?nonce=xyz", token=tok)[:2], 400, "nonce")
    _assert_error(*server.api("POST", f"/api/v1/devices/{did}/reports", data=b"{not json", token=tok)[:2], 400, "body")
    bad_type = {"reports": [{"id": "r1", "time": "2026-11-27T10:00:00Z", "type": "party"}]}
    _assert_error(
        *server.api("POST", f"/api/v1/devices/{did}/reports", json=bad_type, token=tok)[:2], 400, "reports[0].type"
    )
    too_many = {"reports": [{"id": f"r{i}", "time": "2026-11-27T10:00:00Z", "type": "heartbeat"} for i in range(501)]}
    _assert_error(*server.api("POST", f"/api/v1/devices/{did}/reports", json=too_many, token=tok)[:2], 400, "reports")
    _assert_error(
        *server.api("PUT", f"/api/v1/devices/{did}/hardware", json={"arch": "x86_64", "accelerator": "tpu"}, token=tok)[
            :2
        ],
        400,
        "body.accelerator",
    )
    enroll = {"name": "x", "group": "bad group!", "hardware": {"arch": "x86_64"}}
    _assert_error(
        *server.api("POST", "/api/v1/devices/enroll", json=enroll, token=server.enrollment_token)[:2], 400, "group"
    )
    enroll = {"name": "x", "hardware": {"accelerator": "cpu"}}
    _assert_error(
        *server.api("POST", "/api/v1/devices/enroll", json=enroll, token=server.enrollment_token)[:2],
        400,
        "hardware.arch",
    )
