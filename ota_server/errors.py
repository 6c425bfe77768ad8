"""Errors of the OTA server, one shallow tree.

::

    OtaServerError                 base of everything raised on purpose here
    ├── SetupError                 init/serve/key files: a data dir that is missing, exists, or is unsafe
    │   └── LocalServerError       a local server (ota_server.local) did not start; its log_path explains
    ├── RepositoryError            the TUF repository or artifact store could not be read or written
    │   └── NothingStaged          an offline targets signing found no staged change (exit code 3)
    ├── StoreError                 the SQL store (ota_server.storage) could not do what was asked
    │   └── RecordNotFound         no row with that key; the app answers it as a 404 NotFound
    └── ApiError                   answered to an HTTP client as {"error": {"code", "message", "field"}}
        ├── BadRequest             400  malformed JSON, a bad field, an invalid bundle
        ├── Unauthorized           401  missing or unknown credentials
        ├── Forbidden              403  a valid credential without the right (role, other device)
        ├── NotFound               404
        ├── Conflict               409  duplicate release, lower version, a rollout already active
        ├── PayloadTooLarge        413
        └── TooManyRequests        429  too many failed authentication attempts

Third-party errors (SQLAlchemy, tarfile, python-tuf) are wrapped at the adapter edge with
``raise X(...) from e``. The storage layer knows nothing of HTTP: it raises :class:`StoreError`s,
and the app's error handler (:mod:`ota_server.app`) answers a :class:`RecordNotFound` as the
:class:`NotFound` with the same message and field. The ``ota-ctl`` client's errors are its own
(:mod:`ota_server.client`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "LocalServerError",
    "NothingStaged",
    "NotFound",
    "OtaServerError",
    "PayloadTooLarge",
    "RecordNotFound",
    "RepositoryError",
    "SetupError",
    "StoreError",
    "TooManyRequests",
    "Unauthorized",
]


class OtaServerError(Exception):
    """Base class of the server's own errors."""


class SetupError(OtaServerError):
    """The data directory, key files or configuration are missing or unusable."""


class LocalServerError(SetupError):
    """A local server (:mod:`ota_server.local`) did not start or did not answer; ``log_path``
    names the log whose tail explains it."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


class RepositoryError(OtaServerError):
    """The TUF repository or the artifact store could not be read or written."""


class NothingStaged(RepositoryError):
    """An offline targets signing or export found nothing staged: the signed targets are current."""


class StoreError(OtaServerError):
    """The SQL store could not do what was asked (raised by :mod:`ota_server.storage`)."""


class RecordNotFound(StoreError):
    """No row has the key asked for; ``field`` names the key as the API names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ApiError(OtaServerError):
    """An error answered to the HTTP client; ``status`` and ``code`` go on the wire."""

    status = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BadRequest(ApiError):
    status = 400
    code = "BAD_REQUEST"


class Unauthorized(ApiError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(ApiError):
    status = 403
    code = "FORBIDDEN"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ApiError):
    status = 409
    code = "CONFLICT"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class TooManyRequests(ApiError):
    status = 429
    code = "TOO_MANY_REQUESTS"
