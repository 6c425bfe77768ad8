"""The TUF image repository as static files (public): metadata and consistent-snapshot targets.

Range, ETag, If-None-Match and If-Range are handled by Werkzeug's conditional responses.
``timestamp.json`` is re-signed here when it nears expiry (under the repository lock).
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, send_file
from werkzeug.security import safe_join

from ota_server.api.common import services
from ota_server.errors import NotFound

__all__ = ["bp"]

bp = Blueprint("tuf", __name__, url_prefix="/tuf")
_METADATA = re.compile(r"^(\d{1,9}\.(root|snapshot|targets)|timestamp)\.json$")
_TARGET = re.compile(r"^(?:.+/)?([0-9a-f]{64})\.[^/]+$")


@bp.get("/metadata/<name>")
def metadata(name: str) -> Response:
    """A TUF metadata file; the timestamp is re-signed first when it nears expiry.

    Raises:
        NotFound: not a metadata file name, or no such file.
    """
    if not _METADATA.match(name):
        raise NotFound(f"no TUF metadata file {name!r}", field="name")
    s = services()
    if name == "timestamp.json":
        s.repo.refresh_if_needed()
    path = s.config.metadata_dir / name
    if not path.is_file():
        raise NotFound(f"no TUF metadata file {name!r}", field="name")
    response = send_file(path, mimetype="application/json", conditional=True, etag=True, max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/targets/<path:target>")
def targets(target: str) -> Response:
    """A target file by its consistent-snapshot path (``<dir>/<sha256>.<name>``).

    Raises:
        NotFound: not such a path, or no such file.
    """
    m = _TARGET.match(target)
    s = services()
    joined = safe_join(str(s.config.targets_dir), target)
    if m is None or joined is None:
        raise NotFound(f"no target {target!r}", field="path")
    try:
        return send_file(
            joined, mimetype="application/octet-stream", conditional=True, etag=m.group(1), max_age=31536000
        )
    except FileNotFoundError as e:
        raise NotFound(f"no target {target!r}", field="path") from e
