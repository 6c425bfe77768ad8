"""Credentials: token format, roles, and the per-worker authenticator with its caches.

Tokens are ``ef_<kind>_<43 urlsafe chars>`` (256 random bits) and only their SHA-256 digest
is stored: they are random secrets, not passwords, and every device poll checks one, so a
slow password hash would buy nothing. Lookups are cached in-process (device tokens until a
revocation, API tokens for ``token_cache_s`` at most). Revocation reaches every worker through
the database's revocation epoch (:func:`ota_server.storage.store.bump_revocations`): each
authenticator reads it at most every :data:`REVOCATION_CHECK_S` seconds and empties its cache
when it changed, so a revoked credential stops working on every worker within a second.

Only failures are throttled: a request with a valid credential is answered whatever its address
sent before. Failures are counted per client address (the TCP peer, or behind a proxy named
with ``--forwarded-allow-ips`` the address it forwards, :func:`client_address`) and logged;
past ``bad_auth_per_minute`` in a minute, further failures from that address get 429 instead of
401. Guessing a token means guessing 256 random bits, so the throttle is there to bound the load
and the log noise of bad credentials, not to make guessing slower. The counts are per worker.

This module does not know about Flask or SQL; :mod:`ota_server.api.common` wires it to requests
and :mod:`ota_server.services` to the store.
"""

from __future__ import annotations

import hashlib
import ipaddress
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
    "REVOCATION_CHECK_S",
    "TOKEN_RE",
    "Authenticator",
    "Lookup",
    "Principal",
    "PrincipalKind",
    "Role",
    "TrustedProxies",
    "client_address",
    "new_token",
    "parse_trusted_proxies",
    "token_digest",
]

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^ef_(api|dev|enroll)_[A-Za-z0-9_-]{43}$")
REVOCATION_CHECK_S = 0.5  # seconds between two reads of the revocation epoch, per worker


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
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose ``X-Forwarded-For`` is believed: networks, or every peer (``*``)."""

    networks: tuple[Network, ...] = ()
    everyone: bool = False

    def __contains__(self, address: str) -> bool:
        """Whether ``address`` may forward (``*``: every address may)."""
        return self.everyone or self.listed(address)

    def listed(self, address: str) -> bool:
        """Whether ``address`` is in one of the networks (a hop to skip in ``X-Forwarded-For``)."""
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def parse_trusted_proxies(text: str) -> TrustedProxies:
    """``--forwarded-allow-ips``: comma-separated addresses or networks (``10.0.0.0/8``), or
    ``*`` for every peer; empty trusts none.

    Raises:
        ValueError: an entry that is neither (the message names the flag and the entry).
    """
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if "*" in entries:
        return TrustedProxies(everyone=True)
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"--forwarded-allow-ips takes addresses or networks (10.0.0.0/8), or '*'; got {entry!r}"
            ) from None
    return TrustedProxies(networks=tuple(networks))


_MAX_HOPS = 16  # X-Forwarded-For entries read, from the right


def client_address(peer: str, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The address a request is counted against: ``peer`` (the TCP peer), unless ``peer`` is a
    trusted proxy and ``forwarded_for`` (the ``X-Forwarded-For`` value) names another.

    Each proxy appends the address it received from on the right, and a client can write anything
    on the left, so the entries are read from the right: the first one that is not itself a
    trusted proxy is the client. A malformed entry there, or none, leaves ``peer``.
    """
    if not forwarded_for or peer not in trusted:
        return peer
    hops = [h.strip() for h in forwarded_for.rsplit(",", _MAX_HOPS)[-_MAX_HOPS:]]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer
        if not trusted.listed(address):
            return address
    return peer


