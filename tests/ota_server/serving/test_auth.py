"""Tokens and the authenticator: format, digests, caching, failed-attempt throttling."""

from __future__ import annotations

import pytest

from ota_server.errors import TooManyRequests, Unauthorized
from ota_server.serving.auth import (
    TOKEN_RE,
    Authenticator,
    Principal,
    PrincipalKind,
    Role,
    new_token,
    token_digest,
)


def test_token_format_and_digest() -> None:
    for kind in ("api", "dev", "enroll"):
        token = new_token(kind)
        assert TOKEN_RE.match(token) and token.startswith(f"ef_{kind}_") and len(token.split("_", 2)[2]) == 43
    assert len(token_digest("x")) == 64 and token_digest("x") != token_digest("y")
    with pytest.raises(ValueError, match="token kind"):
        new_token("root")


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.PUBLISHER)
    assert not Role.VIEWER.allows(Role.PUBLISHER) and Role.VIEWER.allows(Role.VIEWER)


def test_lookups_are_cached_and_failures_throttled() -> None:
    good = new_token("dev")
    calls: list[str] = []
    principal = Principal(PrincipalKind.DEVICE, "dev_1", device_id="dev_1")

    def lookup(digest: str) -> Principal | None:
        calls.append(digest)
        return principal if digest == token_digest(good) else None

    auth = Authenticator(lookup, api_cache_s=30, bad_per_minute=3)
    for _ in range(5):
        assert auth.authenticate(f"Bearer {good}", remote="10.0.0.1") == principal
    assert len(calls) == 1  # cached after the first lookup
    assert auth.peek(f"Bearer {good}") == principal and auth.peek("Bearer nope") is None
    for header in (None, "Basic abc", f"Bearer {new_token('api')}"):
        with pytest.raises(Unauthorized):
            auth.authenticate(header, remote="10.0.0.2")
    with pytest.raises(TooManyRequests, match="10.0.0.2"):
        auth.authenticate(f"Bearer {good}", remote="10.0.0.2")  # even a good token: the address is throttled
    assert auth.authenticate(f"Bearer {good}", remote="10.0.0.3") == principal  # others are not
    assert auth.bad_attempts == 3
