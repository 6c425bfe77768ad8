"""A bundle with a frame-form variant through the real server: accepted, the field kept, assigned."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from pathlib import Path

import pytest

from models.bundle import InputForm, Manifest, SelectionEntry, write_bundle
from optimize.frame_input import write_frame_variant
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with live_server(tmp_path_factory.mktemp("forms")) as srv:
        yield srv


def _two_forms(directory: Path) -> Manifest:
    base = make_bundle(directory, name="frames", version="1.0.0")
    path = write_frame_variant(directory / "model.onnx", directory / "model-frame.onnx", base.input)
    data = path.read_bytes()
    twin = dataclasses.replace(
        base.variants[0],
        id="onnx-fp32-frame",
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        input_form=InputForm.FRAME,
    )
    order = SelectionEntry(order=("onnx-fp32-frame", "onnx-fp32"), reason="frame form first")
    manifest = dataclasses.replace(
        base, variants=(*base.variants, twin), selection={hw: order for hw in base.selection}
    )
    write_bundle(directory, manifest)
    return manifest


def test_server_keeps_input_form_and_assigns_the_frame_variant(server: LiveServer, tmp_path: Path) -> None:
    manifest = _two_forms(tmp_path / "b")
    release = server.publish(tmp_path / "b")
    assert {f["path"] for f in release["files"]} >= {"frames/1.0.0/model-frame.onnx"}

    status, body, _ = server.api("GET", "/api/v1/releases/frames/1.0.0", token=server.admin_token)
    assert status == 200, body
    forms = {v["id"]: v["input_form"] for v in body["manifest"]["variants"]}
    assert forms == {"onnx-fp32": "tensor", "onnx-fp32-frame": "frame"}
    assert Manifest.from_dict(body["manifest"]).variant("onnx-fp32-frame").input_form is InputForm.FRAME

    dev = server.enroll(name="cam-1", group="forms")
    server.create_rollout(model="frames", version="1.0.0", group="forms", stages=[100])
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={secrets.token_hex(16)}"
    status, body, _ = server.api("GET", path, token=dev["device_token"])
    assert status == 200, body
    target = body["signed"]["target"]
    assert target["variant"] == "onnx-fp32-frame" and target["path"] == "frames/1.0.0/model-frame.onnx"
    assert target["hashes"]["sha256"] == manifest.variant("onnx-fp32-frame").sha256
