"""The update path's checks, each on the one scenario that only it stops.

The real agent (in this process) against :class:`~tests.edge_agent.update_harness.SimServer`
(real TUF repository, real director key) turned malicious in a precise way:

- a ``bundle.json`` rewritten at the same length with ``min_agreement`` 0.0, its model intact:
  refused on the manifest's signed hash, on the wire, once corrupted in transit, and on disk
  between download and verification;
- a model file with one weight byte changed: the ONNX still parses, so the refusal must come
  from the hash, before ONNX or ONNX Runtime ever sees those bytes;
- ``edge-agent rollback`` (the real CLI): the active slot really changes back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import pytest

from edge_agent.config import AgentConfig
from edge_agent.link.identity import enroll
from edge_agent.update.core import State
from edge_agent.update.daemon import Agent, CycleResult, build_agent
from tests.bundles import make_bundle
from tests.edge_agent.update_harness import RepoSim, SimServer, check_slots, run_agent

LOOSE = (b'"min_agreement":0.8', b'"min_agreement":0.0')  # the same length: only the hash can tell


class _Served(dict[str, bytes]):
    """The repository's target files, some served altered: ``swap[path] = (bytes, times)``
    (``times`` None: every time). The TUF metadata keeps the genuine lengths and hashes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.swap: dict[str, tuple[bytes, int | None]] = {}
        self.gets: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.gets.append(key)
        if key in self.swap:
            data, times = self.swap[key]
            if times is None or times > 0:
                if times is not None:
                    self.swap[key] = (data, times - 1)
                return data
        return super().get(key, default)


@dataclasses.dataclass
class Device:
    sim: RepoSim
    srv: SimServer
    agent: Agent
    data: Path
    tmp: Path
    served: _Served
    minor: int = 0
    active: str = "sim@1.0.0"

    def release(self) -> dict[str, Any]:
        self.minor += 1
        bundle = self.tmp / f"sim-1.{self.minor}.0"
        make_bundle(bundle, name="sim", version=f"1.{self.minor}.0")
        return self.sim.add_bundle(bundle)

    def key(self, release: dict[str, Any], name: str) -> str:
        """The repository path (``<dir>/<sha256>.<name>``) the agent fetches ``name`` of ``release`` from."""
        tf = release["manifest"] if name == "bundle.json" else release["target"]
        return f"sim/{release['version']}/{tf.hashes['sha256']}.{name}"

    def attempt(self, release: dict[str, Any]) -> CycleResult:
        def make(device: str, nonce: str) -> dict[str, Any]:
            return self.sim.sign_assignment(self.sim.assignment_body(release, device_id=device, nonce=nonce))

        self.srv.knobs.assign = make
        try:
            return self.agent.run_once()
        finally:
            self.srv.knobs = type(self.srv.knobs)()

    def states(self, release: dict[str, Any]) -> list[str]:
        return [
            r["state"] for r in self.srv.reports if r["type"] == "transition" and r.get("release") == release["counter"]
        ]

    def refused(self, result: CycleResult, reason: str) -> None:
        assert result.record.state is State.REFUSED, result.record
        assert result.record.outcome.reason is not None and result.record.outcome.reason.value == reason
        assert check_slots(self.data) == self.active  # never installed; the active model is intact
        assert not list((self.data / "downloads").glob("*.part"))


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    tmp = tmp_path_factory.mktemp("mutants")
    sim = RepoSim()
    served = _Served(sim.target_files)
    sim.target_files = served
    srv = SimServer(sim)
    data = tmp / "agent"
    enroll(AgentConfig(data).paths, server=srv.url, token="ef_enroll_sim", name="mutants")
    config = AgentConfig(
        data, health_window_s=0.2, bench_queries=5, bench_duration_s=0.05, max_attempts=2, http_timeout_s=5
    )
    agent = build_agent(config)
    agent.start()
    d = Device(sim, srv, agent, data, tmp, served)
    make_bundle(tmp / "sim-1.0.0", name="sim", version="1.0.0")
    first = d.attempt(sim.add_bundle(tmp / "sim-1.0.0"))
    assert first.record.state is State.COMMITTED, first.record
    assert check_slots(data) == "sim@1.0.0"
    yield d
    agent.controller.outbox.close()
    srv.close()


def _loosened(manifest: bytes) -> bytes:
    assert manifest.count(LOOSE[0]) == 1, "the test bundle's gates changed: update LOOSE"
    out = manifest.replace(*LOOSE)
    assert len(out) == len(manifest) and json.loads(out)["gates"]["min_agreement"] == 0.0
    return out


# --------------------------------------------------------------------------- the manifest's hash


def test_a_manifest_rewritten_at_the_same_length_is_refused(device: Device) -> None:
    release = device.release()
    key = device.key(release, "bundle.json")
    device.served.swap[key] = (_loosened(device.served[key]), None)
    try:
        result = device.attempt(release)
    finally:
        device.served.swap.clear()
    device.refused(result, "HASH_MISMATCH")
    assert result.record.outcome.detail.startswith(release["manifest"].hashes["sha256"])  # the manifest's .part
    assert "staging" not in device.states(release)


