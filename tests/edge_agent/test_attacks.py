"""Attacks on the update path, each refused with its reason code while the active model keeps running.

The agent (real code, in this process) talks HTTP to :class:`SimServer`: a
real TUF repository and a director with real Ed25519 keys behind a server
that misbehaves on demand. Every test starts from a device running
``sim@1.0.0`` and checks that it still runs it, untouched, afterwards.

The cases marked ``finding`` attack the fix of that security finding on the agent's side (the index
and the check that every finding has a case: ``tests/ota_server/test_attacks.py``); the others are
the update path's original attacks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tuf.api.metadata import TargetFile

from edge_agent.config import AgentConfig
from edge_agent.link.identity import enroll
from edge_agent.perception.runtimes import variant_in
from edge_agent.update.core import State
from edge_agent.update.daemon import Agent, CycleResult, build_agent
from edge_agent.update.journal import StateFile
from tests.bundles import make_bundle, make_multi_bundle
from tests.edge_agent.update_harness import RepoSim, SimServer, check_slots, utc

Assign = Callable[[str, str], dict[str, Any] | None]


@dataclass
class Rig:
    sim: RepoSim
    srv: SimServer
    agent: Agent
    data: Path
    tmp: Path
    minor: int = 0
    active: str = "sim@1.0.0"  # what the device must still run after each attack

    def release(self) -> dict[str, Any]:
        """Publish sim@1.<n>.0 in the TUF repository; returns its release description."""
        self.minor += 1
        bundle = self.tmp / f"sim-1.{self.minor}.0"
        make_bundle(bundle, name="sim", version=f"1.{self.minor}.0")
        return self.sim.add_bundle(bundle)

    def release_duo(self) -> dict[str, Any]:
        """Publish sim@1.<n>.0 with an FP32 and an INT8 variant (the INT8 an alternate)."""
        self.minor += 1
        bundle = self.tmp / f"sim-1.{self.minor}.0"
        make_multi_bundle(bundle, name="sim", version=f"1.{self.minor}.0")
        release = self.sim.add_bundle(bundle)
        assert [vid for vid, _ in release["alternates"]] == ["onnx-int8"]
        return release

    def assign(self, release: dict[str, Any], **over: Any) -> Assign:
        def make(device: str, nonce: str) -> dict[str, Any]:
            body = self.sim.assignment_body(release, device_id=device, nonce=nonce)
            body.update(over)
            return self.sim.sign_assignment(body)

        return make

    def attempt(self, assign: Assign, **knobs: Any) -> CycleResult:
        self.srv.knobs.assign = assign
        for k, v in knobs.items():
            setattr(self.srv.knobs, k, v)
        try:
            return self.agent.run_once()
        finally:
            self.srv.knobs = type(self.srv.knobs)()

    def refused(self, result: CycleResult, reason: str, *, state: State = State.REFUSED) -> None:
        assert result.record.state is state, result.record
        assert result.record.outcome.reason is not None and result.record.outcome.reason.value == reason
        assert reason in self.srv.reasons(state.value), self.srv.reports[-3:]
        assert check_slots(self.data) == self.active  # the active model is unchanged and intact


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("attacks")
    sim = RepoSim()
    srv = SimServer(sim)
    data = tmp / "agent"
    config = AgentConfig(tmp / "agent")
    enroll(config.paths, server=srv.url, token="ef_enroll_sim", name="victim")
    config = AgentConfig(
        data,
        health_window_s=0.2,
        bench_queries=5,
        bench_duration_s=0.05,
        min_rate_bps=2000,
        rate_window_s=0.6,
        max_attempts=2,
        http_timeout_s=5,
    )
    agent = build_agent(config)
    agent.start()
    r = Rig(sim, srv, agent, data, tmp)
    make_bundle(tmp / "sim-1.0.0", name="sim", version="1.0.0")
    first = sim.add_bundle(tmp / "sim-1.0.0")
    result = r.attempt(r.assign(first))
    assert result.record.state is State.COMMITTED, result.record
    assert check_slots(data) == "sim@1.0.0"
    yield r
    agent.controller.outbox.close()
    srv.close()


def test_tampered_model_bytes(rig: Rig) -> None:
    rig.refused(rig.attempt(rig.assign(rig.release()), tamper=True), "HASH_MISMATCH")
    assert not list((rig.data / "downloads").glob("*.part"))  # the bad bytes are gone


def test_assignment_altered_in_transit(rig: Rig) -> None:
    good = rig.assign(rig.release())

    def mitm(device: str, nonce: str) -> dict[str, Any]:
        env = good(device, nonce)
        env["signed"]["target"]["hashes"]["sha256"] = "0" * 64
        return env

    rig.refused(rig.attempt(mitm), "SIGNATURE_INVALID")


def test_signed_assignment_with_a_hash_tuf_does_not_know(rig: Rig) -> None:
    release = rig.release()
    target = copy.deepcopy(rig.sim.assignment_body(release, device_id="x", nonce="x")["target"])
    target["hashes"] = {"sha256": "1" * 64}
    rig.refused(rig.attempt(rig.assign(release, target=target)), "TARGET_MISMATCH")


def test_target_that_is_not_in_tuf(rig: Rig) -> None:
    release = rig.release()
    target = copy.deepcopy(rig.sim.assignment_body(release, device_id="x", nonce="x")["target"])
    target["path"] = "sim/9.9.9/model.onnx"
    rig.refused(rig.attempt(rig.assign(release, target=target)), "TARGET_NOT_IN_TUF")


def test_assignment_for_another_device(rig: Rig) -> None:
    rig.refused(rig.attempt(rig.assign(rig.release(), device_id="dev_someone_else")), "WRONG_DEVICE")


def test_replayed_assignment_with_an_old_nonce(rig: Rig) -> None:
    release = rig.release()
    recorded = rig.assign(release)("dev_sim1", "ab" * 16)  # captured from an earlier exchange
    rig.refused(rig.attempt(lambda device, nonce: recorded), "NONCE_MISMATCH")


def test_expired_assignment(rig: Rig) -> None:
    rig.refused(rig.attempt(rig.assign(rig.release(), expires="2020-01-01T00:00:00Z")), "ASSIGNMENT_EXPIRED")


def test_lower_release_counter(rig: Rig) -> None:
    older, newer = rig.release(), rig.release()
    rig.refused(rig.attempt(rig.assign(newer), tamper=True), "HASH_MISMATCH")  # accepted, then refused
    assert StateFile(rig.data / "agent-state.json").load().highest_release == newer["counter"]
    rig.refused(rig.attempt(rig.assign(older)), "RELEASE_COUNTER_DECREASED")


def test_frozen_tuf_metadata(rig: Rig) -> None:
    release = rig.release()
    rig.sim.republish_timestamp(expires=utc(-60))  # validly signed, but expired: a freeze attack
    try:
        rig.refused(rig.attempt(rig.assign(release)), "TUF_EXPIRED")
    finally:
        rig.sim.republish_timestamp()


def test_replayed_older_tuf_metadata(rig: Rig) -> None:
    old_timestamp = rig.sim.metadata["timestamp.json"]
    first = rig.release()  # timestamp moves on; the agent sees and caches the newer one
    rig.refused(rig.attempt(rig.assign(first), tamper=True), "HASH_MISMATCH")
    second = rig.release()
    result = rig.attempt(rig.assign(second), metadata_override={"timestamp.json": old_timestamp})
    rig.refused(result, "TUF_ROLLBACK")


def test_a_variant_this_hardware_cannot_run(rig: Rig) -> None:
    import dataclasses

    from models.bundle import HardwareRequirements, write_bundle

    rig.minor += 1
    bundle = rig.tmp / f"sim-1.{rig.minor}.0"
    manifest = make_bundle(bundle, name="sim", version=f"1.{rig.minor}.0")
    jetson_only = dataclasses.replace(manifest.variants[0], requires=HardwareRequirements(accelerators=("jetson",)))
    write_bundle(bundle, dataclasses.replace(manifest, variants=(jetson_only,)))
    rig.refused(rig.attempt(rig.assign(rig.sim.add_bundle(bundle))), "INCOMPATIBLE_HARDWARE")


def test_endless_data(rig: Rig) -> None:
    rig.refused(rig.attempt(rig.assign(rig.release()), endless=True), "LENGTH_EXCEEDED")


def test_endless_metadata(rig: Rig) -> None:
    rig.refused(rig.attempt(rig.assign(rig.release()), endless_metadata=True), "TUF_METADATA_INVALID")


def test_slow_retrieval_is_retried_then_abandoned(rig: Rig) -> None:
    release = rig.release()
    first = rig.attempt(rig.assign(release), trickle_bps=300)
    assert first.retry and first.record.state is State.DOWNLOADING  # transient: kept for a later resume
    assert "SLOW_RETRIEVAL" in rig.srv.reasons("downloading")
    assert check_slots(rig.data) == "sim@1.0.0"
    second = rig.attempt(rig.assign(release), trickle_bps=300)  # max_attempts=2: give up
    rig.refused(second, "SLOW_RETRIEVAL", state=State.FAILED)


@pytest.mark.finding("M9")
def test_the_director_key_alone_cannot_raise_the_release_counter(rig: Rig) -> None:
    """With only the director key: a real target under counter 10^15, every gate off. TUF's signed
    counter for the target differs, so it is refused, and later real releases are not "counter decreased"."""
    release = rig.release()
    forged = {"counter": 10**15, "name": release["name"], "version": release["version"]}
    off = {"latency_budget_ms": 1e9, "max_nan_frames": 10**9, "max_error_rate": 1.0, "max_latency_regression": 1e3}

    def forge(device: str, nonce: str) -> dict[str, Any]:
        body = rig.sim.assignment_body(release, device_id=device, nonce=nonce, gates=off)
        return rig.sim.sign_assignment({**body, "release": forged})

    rig.refused(rig.attempt(forge), "TARGET_MISMATCH")
    assert StateFile(rig.data / "agent-state.json").load().highest_release < 10**15
    honest = rig.release()
    result = rig.attempt(rig.assign(honest))
    assert result.record.state is State.COMMITTED, result.record
    rig.active = f"sim@{honest['version']}"
    assert check_slots(rig.data) == rig.active


@pytest.mark.finding("M9")
def test_the_director_key_alone_cannot_loosen_the_bundles_gates(rig: Rig) -> None:
    """The genuine counter but the latency budget switched off: the bundle's budget still holds."""
    rig.minor += 1
    bundle = rig.tmp / f"sim-1.{rig.minor}.0"
    make_bundle(bundle, name="sim", version=f"1.{rig.minor}.0", latency_budget_ms=1e-6)
    release = rig.sim.add_bundle(bundle)
    result = rig.attempt(rig.assign(release, gates={"latency_budget_ms": 1e9}))
    rig.refused(result, "LATENCY_OVER_BUDGET", state=State.FAILED)


