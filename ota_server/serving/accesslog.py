"""gunicorn's logger with secrets taken out of the access log.

A client may still put a token in a URL (an old ``/dashboard?token=`` bookmark) or send one in a
``Referer``; the access log, which is kept and shipped, must not hold it. :class:`RedactingLogger`
replaces the value of every ``token=`` parameter and anything shaped like an edgefleet token
(``ef_<kind>_<43 characters>``) with ``[redacted]`` in every atom of the access line.
``ota-server serve --access-log`` uses it (see :mod:`ota_server.serving.gunicorn_app`).

Not here: which requests are logged, or the application's own log.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

__all__ = ["RedactingLogger", "redact"]

_SECRET = re.compile(r"(?i)((?:^|[?&;])(?:token|access_token)=)[^&;\s\"]*|ef_(?:api|dev|enroll)_[A-Za-z0-9_-]{20,}")


def redact(text: str) -> str:
    """``text`` with ``token=`` values and edgefleet tokens replaced by ``[redacted]``."""
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class RedactingLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's :class:`~gunicorn.glogging.Logger` whose access-log atoms go through :func:`redact`."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}
