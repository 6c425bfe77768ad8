"""The app factory in-process: OpenAPI matches the url_map, metrics, dashboard, TUF freshness, init CLI."""

from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from ota_server.app import create_app
from ota_server.cli import main as server_main
from ota_server.config import ServerConfig
from ota_server.provision import create_token
from ota_server.trust.repository import Repository

OPENAPI = Path(__file__).resolve().parents[2] / "ota_server" / "openapi.yaml"


KEY = "ab" * 32  # a device public key (these tests post no reports)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    assert server_main(["init", "--data-dir", str(d), "--json"]) == 0
    return d


def _flask_paths(app: object) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():  # type: ignore[attr-defined]
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, method.lower()))
    return out


def test_openapi_describes_exactly_the_routes(data_dir: Path) -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops if m in ("get", "post", "put", "delete")}
    app = create_app({"data_dir": str(data_dir), "testing": True})
    assert _flask_paths(app) == documented


def test_metrics_dashboard_and_fleet_gauges(data_dir: Path) -> None:
    config = ServerConfig(data_dir=data_dir)
    viewer = create_token(config, role="viewer", name="v")
    app = create_app({"data_dir": str(data_dir), "testing": True})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers={"Authorization": f"Bearer {viewer}"}).get_data(as_text=True)
    assert 'edgefleet_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert "edgefleet_auth_failures_total 1.0" in text
    assert "# TYPE edgefleet_rollouts gauge" in text
    page = client.get("/dashboard", headers={"Authorization": f"Bearer {viewer}"})
    assert page.status_code == 200 and b"edgefleet fleet" in page.data
    assert client.get(f"/dashboard?token={viewer}").status_code == 401  # never a token in a URL


def test_a_missing_row_in_the_store_is_a_404_naming_its_key(data_dir: Path) -> None:
    config = ServerConfig(data_dir=data_dir)
    operator = create_token(config, role="operator", name="o")
    client = create_app({"data_dir": str(data_dir), "testing": True}).test_client()
    headers = {"Authorization": f"Bearer {operator}"}
    for method, path, message, field in (
        ("GET", "/api/v1/rollouts/ro_nope", "no rollout 'ro_nope'", "rollout_id"),
        ("POST", "/api/v1/rollouts/ro_nope/pause", "no rollout 'ro_nope'", "rollout_id"),
        ("GET", "/api/v1/devices/dev_nope", "no device 'dev_nope'", "device_id"),
    ):
        answer = client.open(path, method=method, headers=headers)
        assert answer.status_code == 404, (method, path)
        assert answer.get_json() == {"error": {"code": "NOT_FOUND", "message": message, "field": field}}


def test_timestamp_is_resigned_before_expiry(data_dir: Path) -> None:
    config = ServerConfig(data_dir=data_dir, timestamp_ttl_s=3600)
    repo = Repository(config)
    v1 = repo.timestamp().signed.version
    assert repo.refresh_if_needed() is False  # fresh (init used a 1-day expiry > ttl/2)
    # age it: rewrite with an expiry 10 minutes out (less than half of 1 h)
    ts = repo.timestamp()
    ts.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=10)
    repo._write(ts, "timestamp.json", "timestamp")
    assert repo.refresh_if_needed() is True
    fresh = repo.timestamp().signed
    assert fresh.version == v1 + 1 and fresh.expires - datetime.now(timezone.utc) > timedelta(minutes=50)
    app = create_app(config)
    body = app.test_client().get("/tuf/metadata/timestamp.json").get_json()
    assert body["signed"]["version"] == v1 + 1


