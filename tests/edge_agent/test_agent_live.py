"""The real agent CLI against the real OTA server (gunicorn on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig
from edge_agent.link.identity import enroll as enroll_in_process
from edge_agent.perception.runtimes import variant_in
from edge_agent.update.core import State
from edge_agent.update.daemon import build_agent
from edge_agent.update.daemon import status as daemon_status
from tests.bundles import make_bundle, make_multi_bundle
from tests.conftest import wait_until
from tests.edge_agent.update_harness import (
    FAST_RUN,
    MitmProxy,
    check_slots,
    enroll_agent,
    make_bundle_with,
    make_runaway_onnx,
    run_agent,
    start_agent,
)
from tests.live_server import LiveServer, free_port, live_server

# well-formed (the server's ef_enroll_ format) but never issued
UNKNOWN_ENROLL_TOKEN = "ef_enroll_" + "x" * 43


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("live")) as srv:
        yield srv


def once(data: Path, *extra: str) -> Any:
    return run_agent(data, "run", "--once", *FAST_RUN, *extra)


def status(data: Path) -> dict[str, Any]:
    return daemon_status(AgentConfig(data))


def status_cli(data: Path) -> dict[str, Any]:
    out = run_agent(data, "status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_install_replace_and_fleet_rollback(server: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "truck-1"
    enroll_agent(server, data, "flow")
    assert (data / "identity.json").stat().st_mode & 0o777 == 0o600
    make_bundle(tmp_path / "v1", name="flow", version="1.0.0")
    make_bundle(tmp_path / "v2", name="flow", version="1.1.0")
    server.publish(tmp_path / "v1")
    r1 = server.create_rollout(model="flow", version="1.0.0", group="flow", stages=[100])
    out = once(data)
    assert out.returncode == 0, out.stderr
    assert check_slots(data) == "flow@1.0.0"
    assert server.rollout(r1["id"])["totals"]["success"] == 1

    release2 = server.publish(tmp_path / "v2")
    r2 = server.create_rollout(model="flow", version="1.1.0", group="flow", stages=[100])
    out = once(data)
    assert out.returncode == 0, out.stderr
    st = status_cli(data)
    assert check_slots(data) == "flow@1.1.0" and st["model"]["release"] == release2["counter"]
    assert st["previous_slot"] is not None and st["pending_reports"] == 0
    assert server.rollout(r2["id"])["totals"]["success"] == 1

    code, body, _ = server.api(
        "POST", f"/api/v1/rollouts/{r2['id']}/rollback", json={"to_version": "1.0.0"}, token=server.tokens["operator"]
    )
    assert code == 201, body
    out = once(data)
    assert out.returncode == 0, out.stderr
    st = status(data)
    assert check_slots(data) == "flow@1.0.0"
    assert st["model"]["release"] == body["release"]["counter"] > release2["counter"]
    assert server.rollout(body["rollout"]["id"])["totals"]["success"] == 1

    # nothing new: the next poll is a no-op and the model stays
    out = once(data)
    assert out.returncode == 0 and check_slots(data) == "flow@1.0.0"
    code, dev, _ = server.api("GET", f"/api/v1/devices/{st['device_id']}", token=server.tokens["viewer"])
    assert code == 200 and dev["running"]["version"] == "1.0.0", dev


def test_the_device_times_the_alternates_and_serves_what_it_finds_faster(server: LiveServer, tmp_path: Path) -> None:
    """The director assigns FP32 (the bundle's CPU preference) and lists INT8 as an alternate; the
    device stages both, times them interleaved in its child gate and serves INT8 only when the
    interval rule says it is faster: a slower INT8 is never chosen, a faster one is."""
    data = tmp_path / "truck-duo"
    enroll_agent(server, data, "duo-live")
    make_multi_bundle(
        tmp_path / "v1", name="duo-live", version="1.0.0", variants=(("onnx-fp32", "ok"), ("onnx-int8", "slow"))
    )
    make_multi_bundle(
        tmp_path / "v2", name="duo-live", version="1.1.0", variants=(("onnx-fp32", "slow"), ("onnx-int8", "ok"))
    )
    device_id = status(data)["device_id"]
    active = data / "slots" / "current"
    for bundle, served in (("v1", "onnx-fp32"), ("v2", "onnx-int8")):
        release = server.publish(tmp_path / bundle)
        rollout = server.create_rollout(model="duo-live", version=release["version"], group="duo-live", stages=[100])
        out = once(data, "--bench-queries", "30")
        assert out.returncode == 0, out.stderr
        assert check_slots(data) == f"duo-live@{release['version']}"
        assert {p.name for p in active.resolve().glob("model-*.onnx")} == {
            "model-onnx-fp32.onnx",
            "model-onnx-int8.onnx",
        }
        assert variant_in(active) == served
        assert status_cli(data)["model"]["variant"] == served
        assert server.rollout(rollout["id"])["totals"]["success"] == 1
        code, dev, _ = server.api("GET", f"/api/v1/devices/{device_id}", token=server.tokens["viewer"])
        assert code == 200 and dev["running"]["variant"] == served, dev
        assert dev["gate"]["variant"] == served
        (verdict,) = dev["gate"]["timing"]  # the report carried the timing evidence behind the choice
        assert (verdict["baseline"], verdict["candidate"], verdict["preferred"]) == (
            "onnx-fp32",
            "onnx-int8",
            served == "onnx-int8",
        ), dev["gate"]


@pytest.fixture(scope="module")
def device(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device in group "bad" running base@1.0.0."""
    tmp = tmp_path_factory.mktemp("bad")
    data = tmp / "truck-2"
    enroll_agent(server, data, "bad")
    make_bundle(tmp / "base", name="base", version="1.0.0")
    server.publish(tmp / "base")
    server.create_rollout(model="base", version="1.0.0", group="bad", stages=[100])
    out = once(data)
    assert out.returncode == 0, out.stderr
    return data


BAD = [
    ("not-onnx", "MODEL_LOAD_FAILED", {}),
    ("nan", "NAN_OUTPUT", {}),
    ("slow", "LATENCY_OVER_BUDGET", {"latency_budget_ms": 5.0}),
    ("runaway", "RUNTIME_CRASHED", {}),
]


@pytest.mark.parametrize(("behaviour", "reason", "kwargs"), BAD, ids=[b[0] for b in BAD])
def test_bad_models_are_refused_and_counted(
    server: LiveServer, device: Path, tmp_path: Path, behaviour: str, reason: str, kwargs: dict[str, Any]
) -> None:
    name = f"bad-{behaviour}"
    if behaviour == "runaway":
        make_bundle_with(tmp_path / name, name=name, version="1.0.0", data=make_runaway_onnx())
    else:
        make_bundle(tmp_path / name, name=name, version="1.0.0", behaviour=behaviour, **kwargs)
    server.publish(tmp_path / name)
    rollout = server.create_rollout(model=name, version="1.0.0", group="bad", stages=[100])
    out = once(device, "--prepare-cpu-limit", "3")
    assert out.returncode == 3, out.stderr
    assert reason in out.stderr
    assert check_slots(device) == "base@1.0.0"  # the previous model stays active
    progress = server.rollout(rollout["id"])
    assert progress["totals"]["failure"] == 1 and progress["status"] == "halted", progress
    assert reason in json.dumps(progress["failure_reasons"])
    st = status(device)
    assert st["pending_reports"] == 0 and st["update_state"] == "idle"
    assert (st["last_update"]["state"], st["last_update"]["reason"]) == ("failed", reason)


def test_server_down_keeps_the_model_and_queues_reports(server: LiveServer, device: Path) -> None:
    ident = json.loads((device / "identity.json").read_text())
    real = ident["server"]
    ident["server"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (device / "identity.json").write_text(json.dumps(ident))
    try:
        out = once(device)
        assert out.returncode == 4, out.stderr  # transient: retry later
        assert "server unreachable" in out.stderr
        assert check_slots(device) == "base@1.0.0"
        assert status(device)["pending_reports"] >= 1  # the heartbeat waits in the outbox
    finally:
        ident["server"] = real
        (device / "identity.json").write_text(json.dumps(ident))
    out = once(device)
    assert out.returncode == 0, out.stderr
    assert status(device)["pending_reports"] == 0


def test_manual_rollback_and_its_errors(server: LiveServer, tmp_path: Path, device: Path) -> None:
    fresh = tmp_path / "fresh"
    enroll_agent(server, fresh, "nothing")
    out = run_agent(fresh, "rollback")
    assert out.returncode == 2 and "no previous model" in out.stderr
    out = run_agent(tmp_path / "not-enrolled", "status")
    assert out.returncode == 2 and "not enrolled" in out.stderr
    out = run_agent(fresh, "enroll", "--server", server.url, "--token", UNKNOWN_ENROLL_TOKEN)
    assert out.returncode == 2 and "already enrolled" in out.stderr
    out = run_agent(tmp_path / "x", "enroll", "--server", server.url, "--token", UNKNOWN_ENROLL_TOKEN)
    assert out.returncode == 1 and "401" in out.stderr


def test_man_in_the_middle_of_the_real_server(server: LiveServer, tmp_path: Path) -> None:
    """Tampered model bytes and a replayed assignment through a proxy: refused, counted, model kept."""
    proxy = MitmProxy(server.url)
    try:
        config = AgentConfig(tmp_path / "truck-3", health_window_s=0.2, bench_queries=5, bench_duration_s=0.05)
        enroll_in_process(
            config.paths,
            server=proxy.url,
            token=server.credential("mitm"),
            name="truck-3",
            group="mitm",
            root_file=server.root_json,
            director_key_file=server.director_key_file,
        )
        agent = build_agent(config)
        agent.start()
        for version in ("1.0.0", "1.1.0"):
            make_bundle(tmp_path / version, name="mitm", version=version)
        server.publish(tmp_path / "1.0.0")
        server.create_rollout(model="mitm", version="1.0.0", group="mitm", stages=[100])
        assert agent.run_once().record.state is State.COMMITTED

        server.publish(tmp_path / "1.1.0")
        rollout = server.create_rollout(model="mitm", version="1.1.0", group="mitm", stages=[100])
        proxy.tamper_suffix = "model.onnx"
        result = agent.run_once()
        assert (result.record.state, result.record.outcome.reason.value if result.record.outcome.reason else None) == (
            State.REFUSED,
            "HASH_MISMATCH",
        )
        assert check_slots(config.data_dir) == "mitm@1.0.0"
        progress = server.rollout(rollout["id"])
        assert progress["totals"]["failure"] == 1 and "HASH_MISMATCH" in str(progress["failure_reasons"])

        proxy.tamper_suffix, proxy.replay = None, True  # replay the very first (signed, genuine) assignment
        result = agent.run_once()
        assert result.record.state is State.REFUSED and result.record.outcome.reason is not None
        assert result.record.outcome.reason.value == "NONCE_MISMATCH"
        assert check_slots(config.data_dir) == "mitm@1.0.0"
        agent.controller.outbox.close()
    finally:
        proxy.close()


def test_daemon_loop_stops_cleanly_on_sigterm(server: LiveServer, device: Path) -> None:
    """The daemon polls cycle after cycle (each ends with its "next poll in" debug line) until SIGTERM."""
    import signal
    import threading

    cycles = 3
    proc = start_agent(device, "--log-level", "DEBUG", "run", "--poll-interval", "0.3", *FAST_RUN)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()

    def polled() -> int:
        return sum("next poll in" in x for x in list(lines))

    try:
        wait_until(lambda: polled() >= cycles or proc.poll() is not None, timeout=60, what=f"{cycles} poll cycles")
        assert proc.poll() is None, "the daemon exited on its own:\n" + "".join(lines)[-3000:]
        assert polled() >= cycles
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "signal 15: stopping" in out and "agent stopped" in out
    assert check_slots(device) == "base@1.0.0"


def test_enroll_help_names_the_token_format_the_server_issues(capsys: pytest.CaptureFixture[str]) -> None:
    from edge_agent.__main__ import main
    from ota_server.serving.auth import TOKEN_RE, new_token

    issued = new_token("enroll")
    assert TOKEN_RE.match(issued) and issued.startswith("ef_enroll_")
    with pytest.raises(SystemExit) as exit_:
        main(["enroll", "--help"])
    assert exit_.value.code == 0 and "(ef_enroll_...)" in capsys.readouterr().out
    assert TOKEN_RE.match(UNKNOWN_ENROLL_TOKEN)
