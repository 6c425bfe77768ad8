"""Test harness for the agent's update path.

- :class:`RepoSim`: a real TUF image repository (python-tuf ``tuf.api.metadata``,
  Ed25519 keys) plus a director that signs assignments with its own real key,
  served over HTTP on 127.0.0.1 by :class:`SimServer`, with knobs that turn it
  malicious (tampered bytes, endless data, trickling, forged or replayed
  assignments, frozen or rolled-back metadata). It stands in for a
  *compromised* server; the honest path is tested against the real server
  (``tests/live_server.py``).
- helpers to run the real ``edge-agent`` CLI as a subprocess, kill it with
  SIGKILL at a pause point, and check the on-disk invariants.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from onnx import TensorProto, helper, numpy_helper
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from models.bundle import Manifest, canonical_json, read_bundle, verify_bundle, write_bundle
from models.device_reports import verify_report
from tests.bundles import make_bundle, make_multi_bundle, make_onnx

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def utc(seconds: float = 0.0) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).replace(microsecond=0)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- bundles


def make_runaway_onnx(trip_count: int = 10**12) -> bytes:
    """An ONNX model whose Loop keeps the runtime busy forever (a runaway model)."""
    base = make_onnx("ok")
    import onnx

    model = onnx.load_from_string(base)
    g = model.graph
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_sum"]),
            helper.make_node("Sub", ["v_sum", "one"], ["v_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
    )
    # rename the original output and loop over it
    for node in g.node:
        for i, out in enumerate(node.output):
            if out == "logits":
                node.output[i] = "logits_pre"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(trip_count, dtype=np.int64), "TRIPS"),
            numpy_helper.from_array(np.array(True), "COND"),
        ]
    )
    g.node.append(helper.make_node("Loop", ["TRIPS", "COND", "logits_pre"], ["logits"], body=body))
    return model.SerializeToString()


def make_bundle_with(directory: Path, *, name: str, version: str, data: bytes, **kwargs: Any) -> Manifest:
    """A tiny bundle whose model file holds ``data`` (e.g. a runaway or padded model)."""
    import dataclasses

    manifest = make_bundle(directory, name=name, version=version, **kwargs)
    (directory / "model.onnx").write_bytes(data)
    variant = dataclasses.replace(manifest.variants[0], sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    manifest = dataclasses.replace(manifest, variants=(variant,))
    write_bundle(directory, manifest)
    return manifest


def make_duo_with(directory: Path, *, name: str, version: str, fp32: bytes, int8: bytes) -> Manifest:
    """A two-variant bundle (FP32 preferred, INT8 its alternate) whose files hold the given bytes."""
    import dataclasses

    manifest = make_multi_bundle(directory, name=name, version=version)
    variants = []
    for variant, data in zip(manifest.variants, (fp32, int8), strict=True):
        (directory / variant.file).write_bytes(data)
        variants.append(dataclasses.replace(variant, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    manifest = dataclasses.replace(manifest, variants=tuple(variants))
    write_bundle(directory, manifest)
    return manifest


def padded_onnx(pad_bytes: int, *, seed: int = 0) -> bytes:
    """The ``ok`` model plus an unused initializer, so downloads have bytes to cut."""
    import onnx

    model = onnx.load_from_string(make_onnx("ok"))
    rng = np.random.default_rng(seed)
    pad = rng.standard_normal(pad_bytes // 4).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(pad, "PAD"))
    return model.SerializeToString()


# --------------------------------------------------------------------------- TUF repository + director


class RepoSim:
    """A standard TUF repository (consistent snapshots) and an Ed25519 director."""

    def __init__(self) -> None:
        self.signers = {r: CryptoSigner.generate_ed25519() for r in ("root", "targets", "snapshot", "timestamp")}
        root = Root(expires=utc(86400 * 365), consistent_snapshot=True)
        for role, signer in self.signers.items():
            root.add_key(signer.public_key, role)
        self.root = Metadata(root)
        self.root.sign(self.signers["root"])
        self.targets = Metadata(Targets(expires=utc(86400 * 30)))
        self.snapshot = Metadata(Snapshot(expires=utc(86400 * 7)))
        self.timestamp = Metadata(Timestamp(expires=utc(86400)))
        self.metadata: dict[str, bytes] = {"1.root.json": self.root.to_bytes()}
        self.target_files: dict[str, bytes] = {}  # "<dir>/<sha256>.<name>" → bytes
        self.director = Ed25519PrivateKey.generate()
        self.counter = 0
        self.publish()

    @property
    def root_bytes(self) -> bytes:
        return self.metadata["1.root.json"]

    def director_public_key(self) -> dict[str, Any]:
        pub = self.director.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyid": hashlib.sha256(pub).hexdigest(),
            "keyval": {"public": pub.hex()},
        }

    def add_bundle(self, bundle_dir: Path) -> dict[str, Any]:
        """Publish a bundle's files as targets with edgefleet custom fields; returns the release."""
        manifest = read_bundle(bundle_dir)
        self.counter += 1
        files = {}
        for name in ["bundle.json"] + [v.file for v in manifest.variants]:
            data = (bundle_dir / name).read_bytes()
            path = f"{manifest.name}/{manifest.version}/{name}"
            variant = next((v for v in manifest.variants if v.file == name), None)
            tf = TargetFile.from_data(path, data, ["sha256"])
            tf.unrecognized_fields["custom"] = {
                "edgefleet": {
                    "bundle": manifest.name,
                    "version": manifest.version,
                    "release": self.counter,
                    "kind": "variant" if variant else "manifest",
                    "variant": variant.id if variant else None,
                    "requires": variant.requires.to_dict() if variant else None,
                }
            }
            self.targets.signed.targets[path] = tf
            self.target_files[f"{manifest.name}/{manifest.version}/{tf.hashes['sha256']}.{name}"] = data
            files[name] = tf
        self.publish()
        # the selection order of this host's class, as the director would assign it (manifest
        # order when this host can run none: the simulated server may assign what it cannot run)
        from models.hardware import NoCompatibleVariant, detect_profile, runnable_variants

        try:
            variants = runnable_variants(manifest, detect_profile())
        except NoCompatibleVariant:
            variants = manifest.variants
        return {
            "counter": self.counter,
            "name": manifest.name,
            "version": manifest.version,
            "manifest": files["bundle.json"],
            "target": files[variants[0].file],
            "variant": variants[0].id,
            "alternates": [(v.id, files[v.file]) for v in variants[1:]],
        }

    def publish(self, *, timestamp_expires: datetime | None = None) -> None:
        self.targets.signed.version += 1
        self.targets.sign(self.signers["targets"])
        tbytes = self.targets.to_bytes()
        self.metadata[f"{self.targets.signed.version}.targets.json"] = tbytes
        self.snapshot.signed.version += 1
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self.snapshot.sign(self.signers["snapshot"])
        self.metadata[f"{self.snapshot.signed.version}.snapshot.json"] = self.snapshot.to_bytes()
        self.republish_timestamp(expires=timestamp_expires)

    def republish_timestamp(self, *, expires: datetime | None = None) -> None:
        self.timestamp.signed.version += 1
        self.timestamp.signed.expires = expires or utc(86400)
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.timestamp.sign(self.signers["timestamp"])
        self.metadata["timestamp.json"] = self.timestamp.to_bytes()

    def sign_assignment(self, signed: dict[str, Any]) -> dict[str, Any]:
        pub = self.director_public_key()
        sig = self.director.sign(canonical_json(signed)).hex()
        return {"signed": signed, "signatures": [{"keyid": pub["keyid"], "sig": sig}]}

    @staticmethod
    def assignment_body(
        release: dict[str, Any],
        *,
        device_id: str,
        nonce: str,
        expires_in: float = 3600,
        gates: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        m, t = release["manifest"], release["target"]
        return {
            "_type": "edgefleet-assignment",
            "spec_version": "1",
            "device_id": device_id,
            "nonce": nonce,
            "issued": iso(utc()),
            "expires": iso(utc(expires_in)),
            "rollout_id": f"ro_sim{release['counter']}",
            "release": {"counter": release["counter"], "name": release["name"], "version": release["version"]},
            "manifest": {"path": m.path, "length": m.length, "hashes": dict(m.hashes)},
            "target": _target(t, release["variant"]),
            "alternates": [{"variant": vid, "target": _target(tf, vid)} for vid, tf in release.get("alternates", [])],
            "gates": gates or {"latency_budget_ms": 250.0},
        }


def _target(tf: TargetFile, variant: str) -> dict[str, Any]:
    return {
        "path": tf.path,
        "length": tf.length,
        "hashes": dict(tf.hashes),
        "custom": copy.deepcopy(tf.custom),
        "variant": variant,
    }


class _QuietServer(ThreadingHTTPServer):
    """Clients that cut a transfer on purpose (the agent's watchdogs) are not server errors."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handle_error(request, client_address)


@dataclass
class Knobs:
    """What the (malicious) server does; reset between tests."""

    assign: Callable[[str, str], dict[str, Any] | None] | None = None  # (device, nonce) → envelope
    tamper: bool = False  # flip a byte in served targets
    tamper_suffix: str | None = None  # ... only in those whose file name ends so
    tamper_first: int = 0  # flip a byte in the next N model files (*.onnx) served, then serve them intact
    endless: bool = False  # keep sending after the target's length
    endless_metadata: bool = False  # the same for metadata files
    trickle_bps: float | None = None  # bytes per second (targets)
    metadata_override: dict[str, bytes] = field(default_factory=dict)
    fail_reports: bool = False  # answer reports with 503
    etags: bool = False  # assignments carry an ETag, and a poll naming it is answered 304 (like the director)
    not_modified: bool = False  # answer every assignment poll 304, whatever it names (a hostile middlebox)


class SimServer:
    """HTTP front of a :class:`RepoSim` on 127.0.0.1 (threaded)."""

    def __init__(self, sim: RepoSim) -> None:
        self.sim = sim
        self.knobs = Knobs()
        self.reports: list[dict[str, Any]] = []
        self.devices: dict[str, str] = {}  # token → device id
        self.device_keys: dict[str, str] = {}  # device id → its public key (hex), from enrollment
        self.unsigned_reports = 0  # report batches refused for a missing or bad signature
        self.polls: list[str] = []  # nonces seen
        self.served: list[str] = []  # target URL paths answered
        self.not_modified = 0  # assignment polls answered 304
        self._envelopes: dict[str, tuple[str, dict[str, Any]]] = {}  # nonce → (ETag, envelope) with knobs.etags
        handler = self._handler()
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reasons(self, state: str = "refused") -> list[str]:
        return [r["reason_code"] for r in self.reports if r["state"] == state and r["type"] == "transition"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path.startswith("/tuf/metadata/"):
                    name = url.path.rsplit("/", 1)[1]
                    data = srv.knobs.metadata_override.get(name, srv.sim.metadata.get(name))
                    if data is None:
                        return self._json(404, {"error": {"code": "NOT_FOUND", "message": name}})
                    return self._bytes(data, 0, endless=srv.knobs.endless_metadata, trickle=None)
                if url.path.startswith("/tuf/targets/"):
                    data = srv.sim.target_files.get(url.path[len("/tuf/targets/") :])
                    if data is None:
                        return self._json(404, {"error": {"code": "NOT_FOUND", "message": url.path}})
                    tamper = srv.knobs.tamper or bool(
                        srv.knobs.tamper_suffix and url.path.endswith(srv.knobs.tamper_suffix)
                    )
                    if srv.knobs.tamper_first > 0 and url.path.endswith(".onnx"):
                        srv.knobs.tamper_first -= 1
                        tamper = True
                    if tamper:
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                    srv.served.append(url.path)
                    rng = self.headers.get("Range", "")
                    start = int(rng[6:].split("-")[0]) if rng.startswith("bytes=") else 0
                    return self._bytes(data, start, endless=srv.knobs.endless, trickle=srv.knobs.trickle_bps)
                if url.path.endswith("/assignment"):
                    device = url.path.split("/")[4]
                    nonce = parse_qs(url.query).get("nonce", [""])[0]
                    srv.polls.append(nonce)
                    if srv.knobs.not_modified or (
                        srv.knobs.etags
                        and nonce in srv._envelopes
                        and self.headers.get("If-None-Match") == srv._envelopes[nonce][0]
                    ):
                        srv.not_modified += 1
                        self.send_response(304)
                        if nonce in srv._envelopes:
                            self.send_header("ETag", srv._envelopes[nonce][0])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    env = srv.knobs.assign(device, nonce) if srv.knobs.assign else None
                    if env is None:
                        env = srv.sim.sign_assignment(
                            {
                                "_type": "edgefleet-assignment",
                                "spec_version": "1",
                                "device_id": device,
                                "nonce": nonce,
                                "issued": iso(utc()),
                                "expires": iso(utc(3600)),
                                "rollout_id": None,
                                "release": None,
                                "manifest": None,
                                "target": None,
                                "gates": None,
                            }
                        )
                    if not srv.knobs.etags:
                        return self._json(200, env)
                    etag, env = srv._envelopes.setdefault(
                        nonce, ('"' + hashlib.sha256(json.dumps(env).encode()).hexdigest()[:20] + '"', env)
                    )
                    return self._json(200, env, headers={"ETag": etag})
                return self._json(404, {"error": {"code": "NOT_FOUND", "message": url.path}})

            def _bytes(self, data: bytes, start: int, *, endless: bool, trickle: float | None) -> None:
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if endless:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        self.wfile.write(body)
                        for _ in range(2000):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if trickle:
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(1.0 / trickle)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(body)
                except OSError:  # the client cut the transfer (a resume test)
                    self.close_connection = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                url = urlparse(self.path)
                if url.path == "/api/v1/devices/enroll":
                    device_id = f"dev_sim{len(srv.devices) + 1}"
                    token = f"ef_dev_sim{len(srv.devices) + 1}"
                    srv.devices[token] = device_id
                    srv.device_keys[device_id] = str(body.get("public_key"))
                    return self._json(
                        201,
                        {
                            "device_id": device_id,
                            "device_token": token,
                            "director_public_key": srv.sim.director_public_key(),
                            "image_root": json.loads(srv.sim.root_bytes),
                            "tuf": {
                                "metadata_url": srv.url + "/tuf/metadata/",
                                "targets_url": srv.url + "/tuf/targets/",
                            },
                        },
                    )
                if url.path.endswith("/reports"):
                    if srv.knobs.fail_reports:
                        return self._json(503, {"error": {"code": "UNAVAILABLE", "message": "down"}})
                    # like the server: every report must be signed with the key the device enrolled
                    device_id = url.path.split("/")[-2]
                    key = srv.device_keys.get(device_id, "")
                    if not all(verify_report(key, device_id, r) for r in body["reports"]):
                        srv.unsigned_reports += 1
                        return self._json(401, {"error": {"code": "UNAUTHORIZED", "message": "bad report signature"}})
                    seen = {r["id"] for r in srv.reports}
                    new = [r for r in body["reports"] if r["id"] not in seen]
                    srv.reports.extend(new)
                    return self._json(
                        200,
                        {
                            "accepted": [r["id"] for r in new],
                            "duplicates": [r["id"] for r in body["reports"] if r["id"] in seen],
                        },
                    )
                return self._json(404, {"error": {"code": "NOT_FOUND", "message": url.path}})

        return Handler


# --------------------------------------------------------------------------- running the agent


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_AGENT_PAUSE_AT"}
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


FAST_RUN = ["--health-window", "0.5", "--bench-queries", "5", "--bench-duration", "0.05"]


def run_agent(
    data_dir: Path, *args: str, pause: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS --data-dir DIR``; ``env`` adds variables (e.g. the fake TensorRT's)."""
    env = agent_env(**({"EDGEFLEET_AGENT_PAUSE_AT": pause} if pause else {}), **(env or {}))
    return subprocess.run(
        [PY, "-m", "edge_agent", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def enroll_agent(server: Any, data_dir: Path, group: str) -> None:
    """``edge-agent enroll`` against a live server (:class:`tests.live_server.LiveServer`) into
    ``group``, with a credential bound to it and the server's trust anchors."""
    out = run_agent(
        data_dir,
        "enroll",
        "--server",
        server.url,
        "--token",
        server.credential(group),
        "--root",
        str(server.root_json),
        "--director-key",
        str(server.director_key_file),
        "--group",
        group,
        "--name",
        data_dir.name,
    )
    assert out.returncode == 0, out.stderr


def start_agent(data_dir: Path, *args: str, pause: str | None = None) -> subprocess.Popen[str]:
    env = agent_env(**({"EDGEFLEET_AGENT_PAUSE_AT": pause} if pause else {}))
    return subprocess.Popen(
        [PY, "-m", "edge_agent", *args, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


def kill_at_pause(proc: subprocess.Popen[str], data_dir: Path, *, timeout: float = 60) -> str | None:
    """Wait until the agent pauses (→ SIGKILL it, return the point) or exits (→ None)."""
    marker_dir = data_dir / "paused"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        points = list(marker_dir.glob("*")) if marker_dir.exists() else []
        if points:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            for p in points:
                p.unlink()
            return points[0].name
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    proc.kill()
    out = proc.communicate()[0]
    raise AssertionError(f"agent neither paused nor exited in {timeout}s:\n{out[-3000:]}")


def check_slots(data_dir: Path) -> str | None:
    """Invariants: each slot is empty or a complete verified bundle; ``current`` names such a slot.

    Returns ``"name@version"`` of the active model (None before the first install).
    """
    slots = data_dir / "slots"
    for slot in ("a", "b"):
        d = slots / slot
        if d.exists():
            manifest = read_bundle(d, verify=False)
            present = [v.id for v in manifest.variants if (d / v.file).exists()]
            assert present, f"slot {slot} holds a manifest but no model file"
            verify_bundle(d, manifest, variant_ids=present)
    link = slots / "current"
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    assert target in ("a", "b"), f"current points at {target!r}"
    manifest = read_bundle(slots / target, verify=False)
    return f"{manifest.name}@{manifest.version}"


# --------------------------------------------------------------------------- a man in the middle


class MitmProxy:
    """Forwards everything to the real server, tampering on demand.

    ``tamper_suffix``: flip the last byte of target files whose path ends so;
    ``replay``: answer assignment polls with the first assignment it saw.
    The ``Host`` header is kept, so the server's enrollment answer points the
    device's TUF URLs at the proxy too.
    """

    def __init__(self, upstream: str) -> None:
        import urllib3

        self.upstream = upstream.rstrip("/")
        self.http = urllib3.PoolManager(retries=False)
        self.tamper_suffix: str | None = None
        self.replay = False
        self.assignments: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
                resp = proxy.http.request(
                    method, proxy.upstream + self.path, body=body, headers=headers, redirect=False
                )
                data = resp.data
                if "/assignment" in self.path and resp.status == 200:
                    proxy.assignments.append(data)
                    if proxy.replay:
                        data = proxy.assignments[0]
                if proxy.tamper_suffix and self.path.endswith(proxy.tamper_suffix) and data:
                    data = data[:-1] + bytes([data[-1] ^ 0x01])
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def do_PUT(self) -> None:
                self._forward("PUT")

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
