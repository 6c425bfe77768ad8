"""Tokens and the authenticator: format, digests, caching, failed-attempt throttling, the
client address behind a trusted proxy, and revocation (token, device) on a real multi-worker server."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ota_server.cli import main as server_main
from ota_server.client import OtaClient
from ota_server.client.ctl import main as ctl_main
from ota_server.config import ServerConfig
from ota_server.errors import SetupError, TooManyRequests, Unauthorized
from ota_server.provision import list_tokens, revoke_token
from ota_server.serving.auth import (
    TOKEN_RE,
    Authenticator,
    Principal,
    PrincipalKind,
    Role,
    client_address,
    new_token,
    parse_trusted_proxies,
    token_digest,
)
from ota_server.storage import store as st
from ota_server.storage.store import Store
from tests.live_server import LiveServer, live_server


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


@pytest.mark.finding("H2")
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
        auth.authenticate(f"Bearer {new_token('dev')}", remote="10.0.0.2")  # failures past the limit: 429
    assert auth.authenticate(f"Bearer {good}", remote="10.0.0.2") == principal  # a valid token is never throttled
    assert auth.authenticate(f"Bearer {good}", remote="10.0.0.3") == principal
    assert auth.bad_attempts == 4


@pytest.mark.finding("H2")
def test_a_throttled_address_still_gets_valid_lookups_and_windows_are_bounded() -> None:
    good = new_token("api")
    principal = Principal(PrincipalKind.API, "ops", role=Role.OPERATOR)
    auth = Authenticator(lambda d: principal if d == token_digest(good) else None, api_cache_s=30, bad_per_minute=2)
    for _ in range(50):
        with pytest.raises((Unauthorized, TooManyRequests)):
            auth.authenticate("Bearer ef_api_" + "x" * 43, remote="10.0.0.9")
    assert auth.authenticate(f"Bearer {good}", remote="10.0.0.9") == principal  # not cached before: looked up
    assert max(len(w) for w in auth._bad.values()) <= 2  # a window holds at most the limit
    for i in range(auth.MAX_ADDRESSES + 10):
        with pytest.raises(Unauthorized):
            auth.authenticate(None, remote=f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}")
    assert len(auth._bad) <= auth.MAX_ADDRESSES


@pytest.mark.finding("M4")
def test_revocations_flush_the_cache_within_the_check_interval() -> None:
    good = new_token("dev")
    principal = Principal(PrincipalKind.DEVICE, "dev_1", device_id="dev_1")
    valid = {token_digest(good)}
    epoch = [1]
    auth = Authenticator(
        lambda d: principal if d in valid else None,
        api_cache_s=30,
        bad_per_minute=100,
        revocation_epoch=lambda: epoch[0],
        revocation_check_s=0.05,
    )
    assert auth.authenticate(f"Bearer {good}", remote="r") == principal
    assert auth.peek(f"Bearer {good}") == principal
    valid.clear()
    epoch[0] = 2
    time.sleep(0.06)
    assert auth.peek(f"Bearer {good}") is None  # the fast path no longer knows it
    with pytest.raises(Unauthorized, match="revoked"):
        auth.authenticate(f"Bearer {good}", remote="r")


@pytest.mark.finding("H2")
def test_client_address_reads_x_forwarded_for_only_from_a_trusted_peer() -> None:
    none = parse_trusted_proxies("")
    local = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8")
    assert client_address("127.0.0.1", "203.0.113.7", none) == "127.0.0.1"
    assert client_address("198.51.100.1", "203.0.113.7", local) == "198.51.100.1"  # an untrusted peer
    assert client_address("127.0.0.1", "203.0.113.7", local) == "203.0.113.7"
    # the client can write the left of the header; the proxies append on the right
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.7, 10.1.2.3", local) == "203.0.113.7"
    assert client_address("127.0.0.1", "garbage", local) == "127.0.0.1"
    assert client_address("127.0.0.1", None, local) == "127.0.0.1"
    assert client_address("127.0.0.1", "2001:db8::1", parse_trusted_proxies("*")) == "2001:db8::1"
    with pytest.raises(ValueError, match="forwarded-allow-ips"):
        parse_trusted_proxies("127.0.0.1,not-an-ip")


# ---------------------------------------------------------------- against a real server (2 workers)

GARBAGE = "Bearer ef_api_" + "A" * 43


def _nonce() -> str:
    return secrets.token_hex(16)


def _fresh(srv: LiveServer, method: str, path: str, token: str | None, *, json_body: object = None) -> int:
    """One request on a new connection (so a series of them reaches every worker)."""
    with OtaClient(srv.url, timeout_s=30.0) as c:
        return c.request(method, path, json_body=json_body, token=token).status


@pytest.mark.finding("H2")
def test_garbage_from_one_address_does_not_lock_out_valid_credentials(tmp_path: Path) -> None:
    with live_server(tmp_path, workers=2) as srv:
        device = srv.enroll()
        dev_id, dev_token = device["device_id"], device["device_token"]
        poll = f"/api/v1/devices/{dev_id}/assignment?nonce={_nonce()}"
        # one kept-alive connection: every garbage request reaches the same worker
        statuses = [srv.api("GET", "/api/v1/rollouts", headers={"Authorization": GARBAGE})[0] for _ in range(300)]
        assert statuses[0] == 401 and statuses[-1] == 429
        # on that connection (that worker), valid credentials from the same address work
        assert srv.api("GET", poll, token=dev_token)[0] == 200
        assert srv.api("POST", f"/api/v1/devices/{dev_id}/reports", json={"reports": []}, token=dev_token)[0] == 200
        assert srv.api("GET", "/api/v1/audit?limit=5", token=srv.admin_token)[0] == 200
        assert srv.api("GET", "/api/v1/rollouts", headers={"Authorization": GARBAGE})[0] == 429
        # a forwarded address from an untrusted peer changes nothing: the peer stays throttled
        status, body, _ = srv.api(
            "GET", "/api/v1/rollouts", headers={"Authorization": GARBAGE, "X-Forwarded-For": "198.51.100.9"}
        )
        assert status == 429 and "127.0.0.1" in body["error"]["message"]
        for _ in range(4):  # and on any worker
            assert _fresh(srv, "GET", "/api/v1/audit?limit=5", srv.admin_token) == 200
            assert _fresh(srv, "GET", poll, dev_token) == 200


@pytest.mark.finding("H2")
def test_the_throttle_keys_on_the_forwarded_address_behind_a_trusted_proxy(tmp_path: Path) -> None:
    with live_server(tmp_path, workers=2, serve_args=["--forwarded-allow-ips", "127.0.0.1"]) as srv:
        attacker = {"Authorization": GARBAGE, "X-Forwarded-For": "203.0.113.7"}
        statuses = [srv.api("GET", "/api/v1/rollouts", headers=attacker)[0] for _ in range(300)]
        assert statuses[-1] == 429
        status, body, _ = srv.api("GET", "/api/v1/rollouts", headers=attacker)
        assert status == 429 and "203.0.113.7" in body["error"]["message"]
        # another client behind the same proxy is not throttled by it
        other = {"Authorization": GARBAGE, "X-Forwarded-For": "203.0.113.8"}
        assert srv.api("GET", "/api/v1/rollouts", headers=other)[0] == 401
        # a client cannot pick its key: the proxy appends the address it saw on the right
        spoof = {"Authorization": GARBAGE, "X-Forwarded-For": "203.0.113.99, 203.0.113.7"}
        assert srv.api("GET", "/api/v1/rollouts", headers=spoof)[0] == 429


@pytest.fixture(params=["sqlite", "postgres"])
def revocation_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    db_url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_schema_url"))
    with live_server(tmp_path, workers=2, db_url=db_url) as srv:
        yield srv


def _token_list(srv: LiveServer, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert server_main(["token", "list", "--data-dir", str(srv.data_dir), "--json"]) == 0
    out = capsys.readouterr().out
    for token in [*srv.tokens.values(), srv.enrollment_token]:
        assert token not in out and token_digest(token) not in out  # no secret, not even its digest
    return list(json.loads(out)["tokens"])


@pytest.mark.finding("M4")
def test_token_list_and_revoke_reach_every_worker_within_a_second(
    revocation_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = revocation_server
    viewer = srv.tokens["viewer"]
    for _ in range(8):  # cached on every worker
        assert _fresh(srv, "GET", "/api/v1/rollouts", viewer) == 200
    listed = _token_list(srv, capsys)
    names = {t["name"]: t for t in listed}
    assert {"initial-admin", "local-viewer"} <= set(names) and names["local-viewer"]["revoked"] is False
    assert set(names["local-viewer"]) >= {"id", "name", "role", "created_at", "revoked"}
    assert server_main(["token", "revoke", "--data-dir", str(srv.data_dir), str(names["local-viewer"]["id"])]) == 0
    time.sleep(1.0)
    assert [_fresh(srv, "GET", "/api/v1/rollouts", viewer) for _ in range(8)] == [401] * 8
    assert _fresh(srv, "GET", "/api/v1/rollouts", srv.tokens["operator"]) == 200  # only that one
    assert {t["name"]: t for t in _token_list(srv, capsys)}["local-viewer"]["revoked"] is True
    # unknown and ambiguous ids are refused, naming the argument
    assert server_main(["token", "revoke", "--data-dir", str(srv.data_dir), "ffffffffffff"]) == 1
    assert "no API token" in capsys.readouterr().err


@pytest.mark.finding("M4")
def test_a_revoked_device_is_refused_on_every_worker_within_a_second(
    revocation_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = revocation_server
    device = srv.enroll(name="stolen")
    dev_id, dev_token = device["device_id"], device["device_token"]
    nonce = _nonce()
    poll = f"/api/v1/devices/{dev_id}/assignment?nonce={nonce}"
    for _ in range(8):  # its principal and its assignment cached on every worker (the fast path)
        assert _fresh(srv, "GET", poll, dev_token) == 200
    operator = srv.tokens["operator"]
    capsys.readouterr()
    rc = ctl_main(["--server", srv.url, "--token", operator, "devices", "revoke", dev_id, "--reason", "stolen"])
    assert rc == 0, capsys.readouterr().err
    assert "revoked" in capsys.readouterr().out
    time.sleep(1.0)
    assert [_fresh(srv, "GET", poll, dev_token) for _ in range(8)] == [401] * 8
    reports = f"/api/v1/devices/{dev_id}/reports"
    assert [_fresh(srv, "POST", reports, dev_token, json_body={"reports": []}) for _ in range(4)] == [401] * 4
    shown = srv.as_role("viewer").device(dev_id)
    assert shown["revoked_at"] is not None
    assert ctl_main(["--server", srv.url, "--token", operator, "devices", "show", dev_id]) == 0
    assert "REVOKED" in capsys.readouterr().out
    audit = srv.api("GET", "/api/v1/audit?limit=20", token=srv.admin_token)[1]["audit"]
    assert any(e["action"] == "device.revoke" and e["target"] == dev_id for e in audit)
    # a viewer may not revoke; an unknown device is a 404
    assert srv.api("POST", f"/api/v1/devices/{dev_id}/revoke", json={}, token=srv.tokens["viewer"])[0] == 403
    assert srv.api("POST", "/api/v1/devices/dev_nope/revoke", json={}, token=operator)[0] == 404


@pytest.mark.finding("M4")
def test_token_revoke_takes_an_id_or_the_token_and_bumps_the_revocation_epoch(
    initialized: tuple[ServerConfig, dict[str, str]],
) -> None:
    config, result = initialized
    admin = result["admin_token"]
    store = Store(config.effective_db_url)
    try:
        before = store.revocations()
        assert before >= 1  # the row exists on a fresh database
        with pytest.raises(SetupError, match="8-64 hex digits"):
            revoke_token(config, "not-an-id")
        revoked = revoke_token(config, admin)  # the token itself
        assert revoked["revoked"] and revoked["name"] == "initial-admin" and admin not in str(revoked)
        assert store.revocations() == before + 1
        with pytest.raises(SetupError, match="revoked already"):
            revoke_token(config, revoked["id"])
        assert [t["revoked"] for t in list_tokens(config) if t["name"] == "initial-admin"] == [True]
        with store.read() as conn:
            assert st.find_token(conn, token_digest(admin)) is None
    finally:
        store.dispose()
