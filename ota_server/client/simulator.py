"""The fleet simulator's engine: thousands of lightweight devices against a real OTA server.

Each simulated device makes its own Ed25519 key, enrolls with an enrollment
credential (which binds its group and tags), polls the
director for its signed assignment (one nonce kept until an assignment is
accepted, ``If-None-Match`` with the last ETag, so unchanged polls are cheap
304s), verifies the assignment's Ed25519 signature, device id and nonce,
optionally downloads the assigned target from the TUF targets and checks its
length and sha256, and reports ``committed`` or ``failed`` with a reason code
at configurable rates, each report signed with its key and naming the digest of
the assignment it acted on (docs/contracts.md §7–§8). Every request goes through
:class:`~ota_server.client.api.OtaClient`.

Devices are plain records on per-thread schedules; a small pool of worker
threads shares one keep-alive connection pool. They are not agents: no TUF
metadata refresh, no model, no camera — the real agent does those. The simulator
decides nothing about rollouts either; the server stages, advances and halts
them, and :class:`~ota_server.client.watch.RolloutWatcher` only records what it did
and when. The command line is :mod:`ota_server.client.simulate` (``edge-fleet-sim``).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from tqdm import tqdm

from models.bundle import canonical_json
from models.device_reports import assignment_digest, sign_report
from ota_server.client.api import OtaClient
from ota_server.client.errors import ClientError, Refused
from ota_server.client.schema import (
    AssignmentBody,
    AssignmentPoll,
    Report,
    ReportsResult,
    RolloutRequest,
    SignedAssignment,
)
from ota_server.client.watch import RolloutWatcher, stage_metrics

__all__ = [
    "PROFILES",
    "DeviceApi",
    "SimConfig",
    "SimDevice",
    "SimStats",
    "Simulator",
    "build_devices",
    "enroll_all",
    "fleet_client",
    "run_rollout",
    "simulate",
    "summarize",
    "verify_assignment",
]

log = logging.getLogger("fleet_sim")

# Hardware profiles (docs/contracts.md §6) for the simulated hardware classes.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu-x86_64": {
        "arch": "x86_64",
        "accelerator": "cpu",
        "cpu_features": ["avx2"],
        "execution_providers": ["CPUExecutionProvider"],
        "cpu_count": 4,
        "memory_mb": 8000,
    },
    "cpu-aarch64": {
        "arch": "aarch64",
        "accelerator": "cpu",
        "cpu_features": ["asimd"],
        "execution_providers": ["CPUExecutionProvider"],
        "cpu_count": 4,
        "memory_mb": 4000,
    },
    "cuda": {
        "arch": "x86_64",
        "accelerator": "cuda",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "cuda_version": "12.4",
        "cpu_features": ["avx2"],
        "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "cpu_count": 8,
        "memory_mb": 32000,
    },
    "jetson-orin": {
        "arch": "aarch64",
        "accelerator": "jetson",
        "board": "NVIDIA Jetson AGX Orin",
        "compute_capability": "8.7",
        "jetpack_version": "6.1",
        "cuda_version": "12.6",
        "execution_providers": ["CPUExecutionProvider"],
        "cpu_features": ["asimd"],
        "cpu_count": 12,
        "memory_mb": 32000,
    },
}


class DeviceApi(Protocol):
    """The device side of the API, as the simulator uses it: :class:`OtaClient`, or a fake in tests."""

    def assignment(self, device_id: str, *, token: str, nonce: str, etag: str | None = None) -> AssignmentPoll: ...

    def post_reports(self, device_id: str, reports: Sequence[Report], *, token: str) -> ReportsResult: ...

    def download_target(self, path: str, sha256: str) -> bytes: ...


def verify_assignment(
    body: SignedAssignment | Mapping[str, Any], public_hex: str, *, device_id: str, nonce: str
) -> str | None:
    """Check signature, device id and nonce of a signed assignment; returns the problem (its
    reason code first) or None. Raises ``ImportError`` without the ``cryptography`` package."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    signed: Mapping[str, Any] = body.get("signed") or {}
    if signed.get("device_id") != device_id:
        return f"WRONG_DEVICE: assignment for {signed.get('device_id')!r}"
    if signed.get("nonce") != nonce:
        return "NONCE_MISMATCH"
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    for sig in body.get("signatures") or []:
        try:
            key.verify(bytes.fromhex(sig["sig"]), canonical_json(signed))
            return None
        except (InvalidSignature, ValueError, KeyError):
            continue
    return "SIGNATURE_INVALID"


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Rates are probabilities per device and release."""

    server: str
    enroll_token: str
    api_token: str | None = None
    devices: int = 1000
    workers: int = 32  # threads; also the connection-pool size
    poll_interval_s: float = 2.0  # each device polls at most this often
    apply_delay_s: float = 1.0  # simulated download→shadow→swap time before the final report
    download: bool = True  # fetch the assigned target bytes and check length + sha256
    verify: bool = True  # check the assignment's signature, device id and nonce
    etag: bool = True  # keep the nonce and send If-None-Match; False = a fresh signed answer per poll
    failure_rate: float = 0.0
    version_failure_rates: dict[str, float] = field(default_factory=dict)  # "1.2.0" -> 1.0
    failure_reason: str = "LOW_AGREEMENT"
    hardware_mix: dict[str, float] = field(default_factory=lambda: {"cpu-x86_64": 1.0})
    group: str = "default"
    name_prefix: str = "sim"
    seed: int = 0
    duration_s: float = 300.0  # hard stop
    rollout_id: str | None = None  # watch this rollout; stop when it ends
    watch_interval_s: float = 0.5  # GET /rollouts/<id> period, on a connection of its own
    enroll_workers: int = 8


@dataclass
class SimDevice:
    index: int
    name: str
    hardware: str
    device_id: str = ""
    token: str = ""
    director_key: str = ""  # hex Ed25519 public key
    key: Any = None  # the device's own Ed25519 private key: signs its reports
    nonce: str = ""
    etag: str | None = None
    release: int = 0
    version: str | None = None
    model: str | None = None
    handled: set[int] = field(default_factory=set)  # release counters already acted on
    pending: AssignmentBody | None = None  # accepted assignment waiting for its final report


class SimStats:
    """Thread-safe counters and poll latencies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.poll_ms: list[float] = []

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def poll(self, status: int, ms: float) -> None:
        with self._lock:
            self.counts["polls"] += 1
            self.counts[f"poll_{status}"] += 1
            if len(self.poll_ms) < 200_000:
                self.poll_ms.append(ms)

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of the counters (the rollout watcher records one per stage change)."""
        with self._lock:
            return dict(self.counts)


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_devices(cfg: SimConfig) -> list[SimDevice]:
    """Deterministic device names and a hardware class drawn from the mix."""
    rng = random.Random(cfg.seed)
    classes = list(cfg.hardware_mix)
    weights = [cfg.hardware_mix[c] for c in classes]
    return [
        SimDevice(index=i, name=f"{cfg.name_prefix}-{i:05d}", hardware=rng.choices(classes, weights)[0])
        for i in range(cfg.devices)
    ]


def fleet_client(cfg: SimConfig) -> OtaClient:
    """The simulated fleet's shared client: one pooled connection per worker thread (a thread
    waits for a free one), the API token for the rollout calls."""
    return OtaClient(
        cfg.server,
        cfg.api_token,
        pool_size=max(cfg.workers, cfg.enroll_workers),
        pool_block=True,
        timeout_s=30.0,
        connect_timeout_s=5.0,
    )


def enroll_all(client: OtaClient, cfg: SimConfig, devices: list[SimDevice]) -> None:
    """Enroll every device (a thread pool; tqdm shows progress). Raises
    :class:`~ota_server.client.errors.ClientError` when an enrollment fails."""

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from models.device_reports import public_key_hex

    def enroll(dev: SimDevice) -> None:
        dev.key = Ed25519PrivateKey.generate()
        data = client.enroll(
            cfg.enroll_token,
            name=dev.name,
            group=cfg.group,  # the credential must bind it (and binds the tags)
            hardware=PROFILES[dev.hardware],
            public_key=public_key_hex(dev.key),
        )
        dev.device_id = data["device_id"]
        dev.token = data["device_token"]
        dev.director_key = data["director_public_key"]["keyval"]["public"]
        dev.nonce = uuid.uuid4().hex

    with (
        ThreadPoolExecutor(cfg.enroll_workers) as pool,
        tqdm(total=len(devices), desc="enroll", unit="dev", file=sys.stderr, disable=len(devices) < 50) as bar,
    ):
        for _ in pool.map(enroll, devices):
            bar.update()


class Simulator:
    """Runs the polling/reporting loop of all devices until the rollout ends or time is up."""

    def __init__(self, cfg: SimConfig, client: DeviceApi, devices: list[SimDevice]) -> None:
        self.cfg = cfg
        self.client = client
        self.devices = devices
        self.stats = SimStats()
        self.stop = threading.Event()

    def outcome(self, dev: SimDevice, counter: int, version: str) -> str | None:
        """Reason code of a failure, or None for success (deterministic per device + release)."""
        rate = self.cfg.version_failure_rates.get(version, self.cfg.failure_rate)
        rng = random.Random(f"{self.cfg.seed}/{dev.index}/{counter}")
        return self.cfg.failure_reason if rng.random() < rate else None

    def report(
        self,
        dev: SimDevice,
        state: str,
        assignment: AssignmentBody,
        *,
        reason: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        rel = assignment.get("release")
        running: dict[str, Any] | None = (
            {"name": dev.model, "version": dev.version, "release": dev.release} if dev.version else None
        )
        report: Report = {
            "id": str(uuid.uuid4()),
            "time": _now_iso(),
            "type": "transition",
            "state": state,
            "rollout_id": assignment.get("rollout_id"),
            "release": rel["counter"] if rel else None,
            "reason_code": reason,
            "detail": f"simulated {state}" + (f": {reason}" if reason else ""),
            "metrics": metrics or {},
            "running": running,
            "assignment_digest": assignment_digest(assignment),
        }
        if dev.key is not None:  # signed like an agent's: unsigned reports are refused
            report["signature"] = sign_report(dev.key, dev.device_id, report)["signature"]
        self.client.post_reports(dev.device_id, [report], token=dev.token)
        self.stats.add("reports")

    def poll(self, dev: SimDevice) -> None:
        t0 = time.perf_counter()
        if not self.cfg.etag:
            dev.nonce, dev.etag = uuid.uuid4().hex, None
        status, etag, body = self.client.assignment(dev.device_id, token=dev.token, nonce=dev.nonce, etag=dev.etag)
        self.stats.poll(status, (time.perf_counter() - t0) * 1000)
        if status == 304 or body is None:
            return
        dev.etag = etag
        signed = body["signed"]
        if self.cfg.verify:
            problem = verify_assignment(body, dev.director_key, device_id=dev.device_id, nonce=dev.nonce)
            if problem:
                self.stats.add("assignments_rejected")
                log.warning("%s: assignment rejected: %s", dev.name, problem)
                return
        target, rel = signed.get("target"), signed.get("release")
        if not target or not rel or rel["counter"] in dev.handled or rel["counter"] <= dev.release:
            return
        dev.handled.add(rel["counter"])
        self.stats.add("assignments_accepted")
        self.report(dev, "downloading", signed)
        if self.cfg.download:
            data = self.client.download_target(target["path"], target["hashes"]["sha256"])
            self.stats.add("bytes_downloaded", len(data))
            if len(data) != target["length"] or hashlib.sha256(data).hexdigest() != target["hashes"]["sha256"]:
                self.finish(dev, signed, reason="HASH_MISMATCH")
                return
        dev.pending = signed

    def finish(self, dev: SimDevice, signed: AssignmentBody, *, reason: str | None = None) -> None:
        rel = signed["release"]
        if rel is None:  # poll() keeps only assignments of a release
            raise ValueError(f"{dev.name}: an assignment without a release has nothing to finish")
        reason = reason or self.outcome(dev, rel["counter"], rel["version"])
        rng = random.Random(f"m/{dev.index}/{rel['counter']}")
        metrics = {
            "p95_ms": round(rng.uniform(6, 12), 2),
            "fps": round(rng.uniform(25, 30), 1),
            "agreement": round(rng.uniform(0.95, 1.0), 3),
        }
        if reason:
            metrics["agreement"] = round(rng.uniform(0.05, 0.3), 3) if reason == "LOW_AGREEMENT" else 0.99
            self.report(dev, "failed", signed, reason=reason, metrics=metrics)
            self.stats.add("failed")
            self.stats.fail(reason)
        else:
            dev.release, dev.version, dev.model = rel["counter"], rel["version"], rel["name"]
            self.report(dev, "committed", signed, metrics=metrics)
            self.stats.add("committed")
            dev.nonce, dev.etag = uuid.uuid4().hex, None  # accepted: a fresh nonce for the next one
        dev.pending = None

    def step(self, dev: SimDevice) -> None:
        """One action for ``dev``: the final report of an accepted assignment, else a poll."""
        try:
            if dev.pending is not None:
                self.finish(dev, dev.pending)
            else:
                self.poll(dev)
        except ClientError as e:  # the device tries again at its next turn
            self.stats.add("errors")
            self.stats.fail(f"http:{e.status if isinstance(e, Refused) else 0}")
            log.debug("%s: %s", dev.name, e)

    def worker(self, mine: list[SimDevice], seed: int) -> None:
        """Drive ``mine`` over one pooled connection: due update steps first, then due polls.

        A device with an accepted assignment waits ``apply_delay_s`` before its final report; a
        device without one polls every ``poll_interval_s``. When the server cannot keep up, every
        poll is overdue; a single queue ordered by due time would then put a device's final
        report behind a whole round of other devices' polls, so a stage could only advance
        after a second sweep of the fleet. On a real fleet each device applies its update on
        its own hardware whatever the others do, so update steps have their own queue, served
        first, and only the polls compete for the connection.
        """
        rng = random.Random(seed)
        start = time.monotonic()
        polls = [(start + rng.uniform(0, self.cfg.poll_interval_s), d.index) for d in mine]
        heapq.heapify(polls)
        updates: list[tuple[float, int]] = []
        by_index = {d.index: d for d in mine}
        while not self.stop.is_set():  # every device sits in exactly one of the two queues
            now = time.monotonic()
            if updates and updates[0][0] <= now:
                queue = updates
            elif polls and polls[0][0] <= now:
                queue = polls
            else:
                if self.stop.wait(min(q[0][0] for q in (updates, polls) if q) - now):
                    break
                continue
            _, idx = heapq.heappop(queue)
            dev = by_index[idx]
            self.step(dev)
            jitter = rng.uniform(0.9, 1.1)
            if dev.pending is not None:
                heapq.heappush(updates, (time.monotonic() + self.cfg.apply_delay_s * jitter, idx))
            else:
                heapq.heappush(polls, (time.monotonic() + self.cfg.poll_interval_s * jitter, idx))

    def run(self, watcher: RolloutWatcher | None) -> float:
        """Run until the watched rollout ends or ``duration_s`` passes; returns seconds."""
        threads = [
            threading.Thread(target=self.worker, args=(self.devices[w :: self.cfg.workers], w), daemon=True)
            for w in range(min(self.cfg.workers, len(self.devices)))
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        deadline = t0 + self.cfg.duration_s
        bar = tqdm(total=len(self.devices), desc="rollout", unit="dev", file=sys.stderr, disable=len(self.devices) < 50)
        try:
            while time.monotonic() < deadline:
                if watcher is not None and watcher.finished.wait(0.5):
                    break
                if watcher is None:
                    time.sleep(0.5)
                c = self.stats.counts
                bar.n = min(len(self.devices), c["committed"] + c["failed"])
                status = watcher.final.get("status", "?") if watcher else "-"
                stage = watcher.final.get("stage", "?") if watcher else "-"
                bar.set_postfix_str(f"{status} stage {stage}, polls {c['polls']}, errors {c['errors']}")
        finally:
            bar.close()
            self.stop.set()
            for t in threads:
                t.join(timeout=30)
        return time.monotonic() - t0


def summarize(sim: Simulator, elapsed_s: float, watcher: RolloutWatcher | None) -> dict[str, Any]:
    """The run's figures as one JSON-able dict."""
    s = sim.stats
    counts = s.snapshot()
    polls = counts.get("polls", 0)
    versions = Counter(d.version or "none" for d in sim.devices)
    out: dict[str, Any] = {
        "config": {k: v for k, v in asdict(sim.cfg).items() if "token" not in k},
        "elapsed_s": round(elapsed_s, 2),
        "counts": counts,
        "failures": dict(s.failures),
        "poll_throughput_rps": round(polls / elapsed_s, 1) if elapsed_s else 0.0,
        # what the fleet would send if every poll were answered at once; above the throughput
        # the server (or this simulator) is the bottleneck and polls come less often
        "offered_poll_rps": round(len(sim.devices) / sim.cfg.poll_interval_s, 1),
        "poll_ms": {
            "p50": round(_percentile(s.poll_ms, 0.50), 2),
            "p95": round(_percentile(s.poll_ms, 0.95), 2),
            "p99": round(_percentile(s.poll_ms, 0.99), 2),
        },
        "versions": dict(versions),
    }
    if watcher is not None:
        out["rollout"] = watcher.final
        out["timeline"] = watcher.timeline
        out["stages"] = stage_metrics(
            watcher.timeline, watcher.final, end={"t": round(watcher.elapsed(), 2), "counts": counts}
        )
    return out


