"""The Flask application factory (``create_app``): blueprints, error answers, request metrics.

There is no module-level app: gunicorn calls ``create_app`` (see
:mod:`ota_server.serving.gunicorn_app`), tests call it with a mapping. The services it puts in
``app.extensions["edgefleet"]`` are built by :mod:`ota_server.services`. Workers are stateless — everything lives in
the database and the data directory — so any number of them can serve side by side; the
caches they keep (token lookups, signed assignments) are invalidated through the database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ota_server.config import ServerConfig
from ota_server.errors import ApiError, NotFound, RecordNotFound, SetupError
from ota_server.services import Services, build_services
from ota_server.serving.fastpath import FastPoll
from ota_server.settings import load_settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | ServerConfig | None = None) -> Flask:
    """Build the app from a :class:`ServerConfig`, a mapping of its fields, or the
    ``EDGEFLEET_DATA_DIR`` environment variable (how gunicorn workers get it).

    Raises:
        SetupError: no configuration, an unknown config key, or a data directory that is not
            initialized or whose database cannot be used (see :func:`build_services`).
    """
    import os

    if isinstance(test_config, ServerConfig):
        config = test_config
    elif test_config is not None:
        config = ServerConfig.from_mapping(test_config)
    else:
        data_dir = os.environ.get("EDGEFLEET_DATA_DIR")
        if not data_dir:
            raise SetupError("EDGEFLEET_DATA_DIR is not set; start the server with `ota-server serve`")
        config = load_settings(ServerConfig.from_mapping({"data_dir": data_dir}))

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_json_bytes
    app.config["TESTING"] = config.testing
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["edgefleet"] = build_services(config)

    from ota_server.api import dashboard, devices, fleet, health, releases, rollouts, tuf

    for bp in (health.bp, tuf.bp, devices.bp, releases.bp, rollouts.bp, fleet.bp, dashboard.bp):
        app.register_blueprint(bp)
    _register_handlers(app)
    app.wsgi_app = FastPoll(app.wsgi_app, app.extensions["edgefleet"])  # type: ignore[method-assign]
    return app


def _register_handlers(app: Flask) -> None:
    services: Services = app.extensions["edgefleet"]

    @app.errorhandler(ApiError)
    def api_error(e: ApiError) -> Response:
        if e.status == 413:
            _drain_body()
        return _error_response(e.status, e.to_dict())

    @app.errorhandler(RecordNotFound)
    def record_not_found(e: RecordNotFound) -> Response:
        # the store knows no HTTP: a missing row is the API's 404, with the store's message and field
        return api_error(NotFound(e.message, field=e.field))

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        code = (e.name or "error").upper().replace(" ", "_")
        body = {"error": {"code": code, "message": e.description or e.name, "field": None}}
        if e.code == 413:
            body["error"]["field"] = "body"
            _drain_body()
        answer = _error_response(e.code or 500, body)
        allow = dict(e.get_headers()).get("Allow")
        if allow:  # a 405 names the methods the URL takes (RFC 9110 §15.5.6)
            answer.headers["Allow"] = allow
        return answer

    @app.errorhandler(Exception)
    def internal_error(e: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        body = {"error": {"code": "INTERNAL", "message": f"internal error: {type(e).__name__}", "field": None}}
        return _error_response(500, body)

    @app.before_request
    def _start() -> None:
        g.start = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        start = g.get("start")
        if start is not None:
            services.metrics.observe(
                request.url_rule.rule if request.url_rule else "unmatched",
                request.method,
                response.status_code,
                time.perf_counter() - start,
            )
        return response


def _drain_body(max_bytes: int = 64 * 1024 * 1024) -> None:
    """Read and drop a refused body of known, moderate length, so the client — which is still
    sending — reads our 413 instead of a connection reset. Larger bodies are cut off."""
    length = request.content_length
    if length is None or length > max_bytes:
        return
    stream = request.environ.get("wsgi.input")
    if stream is None or getattr(request.environ.get("gunicorn.socket"), "drains_in_event_loop", False):
        return  # ota_server.serving.guarded drains it without holding this thread
    remaining = length
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
    except OSError:
        pass


def _error_response(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
