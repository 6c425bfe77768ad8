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
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import urllib3

from edge_agent.client import ServerClient
from edge_agent.config import AgentConfig
from edge_agent.core import Outcome, State, Update
from edge_agent.download import DownloadPolicy, fetch, verify_file
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
from edge_agent.perception import GateResult, Perception
from edge_agent.prepare import PrepareLimits, check_in_child
from edge_agent.slots import Slots, engine_cache_path
from edge_agent.telemetry import Outbox, make_report, utc_now_iso
from edge_agent.trust import DirectorKey, claimed_of, match_target, verify_assignment
from edge_agent.tuf_client import TufClient, target_url
from models.bundle import BundleError, Gates, Manifest, load_manifest, read_bundle
from models.hardware import HardwareProfile, can_run

__all__ = ["AgentController", "variant_in"]

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
        found = self.tuf.lookup([a.manifest.path, a.target.path])
        claimed = {"rollout_id": a.rollout_id, "release": a.release}
        for ref, hashes, custom in ((a.manifest, a.manifest_hashes, None), (a.target, a.target_hashes, a.custom)):
            info = found.get(ref.path)
            if info is None:
                raise FatalError(_R.TARGET_NOT_IN_TUF, f"{ref.path} is not a target of the image repository", claimed=claimed)
            try:
                match_target(ref, hashes, tuf_length=info.length, tuf_hashes=info.hashes, tuf_custom=info.custom,
                             custom=custom, release=a)
            except FatalError as e:
                raise FatalError(e.reason, e.detail, claimed=claimed) from e
        self.state.save(replace(st, nonce=secrets.token_hex(16), etag=None, highest_release=a.release, refused=None))
        return Update(release=a.release, name=a.name or "", version=a.version or "", rollout_id=a.rollout_id,
                      variant=a.variant or "", manifest=a.manifest, target=a.target, gates=dict(a.gates),
                      previous_slot=self.slots.active_slot())

    # ------------------------------------------------------------------ files
    def _running_target(self, st: AgentState) -> tuple[int, str] | None:
        slot = self.slots.active_slot()
        release = ((st.last_update or {}).get("slots") or {}).get(slot) if slot else None
        variant = variant_in(self.slots.path(slot)) if slot else None
        manifest = self.slots.manifest(slot)
        if release is None or variant is None or manifest is None:
            return None
        return int(release), manifest.variant(variant).sha256

    def _part(self, sha256: str) -> Path:
        return self.paths.downloads / f"{sha256}.part"

    def download(self, update: Update) -> None:
        policy = DownloadPolicy(chunk_bytes=self.config.chunk_bytes, min_rate_bps=self.config.min_rate_bps,
                                rate_window_s=self.config.rate_window_s, timeout_s=self.config.http_timeout_s,
                                free_space_margin_bytes=self.config.free_space_margin_bytes)
        for ref in (update.manifest, update.target):
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
        for ref in (update.manifest, update.target):
            part = self._part(ref.sha256)
            try:
                verify_file(part, length=ref.length, sha256=ref.sha256)
            except FatalError:
                part.unlink(missing_ok=True)
                raise
        manifest = self._manifest(update)
        try:
            variant = manifest.variant(update.variant)
        except BundleError as e:
            raise FatalError(_R.BUNDLE_INVALID, str(e)) from e
        if (variant.sha256, variant.size) != (update.target.sha256, update.target.length):
            raise FatalError(_R.TARGET_MISMATCH, f"manifest variant {variant.id} is not the assigned target file")
        if (manifest.name, manifest.version) != (update.name, update.version):
            raise FatalError(_R.TARGET_MISMATCH, f"manifest is {manifest.name}@{manifest.version}, assigned {update.label}")
        ok, why = can_run(variant, self.profile)
        if not ok:
            raise FatalError(_R.INCOMPATIBLE_HARDWARE, f"variant {variant.id}: {why}")

    def _manifest(self, update: Update) -> Manifest:
        try:
            return load_manifest(self._part(update.manifest.sha256).read_bytes())
        except BundleError as e:
            raise FatalError(_R.BUNDLE_INVALID, f"manifest of {update.label}: {e}") from e

    def stage(self, update: Update) -> Update:
        manifest = self._manifest(update)
        slot = self.slots.inactive_slot()
        files = {"bundle.json": self._part(update.manifest.sha256),
                 manifest.variant(update.variant).file: self._part(update.target.sha256)}
        self.slots.stage(slot, files, variant_id=update.variant)
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
        manifest = self._manifest(update)
        variant = manifest.variant(update.variant)
        engine_out = None
        if variant.requires.build_on_device:
            if self.profile.tensorrt_version:
                engine_out = engine_cache_path(self.paths.engines, onnx_sha256=variant.sha256,
                                               tensorrt_version=self.profile.tensorrt_version,
                                               gpu=self.profile.gpu_name or self.profile.compute_capability or "gpu")
            else:
                log.info("TensorRT is absent: skipping the on-device engine build of %s; ONNX Runtime runs it",
                         variant.id)
        return self.run_gate(self._slot_dir(update), self.gates(update), variant.id, engine_out=engine_out)

    def run_gate(self, slot_dir: Path, gates: Gates, variant_id: str, *, engine_out: Path | None = None) -> GateResult:
        c = self.config
        limits = PrepareLimits(timeout_s=c.prepare_timeout_s, cpu_s=c.prepare_cpu_limit_s,
                               memory_mb=c.prepare_memory_limit_mb, frames=c.sample_frames,
                               queries=c.bench_queries, duration_s=c.bench_duration_s)
        result = check_in_child(slot_dir, variant_id, gates, limits, engine_out=engine_out, stop=self.stop_requested)
        log.info("prepare gate for %s: %s %s", slot_dir.name, "passed" if result.passed else result.reason_code,
                 result.detail)
        self.prepared[str(slot_dir)] = result
        return result

    def cached_gate(self, slot_dir: Path, gates: Gates) -> GateResult:
        """HeadlessPerception's shadow: the child-process result (re-run after a restart)."""
        cached = self.prepared.get(str(slot_dir))
        if cached is not None:
            return cached
        variant = self.variant_of(slot_dir)
        if variant is None:
            return GateResult(False, "BUNDLE_INVALID", f"{slot_dir} holds no bundle")
        return self.run_gate(slot_dir, gates, variant)

    @staticmethod
    def variant_of(bundle_dir: Path) -> str | None:
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
            try:
                result = perception.shadow(slot_dir, gates, timeout_s=self.config.shadow_timeout_s)
            except StopRequested:
                raise  # not a verdict: the journal stays at this step and the next start repeats it
            except EdgeAgentError as e:
                result = GateResult(False, _R.MODEL_LOAD_FAILED.value, f"shadow run failed: {e}")
        self._shadowed = update.slot if result.passed else None
        return result

    def swap(self, update: Update) -> None:
        assert update.slot is not None  # staged before swapping
        if self.slots.active_slot() == update.slot:
            log.info("slot %s is already active (resumed after the switch)", update.slot)
            return
        if self._shadowed != update.slot:  # resumed: the perception path has not seen the candidate
            result = self.benchmark(update)
            if not result.passed:
                raise FatalError(ReasonCode.parse(result.reason_code) if result.reason_code else _R.LOW_AGREEMENT, result.detail)
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
            return GateResult(False, _R.HEALTH_REGRESSION.value, f"health watch failed: {e}")

    # ------------------------------------------------------------------ endings
    def _settle(self, update: Update, state: State, outcome: Outcome | None = None) -> None:
        st = self.state.load()
        last = _last_update(st, release=update.release, name=update.name, version=update.version, state=state,
                            outcome=outcome)
        self.state.save(replace(st.with_settled(f"{update.release}:{update.target.sha256}", state.value),
                                last_update=last))
        for ref in (update.manifest, update.target):
            self._part(ref.sha256).unlink(missing_ok=True)
        self.slots.clean()

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
        return {"name": manifest.name, "version": manifest.version, "release": release}

    def report(self, state: State, update: Update | None, outcome: Outcome) -> None:
        claimed: dict[str, Any] = (
            self._claimed if update is None else {"rollout_id": update.rollout_id, "release": update.release}
        )
        types = ("gate", "transition") if outcome.metrics else ("transition",)
        running = self.running()
        for type_ in types:
            self.outbox.add(make_report(
                type_, state=state.value, rollout_id=claimed.get("rollout_id"), release=claimed.get("release"),
                reason_code=outcome.reason.value if outcome.reason else None, detail=outcome.detail or None,
                metrics=outcome.metrics, running=running))

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


def _last_update(st: AgentState, *, release: int | None, name: str | None, version: str | None, state: State,
                 outcome: Outcome | None) -> dict[str, Any]:
    """The state file's ``last_update`` for ``status``: how the update ended, and why (reason code, detail)."""
    reason = outcome.reason.value if outcome is not None and outcome.reason is not None else None
    return {"release": release, "name": name, "version": version, "state": state.value, "reason": reason,
            "detail": (outcome.detail or None) if outcome is not None and reason else None, "time": utc_now_iso(),
            "slots": (st.last_update or {}).get("slots", {})}


def variant_in(bundle_dir: Path) -> str | None:
    """The variant whose file a slot holds (a slot holds one variant of its bundle)."""
    try:
        manifest = read_bundle(bundle_dir, verify=False)
    except BundleError:
        return None
    return next((v.id for v in manifest.variants if (bundle_dir / v.file).is_file()), None)


def _digest(envelope: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(envelope, sort_keys=True).encode()).hexdigest()