def run_rollout(
    cfg: SimConfig, client: OtaClient, devices: list[SimDevice], *, start_rollout: RolloutRequest | None = None
) -> dict[str, Any]:
    """Run enrolled ``devices`` until the (started or given) rollout ends or ``duration_s``
    passes; returns the summary (:func:`summarize`). ``client`` carries the API token that
    starts the rollout; raises :class:`~ota_server.client.errors.ClientError` when it cannot."""
    rollout_id = cfg.rollout_id
    if start_rollout is not None and cfg.api_token:
        rollout_id = client.create_rollout(start_rollout)["id"]
        log.info("started rollout %s", rollout_id)
    sim = Simulator(cfg, client, devices)
    watcher = None
    if rollout_id and cfg.api_token:
        watch_client = OtaClient(cfg.server, cfg.api_token, timeout_s=30.0, connect_timeout_s=5.0)
        watcher = RolloutWatcher(watch_client, rollout_id, interval_s=cfg.watch_interval_s, probe=sim.stats.snapshot)
        watcher.start()
    try:
        elapsed = sim.run(watcher)
    finally:
        if watcher is not None:
            watcher.close()
            watcher.client.close()
    return summarize(sim, elapsed, watcher)


def simulate(cfg: SimConfig, *, start_rollout: RolloutRequest | None = None) -> dict[str, Any]:
    """Enroll, optionally start a rollout, run the fleet until it ends; returns the summary.
    Raises :class:`~ota_server.client.errors.ClientError` when enrollment or the rollout's
    creation fails (a device's failed poll or report is counted, not raised)."""
    with fleet_client(cfg) as client:
        devices = build_devices(cfg)
        t0 = time.monotonic()
        enroll_all(client, cfg, devices)
        enroll_s = time.monotonic() - t0
        log.info("enrolled %d devices in %.1f s", len(devices), enroll_s)
        summary = run_rollout(cfg, client, devices, start_rollout=start_rollout)
    summary["enroll_s"] = round(enroll_s, 2)
    summary["enroll_rate"] = round(len(devices) / enroll_s, 1) if enroll_s else 0.0
    return summary
