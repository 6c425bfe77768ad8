"""publish → rollout → device polls → signed assignment verifies → stock ngclient downloads it."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tuf.ngclient import Updater

from models.bundle import canonical_json
from models.device_reports import assignment_digest
from tests.bundles import make_bundle, make_multi_bundle
from tests.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    tmp = tmp_path_factory.mktemp("e2e")
    with live_server(tmp) as srv:
        yield srv


def _verify(assignment: dict, public: dict) -> None:
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public["keyval"]["public"]))
    (sig,) = assignment["signatures"]
    assert sig["keyid"] == public["keyid"] == hashlib.sha256(bytes.fromhex(public["keyval"]["public"])).hexdigest()
    key.verify(bytes.fromhex(sig["sig"]), canonical_json(assignment["signed"]))  # raises if invalid


def _updater(server: LiveServer, tmp: Path, root: dict) -> Updater:
    meta = tmp / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (tmp / "targets").mkdir(exist_ok=True)
    return Updater(
        metadata_dir=str(meta),
        metadata_base_url=server.url + "/tuf/metadata/",
        target_base_url=server.url + "/tuf/targets/",
        target_dir=str(tmp / "targets"),
        bootstrap=json.dumps(root).encode(),  # the pinned root from provisioning
    )


def test_publish_rollout_poll_verify_download(server: LiveServer, tmp_path: Path) -> None:
    manifest = make_bundle(tmp_path / "b1", name="signs", version="1.0.0")
    release = server.publish(tmp_path / "b1")
    assert release["name"] == "signs" and release["counter"] >= 1
    paths = {f["path"] for f in release["files"]}
    assert paths == {"signs/1.0.0/bundle.json", "signs/1.0.0/model.onnx"}

    dev = server.enroll(name="truck-1", group="e2e")
    assert dev["device_id"].startswith("dev_") and dev["device_token"].startswith("ef_dev_")
    assert dev["director_public_key"] == server.director_public_key()
    assert dev["image_root"] == json.loads(server.root_json.read_text())

    rollout = server.create_rollout(model="signs", version="1.0.0", group="e2e", stages=[1, 100])
    assert rollout["status"] == "active" and rollout["selected_devices"] == 1

    nonce = secrets.token_hex(16)
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={nonce}"
    status, body, headers = server.api("GET", path, token=dev["device_token"])
    assert status == 200, body
    _verify(body, server.director_public_key())
    signed = body["signed"]
    assert signed["device_id"] == dev["device_id"] and signed["nonce"] == nonce
    assert signed["rollout_id"] == rollout["id"]
    assert signed["release"] == {"counter": release["counter"], "name": "signs", "version": "1.0.0"}
    target = signed["target"]
    assert target["path"] == "signs/1.0.0/model.onnx" and target["variant"] == "onnx-fp32"
    assert target["length"] == manifest.variants[0].size
    assert target["hashes"]["sha256"] == manifest.variants[0].sha256
    assert signed["gates"]["latency_budget_ms"] == manifest.gates.latency_budget_ms

    # unchanged poll: 304 with the same ETag
    status2, body2, headers2 = server.api(
        "GET", path, token=dev["device_token"], headers={"If-None-Match": headers["ETag"]}
    )
    assert status2 == 304 and body2 is None and headers2["ETag"] == headers["ETag"]

    # a stock ngclient refreshes and downloads both targets with matching hashes
    updater = _updater(server, tmp_path / "client", dev["image_root"])
    updater.refresh()
    for tpath in (target["path"], signed["manifest"]["path"]):
        info = updater.get_targetinfo(tpath)
        assert info is not None, tpath
        assert info.custom["edgefleet"]["release"] == release["counter"]
        local = updater.download_target(info)
        digest = hashlib.sha256(Path(local).read_bytes()).hexdigest()
        assert digest == info.hashes["sha256"]
    vinfo = updater.get_targetinfo(target["path"])
    assert vinfo is not None and vinfo.custom == target["custom"] and vinfo.length == target["length"]


def test_the_director_lists_the_alternates_a_device_can_run(server: LiveServer, tmp_path: Path) -> None:
    """FP32 is the CPU classes' preference, INT8 an alternate the device may time against it; a
    device without the INT8's CPU feature is not offered it."""
    import dataclasses

    from models.bundle import HardwareRequirements, write_bundle

    manifest = make_multi_bundle(tmp_path / "duo", name="duo", version="1.0.0")
    fp32, int8 = manifest.variants
    int8 = dataclasses.replace(int8, requires=HardwareRequirements(accelerators=("cpu",), cpu_features=("avx2",)))
    write_bundle(tmp_path / "duo", dataclasses.replace(manifest, variants=(fp32, int8)))
    server.publish(tmp_path / "duo")
    with_avx2 = server.enroll(name="duo-1", group="duo")
    without = server.enroll(name="duo-2", group="duo", hardware={"arch": "x86_64", "accelerator": "cpu"})
    server.create_rollout(model="duo", version="1.0.0", group="duo", stages=[100])

    def poll(dev: dict) -> dict:
        status, body, _ = server.api(
            "GET",
            f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}",
            token=dev["device_token"],
        )
        assert status == 200, body
        _verify(body, server.director_public_key())
        return dict(body["signed"])

    signed = poll(with_avx2)
    assert signed["target"]["variant"] == "onnx-fp32"
    (alt,) = signed["alternates"]
    assert alt["variant"] == "onnx-int8" and alt["target"]["variant"] == "onnx-int8"
    assert alt["target"]["path"] == "duo/1.0.0/model-onnx-int8.onnx"
    assert (alt["target"]["length"], alt["target"]["hashes"]) == (int8.size, {"sha256": int8.sha256})
    # each alternate is exactly its TUF target, as the primary is
    updater = _updater(server, tmp_path / "client", with_avx2["image_root"])
    updater.refresh()
    for target in (signed["target"], alt["target"]):
        info = updater.get_targetinfo(target["path"])
        assert info is not None and (info.length, dict(info.hashes), info.custom) == (
            target["length"],
            target["hashes"],
            target["custom"],
        )
    assert info.custom["edgefleet"]["variant"] == "onnx-int8"
    other = poll(without)  # it cannot run the INT8: only the FP32 is assigned
    assert (other["target"]["variant"], other["alternates"]) == ("onnx-fp32", [])