def _list_director_keys(sim: RepoSim, *keys: Ed25519PrivateKey) -> None:
    """The targets key signs the director keys devices must use (``edgefleet/director.json``); none: no list."""
    path = "edgefleet/director.json"
    if not keys:
        sim.targets.signed.targets.pop(path, None)
        sim.publish()
        return
    publics = []
    for key in keys:
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        publics.append(
            {
                "keytype": "ed25519",
                "scheme": "ed25519",
                "keyid": sha256(raw).hexdigest(),
                "keyval": {"public": raw.hex()},
            }
        )
    data = json.dumps({"keys": publics}).encode()
    target = TargetFile.from_data(path, data, ["sha256"])
    target.unrecognized_fields["custom"] = {"edgefleet": {"kind": "director", "keys": publics}}
    sim.targets.signed.targets[path] = target
    sim.publish()


@pytest.mark.finding("M10")
def test_a_director_key_that_tuf_no_longer_lists_stops_working(rig: Rig) -> None:
    """A director rotation is a TUF operation: once the targets metadata lists only the new key, the
    key pinned at enrollment no longer signs assignments, and the new one does."""
    release, pinned, new = rig.release(), rig.sim.director, Ed25519PrivateKey.generate()
    _list_director_keys(rig.sim, new)
    try:
        rig.refused(rig.attempt(rig.assign(release)), "SIGNATURE_INVALID")
        rig.sim.director = new
        result = rig.attempt(rig.assign(release))
        assert result.record.state is State.COMMITTED, result.record
        rig.active = f"sim@{release['version']}"
        assert check_slots(rig.data) == rig.active
    finally:
        rig.sim.director = pinned
        _list_director_keys(rig.sim)


