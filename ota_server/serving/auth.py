"""Credentials: token format, roles, and the per-worker authenticator with its caches.

Tokens are ``ef_<kind>_<43 urlsafe chars>`` (256 random bits) and only their SHA-256 digest
is stored: they are random secrets, not passwords, and every device poll checks one, so a
slow password hash would buy nothing. Lookups are cached in-process (device tokens never
change; API tokens for ``token_cache_s``). Failed attempts are counted per client address and
logged; past ``bad_auth_per_minute`` the client gets 429 until the minute passes.

This module does not know about Flask; :mod:`ota_server.api.common` wires it to requests.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ota_server.errors import TooManyRequests, Unauthorized

__all__ = [
    "TOKEN_RE",
    "Authenticator",
    "Lookup",
    "Principal",
    "PrincipalKind",
    "Role",
    "new_token",
    "token_digest",
]

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^ef_(api|dev|enroll)_[A-Za-z0-9_-]{43}$")


class Role(str, Enum):
    VIEWER = "viewer"
    PUBLISHER = "publisher"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class PrincipalKind(str, Enum):
    API = "api"
    DEVICE = "device"
    ENROLL = "enroll"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    name: str  # token name, or the device id
    role: Role | None = None
    device_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind.value}:{self.name}"


def new_token(kind: str) -> str:
    """A fresh ``ef_<kind>_...`` token (kind: api, dev, enroll).

    Raises:
        ValueError: another kind.
    """
    if kind not in ("api", "dev", "enroll"):
        raise ValueError(f"token kind must be one of ['api', 'dev', 'enroll'], got {kind!r}")
    return f"ef_{kind}_{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


Lookup = Callable[[str], Principal | None]  # digest -> principal, from the database


class Authenticator:
    """Resolves bearer tokens to principals with caching and bad-attempt accounting."""

    def __init__(self, lookup: Lookup, *, api_cache_s: float, bad_per_minute: int) -> None:
        self._lookup = lookup
        self._api_cache_s = api_cache_s
        self._bad_per_minute = bad_per_minute
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._bad: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.bad_attempts = 0

    def authenticate(self, header: str | None, *, remote: str) -> Principal:
        """Raises :class:`Unauthorized` (missing/unknown) or :class:`TooManyRequests`."""
        self._check_rate(remote)
        if not header:
            raise self._fail(remote, "missing Authorization header (expected 'Bearer <token>')")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not TOKEN_RE.match(token):
            raise self._fail(remote, "malformed Authorization header (expected 'Bearer ef_<kind>_<token>')")
        digest = token_digest(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = self._lookup(digest)
        if principal is None:
            raise self._fail(remote, "unknown or revoked token")
        ttl = 1e12 if principal.kind is PrincipalKind.DEVICE else self._api_cache_s
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[digest] = (now + ttl, principal)
        return principal

    def peek(self, header: str | None) -> Principal | None:
        """The cached principal for this header, or None (no lookup, no failure accounting)."""
        if not header or not header.startswith("Bearer "):
            return None
        cached = self._cache.get(token_digest(header[7:].strip()))
        if cached is None or cached[0] <= time.monotonic():
            return None
        return cached[1]

    def forget(self, token: str) -> None:
        self._cache.pop(token_digest(token), None)

    def _check_rate(self, remote: str) -> None:
        window = self._bad.get(remote)
        if not window:
            return
        cutoff = time.monotonic() - 60.0
        with self._lock:
            while window and window[0] < cutoff:
                window.popleft()
            count = len(window)
        if count >= self._bad_per_minute:
            raise TooManyRequests(
                f"too many failed authentications from {remote} ({count} in the last minute); retry later"
            )

    def _fail(self, remote: str, message: str) -> Unauthorized:
        with self._lock:
            window = self._bad.setdefault(remote, deque())
            window.append(time.monotonic())
            self.bad_attempts += 1
            count = len(window)
        log.warning("authentication failed from %s: %s (%d in the last minute)", remote, message, count)
        return Unauthorized(message, field="Authorization")
