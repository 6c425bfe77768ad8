"""The unchanged-poll fast path below Flask: gunicorn's worker answering from the caches, the
generation read every poll makes, and the nonce parsing — on SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http import get_parser

from ota_server.app import create_app
from ota_server.config import ServerConfig
from ota_server.provision import create_token
from ota_server.serving.fastpath import query_nonce
from ota_server.serving.gunicorn_app import PollWorker
from ota_server.storage import store as st
from ota_server.storage.store import Store
from tests.bundles import make_bundle
from tests.live_server import bundle_tar

NONCE = "ab" * 16


@dataclass
class _Conn:
    """What gunicorn's gthread worker hands ``handle_request``: the socket and both addresses."""

    sock: socket.socket
    client: tuple[str, int] = ("127.0.0.1", 40000)
    server: tuple[str, int] = ("127.0.0.1", 8080)


class _Gunicorn:
    """A :class:`PollWorker` in this process, fed real requests over a socket pair; ``wsgi_calls``
    counts the requests that went down gunicorn's WSGI path instead of the worker's own."""

    def __init__(self, app: Flask, tmp: Path, *, access_log: bool = False) -> None:
        cfg = Config()
        cfg.set("worker_tmp_dir", str(tmp))
        cfg.set("accesslog", str(tmp / "access.log") if access_log else None)
        self.cfg = cfg

        class _Loaded:  # gunicorn's application object: only wsgi() is used by a worker
            @staticmethod
            def wsgi() -> Flask:
                return app

        self.worker = PollWorker(0, 0, [], _Loaded(), 30, cfg, Logger(cfg))
        self.worker.load_wsgi()
        self.wsgi_calls = 0

        def counting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.wsgi_calls += 1
            return app(environ, start_response)

        self.worker.wsgi = counting

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers, body, keep-alive) of one GET, parsed by the standard library's client."""
        server_end, client_end = socket.socketpair()
        with server_end, client_end:
            head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1:8080", **headers}.items())
            client_end.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
            req = next(get_parser(self.cfg, server_end, ("127.0.0.1", 40000)))
            keep_alive = self.worker.handle_request(req, _Conn(server_end))
            server_end.shutdown(socket.SHUT_WR)
            raw = b"".join(iter(lambda: client_end.recv(65536), b""))
        resp = HTTPResponse(_Bytes(raw))  # type: ignore[arg-type]
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), keep_alive