def test_an_honest_update_still_installs_after_all_that(rig: Rig) -> None:
    release = rig.release()
    result = rig.attempt(rig.assign(release))
    assert result.record.state is State.COMMITTED, result.record
    rig.active = f"sim@{release['version']}"
    assert check_slots(rig.data) == rig.active


def test_a_frozen_repository_that_heals_is_retried_and_reported_once(rig: Rig) -> None:
    release = rig.release()
    rig.sim.republish_timestamp(expires=utc(-60))
    envelopes: dict[str, dict[str, Any]] = {}
    make = rig.assign(release)

    def stable(device: str, nonce: str) -> dict[str, Any]:  # one envelope per nonce, like the director
        return envelopes.setdefault(nonce, make(device, nonce))

    before = rig.srv.reasons().count("TUF_EXPIRED")
    rig.refused(rig.attempt(stable), "TUF_EXPIRED")
    again = rig.attempt(stable)  # same assignment, same frozen metadata: checked again, not reported twice
    assert again.record.state is State.IDLE and rig.srv.reasons().count("TUF_EXPIRED") == before + 1
    rig.sim.republish_timestamp()  # the server re-signs its timestamp
    healed = rig.attempt(stable)
    assert healed.record.state is State.COMMITTED, healed.record
    rig.active = f"sim@{release['version']}"
    assert check_slots(rig.data) == rig.active


