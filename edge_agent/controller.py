"""The :class:`AgentController`: every effect of an update, over the real adapters.

It implements :class:`edge_agent.core.Controller` with the server client, the
TUF client, downloads, slots, the child-process prepare gate, the perception
path, the telemetry outbox and the agent state file. Decisions live in
:mod:`edge_agent.core`; the loop around it in :mod:`edge_agent.daemon`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import urllib3

from edge_agent.agreement import choose_context
from edge_agent.client import ServerClient
from edge_agent.config import AgentConfig
from edge_agent.core import Outcome, State, TargetRef, Update, VariantTarget
from edge_agent.download import DownloadPolicy, fetch, verify_file
from edge_agent.engines import prune_engines
from edge_agent.errors import (
    EdgeAgentError,
    FatalError,
    ReasonCode,
    ServerError,
    ServerUnreachable,
    StopRequested,
    TransientError,
)
from edge_agent.identity import Identity
from edge_agent.journal import AgentState, StateFile
from edge_agent.perception import GateContext, GateResult, Perception
from edge_agent.prepare import PrepareLimits, check_in_child
from edge_agent.runtimes import EngineOptions, open_staged
from edge_agent.slots import SLOT_NAMES, Slots, variant_in
from edge_agent.telemetry import Outbox, make_report, utc_now_iso
from edge_agent.trust import Assignment, DirectorKey, claimed_of, match_target, verify_assignment
from edge_agent.tuf_client import TufClient, target_url
from models.bundle import BundleError, Gates, Manifest, SelectionEntry, load_manifest
from models.hardware import HardwareProfile, can_run, hardware_class
from models.runtime import Model

__all__ = ["AgentController"]

log = logging.getLogger(__name__)
_R = ReasonCode
_REPOSITORY_REASONS = frozenset(
    {_R.TUF_EXPIRED, _R.TUF_ROLLBACK, _R.TUF_METADATA_INVALID, _R.TARGET_NOT_IN_TUF}
)


class AgentController:
    """Every device, network and runtime effect of an update (see core.Controller)."""

    def __init__(self, *, config: AgentConfig, identity: Identity, client: ServerClient, tuf: TufClient,
                 slots: Slots, outbox: Outbox, state: StateFile, profile: Callable[[], HardwareProfile],
                 director_key: DirectorKey, perception: Perception | None = None,
                 pool: urllib3.PoolManager | None = None) -> None:
        self.config, self.identity, self.client, self.tuf = config, identity, client, tuf
        self.slots, self.outbox, self.state = slots, outbox, state
        self._detect_profile = profile
        self._profile: HardwareProfile | None = None
        self.director_key = director_key
        self.perception = perception
        self.pool = pool or urllib3.PoolManager(num_pools=4, maxsize=4)
        self.paths = config.paths
        self.prepared: dict[str, GateResult] = {}  # slot dir → child-process gate result
        self._shadowed: str | None = None  # slot whose shadow run passed in this process
        self._claimed: dict[str, Any] = {}
        # set by the daemon's signal handler: long waits end early with StopRequested
        self.stop_requested: threading.Event | None = None

    @property
    def profile(self) -> HardwareProfile:
        """This device's hardware profile, detected on first use (it imports ONNX Runtime)."""
        if self._profile is None:
            self._profile = self._detect_profile()
        return self._profile

    # ------------------------------------------------------------------ checking
    def check(self) -> Update | None:
        st = self.state.load()
        if not st.nonce:
            st = replace(st, nonce=secrets.token_hex(16))
            self.state.save(st)
        try:
            polled = self.client.assignment(self.identity.device_id, st.nonce, etag=st.etag)
        except ServerUnreachable as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"server unreachable: {e}") from e
        except ServerError as e:
            raise TransientError(_R.DOWNLOAD_FAILED, f"assignment poll refused: {e}") from e
        if polled.envelope is None:
            return None
        try:
            return self._accept(st, polled.envelope, polled.etag)
        except FatalError as e:
            self._claimed = e.claimed or claimed_of(polled.envelope)
            refused = f"{_digest(polled.envelope)}:{e.reason.value}"
            # a repository-side refusal may heal (re-signed timestamp, late publish): re-check each poll
            etag = None if e.reason in _REPOSITORY_REASONS else polled.etag
            self.state.save(replace(self.state.load(), etag=etag, refused=refused))
            if st.refused == refused:
                log.info("same refused assignment again (%s); not reporting twice", e.reason.value)
                return None
            # nothing was installed, but `status` must still say what was refused and why
            st = self.state.load()
            last = _last_update(st, release=self._claimed.get("release"), name=None, version=None,
                                state=State.REFUSED, outcome=Outcome(e.reason, e.detail))
            self.state.save(replace(st, last_update=last))
            raise

    def _accept(self, st: AgentState, envelope: Any, etag: str | None) -> Update | None:
        a = verify_assignment(envelope, key=self.director_key, device_id=self.identity.device_id, nonce=st.nonce,
                              now=datetime.now(timezone.utc), highest_release=st.highest_release,
                              running=self._running_target(st))
        if a.target is None or a.manifest is None or a.release is None:
            self.state.save(replace(st, etag=etag))
            return None
        key = f"{a.release}:{a.target.sha256}"
        if key in st.settled:
            log.debug("release %s already %s; nothing to do", a.release, st.settled[key])
            self.state.save(replace(st, etag=etag))
            return None
        self._match_tuf(a)
        self.state.save(replace(st, nonce=secrets.token_hex(16), etag=None, highest_release=a.release, refused=None))
        return Update(release=a.release, name=a.name or "", version=a.version or "", rollout_id=a.rollout_id,
                      variant=a.variant or "", manifest=a.manifest, target=a.target, gates=dict(a.gates),
                      previous_slot=self.slots.active_slot(),
                      alternates=tuple(VariantTarget(t.variant, t.ref) for t in a.alternates))

    def _match_tuf(self, a: Assignment) -> None:
        """Every file the assignment names — manifest, primary, each alternate — must be exactly its TUF
        target (no mix-and-match) before a byte of any is downloaded; raises FatalError with the reason."""
        assert a.manifest is not None  # verify_assignment requires one beside a target
        checks: list[tuple[TargetRef, Mapping[str, str], Mapping[str, Any] | None, str | None]] = [
            (a.manifest, a.manifest_hashes, None, None)]
        checks += [(t.ref, t.hashes, t.custom, t.variant) for t in a.targets()]
        found = self.tuf.lookup([ref.path for ref, *_ in checks])
        claimed = {"rollout_id": a.rollout_id, "release": a.release}
        for ref, hashes, custom, variant in checks:
            info = found.get(ref.path)
            if info is None:
                raise FatalError(_R.TARGET_NOT_IN_TUF, f"{ref.path} is not a target of the image repository", claimed=claimed)
            try:
                match_target(ref, hashes, tuf_length=info.length, tuf_hashes=info.hashes, tuf_custom=info.custom,
                             custom=custom, release=a, variant=variant)
            except FatalError as e:
                raise FatalError(e.reason, e.detail, claimed=claimed) from e

    # ------------------------------------------------------------------ files
    def _running_target(self, st: AgentState) -> tuple[int, str] | None:
        slot = self.slots.active_slot()
        release = ((st.last_update or {}).get("slots") or {}).get(slot) if slot else None
        variant = variant_in(self.slots.path(slot)) if slot else None
        manifest = self.slots.manifest(slot)
        if release is None or variant is None or manifest is None:
            return None
        return int(release), manifest.variant(variant).sha256  # the file it serves, whichever variant won

    def _part(self, sha256: str) -> Path:
        return self.paths.downloads / f"{sha256}.part"

    def download(self, update: Update) -> None:
        policy = DownloadPolicy(chunk_bytes=self.config.chunk_bytes, min_rate_bps=self.config.min_rate_bps,
                                rate_window_s=self.config.rate_window_s, timeout_s=self.config.http_timeout_s,
                                free_space_margin_bytes=self.config.free_space_margin_bytes)
        for ref in _files(update):
            url = target_url(self.identity.targets_url, ref.path, ref.sha256)
            bar = _progress_bar(ref.path, ref.length)
            try:
                fetch(self.pool, url, self._part(ref.sha256), length=ref.length, policy=policy,
                      on_progress=self._download_hook(bar))
            finally:
                if bar is not None:
                    bar.close()

    def _download_hook(self, bar: Any) -> Any:
        limit = self.config.pause.download_bytes
        stop = self.stop_requested
        if limit is None and bar is None and stop is None:
            return None

        def hook(total: int) -> None:
            if stop is not None and stop.is_set():
                # the .part file stays: the next start resumes the download where it stopped
                raise StopRequested(f"stop requested during the download, at byte {total}")
            if bar is not None:
                bar.update(total - bar.n)
            if limit is not None and total >= limit:
                self._pause(f"download-{total}")

        return hook

    def verify(self, update: Update) -> None:
        for ref in _files(update):
            part = self._part(ref.sha256)
            try:
                verify_file(part, length=ref.length, sha256=ref.sha256)
            except FatalError:
                part.unlink(missing_ok=True)
                raise
        manifest = self._manifest(update)
        if (manifest.name, manifest.version) != (update.name, update.version):
            raise FatalError(_R.TARGET_MISMATCH, f"manifest is {manifest.name}@{manifest.version}, assigned {update.label}")
        for vt in update.variant_targets():
            try:
                variant = manifest.variant(vt.variant)
            except BundleError as e:
                raise FatalError(_R.BUNDLE_INVALID, str(e)) from e
            if (variant.sha256, variant.size) != (vt.target.sha256, vt.target.length):
                raise FatalError(_R.TARGET_MISMATCH, f"manifest variant {variant.id} is not the assigned target file")
        ok, why = can_run(manifest.variant(update.variant), self.profile)
        if not ok:
            raise FatalError(_R.INCOMPATIBLE_HARDWARE, f"variant {update.variant}: {why}")

    def _stageable(self, update: Update, manifest: Manifest) -> list[str]:
        """The assigned variant, then each alternate this device can run (the device has the last word)."""
        ids = [update.variant]
        for alt in update.alternates:
            ok, why = can_run(manifest.variant(alt.variant), self.profile)
            if ok:
                ids.append(alt.variant)
            else:
                log.info("alternate %s of %s is left out: %s", alt.variant, update.label, why)
        return ids

    def _manifest(self, update: Update) -> Manifest:
        try:
            return load_manifest(self._part(update.manifest.sha256).read_bytes())
        except BundleError as e:
            raise FatalError(_R.BUNDLE_INVALID, f"manifest of {update.label}: {e}") from e

    def stage(self, update: Update) -> Update:
        manifest = self._manifest(update)
        slot = self.slots.inactive_slot()
        ids = self._stageable(update, manifest)
        targets = {vt.variant: vt.target for vt in update.variant_targets()}
        files = {"bundle.json": self._part(update.manifest.sha256)}
        files.update({manifest.variant(vid).file: self._part(targets[vid].sha256) for vid in ids})
        self.slots.stage(slot, files, variant_id=update.variant, alternates=ids[1:])
        self._set_slot_release(slot, update.release)
        return replace(update, slot=slot)

    # ------------------------------------------------------------------ gates
    def gates(self, update: Update) -> Gates:
        try:
            return self._manifest(update).gates.with_overrides(update.gates)
        except BundleError as e:
            raise FatalError(_R.BUNDLE_INVALID, f"gates of {update.label}: {e}") from e

    def _slot_dir(self, update: Update) -> Path:
        if update.slot is None:
            raise FatalError(_R.BUNDLE_INVALID, f"{update.label} has no staged slot")
        return self.slots.path(update.slot)

    def prepare(self, update: Update) -> GateResult:
        """The child-process gate over every variant staged in the slot; records the variant it chose."""
        manifest = self._manifest(update)
        slot_dir = self._slot_dir(update)
        staged = [vt.variant for vt in update.variant_targets() if _variant_file_in(manifest, vt.variant, slot_dir)]
        if not self.profile.tensorrt_version and any(manifest.variant(v).requires.build_on_device for v in staged):
            log.info("TensorRT is absent: no on-device engine build; ONNX Runtime runs the build-on-device variants")
        entry = manifest.selection.get(hardware_class(self.profile))
        result = self.run_gate(slot_dir, self.gates(update), staged,
                               min_speedup=entry.min_speedup if entry is not None else SelectionEntry.min_speedup)
        chosen = result.evidence.get("variant")
        if result.passed and isinstance(chosen, str) and update.slot is not None:
            self.slots.choose(update.slot, chosen)
        return result

    def run_gate(self, slot_dir: Path, gates: Gates, variants: Sequence[str], *,
                 min_speedup: float = SelectionEntry.min_speedup) -> GateResult:
        """Run the child-process gate over ``variants`` (selection order) of a staged slot."""
        c = self.config
        limits = PrepareLimits(timeout_s=c.prepare_timeout_s, cpu_s=c.prepare_cpu_limit_s,
                               memory_mb=c.prepare_memory_limit_mb, frames=c.sample_frames,
                               queries=c.bench_queries, duration_s=c.bench_duration_s)
        trt = self.profile.tensorrt_version is not None
        result = check_in_child(slot_dir, variants, gates, limits, min_speedup=min_speedup,
                                engines_dir=self.paths.engines if trt else None, profile=self.profile if trt else None,
                                engine=EngineOptions.of(c), stop=self.stop_requested)
        log.info("prepare gate for %s: %s %s", slot_dir.name,
                 "passed" if result.passed else (result.reason_code.value if result.reason_code else None),
                 result.detail)
        self.prepared[str(slot_dir)] = result
        return result

    def cached_gate(self, slot_dir: Path, gates: Gates) -> GateResult:
        """HeadlessPerception's shadow: the child-process result (after a restart, re-run on the
        variant the slot records: the choice was made before the restart)."""
        cached = self.prepared.get(str(slot_dir))
        if cached is not None:
            return cached
        variant = variant_in(slot_dir)
        if variant is None:
            return GateResult(False, _R.BUNDLE_INVALID, f"{slot_dir} holds no bundle")
        return self.run_gate(slot_dir, gates, [variant])

    def open_model(self, slot_dir: Path, variant_id: str | None) -> Model:
        """A slot's variant opened in this process as it serves here (:func:`edge_agent.runtimes.open_staged`)."""
        return open_staged(slot_dir, variant_id, engines_dir=self.paths.engines, profile=self.profile, threads=1,
                           engine=EngineOptions.of(self.config))

    @staticmethod
    def variant_of(bundle_dir: Path) -> str | None:
        """The variant a slot serves (:func:`edge_agent.slots.variant_in`)."""
        return variant_in(bundle_dir)

    def _perception(self) -> Perception:
        if self.perception is None:
            raise FatalError(_R.MODEL_LOAD_FAILED, "no perception path configured")
        return self.perception

    def benchmark(self, update: Update) -> GateResult:
        perception = self._perception()
        slot_dir, gates = self._slot_dir(update), self.gates(update)
        if perception.active_version() is None:
            # the first model on this device: nothing serves yet to shadow it against,
            # so the child-process gate decides alone
            log.info("no model serving yet: %s is judged by its child-process gate only", update.label)
            result = self.cached_gate(slot_dir, gates)
        else:
            context = self.gate_context(update, gates)
            log.info("agreement of %s judged against %s (%s): %s", update.label, context.baseline,
                     context.judged_against.value, context.why)
            try:
                result = perception.shadow(slot_dir, gates, timeout_s=self.config.shadow_timeout_s, context=context)
            except StopRequested:
                raise  # not a verdict: the journal stays at this step and the next start repeats it
            except EdgeAgentError as e:
                result = GateResult(False, _R.MODEL_LOAD_FAILED, f"shadow run failed: {e}")
            # one evidence object for the report: the child gate's variant choice and timing, then the shadow's
            prepared = self.prepared.get(str(slot_dir))
            if prepared is not None:
                result = replace(result, evidence={**prepared.evidence, **result.evidence})
        self._shadowed = update.slot if result.passed else None
        return result

    def gate_context(self, update: Update, gates: Gates) -> GateContext:
        """What the shadow run compares the candidate with: the expectation for the release this
        device runs (its active slot's release and the file it serves), else the bundle's own FP32,
        else the floor ``min_agreement`` (:func:`edge_agent.agreement.choose_context`)."""
        slot_dir = self._slot_dir(update)
        candidate = self._manifest(update)
        prepared = self.prepared.get(str(slot_dir))
        chosen = prepared.evidence.get("variant") if prepared is not None else None
        # after a restart the gate's choice is read back from the slot
        candidate_variant = chosen if isinstance(chosen, str) else (variant_in(slot_dir) or update.variant)
        active = self.slots.active_slot()
        running = self.slots.manifest(active)
        if active is None or running is None:
            return GateContext.floor(gates, why="no active slot to read the running release from")
        return choose_context(
            candidate, candidate_variant, running=running, running_variant=self.variant_of(self.slots.path(active)),
            in_slot=lambda v: _variant_file_in(candidate, v, slot_dir), gates=gates)

    def swap(self, update: Update) -> None:
        assert update.slot is not None  # staged before swapping
        if self.slots.active_slot() == update.slot:
            log.info("slot %s is already active (resumed after the switch)", update.slot)
            return
        if self._shadowed != update.slot:  # resumed: the perception path has not seen the candidate
            result = self.benchmark(update)
            if not result.passed:
                assert result.reason_code is not None  # a failed GateResult always carries its reason
                raise FatalError(result.reason_code, result.detail)
        perception = self._perception()
        first = perception.active_version() is None
        self.slots.switch(update.slot)
        try:
            if first:
                perception.start(self.slots.path(update.slot))
                return
            swapped = perception.swap()
        except EdgeAgentError as e:
            raise FatalError(_R.HEALTH_REGRESSION, f"hot swap failed: {e}") from e
        if not swapped.ok:
            raise FatalError(_R.HEALTH_REGRESSION, f"hot swap failed: {swapped.detail}")
        log.info("swapped to %s in %.1f ms, %d frames dropped", update.label, swapped.swap_ms,
                 swapped.frames_dropped)

    def watch(self, update: Update) -> GateResult:
        gates = self.gates(update)
        window = self.config.health_window_s if self.config.health_window_s is not None else gates.health_window_s
        try:
            return self._perception().watch(gates, window_s=window)
        except StopRequested:
            raise  # not a verdict: the journal stays at health-watch and the next start repeats it
        except EdgeAgentError as e:
            return GateResult(False, _R.HEALTH_REGRESSION, f"health watch failed: {e}")

    # ------------------------------------------------------------------ endings
    def _settle(self, update: Update, state: State, outcome: Outcome | None = None) -> None:
        st = self.state.load()
        last = _last_update(st, release=update.release, name=update.name, version=update.version, state=state,
                            outcome=outcome)
        self.state.save(replace(st.with_settled(f"{update.release}:{update.target.sha256}", state.value),
                                last_update=last))
        for ref in _files(update):
            self._part(ref.sha256).unlink(missing_ok=True)
        self.slots.clean()
        self._prune_engines()

    def _prune_engines(self) -> None:
        """Drop the TensorRT engines of ONNX files neither slot holds any more."""
        keep = set()
        for slot in SLOT_NAMES:
            manifest = self.slots.manifest(slot)
            if manifest is not None:
                keep |= {v.sha256 for v in manifest.variants if (self.slots.path(slot) / v.file).is_file()}
        for gone in prune_engines(self.paths.engines, keep):
            log.info("removed the engine %s: no slot holds its ONNX", gone.name)

    def commit(self, update: Update) -> None:
        self._settle(update, State.COMMITTED)
        if self.perception is not None and self.perception.active_version() is None:
            active = self.slots.active_dir()
            if active is not None:
                self.perception.start(active)

    def roll_back(self, update: Update, outcome: Outcome) -> None:
        previous = update.previous_slot
        if previous and (self.slots.path(previous) / "bundle.json").is_file():
            if self.slots.active_slot() != previous:
                self.slots.switch(previous)
                if self.perception is not None:
                    back = self.perception.swap_back(self.slots.path(previous))
                    if not back.ok:  # the slot is restored; serve it from scratch
                        log.error("swap back failed (%s); restarting perception on slot %s", back.detail, previous)
                        self.perception.stop()
                        self.perception.start(self.slots.path(previous))
        elif self.slots.active_slot() == update.slot:
            self.slots.current_link.unlink(missing_ok=True)  # first install failed: run nothing rather than it
            if self.perception is not None:
                self.perception.stop()
        self._settle(update, State.ROLLED_BACK, outcome)

    def abandon(self, update: Update, state: State, outcome: Outcome) -> None:
        if update.slot and update.slot != self.slots.active_slot():
            shutil.rmtree(self.slots.path(update.slot), ignore_errors=True)
        self._settle(update, state, outcome)

    # ------------------------------------------------------------------ telemetry and hooks
    def _set_slot_release(self, slot: str, release: int) -> None:
        st = self.state.load()
        last = dict(st.last_update or {})
        last["slots"] = {**dict(last.get("slots", {})), slot: release}
        self.state.save(replace(st, last_update=last))

    def running(self) -> dict[str, Any] | None:
        slot = self.slots.active_slot()
        manifest = self.slots.manifest(slot)
        if manifest is None or slot is None:
            return None
        release = ((self.state.load().last_update or {}).get("slots") or {}).get(slot)
        return {"name": manifest.name, "version": manifest.version, "release": release,
                "variant": variant_in(self.slots.path(slot))}

    def report(self, state: State, update: Update | None, outcome: Outcome) -> None:
        claimed: dict[str, Any] = (
            self._claimed if update is None else {"rollout_id": update.rollout_id, "release": update.release}
        )
        types = ("gate", "transition") if outcome.metrics or outcome.evidence else ("transition",)
        running = self.running()
        chosen = outcome.evidence.get("variant")  # the variant the child-process gate chose to serve
        variant = chosen if isinstance(chosen, str) else None
        if variant is None and update is not None and update.slot is not None:
            variant = variant_in(self.slots.path(update.slot))  # recorded in the slot once it is staged
        for type_ in types:
            self.outbox.add(make_report(
                type_, state=state.value, rollout_id=claimed.get("rollout_id"), release=claimed.get("release"),
                reason_code=outcome.reason, detail=outcome.detail or None, metrics=outcome.metrics,
                running=running, variant=variant, gate=outcome.evidence or None))

    def pause_point(self, state: State) -> None:
        if self.config.pause.state == state.value:
            self._pause(state.value)

    def _pause(self, point: str) -> None:
        marker = self.paths.pause_marker_dir / point
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        log.warning("test hook: paused at %s (pid %d) until killed", point, os.getpid())
        while True:
            time.sleep(3600)