def test_poll_for_another_device_is_forbidden(server: LiveServer) -> None:
    a = server.enroll(name="a", group="iso")
    b = server.enroll(name="b", group="iso")
    nonce = secrets.token_hex(16)
    status, body, _ = server.api(
        "GET", f"/api/v1/devices/{b['device_id']}/assignment?nonce={nonce}", token=a["device_token"]
    )
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    status, body, _ = server.api(
        "GET", f"/api/v1/devices/{a['device_id']}/assignment?nonce={nonce}", token=a["device_token"]
    )
    assert status == 200 and body["signed"]["target"] is None  # no rollout for group "iso"
    assert body["signed"]["alternates"] == []


def test_full_flow_on_postgresql(pg_schema_url: str, tmp_path: Path) -> None:
    with live_server(tmp_path, db_url=pg_schema_url) as srv:
        make_bundle(tmp_path / "b", name="pg", version="1.0.0")
        release = srv.publish(tmp_path / "b")
        dev = srv.enroll(name="pg-1")
        ro = srv.create_rollout(model="pg", version="1.0.0", group="default", stages=[100])
        status, body, _ = srv.api(
            "GET",
            f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}",
            token=dev["device_token"],
        )
        assert status == 200 and body["signed"]["release"]["counter"] == release["counter"]
        _verify(body, srv.director_public_key())
        rep = {
            "id": "pg-r1",
            "time": "2026-11-27T10:00:00Z",
            "type": "transition",
            "state": "committed",
            "rollout_id": ro["id"],
            "release": release["counter"],
            "running": {"name": "pg", "version": "1.0.0", "release": release["counter"]},
            "assignment_digest": assignment_digest(body["signed"]),
        }
        status, out, _ = srv.post_reports(dev, [rep])
        assert status == 200 and out["accepted"] == ["pg-r1"]
        assert srv.rollout(ro["id"])["status"] == "completed"
        assert "postgresql" in json.loads((srv.data_dir / "server.json").read_text())["db_url"]


def test_etag_changes_when_the_assignment_changes_and_ranges_resume(server: LiveServer, tmp_path: Path) -> None:
    make_bundle(tmp_path / "r1", name="etag", version="1.0.0")
    make_bundle(tmp_path / "r2", name="etag", version="2.0.0", behaviour="permuted")
    server.publish(tmp_path / "r1")
    dev = server.enroll(name="etag-dev", group="etag")
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}"
    status, empty, headers = server.api("GET", path, token=dev["device_token"])
    assert status == 200 and empty["signed"]["target"] is None
    etag = headers["ETag"]
    for _ in range(3):  # repeated polls on both workers: 304
        assert server.api("GET", path, token=dev["device_token"], headers={"If-None-Match": etag})[0] == 304
    server.publish(tmp_path / "r2")
    server.create_rollout(model="etag", version="2.0.0", group="etag", stages=[100])
    status, body, headers2 = server.api("GET", path, token=dev["device_token"], headers={"If-None-Match": etag})
    assert status == 200 and headers2["ETag"] != etag and body["signed"]["release"]["version"] == "2.0.0"

    target = body["signed"]["target"]
    url = f"/tuf/targets/etag/2.0.0/{target['hashes']['sha256']}.model.onnx"
    status, full, th = server.api("GET", url)
    assert status == 200 and len(full) == target["length"]
    assert th["ETag"].strip('"') == target["hashes"]["sha256"]
    status, part, ph = server.api("GET", url, headers={"Range": "bytes=100-", "If-Range": th["ETag"]})
    assert status == 206 and part == full[100:]
    assert ph["Content-Range"] == f"bytes 100-{len(full) - 1}/{len(full)}"
    assert server.api("GET", url, headers={"If-None-Match": th["ETag"]})[0] == 304
    status, _, _ = server.api("GET", url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert status == 200  # validator changed: the whole file again


def test_metrics_aggregate_across_workers_and_fleet_summary(server: LiveServer) -> None:
    for _ in range(6):  # spread over both workers' keep-alive connections
        assert server.api("GET", "/healthz")[0] == 200
    status, text, headers = server.api("GET", "/metrics", token=server.tokens["viewer"])
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = text.decode() if isinstance(text, bytes) else str(text)
    healthz = [
        line
        for line in text.splitlines()
        if line.startswith("edgefleet_http_requests_total{") and 'route="/healthz"' in line
    ]
    assert healthz and sum(float(line.rsplit(" ", 1)[1]) for line in healthz) >= 6
    assert 'edgefleet_devices{group="e2e"}' in text and "edgefleet_rollouts{" in text
    status, summary, _ = server.api("GET", "/api/v1/fleet/summary", token=server.tokens["viewer"])
    assert status == 200 and summary["devices"] >= 1 and summary["groups"]["e2e"] >= 1
    assert summary["rollouts"].get("active", 0) >= 1
