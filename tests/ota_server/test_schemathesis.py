"""Schemathesis against a live gunicorn server: the API answers what ``openapi.yaml`` says it does.

The spec is ``ota_server/openapi.yaml``, byte for byte what the server serves at
``GET /api/v1/openapi.yaml`` (tested below; Schemathesis' loader from a pytest fixture, which
would fetch it, does not run under pytest 9), on SQLite and on PostgreSQL
(``EDGEFLEET_SCHEMATHESIS_DBS=sqlite`` narrows a local run). Every operation runs
through Schemathesis' coverage phase (boundary and invalid values of every parameter and body
field, methods the spec does not declare) and its fuzzing phase (random cases), once per
credential kind: no credential, viewer, publisher, operator, admin, a device's token and the fleet
enrollment token. Real ids (a published release and its TUF files, a rollout, an enrolled device)
replace most generated path parameters, so cases get past the 404 into the views.

Every check Schemathesis has must pass — no 5xx, only documented status codes, response bodies
and headers as documented, 405 with ``Allow`` — and a 4xx must leave the server as it was: the
database's rows and the data directory's files hash the same before and after.

The server runs behind a stand-in proxy (``serve --forwarded-allow-ips 127.0.0.1``) and each case
names a client address of its own in ``X-Forwarded-For``: the failed-authentication throttle
counts per client address, and the run, its no-credential cases and Schemathesis' probes without
credentials fail far more often than one client may (the throttle itself is tested in
serving/test_auth.py).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from ota_server.app import create_app
from ota_server.cli import main as server_main
from tests.bundles import make_bundle
from tests.live_server import LiveServer, live_server
from tests.ota_server.conftest import pg_schema

schemathesis = pytest.importorskip("schemathesis")
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")  # POST /api/v1/releases

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# SQLite and PostgreSQL (its text refuses NUL, its integers overflow), like every server test;
# EDGEFLEET_SCHEMATHESIS_DBS=sqlite narrows a local run
DATABASES = tuple(os.environ.get("EDGEFLEET_SCHEMATHESIS_DBS", "sqlite,postgres").split(","))
CREDENTIALS = ("none", "viewer", "publisher", "operator", "admin", "device", "enrollment")
# fuzzing-phase cases per operation and credential (the coverage phase makes its own, all of them);
# EDGEFLEET_SCHEMATHESIS_EXAMPLES raises it for a longer run
MAX_EXAMPLES = int(os.environ.get("EDGEFLEET_SCHEMATHESIS_EXAMPLES", "5"))
CONFIG: dict[str, Any] = {
    "seed": 1201,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "with-security-parameters": False,  # the credential is the test's parameter, not generated
        "no-shrink": True,
        "database": "none",
    },
    "phases": {
        "examples": {"enabled": False},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
    "checks": {"enabled": True},
    "suppress-health-check": ["all"],
    "request-timeout": 30,
    "operations": [
        # a schema-valid request these answer 400 to is one the schema cannot describe: a body that
        # is not a bundle's tar, a hardware profile or report batch that does not hold together,
        # stages that do not increase, a version that was never published
        *(
            {
                "include-path": path,
                "include-method": method,
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", 400, 401, 403, 404, 409, 429]}
                },
            }
            for method, path in (
                ("POST", "/api/v1/releases"),
                ("POST", "/api/v1/rollouts"),
                ("POST", "/api/v1/rollouts/{rollout_id}/rollback"),
                ("POST", "/api/v1/devices/enroll"),
                ("PUT", "/api/v1/devices/{device_id}/hardware"),
                ("POST", "/api/v1/devices/{device_id}/reports"),
            )
        ),
        # a well-formed range past the end of the file
        {
            "include-path": "/tuf/targets/{target}",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", 404, 416]}},
        },
        # OPTIONS /api/v1/devices/enroll also names GET: that URL is GET /api/v1/devices/{device_id}
        # for the id "enroll" (a 404), so Allow is right and the check cannot know it
        {"include-path": "/api/v1/devices/enroll", "checks": {"allow_header_conformance": {"enabled": False}}},
    ],
}


@dataclass
class Fleet:
    """The live server with real ids to put into requests, and a digest of its state."""

    server: LiveServer
    engine: sa.Engine
    credentials: dict[str, str | None]
    path_values: dict[tuple[str, str], list[str]]  # (path template, parameter) -> real values
    body_values: dict[str, dict[str, str]]  # path template -> body fields to set
    tables: list[str] = field(default_factory=list)
    state: str | None = None  # the digest after the last case, if it ended cleanly
    cases: dict[str, int] = field(default_factory=dict)  # credential -> cases sent
    statuses: dict[int, int] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def digest(self) -> str:
        """A hash of every row of every table and of the repository's and artifacts' files."""
        h = hashlib.sha256()
        with self.engine.connect() as conn:
            if not self.tables:
                self.tables = sorted(sa.inspect(conn).get_table_names())
            for table in self.tables:
                rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                h.update(table.encode())
                for row in sorted(repr(tuple(r)) for r in rows):
                    h.update(row.encode())
        for top in ("tuf", "artifacts"):
            for path in sorted((self.server.data_dir / top).rglob("*")):
                h.update(f"{path.relative_to(self.server.data_dir)}:{path.lstat().st_size}".encode())
        return h.hexdigest()

    def client_address(self) -> str:
        """The next client address to name in ``X-Forwarded-For`` (10.0.0.0/16, round robin)."""
        n = next(self.counter) % 65536
        return f"10.0.{n // 256}.{n % 256}"


_ACTIVE: list[Fleet] = []  # the fleet the hook below fills ids in for, while the test runs


def _pick(value: object) -> bool:
    """Whether to replace a generated value by a real one: three cases in four, decided by the
    value itself so that a failing case replays the same."""
    return zlib.crc32(repr(value).encode()) % 4 != 0


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Real ids into the path and body (schemathesis re-derives whether the case is still negative)."""
    if not _ACTIVE:
        return
    fleet = _ACTIVE[-1]
    path = case.operation.path
    for name, value in list((case.path_parameters or {}).items()):
        real = fleet.path_values.get((path, name))
        if real and _pick(value):
            case.path_parameters[name] = real[zlib.crc32(repr(value).encode()) % len(real)]
    fields = fleet.body_values.get(path)
    if fields and isinstance(case.body, dict) and _pick(case.body):
        case.body.update(fields)


