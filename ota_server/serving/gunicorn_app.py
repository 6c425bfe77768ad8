"""Running the app under gunicorn (``BaseApplication``): gthread workers with keep-alive,
each building its own app with :func:`ota_server.app.create_app`.

The workers are :class:`PollWorker`, gunicorn's gthread worker with two additions: its event
loop reads whole requests and writes answers, so slow clients hold no thread, under deadlines
and a per-address connection cap (see :mod:`ota_server.serving.guarded`); and unchanged
assignment polls are answered from gunicorn's parsed request, before the WSGI layer (see
:mod:`ota_server.serving.fastpath`). Everything else is gunicorn's own code path.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from gunicorn import SERVER
from gunicorn import __version__ as gunicorn_version
from gunicorn.app.base import BaseApplication
from gunicorn.util import http_date

from ota_server.config import ServerConfig
from ota_server.serving.connections import ConnectionLimits
from ota_server.serving.fastpath import Answer, FastPoll
from ota_server.serving.guarded import GuardedWorker

__all__ = ["PollWorker", "heartbeat_dir", "render_response", "run_gunicorn"]

log = logging.getLogger(__name__)

# Request headers that leave a request to gunicorn's full path: a body to read or to expect.
# So does any header name with "_": a CGI variable a trusted proxy may set, such as
# SCRIPT_NAME, which moves the application root.
_NOT_FAST = frozenset({"CONTENT-LENGTH", "TRANSFER-ENCODING", "EXPECT"})


def render_response(answer: Answer, *, date: str) -> bytes:
    """``answer`` as HTTP/1.1 bytes with the headers gunicorn adds (Server, Date, keep-alive)."""
    lines = [f"HTTP/1.1 {answer.status_line}\r\nServer: {SERVER}\r\nDate: {date}\r\nConnection: keep-alive\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in answer.headers]
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + answer.body


class PollWorker(GuardedWorker):
    """The guarded gthread worker (:class:`GuardedWorker`), answering unchanged assignment polls itself.

    Under load almost every request is an unchanged poll, and on it gunicorn's WSGI layer (the
    environ, the response object and its header checks) costs more CPU than answering does.
    So each parsed HTTP/1.1 request goes to :meth:`FastPoll.answer` first, and a cached answer
    is written straight to the socket. Any request this worker cannot answer exactly as
    gunicorn would — a body, ``Connection: close``, HTTP/1.0, a header with ``_``, a repeated
    header, the request that ends the worker's ``max_requests``, a full keep-alive table — and
    every request while access logging is on (so the log stays complete) takes gunicorn's
    ``handle_request`` unchanged. The answers it writes skip gunicorn's ``pre_request`` and
    ``post_request`` hooks, which ``ota-server serve`` does not set.
    """

    _fast: FastPoll | None = None
    _date: tuple[int, str] = (0, "")

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = getattr(self.wsgi, "wsgi_app", None)
        reasons = []
        if not isinstance(app, FastPoll):
            reasons.append("the app has no FastPoll")
        if self.cfg.accesslog:
            reasons.append("access logging is on")
        if os.environ.get("SCRIPT_NAME") or getattr(self.cfg, "protocol", "http") != "http":
            reasons.append("the app is not served at the root over plain HTTP")
        if not hasattr(self, "keepalived_conns"):  # needed for gunicorn's keep-alive limit below
            reasons.append(f"gunicorn {gunicorn_version}'s gthread worker has no keepalived_conns")
        if reasons:
            log.info("unchanged polls go through WSGI in this worker: %s", "; ".join(reasons))
            return
        self._fast = app

    def answer(self, req: Any, conn: Any) -> bool:
        answer = self._fast_answer(req)
        if answer is None:
            return bool(super().answer(req, conn))
        self.nr += 1
        conn.sock.sendall(render_response(answer, date=self._http_date()))
        return True

    def _fast_answer(self, req: Any) -> Answer | None:
        fast = self._fast
        if (
            fast is None
            or req.method != "GET"
            or req.version != (1, 1)
            or req.should_close()
            or not self.alive
            or self.nr + 1 >= self.max_requests
            or len(self.keepalived_conns) >= self.max_keepalived
        ):
            return None
        authorization = if_none_match = None
        for name, value in req.headers:
            if name == "AUTHORIZATION":
                if authorization is not None:
                    return None
                authorization = value
            elif name == "IF-NONE-MATCH":
                if if_none_match is not None:
                    return None
                if_none_match = value
            elif name in _NOT_FAST or "_" in name:
                return None
        # the raw path is WSGI's PATH_INFO here: the assignment route admits no percent-escapes
        return fast.answer(req.path, req.query, authorization, if_none_match)

    def _http_date(self) -> str:
        """The Date header value, formatted once per second (gunicorn formats it per response)."""
        now = int(time.time())
        second, text = self._date
        if second != now:
            text = http_date(now)
            self._date = (now, text)
        return text


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def heartbeat_dir(config: ServerConfig) -> Path:
    """Where workers keep the file whose timestamp tells the master they are alive.

    Each worker touches it on every turn of its event loop; on a disk file system that is a
    metadata write each time, on tmpfs it is a memory update, hence ``/dev/shm`` when it can
    be used (gunicorn's own advice), else the data directory's ``run/``.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return config.data_dir / "run"


class _App(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: ServerConfig, options: dict[str, Any]) -> None:
        self._config = config
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from ota_server.app import create_app

        return create_app(self._config)


def run_gunicorn(
    config: ServerConfig,
    *,
    bind: str,
    workers: int,
    threads: int,
    access_log: bool,
    limits: ConnectionLimits | None = None,
) -> int:
    """Serve the app on ``bind`` until gunicorn's master exits; returns the exit status (0).

    ``limits``: the slow-client deadlines and the per-address connection cap (default
    :class:`ConnectionLimits`).

    Raises:
        SetupError: the data directory or its database cannot be used (from ``create_app`` in
            the master, before any worker starts).
    """
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers,
        "worker_class": f"{PollWorker.__module__}.{PollWorker.__qualname__}",
        "threads": threads,
        "keepalive": 30,
        "timeout": 120,
        "graceful_timeout": 10,
        "child_exit": _child_exit,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "logger_class": "ota_server.serving.accesslog.RedactingLogger",  # no token in the access log
        "loglevel": "info",
        "proc_name": "ota-server",
        "control_socket_disable": True,  # several servers on one host must not share a socket
        "worker_tmp_dir": str(heartbeat_dir(config)),
        # import once in the master and fork: faster start, less memory. create_app keeps no
        # database connection open (its schema upgrade disposes of its own engine), so no pooled
        # connection or SQLite handle crosses the fork.
        "preload_app": True,
    }
    PollWorker.limits = limits or ConnectionLimits()  # class attribute: the forked workers inherit it
    log.info("serving %s on http://%s with %d workers x %d threads", config.data_dir, bind, workers, threads)
    _App(config, options).run()
    return 0