def _progress_bar(path: str, length: int) -> Any:
    """A tqdm bar for a download when someone watches a terminal (None otherwise, or without tqdm)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=length, unit="B", unit_scale=True, desc=path.rsplit("/", 1)[-1], leave=False)


def _files(update: Update) -> tuple[TargetRef, ...]:
    """Every file an update downloads: the manifest, the assigned variant, each alternate."""
    return (update.manifest, *(vt.target for vt in update.variant_targets()))


def _last_update(st: AgentState, *, release: int | None, name: str | None, version: str | None, state: State,
                 outcome: Outcome | None) -> dict[str, Any]:
    """The state file's ``last_update`` for ``status``: how the update ended, and why (reason code, detail)."""
    reason = outcome.reason.value if outcome is not None and outcome.reason is not None else None
    return {"release": release, "name": name, "version": version, "state": state.value, "reason": reason,
            "detail": (outcome.detail or None) if outcome is not None and reason else None, "time": utc_now_iso(),
            "slots": (st.last_update or {}).get("slots", {})}


def _variant_file_in(manifest: Manifest, variant_id: str, slot_dir: Path) -> bool:
    try:
        return (slot_dir / manifest.variant(variant_id).file).is_file()
    except BundleError:
        return False


def _digest(envelope: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(envelope, sort_keys=True).encode()).hexdigest()