def _alternates(release: dict[str, Any], **target_over: Any) -> list[dict[str, Any]]:
    body = RepoSim.assignment_body(release, device_id="x", nonce="x")
    alternates = copy.deepcopy(body["alternates"])
    alternates[0]["target"].update(target_over)
    return alternates


def test_a_signed_alternate_with_a_hash_tuf_does_not_know_is_refused_before_any_download(rig: Rig) -> None:
    release = rig.release_duo()
    served = len(rig.srv.served)
    alternates = _alternates(release, hashes={"sha256": "1" * 64})
    rig.refused(rig.attempt(rig.assign(release, alternates=alternates)), "TARGET_MISMATCH")
    assert rig.srv.served[served:] == []  # not a byte of the manifest, the primary or the alternate


def test_an_alternate_that_is_not_in_tuf(rig: Rig) -> None:
    release = rig.release_duo()
    alternates = _alternates(release, path="sim/9.9.9/model-onnx-int8.onnx")
    rig.refused(rig.attempt(rig.assign(release, alternates=alternates)), "TARGET_NOT_IN_TUF")


def test_an_alternate_from_another_release_is_refused(rig: Rig) -> None:
    """Mix-and-match: this release's primary with the INT8 file of an older release."""
    older, newer = rig.release_duo(), rig.release_duo()
    rig.refused(rig.attempt(rig.assign(newer, alternates=_alternates(older))), "TARGET_MISMATCH")


def test_tampered_alternate_bytes_are_refused_before_parsing(rig: Rig) -> None:
    rig.refused(rig.attempt(rig.assign(rig.release_duo()), tamper_suffix="model-onnx-int8.onnx"), "HASH_MISMATCH")
    assert not list((rig.data / "downloads").glob("*.part"))  # the primary's good bytes go with the bad