class Authenticator:
    """Resolves bearer tokens to principals with caching and failed-attempt accounting.

    ``revocation_epoch`` reads the database's revocation epoch (None: nothing is ever revoked,
    for tests); it is called at most every ``revocation_check_s`` seconds.
    """

    MAX_ADDRESSES = 50_000  # client addresses whose failures are tracked at once
    MAX_CACHED = 200_000  # principals cached at once

    def __init__(
        self,
        lookup: Lookup,
        *,
        api_cache_s: float,
        bad_per_minute: int,
        revocation_epoch: Callable[[], int] | None = None,
        revocation_check_s: float = REVOCATION_CHECK_S,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self._lookup = lookup
        self._api_cache_s = api_cache_s
        self._bad_per_minute = max(1, bad_per_minute)
        self._epoch_reader = revocation_epoch
        self._epoch_check_s = revocation_check_s
        self._epoch: int | None = None
        self._next_epoch_check = 0.0
        self._flushes = 0  # cache emptyings so far: a lookup that straddles one is not cached
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._bad: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.bad_attempts = 0

    def authenticate(self, header: str | None, *, remote: str, forwarded_for: str | None = None) -> Principal:
        """The principal of a valid ``Authorization`` header; a valid one is never throttled.

        ``remote`` is the TCP peer, ``forwarded_for`` the request's ``X-Forwarded-For`` (read only
        from a trusted proxy, see :func:`client_address`).

        Raises:
            Unauthorized: the header is missing, malformed, or names an unknown or revoked token.
            TooManyRequests: the same, from an address with ``bad_per_minute`` failures in the last minute.
        """
        self._check_revocations()
        if not header:
            raise self._fail(remote, forwarded_for, "missing Authorization header (expected 'Bearer <token>')")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not TOKEN_RE.match(token):
            raise self._fail(
                remote, forwarded_for, "malformed Authorization header (expected 'Bearer ef_<kind>_<token>')"
            )
        digest = token_digest(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        flushes = self._flushes
        principal = self._lookup(digest)
        if principal is None:
            raise self._fail(remote, forwarded_for, "unknown or revoked token")
        ttl = 1e12 if principal.kind is PrincipalKind.DEVICE else self._api_cache_s
        with self._lock:
            if flushes == self._flushes:  # else a revocation may have come after the lookup read
                if len(self._cache) >= self.MAX_CACHED:
                    self._cache.clear()
                self._cache[digest] = (now + ttl, principal)
        return principal

    def peek(self, header: str | None) -> Principal | None:
        """The cached principal for this header, or None (no lookup, no failure accounting)."""
        if not header or not header.startswith("Bearer "):
            return None
        self._check_revocations()
        cached = self._cache.get(token_digest(header[7:].strip()))
        if cached is None or cached[0] <= time.monotonic():
            return None
        return cached[1]

    def forget(self, token: str) -> None:
        self._cache.pop(token_digest(token), None)

    def _check_revocations(self) -> None:
        """Empty the cache if the revocation epoch changed; reads it at most every check interval."""
        if self._epoch_reader is None:
            return
        now = time.monotonic()
        if now < self._next_epoch_check:
            return
        self._next_epoch_check = now + self._epoch_check_s  # the other threads go on meanwhile
        try:
            epoch: int | None = self._epoch_reader()
        except Exception:  # noqa: BLE001 - whatever the store raised, trust no cached principal
            log.warning("cannot read the revocation epoch; dropping cached credentials", exc_info=True)
            epoch, self._next_epoch_check = None, 0.0
        if epoch is None or epoch != self._epoch:
            with self._lock:
                self._cache.clear()
                self._flushes += 1
                self._epoch = epoch

    def _fail(self, remote: str, forwarded_for: str | None, message: str) -> Unauthorized | TooManyRequests:
        """Count a failure against the client's address: 429 past the limit, else 401."""
        address = client_address(remote, forwarded_for, self.trusted_proxies)
        now = time.monotonic()
        cutoff = now - 60.0
        with self._lock:
            self.bad_attempts += 1
            window = self._bad.get(address)
            if window is None:
                if len(self._bad) >= self.MAX_ADDRESSES:
                    self._prune(cutoff)
                window = self._bad[address] = deque(maxlen=self._bad_per_minute)
            while window and window[0] < cutoff:
                window.popleft()
            throttled = len(window) >= self._bad_per_minute
            window.append(now)  # a continued attack stays throttled
            count = len(window)
        if throttled:
            log.debug("authentication failed from %s (throttled): %s", address, message)
            return TooManyRequests(
                f"too many failed authentications from {address} ({count} in the last minute); retry later"
            )
        level = logging.WARNING if count < self._bad_per_minute else logging.ERROR
        log.log(level, "authentication failed from %s: %s (%d in the last minute)", address, message, count)
        return Unauthorized(message, field="Authorization")

    def _prune(self, cutoff: float) -> None:
        """Drop the windows with no failure since ``cutoff``, then the oldest tracked addresses
        until a new one fits (called with the lock held)."""
        for address in [a for a, w in self._bad.items() if not w or w[-1] < cutoff]:
            del self._bad[address]
        while len(self._bad) >= self.MAX_ADDRESSES:
            del self._bad[next(iter(self._bad))]