def _fleet_ids(
    server: LiveServer, tmp: Path
) -> tuple[dict[str, Any], dict[tuple[str, str], list[str]], dict[str, dict[str, str]]]:
    """Publish two releases, enroll two devices, start a rollout; returns the first enrollment's answer, the
    real values per (path template, path parameter) and the body fields per path template."""
    make_bundle(tmp / "b1", name="tiny", version="1.0.0")
    make_bundle(tmp / "b2", name="tiny", version="1.1.0")
    release = server.publish(tmp / "b1")
    server.publish(tmp / "b2")
    device = server.enroll(name="fuzzed")
    victim = server.enroll(name="revoked")["device_id"]
    rollout = server.create_rollout(model="tiny", version="1.1.0", group="default")
    metadata = sorted(p.name for p in (server.data_dir / "tuf" / "metadata").iterdir())
    targets = []
    for f in release["files"]:
        directory, _, name = f["path"].rpartition("/")
        targets.append(f"{directory}/{f['hashes']['sha256']}.{name}")
    dev, ro = device["device_id"], rollout["id"]
    paths: dict[tuple[str, str], list[str]] = {
        ("/tuf/metadata/{name}", "name"): metadata,
        ("/tuf/targets/{target}", "target"): targets,
        ("/api/v1/releases/{name}/{version}", "name"): ["tiny"],
        ("/api/v1/releases/{name}/{version}", "version"): ["1.0.0", "1.1.0"],
    }
    spec = yaml.safe_load(server.client.request("GET", "/api/v1/openapi.yaml").data)
    for template in spec["paths"]:
        if "{device_id}" in template:
            # a revoked device's token is dead: revoke another one, so the device's own cases go on
            paths[(template, "device_id")] = [victim if template.endswith("/revoke") else dev]
        if "{rollout_id}" in template:
            paths[(template, "rollout_id")] = [ro]
    bodies = {
        "/api/v1/rollouts": {"model": "tiny", "version": "1.0.0"},
        "/api/v1/rollouts/{rollout_id}/rollback": {"to_version": "1.0.0"},
    }
    return device, paths, bodies


