"""The controller's pieces on a real data directory: a real TUF repository and director
(:class:`~tests.edge_agent.update_harness.SimServer`), real bundles, real slots, the real
child-process gate and the headless perception the daemon wires in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig
from edge_agent.errors import FatalError, ReasonCode, StopRequested
from edge_agent.link.identity import enroll
from edge_agent.perception.runtimes import variant_in
from edge_agent.update.controller import AgentController
from edge_agent.update.core import State, StepOutcome, Update, run_update
from edge_agent.update.daemon import build_agent
from edge_agent.update.gate import ChildGate
from edge_agent.update.journal import Journal
from tests.bundles import make_bundle, make_multi_bundle
from tests.edge_agent.update_harness import RepoSim, SimServer

R = ReasonCode


@dataclass
class Device:
    sim: RepoSim
    srv: SimServer
    config: AgentConfig
    controller: AgentController
    tmp: Path

    def publish(self, version: str, *, duo: bool = False) -> dict[str, Any]:
        bundle = self.tmp / f"sim-{version}"
        (make_multi_bundle if duo else make_bundle)(bundle, name="sim", version=version)
        release = self.sim.add_bundle(bundle)
        self.assign(release)
        return release

    def assign(self, release: dict[str, Any], *, device_id: str | None = None) -> None:
        def make(device: str, nonce: str) -> dict[str, Any]:
            body = self.sim.assignment_body(release, device_id=device_id or device, nonce=nonce)
            return self.sim.sign_assignment(body)

        self.srv.knobs.assign = make

    def fetched(self) -> Update:
        """check, download and verify the assigned release."""
        c = self.controller
        update = c.check()
        assert update is not None
        c.download(update)
        c.verify(update)
        return update

    def install(self) -> Update:
        """A whole update through the state machine, as the daemon drives it."""
        record, retry = run_update(self.controller, Journal(self.config.paths.journal))
        assert (record.state, retry) == (State.COMMITTED, False), record
        assert record.update is not None
        return record.update


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    sim = RepoSim()
    srv = SimServer(sim)
    config = AgentConfig(
        tmp_path / "agent", health_window_s=0.2, bench_queries=5, bench_duration_s=0.05, http_timeout_s=5
    )
    enroll(config.paths, server=srv.url, token="ef_enroll_sim", name="dev")
    agent = build_agent(config)
    try:
        yield Device(sim, srv, config, agent.controller, tmp_path)
    finally:
        agent.controller.outbox.close()
        srv.close()


def test_an_accepted_update_is_downloaded_verified_and_staged_with_its_release(device: Device) -> None:
    release = device.publish("1.0.0", duo=True)
    c = device.controller
    update = device.fetched()
    assert (update.release, update.variant, [a.variant for a in update.alternates]) == (
        release["counter"],
        "onnx-fp32",
        ["onnx-int8"],
    )
    parts = {p.name for p in c.config.paths.downloads.glob("*.part")}
    assert parts == {f"{ref.sha256}.part" for ref in (update.manifest, update.target, update.alternates[0].target)}
    staged = c.stage(update)
    assert staged.slot == "a" and c.slots.active_slot() is None  # the inactive slot; nothing switched
    slot = c.slots.path("a")
    assert {"bundle.json", "model-onnx-fp32.onnx", "model-onnx-int8.onnx"} <= {p.name for p in slot.iterdir()}
    assert variant_in(slot) == "onnx-fp32"  # the assigned variant until the gate chooses
    assert c.running() is None  # staged is not serving
    c.slots.switch("a")
    assert c.running() == {"name": "sim", "version": "1.0.0", "release": release["counter"], "variant": "onnx-fp32"}


def test_a_part_file_that_fails_its_hash_is_deleted(device: Device) -> None:
    device.publish("1.0.0")
    c = device.controller
    update = c.check()
    assert update is not None
    c.download(update)
    part = c.files.part(update.target.sha256)
    part.write_bytes(b"x" * update.target.length)
    with pytest.raises(FatalError) as e:
        c.verify(update)
    assert e.value.reason is R.HASH_MISMATCH
    assert not part.exists()  # downloaded afresh next time, never staged


def test_a_set_stop_event_ends_the_download_and_keeps_the_part_file(device: Device) -> None:
    device.publish("1.0.0")
    stop = threading.Event()
    c = device.controller
    stopped = AgentController(
        config=c.config,
        identity=c.identity,
        client=c.client,
        tuf=c.tuf,
        slots=c.slots,
        outbox=c.outbox,
        state=c.state,
        profile=lambda: c.profile,
        director_key=c.intake.director_key,
        stop=stop,
    )
    update = stopped.check()
    assert update is not None
    stop.set()
    with pytest.raises(StopRequested):
        stopped.download(update)
    assert stopped.files.part(update.manifest.sha256).stat().st_size > 0  # resumed at the next start


def test_a_refused_assignment_is_recorded_once_and_reported_with_what_it_claimed(device: Device) -> None:
    release = device.publish("1.0.0")
    device.assign(release, device_id="someone-else")
    c = device.controller
    with pytest.raises(FatalError) as e:
        c.check()
    assert e.value.reason is R.WRONG_DEVICE
    last = c.state.load().last_update or {}
    assert (last["state"], last["reason"], last["release"]) == ("refused", "WRONG_DEVICE", release["counter"])
    time.sleep(1.0 - time.time() % 1.0 + 0.01)  # the next poll's assignment is re-signed with a later issued/expires
    assert c.check() is None  # the same refused assignment again: not raised (so not reported) twice
    c.report(State.REFUSED, None, StepOutcome(e.value.reason, e.value.detail))
    (report,) = c.outbox.pending()
    assert (report["type"], report["state"], report["reason_code"]) == ("transition", "refused", "WRONG_DEVICE")
    assert (report["release"], report["rollout_id"]) == (release["counter"], f"ro_sim{release['counter']}")


def test_the_child_gate_chooses_records_and_remembers_its_verdict(device: Device) -> None:
    bundle = device.tmp / "sim-duo"  # the assigned FP32 gives NaNs: only its INT8 alternate may serve
    make_multi_bundle(bundle, name="sim", version="1.0.0", variants=(("onnx-fp32", "nan"), ("onnx-int8", "ok")))
    device.assign(device.sim.add_bundle(bundle))
    c = device.controller
    update = c.stage(device.fetched())
    slot = c.slots.path("a")
    assert (update.variant, variant_in(slot)) == ("onnx-fp32", "onnx-fp32")
    result = c.prepare(update)
    assert result.passed, result
    assert result.evidence["variant"] == "onnx-int8" and "NAN_OUTPUT" in result.detail
    assert variant_in(slot) == "onnx-int8"  # the choice is recorded in the slot
    gates = c.files.gates(update)
    assert c.gate.result_of(slot) is result
    assert c.gate.cached(slot, gates) is result  # no second child
    restarted = ChildGate(config=c.config, slots=c.slots, profile=lambda: c.profile)
    assert restarted.result_of(slot) is None
    again = restarted.cached(slot, gates)  # after a restart: the child again, on the recorded variant only
    assert again is not result and again.passed
    assert again.evidence["variant"] == "onnx-int8" and "NAN_OUTPUT" not in again.detail


def test_a_failing_model_is_refused_by_the_child_gate_and_abandoned(device: Device) -> None:
    bundle = device.tmp / "sim-nan"
    make_bundle(bundle, name="sim", version="1.0.0", behaviour="nan")
    device.assign(device.sim.add_bundle(bundle))
    c = device.controller
    update = c.stage(device.fetched())
    result = c.prepare(update)
    assert not result.passed and result.reason_code is R.NAN_OUTPUT
    c.abandon(update, State.FAILED, StepOutcome(result.reason_code, result.detail))
    assert not c.slots.path("a").exists() and not list(c.config.paths.downloads.glob("*.part"))
    last = c.state.load()
    assert (last.last_update or {})["state"] == "failed" and (last.last_update or {})["reason"] == "NAN_OUTPUT"
    assert last.settled == {f"{update.release}:{update.target.sha256}": "failed"}  # never installed again


def test_the_first_model_is_judged_by_its_child_gate_then_started_and_committed(device: Device) -> None:
    device.publish("1.0.0")
    c = device.controller
    perception = c.handover.perception
    assert perception is not None and perception.active_version() is None
    update = device.install()
    assert update.slot == "a" and c.slots.active_slot() == "a"
    assert perception.active_version() == "sim@1.0.0"
    assert c.state.load().settled == {f"{update.release}:{update.target.sha256}": "committed"}
    assert not list(c.config.paths.downloads.glob("*.part"))
    states = [r["state"] for r in c.outbox.pending() if r["type"] == "transition"]
    assert states[0] == "downloading" and states[-1] == "committed"
    gate = next(r for r in c.outbox.pending() if r["type"] == "gate" and r["state"] == "benchmarking")
    assert gate["variant"] == "onnx-fp32" and gate["gate"]["variant"] == "onnx-fp32"


def test_roll_back_restores_the_previous_slot_and_swaps_perception_back(device: Device) -> None:
    device.publish("1.0.0")
    c = device.controller
    device.install()
    device.publish("1.1.0")
    update = c.stage(device.fetched())
    assert update.slot == "b" and update.previous_slot == "a"
    assert c.prepare(update).passed
    context = c.handover.gate_context(update, c.files.gates(update))
    assert context.judged_against.value == "active"  # what the shadow run would compare with
    assert c.benchmark(update).passed
    c.swap(update)
    perception = c.handover.perception
    assert perception is not None
    assert c.slots.active_slot() == "b" and perception.active_version() == "sim@1.1.0"
    c.roll_back(update, StepOutcome(R.HEALTH_REGRESSION, "p95 over budget"))
    assert c.slots.active_slot() == "a" and perception.active_version() == "sim@1.0.0"
    last = c.state.load().last_update or {}
    assert (last["state"], last["reason"], last["version"]) == ("rolled-back", "HEALTH_REGRESSION", "1.1.0")
    assert last["slots"] == {"a": 1, "b": 2}
    assert (c.slots.path("b") / "bundle.json").is_file()  # kept: a later release may reuse the slot


def test_a_failed_first_install_leaves_nothing_serving(device: Device) -> None:
    device.publish("1.0.0")
    c = device.controller
    update = c.stage(device.fetched())
    c.slots.switch("a")  # the switch happened, then the health window failed
    assert update.previous_slot is None
    c.roll_back(update, StepOutcome(R.HEALTH_REGRESSION, "errors"))
    assert c.slots.active_slot() is None and c.running() is None


def test_an_ending_prunes_the_engines_no_slot_needs(device: Device) -> None:
    device.publish("1.0.0")
    c = device.controller
    update = c.stage(device.fetched())
    engines = c.config.paths.engines
    engines.mkdir(parents=True)
    kept = engines / f"{update.target.sha256}-trt10.3-Orin-sm87-int8-b1-1-8.engine"
    gone = engines / f"{'0' * 64}-trt10.3-Orin-sm87-int8-b1-1-8.engine"
    for path in (kept, gone):
        path.write_bytes(b"plan")
    c.commit(update)
    assert kept.exists() and not gone.exists()


def test_reports_carry_the_gate_evidence_and_the_variant_the_slot_serves(device: Device) -> None:
    device.publish("1.0.0", duo=True)
    c = device.controller
    update = c.stage(device.fetched())
    c.report(State.PREPARING, update, StepOutcome(None, "", {"p95_ms": 1.5}, {"variant": "onnx-int8"}))
    c.report(State.SWAPPING, update, StepOutcome())
    reports = c.outbox.pending()
    assert [(r["type"], r["state"]) for r in reports] == [
        ("gate", "preparing"),
        ("transition", "preparing"),
        ("transition", "swapping"),
    ]
    assert [r["variant"] for r in reports] == ["onnx-int8", "onnx-int8", "onnx-fp32"]  # chosen, then the slot's
    assert reports[0]["gate"] == {"variant": "onnx-int8"} and reports[0]["metrics"] == {"p95_ms": 1.5}
    assert {r["release"] for r in reports} == {update.release}
