"""What can go wrong talking to the OTA server's API, as one small tree.

::

    ClientError                 anything the client raises about a request
    ├── Unreachable             no answer: connection refused, DNS, timeout, reset
    ├── Refused                 the server answered 4xx/5xx with its error body:
    │                           status, code, message, field (docs/contracts.md §7)
    └── BadAnswer               a 2xx answer that is not what the API documents
                                (not JSON, a missing field)

    NotABundle (ValueError)     a directory that cannot be published: no bundle.json,
                                or a manifest that does not name its files

urllib3's exceptions are wrapped here (``raise Unreachable(...) from e``) and never
leave the client. This module says nothing about exit codes: the command lines map
the tree onto theirs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BadAnswer", "ClientError", "NotABundle", "Refused", "Unreachable"]


class ClientError(Exception):
    """Base of every error the client raises about a request."""


class Unreachable(ClientError):
    """The server gave no answer (connection refused, name not resolved, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach {url}: {reason}")


class Refused(ClientError):
    """The server answered with an error status; ``code``, ``message`` and ``field`` are its
    error body's (``{"error": {"code", "message", "field"}}``), or the raw text when the body
    is not that shape (a proxy's error page)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        where = f" (field: {field})" if field else ""
        super().__init__(f"server said {status} {code}: {message}{where}")

    @classmethod
    def from_body(cls, status: int, body: Any) -> Refused:
        """The error of an answer with ``status`` whose decoded body is ``body``."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            return cls(status, "", str(text)[:500])
        field = err.get("field")
        return cls(status, str(err.get("code") or ""), str(err.get("message") or ""), str(field) if field else None)


class BadAnswer(ClientError):
    """A successful status whose body is not what the API documents for that endpoint."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"unexpected answer to {what}: {problem}")


class NotABundle(ValueError):
    """A directory that is not a publishable bundle; raised before any request is made."""
