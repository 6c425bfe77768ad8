"""Serving requests: the process model and what every request passes through.

::

    gunicorn_app.py  ``ota-server serve``: gunicorn with a gthread worker that answers unchanged polls itself
    guarded.py       slow clients off the threads: the event loop reads requests, writes answers, caps per address
    connections.py   guarded.py's pieces: request framing, deferred answers, the deadlines and cap
    fastpath.py      unchanged assignment polls answered from the caches, before Flask
    auth.py          tokens (format, digests), roles, the caching, throttling authenticator
    metrics.py       Prometheus request metrics and fleet gauges
    accesslog.py     gunicorn's logger with tokens redacted from the access log

The HTTP routes themselves are :mod:`ota_server.api`.
"""

__all__: list[str] = []