def test_an_honest_update_with_an_alternate_stages_both(rig: Rig) -> None:
    release = rig.release_duo()
    result = rig.attempt(rig.assign(release))
    assert result.record.state is State.COMMITTED, result.record
    rig.active = f"sim@{release['version']}"
    active = rig.data / "slots" / "current"
    assert check_slots(rig.data) == rig.active
    assert {p.name for p in active.resolve().glob("model-*.onnx")} == {"model-onnx-fp32.onnx", "model-onnx-int8.onnx"}
    # two variants that compute alike: the device keeps the server's preference
    assert variant_in(active) == "onnx-fp32"
    gate = next(
        r
        for r in rig.srv.reports
        if r["type"] == "gate" and r["state"] == "benchmarking" and r["release"] == release["counter"]
    )
    assert gate["variant"] == "onnx-fp32" and gate["gate"]["variant"] == "onnx-fp32"
    assert [(t["candidate"], t["preferred"]) for t in gate["gate"]["timing"]] == [("onnx-int8", False)]


@pytest.mark.finding("L16")
def test_a_model_file_corrupted_once_is_downloaded_afresh_and_installs(rig: Rig) -> None:
    """One flipped byte on the wire is not a verdict on the release: the file is fetched again."""
    release = rig.release()
    served, refused = len(rig.srv.served), len(rig.srv.reasons())
    result = rig.attempt(rig.assign(release), tamper_first=1)
    assert result.record.state is State.COMMITTED, result.record
    rig.active = f"sim@{release['version']}"
    assert check_slots(rig.data) == rig.active
    model = [p for p in rig.srv.served[served:] if p.endswith(".onnx")]
    assert len(model) == 2 and model[0] == model[1]  # the corrupted transfer, then the good one
    assert len(rig.srv.reasons()) == refused  # nothing refused, nothing counted against the rollout


@pytest.mark.finding("L16")
def test_a_model_file_corrupted_every_time_is_refused_after_three_downloads_reported_once(rig: Rig) -> None:
    served, before = len(rig.srv.served), rig.srv.reasons().count("HASH_MISMATCH")
    rig.refused(rig.attempt(rig.assign(rig.release()), tamper_suffix=".onnx"), "HASH_MISMATCH")
    assert len([p for p in rig.srv.served[served:] if p.endswith(".onnx")]) == 3
    assert rig.srv.reasons().count("HASH_MISMATCH") == before + 1
    assert not list((rig.data / "downloads").glob("*.part"))


@pytest.mark.finding("L17")
def test_a_signed_target_hash_that_is_a_path_is_refused_before_any_download(rig: Rig) -> None:
    release = rig.release()
    target = copy.deepcopy(rig.sim.assignment_body(release, device_id="x", nonce="x")["target"])
    target["hashes"] = {"sha256": ("../" * 22)[:64]}
    served = len(rig.srv.served)
    rig.refused(rig.attempt(rig.assign(release, target=target)), "TARGET_MISMATCH")
    assert rig.srv.served[served:] == []
    assert not list((rig.data / "downloads").glob("*.part"))


@pytest.mark.finding("L17")
def test_a_target_hash_that_is_a_path_in_tuf_too_never_becomes_a_path(rig: Rig) -> None:
    """The repository itself lists the model under a sha256 that is a path (a compromised targets
    key), so TUF and the assignment agree: the agent's own check refuses it before a byte is written."""
    release = rig.release()
    escape = "../../" + "e" * 58  # downloads/<sha256>.part would land two folders above downloads/
    target = rig.sim.targets.signed.targets[release["target"].path]
    target.hashes = {"sha256": escape}
    rig.sim.publish()
    served = len(rig.srv.served)
    result = rig.attempt(rig.assign(release))
    rig.refused(result, "TARGET_MISMATCH")
    assert "64 lowercase hex digits" in (result.record.outcome.detail or ""), result.record
    assert [p for p in rig.srv.served[served:] if p.endswith(".onnx")] == []
    assert not (rig.data / "downloads" / f"{escape}.part").exists()
    assert not list(rig.data.parent.glob("e" * 58 + "*"))


