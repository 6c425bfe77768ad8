"""A real OTA server for tests: :mod:`ota_server.local` with the tests' request helpers.

    with live_server(tmp_path) as srv:
        srv.publish(bundle_dir)
        srv.create_rollout(model="tiny", version="1.0.0", group="default")
        status, body, headers = srv.api("GET", "/api/v1/rollouts", token=srv.tokens["viewer"])

``ota-server init`` + ``ota-server serve`` (gunicorn) as subprocesses, on 127.0.0.1 at a free
port, with admin, viewer, publisher and operator tokens; on exit the server gets SIGQUIT
(gunicorn's quick shutdown), then SIGKILL if it lingers (see :mod:`ota_server.local`). Every
request goes through the project's API client, :class:`ota_server.client.OtaClient`
(``srv.client``, no token of its own; ``srv.as_role(role)`` for one with a role's token);
:meth:`LiveServer.api` is its raw form, for status checks.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.device_reports import public_key_hex, sign_report
from ota_server.client import BadAnswer, RolloutRequest
from ota_server.client.bundle import make_tar
from ota_server.errors import LocalServerError
from ota_server.local import LocalServer, free_port

__all__ = ["LiveServer", "bundle_tar", "free_port", "live_server"]

ROOT = Path(__file__).resolve().parents[1]


def bundle_tar(bundle_dir: Path) -> bytes:
    """The bundle directory as an uncompressed tar (top-level file names), like ``ota-ctl publish``:
    ``bundle.json`` and the files it names; anything else (an optimizer report) is left out."""
    buf = io.BytesIO()
    make_tar(Path(bundle_dir), buf)
    return buf.getvalue()


class LiveServer(LocalServer):
    """:class:`ota_server.local.LocalServer` with the requests tests make most."""

    def director_public_key(self) -> dict[str, Any]:
        return dict(json.loads(self.director_key_file.read_text()))

    def api(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request, whatever its status; body decoded as JSON when possible (else bytes, None
        when empty)."""
        resp = self.client.request(method, path, json_body=json, body=data, headers=headers, token=token)
        decoded: Any = None
        if resp.data:
            try:
                decoded = resp.json()
            except BadAnswer:
                decoded = resp.data
        return resp.status, decoded, dict(resp.headers.items())

    def create_rollout(self, **body: Any) -> dict[str, Any]:
        """Create a rollout as the operator; ``body`` holds :class:`RolloutRequest`'s fields."""
        return dict(self.as_role("operator").create_rollout(RolloutRequest(**body)))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.as_role("viewer").rollout(rollout_id))

    def credential(self, group: str = "default", tags: Sequence[str] = ()) -> str:
        """An enrollment credential binding ``group`` and ``tags`` (init's for the default group
        without tags; else one made once per binding)."""
        key = (group, tuple(sorted(set(tags))))
        if key == ("default", ()):
            return self.enrollment_token
        creds: dict[tuple[str, tuple[str, ...]], str] = self.__dict__.setdefault("_credentials", {})
        if key not in creds:
            creds[key] = self.enrollment_credential(group=group, tags=list(key[1]))
        return creds[key]

    def enroll(
        self,
        *,
        name: str = "dev",
        group: str = "default",
        tags: list[str] | None = None,
        hardware: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Enroll a device (x86_64 CPU profile by default) with a credential binding ``group`` and
        ``tags`` (or ``token``); returns the enrollment response and ``device_key``, the device's
        private key (:meth:`post_reports` signs with it)."""
        hw = dict(hardware or {"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2"]})
        key = Ed25519PrivateKey.generate()
        answer = self.client.enroll(
            token or self.credential(group, tags or []),
            name=name,
            group=group,
            tags=tags or [],
            hardware=hw,
            public_key=public_key_hex(key),
        )
        return dict(answer, device_key=key)

    @staticmethod
    def sign(dev: Mapping[str, Any], reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``reports`` signed with the key of ``dev`` (an :meth:`enroll` answer)."""
        return [sign_report(dev["device_key"], dev["device_id"], r) for r in reports]

    def post_reports(
        self, dev: Mapping[str, Any], reports: Sequence[Mapping[str, Any]], *, signed: bool = True
    ) -> tuple[int, Any, dict[str, str]]:
        """Post ``reports`` as ``dev``, signed with its key (unless ``signed`` is False)."""
        body = self.sign(dev, reports) if signed else [dict(r) for r in reports]
        path = f"/api/v1/devices/{dev['device_id']}/reports"
        return self.api("POST", path, json={"reports": body}, token=dev["device_token"])


@contextmanager
def live_server(
    tmp_path: Path,
    *,
    db_url: str | None = None,
    workers: int = 2,
    threads: int = 2,
    extra_env: Mapping[str, str] | None = None,
    init_args: Sequence[str] = (),
    serve_args: Sequence[str] = (),
) -> Iterator[LiveServer]:
    """Init ``tmp_path/ota-data`` and serve it under gunicorn on 127.0.0.1 (see module doc).

    ``db_url``: a PostgreSQL URL instead of the SQLite file; ``init_args``: extra ``ota-server init``
    flags (e.g. ``["--max-upload-mb", "1"]``); ``serve_args``: extra ``ota-server serve`` flags. A
    server that does not start is a RuntimeError holding its log.
    """
    log_path = Path(tmp_path) / "ota-server.log"
    try:
        server = LiveServer.start(
            Path(tmp_path) / "ota-data",
            db_url=db_url,
            workers=workers,
            threads=threads,
            init_args=init_args,
            serve_args=serve_args,
            env=extra_env,
            cwd=ROOT,
            log_path=log_path,
            init_timeout_s=120.0,
        )
    except LocalServerError as e:
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        raise RuntimeError(f"{e}\n{log}") from e
    with server:
        yield server