class _Bytes:
    """An answer's bytes, as the socket that :class:`http.client.HTTPResponse` reads them from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, _mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


@pytest.fixture
def app_and_device(initialized: tuple[ServerConfig, dict[str, str]]) -> Iterator[tuple[Flask, dict[str, Any]]]:
    config, result = initialized
    app = create_app(config)
    r = app.test_client().post(
        "/api/v1/devices/enroll",
        json={"name": "w", "hardware": {"arch": "x86_64"}, "public_key": "ab" * 32},
        headers={"Authorization": f"Bearer {result['enrollment_token']}"},
    )
    assert r.status_code == 201
    yield app, r.get_json()
    app.extensions["edgefleet"].store.dispose()


def _bump_generation(app: Flask) -> None:
    with app.extensions["edgefleet"].store.tx() as conn:
        st.bump_generation(conn)


def _same_answer(ours: tuple[int, dict[str, str], bytes, bool], view: tuple[int, dict[str, str], bytes, bool]) -> None:
    assert (ours[0], ours[2], ours[3]) == (view[0], view[2], view[3])
    assert ours[1].pop("date") and view[1].pop("date")
    assert ours[1] == view[1]


def test_the_worker_answers_unchanged_polls_as_the_flask_view_does(
    app_and_device: tuple[Flask, dict[str, Any]],
    tmp_path: Path,
) -> None:
    app, dev = app_and_device
    gunicorn = _Gunicorn(app, tmp_path)
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={NONCE}"
    auth = {"Authorization": f"Bearer {dev['device_token']}"}

    view_200 = gunicorn.get(path, auth)  # nothing cached: gunicorn -> Flask, which signs
    assert view_200[0] == 200 and view_200[3] is True and gunicorn.wsgi_calls == 1
    etag = view_200[1]["etag"]
    _same_answer(gunicorn.get(path, auth), view_200)
    assert gunicorn.wsgi_calls == 1  # answered by the worker itself

    # a new generation with the same content: the cache misses, the view re-signs the same bytes
    # (same nonce, same validity window) and answers its own 304
    _bump_generation(app)
    view_304 = gunicorn.get(path, {**auth, "If-None-Match": etag})
    assert view_304[0] == 304 and gunicorn.wsgi_calls == 2
    _same_answer(gunicorn.get(path, {**auth, "If-None-Match": f'"other", {etag}'}), view_304)
    assert gunicorn.wsgi_calls == 2

    # left to gunicorn: a closing request, one with a body, a bad nonce, access logging on
    closing = gunicorn.get(path, {**auth, "Connection": "close"})
    assert closing[0] == 200 and closing[3] is False and gunicorn.wsgi_calls == 3
    assert gunicorn.get(path, {**auth, "Content-Length": "0"})[0] == 200 and gunicorn.wsgi_calls == 4
    assert gunicorn.get(path.replace(NONCE, "zz"), auth)[0] == 400 and gunicorn.wsgi_calls == 5
    logged = _Gunicorn(app, tmp_path, access_log=True)
    assert logged.get(path, {**auth, "If-None-Match": etag})[0] == 304 and logged.wsgi_calls == 1


def test_a_changed_assignment_is_never_answered_304(
    app_and_device: tuple[Flask, dict[str, Any]], tmp_path: Path
) -> None:
    app, dev = app_and_device
    gunicorn = _Gunicorn(app, tmp_path)
    path = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={NONCE}"
    auth = {"Authorization": f"Bearer {dev['device_token']}"}
    status, headers, body, _ = gunicorn.get(path, auth)
    assert status == 200 and json.loads(body)["signed"]["target"] is None
    etag = headers["etag"]
    assert gunicorn.get(path, {**auth, "If-None-Match": etag})[0] == 304

    # another worker (a process of its own, its own caches) publishes a release and rolls it out
    config = app.extensions["edgefleet"].config
    other = create_app(config)
    client = other.test_client()
    make_bundle(tmp_path / "bundle", name="fast", version="1.0.0")
    r = client.post(
        "/api/v1/releases",
        data=bundle_tar(tmp_path / "bundle"),
        content_type="application/x-tar",
        headers={"Authorization": f"Bearer {create_token(config, role='publisher', name='ci')}"},
    )
    assert r.status_code == 201
    r = client.post(
        "/api/v1/rollouts",
        json={"model": "fast", "version": "1.0.0", "group": "default", "stages": [100]},
        headers={"Authorization": f"Bearer {create_token(config, role='operator', name='op')}"},
    )
    assert r.status_code == 201
    other.extensions["edgefleet"].store.dispose()

    calls = gunicorn.wsgi_calls
    status, headers, body, _ = gunicorn.get(path, {**auth, "If-None-Match": etag})
    assert status == 200 and headers["etag"] != etag and gunicorn.wsgi_calls == calls + 1
    assert json.loads(body)["signed"]["release"]["version"] == "1.0.0"


def test_generation_reads_see_other_writers_at_once(initialized: tuple[ServerConfig, dict[str, str]]) -> None:
    config, _ = initialized
    reader, writer = Store(config.effective_db_url), Store(config.effective_db_url)
    try:
        before = reader.generation()
        for n in range(1, 4):
            with writer.tx() as conn:
                st.bump_generation(conn)
            assert reader.generation() == before + n  # the very next read, no caching in between
    finally:
        reader.dispose()
        writer.dispose()


def test_a_lost_postgres_connection_costs_one_slow_read(pg_schema_url: str, tmp_path: Path) -> None:
    from ota_server.provision import init_data_dir

    config = ServerConfig(data_dir=tmp_path / "data", db_url=pg_schema_url)
    init_data_dir(config)
    store = Store(pg_schema_url)
    try:
        gen = store.generation()
        with store.read_engine.connect() as conn:  # what a database restart does to it
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND query = 'SELECT value FROM generation WHERE id = 1'"
                )
            ).scalar()
            conn.commit()
        assert killed == 1
        with store.tx() as conn:
            st.bump_generation(conn)
        assert store.generation() == gen + 1  # through the pool, while the reader is replaced
        assert store.generation() == gen + 1  # on the new reader
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("query", "nonce"),
    [
        (f"nonce={NONCE}", NONCE),
        (f"x=1&nonce={NONCE}", NONCE),
        (f"nonce={NONCE}&x=1", NONCE),
        (f"nonce={NONCE}&nonce={NONCE}", None),  # repeated: the view decides
        ("nonce=" + "AB" * 16, None),  # uppercase
        ("nonce=abc", None),  # too short
        ("nonce=" + "a" * 129, None),  # too long
        (f"nonce=%61{NONCE[1:]}", "a" + NONCE[1:]),  # escapes decoded, as Flask's request.args does
        ("", None),
    ],
)
def test_query_nonce(query: str, nonce: str | None) -> None:
    assert query_nonce(query) == nonce