@pytest.mark.finding("M7")
def test_an_oversized_assignment_reply_is_cut_and_installs_nothing(rig: Rig) -> None:
    """A validly signed assignment padded past the endpoint's cap is a protocol error, not an update."""
    good = rig.assign(rig.release())

    def padded(device: str, nonce: str) -> dict[str, Any]:
        envelope = good(device, nonce)
        assert envelope is not None
        return {**envelope, "pad": "x" * (8 * 1024 * 1024)}

    result = rig.attempt(padded)
    assert result.retry and result.record.state is State.IDLE, result.record
    assert result.record.outcome.reason is not None and result.record.outcome.reason.value == "PROTOCOL_ERROR"
    assert check_slots(rig.data) == rig.active


def _fresh_agent(rig: Rig, tmp: Path) -> Agent:
    """A newly enrolled agent on the rig's server: it has never verified an assignment."""
    config = AgentConfig(tmp / "fresh", http_timeout_s=5, max_attempts=2)
    enroll(config.paths, server=rig.srv.url, token="ef_enroll_sim", name="fresh")
    agent = build_agent(config)
    agent.start()
    return agent


def _poll(rig: Rig, agent: Agent, **knobs: Any) -> CycleResult:
    for k, v in knobs.items():
        setattr(rig.srv.knobs, k, v)
    try:
        return agent.run_once()
    finally:
        rig.srv.knobs = type(rig.srv.knobs)()


@pytest.mark.finding("M8")
def test_a_304_to_an_agent_that_verified_nothing_is_a_protocol_error(rig: Rig, tmp_path: Path) -> None:
    """An unauthenticated 304 must not freeze a fresh agent as "nothing to do"."""
    from models.reasons import ReasonCode

    agent = _fresh_agent(rig, tmp_path)
    try:
        for _ in range(2):
            result = _poll(rig, agent, not_modified=True)
            assert result.retry and result.record.state is State.IDLE  # backs off, polls again
            assert result.record.outcome.reason is ReasonCode.PROTOCOL_ERROR, result.record
    finally:
        agent.controller.outbox.close()


@pytest.mark.finding("M8")
def test_a_304_holds_only_for_a_verified_assignment_until_it_expires(rig: Rig, tmp_path: Path) -> None:
    import time

    from models.reasons import ReasonCode
    from tests.edge_agent.update_harness import iso

    agent = _fresh_agent(rig, tmp_path)

    def keep(device: str, nonce: str) -> dict[str, Any]:  # "keep what you run", valid for 2 s
        body = {
            "_type": "edgefleet-assignment",
            "spec_version": "1",
            "device_id": device,
            "nonce": nonce,
            "issued": iso(utc()),
            "expires": iso(utc(2)),
            "rollout_id": None,
            "release": None,
            "manifest": None,
            "target": None,
            "gates": None,
        }
        return rig.sim.sign_assignment(body)

    try:
        first = _poll(rig, agent, etags=True, assign=keep)
        assert first.record.state is State.IDLE and not first.retry, first.record
        seen = rig.srv.not_modified
        second = _poll(rig, agent, etags=True, assign=keep)  # names the verified assignment's ETag: 304
        assert rig.srv.not_modified == seen + 1
        assert second.record.state is State.IDLE and not second.retry and second.record.outcome.reason is None
        time.sleep(2.2)  # the verified assignment has expired: its ETag vouches for nothing now
        third = _poll(rig, agent, not_modified=True)
        assert third.retry and third.record.outcome.reason is ReasonCode.PROTOCOL_ERROR, third.record
    finally:
        agent.controller.outbox.close()
