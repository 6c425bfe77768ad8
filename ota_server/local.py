"""Run a real OTA server on this machine: ``ota-server init`` + ``ota-server serve`` as child processes.

For the tests, the benchmarks and the demo, which need a real server (gunicorn, a real
database) rather than a stand-in::

    with LocalServer.start(work / "ota-data") as srv:
        srv.publish(bundle_dir)
        srv.as_role("operator").create_rollout(RolloutRequest(model="tiny", version="1.0.0", group="default"))

:meth:`LocalServer.start` initializes a fresh data directory with the ``ota-server`` command
(the one next to this interpreter, else the one on ``PATH``), which creates the admin and the
fleet enrollment tokens; a token per further role asked for (viewer, publisher, operator by
default) is created in this process with ``ota-server token create``'s code path, against the
same database, to save interpreter start-ups. It then serves the directory under gunicorn on
127.0.0.1 (a free port unless one is given), both commands writing to one log file, and returns
once ``/healthz`` answers through the project's API client (:class:`ota_server.client.OtaClient`).
:meth:`LocalServer.stop` closes the client's connections and sends SIGQUIT (gunicorn's quick
shutdown), then SIGKILL to the server's process group if it lingers.

It is no service manager: nothing is restarted, an initialized data directory is refused (as
``ota-server init`` refuses it), and it binds only the loopback address. It reaches the server
only through its command line and its HTTP API, except for creating those role tokens.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ota_server.client import ClientError, OtaClient
from ota_server.client.bundle import make_tar
from ota_server.errors import LocalServerError

__all__ = ["ROLES", "LocalServer", "free_port", "ota_server_command"]

_S = TypeVar("_S", bound="LocalServer")

ROLES = ("viewer", "publisher", "operator")  # tokens made besides init's admin and enrollment tokens


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (another program may take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ota_server_command() -> str:
    """Path of the ``ota-server`` console script: next to this interpreter first, then on ``PATH``.

    Raises:
        LocalServerError: it is not installed.
    """
    local = Path(sys.executable).parent / "ota-server"
    if local.is_file():
        return str(local)
    found = shutil.which("ota-server")
    if not found:
        raise LocalServerError("ota-server is not installed; run `make install` (pip install -e '.[all,dev]')")
    return found


@dataclass
class LocalServer:
    """A running local server: where it listens, its tokens, its process and log."""

    url: str
    data_dir: Path
    provisioning_dir: Path  # root.json and director.pub.json: what a vehicle pins
    tokens: dict[str, str]  # role -> API token: "admin" and each role asked for
    enrollment_token: str
    process: subprocess.Popen[bytes]  # the gunicorn master, in a session (process group) of its own
    log_path: Path
    init_result: dict[str, Any] = field(default_factory=dict)  # what `ota-server init --json` printed
    argv: list[str] = field(default_factory=list)  # the `ota-server serve` command line
    client: OtaClient = field(init=False)  # no token of its own: see as_role

    def __post_init__(self) -> None:
        self.client = OtaClient(self.url, timeout_s=30.0, connect_timeout_s=30.0)

    @classmethod
    def start(
        cls: type[_S],
        data_dir: Path,
        *,
        port: int = 0,
        db_url: str | None = None,
        workers: int = 2,
        threads: int = 2,
        roles: Sequence[str] = ROLES,
        init_args: Sequence[str] = (),
        serve_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        init_timeout_s: float = 300.0,
        start_timeout_s: float = 60.0,
    ) -> _S:
        """Init ``data_dir`` and serve it on 127.0.0.1 (see the module doc); the caller stops it.

        ``port`` 0 takes a free one; ``db_url`` a PostgreSQL URL instead of the SQLite file;
        ``roles`` the API tokens to make besides admin; ``init_args`` more ``ota-server init``
        flags (``["--max-upload-mb", "1"]``), ``serve_args`` more ``ota-server serve`` flags
        (``["--forwarded-allow-ips", "127.0.0.1"]``); ``env`` variables set for both commands, over this
        process's environment; ``log_path`` the log of both commands (default
        ``ota-server.log`` beside ``data_dir``, appended to); ``start_timeout_s`` how long
        ``/healthz`` may take to answer (gunicorn starts slowly on a loaded host).

        Raises:
            LocalServerError: ``ota-server`` is not installed, ``init`` failed, or the server
                exited or did not answer in time (it is stopped then); ``log_path`` says why.
            SetupError: a role token could not be stored.
        """
        data_dir = Path(data_dir).absolute()
        log = Path(log_path) if log_path is not None else data_dir.parent / "ota-server.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = ota_server_command()
        init_argv = [command, "init", "--data-dir", str(data_dir), "--json"]
        init_argv += ["--db-url", db_url] if db_url else []
        init = _init(init_argv + list(init_args), log, env=full_env, cwd=cwd, timeout_s=init_timeout_s)
        tokens = {"admin": str(init["admin_token"]), **_role_tokens(data_dir, roles)}
        port = port or free_port()
        serve_argv = [
            command,
            "serve",
            "--data-dir",
            str(data_dir),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            *serve_args,
        ]
        server = cls(
            url=f"http://127.0.0.1:{port}",
            data_dir=data_dir,
            provisioning_dir=Path(init["provisioning_dir"]),
            tokens=tokens,
            enrollment_token=str(init["enrollment_token"]),
            process=_popen(serve_argv, log, env=full_env, cwd=cwd),
            log_path=log,
            init_result=init,
            argv=serve_argv,
        )
        try:
            server.wait_healthy(timeout_s=start_timeout_s)
        except BaseException:  # Ctrl-C included: never leave the server behind
            server.stop()
            raise
        return server

    @property
    def admin_token(self) -> str:
        return self.tokens["admin"]

    @property
    def root_json(self) -> Path:
        return self.provisioning_dir / "root.json"

    @property
    def director_key_file(self) -> Path:
        return self.provisioning_dir / "director.pub.json"

    def as_role(self, role: str) -> OtaClient:
        """The client with the token of ``role`` (admin, or a role asked for); raises ``KeyError``
        for a role without a token."""
        return self.client.with_token(self.tokens[role])

    def enrollment_credential(
        self,
        *,
        group: str = "default",
        tags: Sequence[str] = (),
        uses: int | None = None,
        expires_s: float | None = None,
        approval: bool = False,
    ) -> str:
        """A new enrollment credential binding ``group`` and ``tags`` (like ``ota-server
        enroll-token create``, made in this process against the server's database); its token.

        Raises:
            SetupError: a bad binding, or the database cannot be used.
        """
        from ota_server.config import ServerConfig
        from ota_server.provision import create_enroll_credential
        from ota_server.settings import load_settings

        config = load_settings(ServerConfig(data_dir=self.data_dir.resolve()))
        cred = create_enroll_credential(
            config, name=f"local-{group}", group=group, tags=tags, uses=uses, expires_s=expires_s, approval=approval
        )
        return str(cred["token"])

    def publish(self, bundle_dir: Path, *, token: str | None = None) -> dict[str, Any]:
        """Publish ``bundle_dir`` as ``ota-ctl publish`` does (``bundle.json`` and the files it
        names); with ``token``, else the publisher's, else the admin's. Returns the release.

        Raises:
            NotABundle: ``bundle_dir`` has no readable ``bundle.json``.
            ClientError: the server refused it or did not answer.
        """
        buf = io.BytesIO()
        make_tar(Path(bundle_dir), buf)
        client = self.client.with_token(token or self.tokens.get("publisher") or self.admin_token)
        return dict(client.publish(buf.getvalue())["release"])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_healthy(self, *, timeout_s: float = 60.0) -> None:
        """Return once ``GET /healthz`` answers "ok".

        Raises:
            LocalServerError: the server exited first, or did not answer within ``timeout_s``.
        """
        probe = OtaClient(self.url, timeout_s=2.0, connect_timeout_s=2.0)  # short: a port held by another
        deadline = time.monotonic() + timeout_s  # program may never answer
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise LocalServerError(
                        f"ota-server serve exited with code {code} before {self.url}/healthz "
                        f"answered; see {self.log_path}",
                        log_path=self.log_path,
                    )
                with suppress(ClientError):  # not up yet: no answer, or a 503 while its database opens
                    if probe.health()["status"] == "ok":
                        return
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"{self.url}/healthz did not answer within {timeout_s:.0f} s; see {self.log_path}",
                        log_path=self.log_path,
                    )
                time.sleep(0.1)
        finally:
            probe.close()

    def stop(self, *, grace_s: float = 5.0) -> int | None:
        """Close the client's connections, SIGQUIT the server (gunicorn's quick shutdown), wait
        ``grace_s``, then SIGKILL whatever is left of its process group. Returns its exit code
        (None when it would not die); raises nothing."""
        self.client.close()  # kept-alive connections first: gunicorn then stops at once
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGQUIT)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _popen(argv: list[str], log_path: Path, *, env: Mapping[str, str], cwd: Path | None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def _init(
    argv: list[str], log_path: Path, *, env: Mapping[str, str], cwd: Path | None, timeout_s: float
) -> dict[str, Any]:
    """Run ``ota-server init --json``; its JSON (tokens included) stays out of the log."""
    with open(log_path, "ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise LocalServerError(f"ota-server init did not finish within {timeout_s:.0f} s", log_path=log_path) from e
    if out.returncode != 0:
        with open(log_path, "a") as fh:
            fh.write(out.stdout + out.stderr)
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LocalServerError(f"ota-server init exited with code {out.returncode}: {last}", log_path=log_path)
    try:
        init = json.loads(out.stdout[out.stdout.index("{") :])
        if not isinstance(init, dict) or not all(
            k in init for k in ("admin_token", "enrollment_token", "provisioning_dir")
        ):
            raise ValueError(f"expected the tokens and the provisioning directory, got {init!r:.200}")
    except ValueError as e:
        raise LocalServerError(f"ota-server init --json printed no tokens ({e})", log_path=log_path) from e
    with open(log_path, "a") as fh:
        fh.write(out.stderr)
    return init


def _role_tokens(data_dir: Path, roles: Sequence[str]) -> dict[str, str]:
    """One API token per role, made in this process against the server's database."""
    if not roles:
        return {}
    from ota_server.config import ServerConfig
    from ota_server.provision import create_token
    from ota_server.settings import load_settings

    config = load_settings(ServerConfig(data_dir=data_dir.resolve()))
    return {role: create_token(config, role=role, name=f"local-{role}") for role in roles}
