"""A real OTA server for tests: ``ota-server init`` + ``ota-server serve`` (gunicorn) as subprocesses.

    with live_server(tmp_path) as srv:
        srv.publish(bundle_dir)
        srv.create_rollout(model="tiny", version="1.0.0", group="default")
        status, body, headers = srv.api("GET", "/api/v1/rollouts", token=srv.tokens["viewer"])

The server listens on 127.0.0.1 at a free port; on exit it gets SIGQUIT (gunicorn's quick
shutdown), then SIGKILL if it lingers. Role tokens besides admin are created with ``ota-server token create``'s code path
(in-process, against the same database) to save interpreter start-ups.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from ota_server.ctl import make_tar

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundle_tar(bundle_dir: Path) -> bytes:
    """The bundle directory as an uncompressed tar (top-level file names), like ``ota-ctl publish``:
    ``bundle.json`` and the files it names; anything else (an optimizer report) is left out."""
    buf = io.BytesIO()
    make_tar(Path(bundle_dir), buf)
    return buf.getvalue()


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    provisioning_dir: Path
    tokens: dict[str, str]
    enrollment_token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    init_result: dict[str, Any] = field(default_factory=dict)
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(retries=False, timeout=30.0))

    @property
    def root_json(self) -> Path:
        return self.provisioning_dir / "root.json"

    @property
    def director_key_file(self) -> Path:
        return self.provisioning_dir / "director.pub.json"

    def director_public_key(self) -> dict[str, Any]:
        return dict(json.loads(self.director_key_file.read_text()))

    def api(
        self, method: str, path: str, *, json: Any = None, data: bytes | None = None, token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request; body decoded as JSON when possible (else bytes, None when empty)."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        body: bytes | None = data
        if json is not None:
            import json as _json

            body = _json.dumps(json).encode()
            hdrs.setdefault("Content-Type", "application/json")
        resp = self.http.request(method, self.url + path, body=body, headers=hdrs, redirect=False)
        raw = resp.data
        decoded: Any = None
        if raw:
            try:
                import json as _json

                decoded = _json.loads(raw)
            except ValueError:
                decoded = raw
        return resp.status, decoded, {k: v for k, v in resp.headers.items()}

    def publish(self, bundle_dir: Path, *, token: str | None = None) -> dict[str, Any]:
        status, body, _ = self.api(
            "POST", "/api/v1/releases", data=bundle_tar(bundle_dir), token=token or self.tokens["publisher"],
            headers={"Content-Type": "application/x-tar"},
        )
        if status != 201:
            raise AssertionError(f"publish failed: {status} {body}")
        return dict(body["release"])

    def create_rollout(self, **body: Any) -> dict[str, Any]:
        status, out, _ = self.api("POST", "/api/v1/rollouts", json=body, token=self.tokens["operator"])
        if status != 201:
            raise AssertionError(f"rollout create failed: {status} {out}")
        return dict(out)

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        status, out, _ = self.api("GET", f"/api/v1/rollouts/{rollout_id}", token=self.tokens["viewer"])
        if status != 200:
            raise AssertionError(f"rollout {rollout_id}: {status} {out}")
        return dict(out)

    def enroll(self, *, name: str = "dev", group: str = "default", tags: list[str] | None = None,
               hardware: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Enroll a device (x86_64 CPU profile by default); returns the enrollment response."""
        hw = dict(hardware or {"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2"]})
        status, out, _ = self.api("POST", "/api/v1/devices/enroll", token=self.enrollment_token,
                                  json={"name": name, "group": group, "tags": tags or [], "hardware": hw})
        if status != 201:
            raise AssertionError(f"enroll failed: {status} {out}")
        return dict(out)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _run(args: list[str], *, env: Mapping[str, str]) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=dict(env), cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGQUIT (gunicorn's quick shutdown); if it lingers, SIGKILL its whole process group
    (the server was started in a session of its own, so that is the master and its workers)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def live_server(
    tmp_path: Path, *, db_url: str | None = None, workers: int = 2, threads: int = 2,
    extra_env: Mapping[str, str] | None = None, init_args: Sequence[str] = (),
) -> Iterator[LiveServer]:
    """Init a data dir under ``tmp_path`` and serve it under gunicorn on 127.0.0.1 (see module doc).

    ``db_url``: a PostgreSQL URL instead of the SQLite file; ``init_args``: extra ``ota-server init``
    flags (e.g. ``["--max-upload-mb", "1"]``).
    """
    data_dir = Path(tmp_path) / "ota-data"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    args = [str(BIN / "ota-server"), "init", "--data-dir", str(data_dir), "--json"]
    if db_url:
        args += ["--db-url", db_url]
    init = json.loads(_run(args + list(init_args), env=env))

    from ota_server.config import ServerConfig
    from ota_server.settings import load_settings
    from ota_server.setup import create_token

    config = load_settings(ServerConfig(data_dir=data_dir.resolve()))
    tokens = {"admin": init["admin_token"]}
    for role in ("viewer", "publisher", "operator"):
        tokens[role] = create_token(config, role=role, name=f"test-{role}")

    port = free_port()
    log_path = Path(tmp_path) / "ota-server.log"
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(
            [str(BIN / "ota-server"), "serve", "--data-dir", str(data_dir), "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--threads", str(threads)],
            stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )
        server = LiveServer(
            url=f"http://127.0.0.1:{port}", data_dir=data_dir, provisioning_dir=Path(init["provisioning_dir"]),
            tokens=tokens, enrollment_token=init["enrollment_token"], process=proc, log_path=log_path,
            init_result=init,
        )
        try:
            _wait_healthy(server)
            yield server
        finally:
            server.http.clear()  # close keep-alive connections first: gunicorn then stops at once
            _stop(proc)


def _wait_healthy(server: LiveServer, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"ota-server exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            status, _, _ = server.api("GET", "/healthz")
            if status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"ota-server not healthy after {timeout_s}s:\n{server.log_text()}")