def test_init_refuses_existing_dir_and_writes_private_files_0600(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert server_main(["init", "--data-dir", str(data_dir)]) == 1
    assert "already initialized" in capsys.readouterr().err
    for key in (data_dir / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((data_dir / "server.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    pub = json.loads((data_dir / "provisioning" / "director.pub.json").read_text())
    assert pub["keytype"] == "ed25519" and len(pub["keyval"]["public"]) == 64

    offline = tmp_path / "offline" / "root.pem"
    offline.parent.mkdir()
    assert server_main(["init", "--data-dir", str(data_dir), "--force", "--offline-root", str(offline)]) == 0
    out = capsys.readouterr().out
    assert "offline storage" in out and "root resign" in out
    assert not (data_dir / "keys" / "root.pem").exists() and stat.S_IMODE(offline.stat().st_mode) == 0o600
    assert server_main(["root", "resign", "--data-dir", str(data_dir), "--root-key", str(offline)]) == 0
    assert (data_dir / "tuf" / "metadata" / "2.root.json").is_file()
    wrong = tmp_path / "wrong.pem"
    from ota_server.trust.keys import generate_key

    generate_key(wrong)
    assert server_main(["root", "resign", "--data-dir", str(data_dir), "--root-key", str(wrong)]) == 1
    assert "not this repository's root key" in capsys.readouterr().err


def test_fast_poll_path_answers_like_the_flask_view(data_dir: Path) -> None:
    init = json.loads((data_dir / "server.json").read_text())
    assert init  # initialized by the fixture
    config = ServerConfig(data_dir=data_dir)
    enroll = create_token(config, role="enroll", name="fleet-2")
    app = create_app(config)
    fast = app.wsgi_app
    client = app.test_client()
    devs = []
    for name in ("a", "b"):
        r = client.post(
            "/api/v1/devices/enroll",
            json={"name": name, "hardware": {"arch": "x86_64"}, "public_key": KEY},
            headers={"Authorization": f"Bearer {enroll}"},
        )
        assert r.status_code == 201
        devs.append(r.get_json())
    a, b = devs
    auth = {"Authorization": f"Bearer {a['device_token']}"}
    url = f"/api/v1/devices/{a['device_id']}/assignment?nonce={'ab' * 16}"
    first = client.get(url, headers=auth)  # cache miss: the Flask view signs
    assert first.status_code == 200 and fast.hits == 0  # type: ignore[attr-defined]
    second = client.get(url, headers=auth)  # cache hit: answered by the middleware
    assert fast.hits == 1  # type: ignore[attr-defined]
    assert (second.status_code, second.data, second.headers["ETag"]) == (200, first.data, first.headers["ETag"])
    third = client.get(url, headers={**auth, "If-None-Match": first.headers["ETag"]})
    assert third.status_code == 304 and fast.hits == 2  # type: ignore[attr-defined]
    # another device's id, a bad nonce, no token: fall through to the view and its errors
    assert client.get(f"/api/v1/devices/{b['device_id']}/assignment?nonce={'ab' * 16}", headers=auth).status_code == 403
    assert client.get(f"/api/v1/devices/{a['device_id']}/assignment?nonce=zz", headers=auth).status_code == 400
    assert client.get(url).status_code == 401
    assert fast.hits == 2  # type: ignore[attr-defined]
    # a fleet change (new generation) sends the next poll back through the view
    r = client.put(f"/api/v1/devices/{a['device_id']}/hardware", json={"arch": "aarch64"}, headers=auth)
    assert r.status_code == 200
    assert client.get(url, headers=auth).status_code == 200 and fast.hits == 2  # type: ignore[attr-defined]


def test_another_worker_answers_from_the_shared_spool(data_dir: Path) -> None:
    config = ServerConfig(data_dir=data_dir)
    enroll = create_token(config, role="enroll", name="fleet-3")
    worker_a, worker_b = create_app(config), create_app(config)  # two workers, one data dir
    a, b = worker_a.test_client(), worker_b.test_client()
    dev = a.post(
        "/api/v1/devices/enroll",
        json={"name": "s", "hardware": {"arch": "x86_64"}, "public_key": KEY},
        headers={"Authorization": f"Bearer {enroll}"},
    ).get_json()
    auth = {"Authorization": f"Bearer {dev['device_token']}"}
    url = f"/api/v1/devices/{dev['device_id']}/assignment?nonce={'cd' * 16}"
    first = a.get(url, headers=auth)
    assert first.status_code == 200
    assert b.get("/api/v1/fleet/summary").status_code == 401  # worker b has not seen this token yet
    b.get(f"/api/v1/devices/{dev['device_id']}", headers=auth)  # ... now it has (token cached)
    second = b.get(url, headers={**auth, "If-None-Match": first.headers["ETag"]})
    assert second.status_code == 304
    assert worker_b.extensions["edgefleet"].director.signatures == 0  # no signature on worker b
    assert worker_b.wsgi_app.hits == 1  # type: ignore[attr-defined]