def test_a_manifest_corrupted_once_in_transit_is_fetched_afresh_and_installs(device: Device) -> None:
    """The download checks the manifest as it arrives (a later check alone would refuse the update)."""
    release = device.release()
    key = device.key(release, "bundle.json")
    device.served.swap[key] = (_loosened(device.served[key]), 1)
    before = len(device.served.gets)
    result = device.attempt(release)
    assert result.record.state is State.COMMITTED, result.record
    assert device.served.gets[before:].count(key) == 2  # the altered transfer, then the genuine one
    device.active = f"sim@{release['version']}"
    assert check_slots(device.data) == device.active
    assert json.loads((device.data / "slots" / "current" / "bundle.json").read_bytes())["gates"]["min_agreement"] == 0.8


def test_a_manifest_altered_on_disk_after_its_download_is_refused_at_verification(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the journaled ``verifying`` and its check (a power cut, a tampered card): the
    downloaded ``bundle.json`` is checked again against its signed hash before it is used."""
    release = device.release()
    c = device.agent.controller
    real = c.pause_point
    altered: list[Path] = []

    def alter_at_verifying(state: State) -> None:
        if state is State.VERIFYING:
            part = c.files.part(release["manifest"].hashes["sha256"])
            part.write_bytes(_loosened(part.read_bytes()))
            altered.append(part)
        real(state)

    monkeypatch.setattr(c, "pause_point", alter_at_verifying)
    result = device.attempt(release)
    assert altered, "the update never reached verifying"
    device.refused(result, "HASH_MISMATCH")
    assert "staging" not in device.states(release)


# --------------------------------------------------------------------------- refused before parsing


def _tamper_a_weight(model: bytes) -> bytes:
    """Flip one byte inside the weight initializer ``W``: still a valid ONNX model, other numbers."""
    weights = next(i for i in onnx.load_from_string(model).graph.initializer if i.name == "W").raw_data
    assert len(weights) >= 8 and model.count(weights) == 1
    at = model.index(weights) + len(weights) // 2
    tampered = model[:at] + bytes([model[at] ^ 0x01]) + model[at + 1 :]
    onnx.checker.check_model(onnx.load_from_string(tampered))  # it parses and checks...
    onnxruntime.InferenceSession(tampered, providers=["CPUExecutionProvider"])  # ...and loads
    return tampered


class _ParseLog:
    """sha256 of everything given to ONNX or ONNX Runtime to parse in this process."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def note(self, what: Any) -> None:
        if isinstance(what, (bytes, bytearray)):
            self.seen.append(hashlib.sha256(what).hexdigest())
        elif isinstance(what, (str, os.PathLike)) and Path(what).is_file():
            self.seen.append(hashlib.sha256(Path(what).read_bytes()).hexdigest())


def test_a_model_with_a_tampered_weight_is_refused_before_any_parse(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = device.release()
    key = device.key(release, "model.onnx")
    tampered = _tamper_a_weight(device.served[key])
    bad_sha = hashlib.sha256(tampered).hexdigest()
    log = _ParseLog()
    session = onnxruntime.InferenceSession

    class RecordingSession(session):  # type: ignore[misc, valid-type]
        def __init__(self, path_or_bytes: Any, *args: Any, **kwargs: Any) -> None:
            log.note(path_or_bytes)
            super().__init__(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)

    def recording(real: Any) -> Any:
        def load(f: Any, *args: Any, **kwargs: Any) -> Any:
            log.note(f)
            return real(f, *args, **kwargs)

        return load

    for name in ("load", "load_model", "load_from_string", "load_model_from_string"):
        monkeypatch.setattr(onnx, name, recording(getattr(onnx, name)))
    device.served.swap[key] = (tampered, None)
    try:
        result = device.attempt(release)
    finally:
        device.served.swap.clear()
    device.refused(result, "HASH_MISMATCH")
    assert result.record.outcome.detail.startswith(release["target"].hashes["sha256"])  # the model's .part
    assert bad_sha not in log.seen, "the tampered model was parsed before its hash was checked"
    # nor in the child-process gate: the update never got past verifying
    assert set(device.states(release)) <= {"downloading", "verifying", "refused"}, device.states(release)


# --------------------------------------------------------------------------- manual rollback


def test_manual_rollback_switches_the_active_slot_to_the_previous_model(device: Device) -> None:
    release = device.release()
    result = device.attempt(release)
    assert result.record.state is State.COMMITTED, result.record
    slots = device.data / "slots"
    new, old = os.readlink(slots / "current"), device.active
    device.active = f"sim@{release['version']}"
    assert check_slots(device.data) == device.active
    device.agent.controller.outbox.close()  # the CLI is another process on this data directory
    out = run_agent(device.data, "rollback", timeout=60)
    assert out.returncode == 0, out.stderr
    back = "b" if new == "a" else "a"
    assert out.stdout.startswith(f"rolled back to slot {back}: ") and old.split("@")[1] in out.stdout, out.stdout
    assert os.readlink(slots / "current") == back
    assert check_slots(device.data) == old
    status = run_agent(device.data, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["slot"], info["previous_slot"]) == (back, new)
    assert (info["model"]["name"], info["model"]["version"]) == tuple(old.split("@"))
    report = device.srv.reports[-1]
    assert (report["state"], report["reason_code"]) == ("rolled-back", "MANUAL_ROLLBACK"), report
    assert report["running"]["version"] == old.split("@")[1]