@pytest.fixture(scope="module")
def pg_module_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new, empty schema, for this module's server."""
    with pg_schema(postgres_url, "ota_fuzz_") as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    db_url = str(request.getfixturevalue("pg_module_url")) if request.param == "postgres" else None
    tmp = tmp_path_factory.mktemp("schemathesis")
    with live_server(tmp, db_url=db_url, serve_args=["--forwarded-allow-ips", "127.0.0.1"]) as server:
        device, paths, bodies = _fleet_ids(server, tmp)
        credentials: dict[str, str | None] = {
            "none": None,
            **{role: server.tokens[role] for role in ("viewer", "publisher", "operator", "admin")},
            "device": device["device_token"],
            "enrollment": server.enrollment_token,
        }
        engine = sa.create_engine(db_url or f"sqlite:///{server.data_dir / 'server.db'}")
        f = Fleet(server, engine, credentials, paths, bodies)
        _ACTIVE.append(f)
        try:
            yield f
        finally:
            _ACTIVE.remove(f)
            engine.dispose()
            print(f"\n{request.param}: cases per credential {f.cases}; statuses {dict(sorted(f.statuses.items()))}")


# the spec as packaged: the server serves these very bytes (test_the_spec_is_served_publicly); the
# base URL, the live server's, is given per call
OPENAPI = Path(__file__).resolve().parents[2] / "ota_server" / "openapi.yaml"
schema = schemathesis.openapi.from_path(OPENAPI, config=schemathesis.Config.from_dict(CONFIG))


@pytest.fixture(params=CREDENTIALS)
def credential(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _state_check(fleet: Fleet, before: str) -> Any:
    def no_state_change_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
        fleet.state = fleet.digest()
        if 400 <= response.status_code < 500:
            assert fleet.state == before, f"a {response.status_code} answer changed the server's state"
        return None

    return no_state_change_on_4xx


@schema.parametrize()
def test_the_api_answers_as_documented(case: Any, credential: str, fleet: Fleet) -> None:
    token = fleet.credentials[credential]
    headers = {"X-Forwarded-For": fleet.client_address()}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    before, fleet.state = fleet.state or fleet.digest(), None  # the state after the last clean case
    response = case.call_and_validate(
        base_url=fleet.server.url, headers=headers, additional_checks=[_state_check(fleet, before)]
    )
    fleet.cases[credential] = fleet.cases.get(credential, 0) + 1
    fleet.statuses[response.status_code] = fleet.statuses.get(response.status_code, 0) + 1


def test_the_spec_is_served_publicly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert server_main(["init", "--data-dir", str(data), "--json"]) == 0
    client = create_app({"data_dir": str(data), "testing": True}).test_client()
    answer = client.get("/api/v1/openapi.yaml")
    assert answer.status_code == 200 and answer.mimetype == "application/yaml"
    assert answer.data == OPENAPI.read_bytes()


def test_a_405_names_the_allowed_methods(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert server_main(["init", "--data-dir", str(data), "--json"]) == 0
    client = create_app({"data_dir": str(data), "testing": True}).test_client()
    answer = client.open("/healthz", method="TRACE")
    assert answer.status_code == 405
    assert set(answer.headers["Allow"].split(", ")) >= {"GET"}
    assert answer.get_json()["error"]["code"] == "METHOD_NOT_ALLOWED"
