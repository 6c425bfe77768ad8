"""Which releases the fleet runs that a new bundle has no agreement expectation for (SQLite and
PostgreSQL): per group, release and served variant, from what the devices reported."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from models.bundle import Manifest
from ota_server.config import ServerConfig
from ota_server.fleet import coverage
from ota_server.fleet.ingest import ingest
from ota_server.rules import reports as rp
from ota_server.services import Services, build_services
from ota_server.serving.auth import token_digest
from ota_server.storage import store as st
from tests.live_server import bundle_tar
from tests.ota_server.evidence_cases import FP32_SHA256, make_bundle_expecting


def _publish(s: Services, tmp_path: Path, version: str, baselines: list[tuple[str, str]]) -> Manifest:
    manifest = make_bundle_expecting(tmp_path / version, name="m", version=version, baselines=baselines)
    (tmp_path / f"{version}.tar").write_bytes(bundle_tar(tmp_path / version))
    s.publisher.publish_tar(tmp_path / f"{version}.tar", actor="test")
    return manifest


def _device(i: int, group: str, tags: list[str]) -> dict[str, Any]:
    return {
        "id": f"dev_{i}",
        "token_digest": token_digest(secrets.token_hex(8)),
        "name": f"d{i}",
        "group_name": group,
        "tags": tags,
        "hardware": {"arch": "x86_64", "accelerator": "cpu"},
        "hardware_class": "cpu-x86_64",
        "enrolled_at": st.utcnow(),
        "last_seen": None,
        "state": None,
        "running_name": None,
        "running_version": None,
        "running_release": None,
        "last_metrics": None,
    }


def _runs(s: Services, device_id: str, version: str, release: int, variant: str | None = None) -> None:
    running: dict[str, Any] = {"name": "m", "version": version, "release": release}
    if variant:
        running["variant"] = variant
    with s.store.tx() as conn:
        ingest(
            conn,
            device_id,
            [
                rp.parse_report(
                    {
                        "id": secrets.token_hex(8),
                        "time": "2026-11-27T10:00:00Z",
                        "type": "heartbeat",
                        "running": running,
                    },
                    "r",
                )
            ],
        )


def test_publish_warns_per_group_release_and_variant(
    initialized: tuple[ServerConfig, dict[str, str]], tmp_path: Path
) -> None:
    config, _ = initialized
    s = build_services(config)
    _publish(s, tmp_path, "1.0.0", [])
    with s.store.tx() as conn:
        st.insert_devices(
            conn,
            [_device(i, "eu", ["eu"] if i else []) for i in range(3)] + [_device(3, "us", []), _device(4, "us", [])],
        )
    _runs(s, "dev_0", "1.0.0", 1, "onnx-fp32")  # said which variant it serves
    _runs(s, "dev_1", "1.0.0", 1)  # did not: the director's pick for its hardware
    _runs(s, "dev_2", "1.0.0", 1)
    _runs(s, "dev_3", "1.0.0", 1)
    _runs(s, "dev_4", "0.9.0", 99)  # a release this server does not hold

    own_only = _publish(s, tmp_path, "1.1.0", [("m@1.1.0", FP32_SHA256)])
    with s.store.read() as conn:
        found = coverage.warnings(conn, own_only)
        in_eu = coverage.warnings(conn, own_only, group="eu", tags=["eu"])
    assert [(w["group"], w["devices"], w["release"], w["variant"], w["sha256"]) for w in found] == [
        ("eu", 3, "m@1.0.0", "onnx-fp32", FP32_SHA256),
        ("us", 1, "m@1.0.0", "onnx-fp32", FP32_SHA256),
        ("us", 1, "m@0.9.0", None, None),  # ordered by release counter within a group
    ]
    assert found[0]["message"] == (
        f"3 devices in group eu run m@1.0.0 (onnx-fp32, sha256 {FP32_SHA256[:12]}…): the bundle has no "
        "agreement expectation for it; they will judge it against its own FP32"
    )
    assert found[2]["message"].startswith("1 device in group us runs m@0.9.0 (variant unknown)")
    assert [(w["group"], w["devices"]) for w in in_eu] == [("eu", 2)]  # the rollout's selection only

    # devices on 1.1.0 itself are not warned about; an expectation for (release, file) covers it
    _runs(s, "dev_3", "1.1.0", 2)
    covering = _publish(s, tmp_path, "1.2.0", [("m@1.0.0", FP32_SHA256), ("m@1.1.0", FP32_SHA256)])
    with s.store.read() as conn:
        assert [w["release"] for w in coverage.warnings(conn, covering)] == ["m@0.9.0"]
        assert coverage.warnings(conn, own_only) == [found[0], found[2]]
    # the same release with another file (a variant the bundle was not measured against) is not covered
    other_file = _publish(s, tmp_path, "1.3.0", [("m@1.0.0", "0" * 64)])
    with s.store.read() as conn:
        assert {w["release"] for w in coverage.warnings(conn, other_file, group="eu")} == {"m@1.0.0"}
    s.store.dispose()
