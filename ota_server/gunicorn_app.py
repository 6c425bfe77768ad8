"""Running the app under gunicorn (``BaseApplication``): gthread workers with keep-alive,
each building its own app with :func:`ota_server.app.create_app`."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from ota_server.config import ServerConfig

log = logging.getLogger(__name__)


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


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


def run_gunicorn(config: ServerConfig, *, bind: str, workers: int, threads: int, access_log: bool) -> int:
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "keepalive": 30,
        "timeout": 120,
        "graceful_timeout": 10,
        "child_exit": _child_exit,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "ota-server",
        "control_socket_disable": True,  # several servers on one host must not share a socket
        "worker_tmp_dir": str(config.data_dir / "run"),
        # import once in the master and fork: faster start, less memory. create_app opens no
        # database connection, so no pooled connection or SQLite handle crosses the fork.
        "preload_app": True,
    }
    log.info("serving %s on http://%s with %d workers x %d threads", config.data_dir, bind, workers, threads)
    _App(config, options).run()
    return 0
