"""Fleet simulation: thousands of lightweight devices against a real OTA server.

Each simulated device enrolls with a fleet enrollment token, polls the
director for its signed assignment (one nonce kept until an assignment is
accepted, ``If-None-Match`` with the last ETag, so unchanged polls are cheap
304s), verifies the assignment's Ed25519 signature, device id and nonce,
optionally downloads the assigned target from the TUF targets and checks its
length and sha256, and reports ``committed`` or ``failed`` with a reason code
at configurable rates (docs/contracts.md §7–§8).

Devices are plain records on per-thread schedules; a small pool of worker
threads shares one keep-alive connection pool. They are not agents: no TUF
metadata refresh, no model, no camera — the real agent does those. This script
decides nothing about rollouts either; the server stages, advances and halts
them, and the watcher here only records what it did and when.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.fleet_http import (
    ApiError,
    DeviceApi,
    FleetClient,
    RolloutWatcher,
    format_stage_table,
    stage_metrics,
    verify_assignment,
)

log = logging.getLogger("fleet_sim")

GATE_REASONS = ("LOW_AGREEMENT", "LATENCY_OVER_BUDGET", "NAN_OUTPUT", "HEALTH_REGRESSION")

# Hardware profiles (docs/contracts.md §6) for the simulated hardware classes.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu-x86_64": {"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2"],
                   "execution_providers": ["CPUExecutionProvider"], "cpu_count": 4, "memory_mb": 8000},
    "cpu-aarch64": {"arch": "aarch64", "accelerator": "cpu", "cpu_features": ["asimd"],
                    "execution_providers": ["CPUExecutionProvider"], "cpu_count": 4, "memory_mb": 4000},
    "cuda": {"arch": "x86_64", "accelerator": "cuda", "gpu_name": "NVIDIA L4", "compute_capability": "8.9",
             "cuda_version": "12.4", "cpu_features": ["avx2"],
             "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "cpu_count": 8, "memory_mb": 32000},
    "jetson-orin": {"arch": "aarch64", "accelerator": "jetson", "board": "NVIDIA Jetson AGX Orin",
                    "compute_capability": "8.7", "jetpack_version": "6.1", "cuda_version": "12.6",
                    "execution_providers": ["CPUExecutionProvider"], "cpu_features": ["asimd"],
                    "cpu_count": 12, "memory_mb": 32000},
}


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
    nonce: str = ""
    etag: str | None = None
    release: int = 0
    version: str | None = None
    model: str | None = None
    handled: set[int] = field(default_factory=set)  # release counters already acted on
    pending: dict[str, Any] | None = None  # accepted assignment waiting for its final report


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


def enroll_all(client: FleetClient, cfg: SimConfig, devices: list[SimDevice]) -> None:
    """Enroll every device (a thread pool; tqdm shows progress)."""
    from tqdm import tqdm

    def enroll(dev: SimDevice) -> None:
        body = {"name": dev.name, "group": cfg.group, "tags": ["sim", dev.hardware],
                "hardware": PROFILES[dev.hardware]}
        data = client.enroll(cfg.enroll_token, body)
        dev.device_id = data["device_id"]
        dev.token = data["device_token"]
        dev.director_key = data["director_public_key"]["keyval"]["public"]
        dev.nonce = uuid.uuid4().hex

    with ThreadPoolExecutor(cfg.enroll_workers) as pool, tqdm(
        total=len(devices), desc="enroll", unit="dev", file=sys.stderr, disable=len(devices) < 50
    ) as bar:
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

    def report(self, dev: SimDevice, state: str, assignment: dict[str, Any], *,
               reason: str | None = None, metrics: dict[str, float] | None = None) -> None:
        rel = assignment.get("release") or {}
        running = ({"name": dev.model, "version": dev.version, "release": dev.release}
                   if dev.version else None)
        report = {"id": str(uuid.uuid4()), "time": _now_iso(), "type": "transition", "state": state,
                  "rollout_id": assignment.get("rollout_id"), "release": rel.get("counter"),
                  "reason_code": reason, "detail": f"simulated {state}" + (f": {reason}" if reason else ""),
                  "metrics": metrics or {}, "running": running}
        self.client.post_reports(dev.device_id, dev.token, [report])
        self.stats.add("reports")

    def poll(self, dev: SimDevice) -> None:
        t0 = time.perf_counter()
        if not self.cfg.etag:
            dev.nonce, dev.etag = uuid.uuid4().hex, None
        status, etag, body = self.client.assignment(dev.device_id, dev.token, dev.nonce, dev.etag)
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

    def finish(self, dev: SimDevice, signed: dict[str, Any], *, reason: str | None = None) -> None:
        rel = signed["release"]
        reason = reason or self.outcome(dev, rel["counter"], rel["version"])
        rng = random.Random(f"m/{dev.index}/{rel['counter']}")
        metrics = {"p95_ms": round(rng.uniform(6, 12), 2), "fps": round(rng.uniform(25, 30), 1),
                   "agreement": round(rng.uniform(0.95, 1.0), 3)}
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
        except ApiError as e:  # the device tries again at its next turn
            self.stats.add("errors")
            self.stats.fail(f"http:{e.status}")
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
        from tqdm import tqdm

        t0 = time.monotonic()
        for t in threads:
            t.start()
        deadline = t0 + self.cfg.duration_s
        bar = tqdm(total=len(self.devices), desc="rollout", unit="dev", file=sys.stderr,
                   disable=len(self.devices) < 50)
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
        "poll_ms": {"p50": round(_percentile(s.poll_ms, 0.50), 2),
                    "p95": round(_percentile(s.poll_ms, 0.95), 2),
                    "p99": round(_percentile(s.poll_ms, 0.99), 2)},
        "versions": dict(versions),
    }
    if watcher is not None:
        out["rollout"] = watcher.final
        out["timeline"] = watcher.timeline
        out["stages"] = stage_metrics(watcher.timeline, watcher.final,
                                      end={"t": round(watcher.elapsed(), 2), "counts": counts})
    return out


def print_summary(summary: dict[str, Any]) -> None:
    c = summary["counts"]
    rows = [
        ("elapsed", f"{summary['elapsed_s']:.1f} s"),
        ("polls (200 / 304 / errors)", f"{c.get('polls', 0)} ({c.get('poll_200', 0)} / "
                                       f"{c.get('poll_304', 0)} / {c.get('errors', 0)})"),
        ("poll throughput", f"{summary['poll_throughput_rps']:.1f} req/s "
                            f"(offered {summary['offered_poll_rps']:.1f} req/s)"),
        ("poll latency p50 / p95 / p99", "{p50} / {p95} / {p99} ms".format(**summary["poll_ms"])),
        ("assignments accepted", str(c.get("assignments_accepted", 0))),
        ("committed / failed", f"{c.get('committed', 0)} / {c.get('failed', 0)}"),
        ("failure reasons", ", ".join(f"{k}={v}" for k, v in summary["failures"].items()) or "-"),
        ("devices per version", ", ".join(f"{k}={v}" for k, v in sorted(summary["versions"].items()))),
    ]
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    for event in summary.get("timeline", []):
        print(f"  t={event['t']:7.1f}s  {event['event']}")
    if summary.get("stages"):
        print(format_stage_table(summary["stages"]))


def _rates(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=RATE pairs like 1.2.0=1.0, got {part!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"rate for {key!r} must be a number, got {value!r}") from e
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet_sim.py",
        description="Simulate a fleet of lightweight devices against a real edgefleet OTA server: "
        "enroll, poll the director (nonce + ETag), download, report committed/failed; watch a "
        "staged rollout advance or halt. Exit code 0 when the watched rollout ended (or time ran "
        "out without one), 1 on a server error, 2 on bad arguments, 3 when the rollout did not end in time.",
    )
    p.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--enroll-token", required=True, help="fleet enrollment token (ef_enroll_...)")
    p.add_argument("--api-token", help="operator API token: needed for --rollout/--start-rollout")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--workers", type=int, default=32, help="worker threads = pooled connections")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between a device's polls")
    p.add_argument("--apply-delay", type=float, default=1.0, help="seconds from download to the final report")
    p.add_argument("--no-download", action="store_true", help="skip fetching the target bytes")
    p.add_argument("--no-verify", action="store_true", help="skip assignment signature checks")
    p.add_argument("--no-etag", action="store_true",
                   help="naive polling: a fresh nonce and no If-None-Match on every poll")
    p.add_argument("--failure-rate", type=float, default=0.0, help="failure probability per release")
    p.add_argument("--version-failure-rates", type=_rates, default={}, metavar="V=R,...",
                   help="per-version failure probability, e.g. 1.2.0=1.0")
    p.add_argument("--failure-reason", default="LOW_AGREEMENT", help="reason code of simulated failures")
    p.add_argument("--hardware-mix", type=_rates, default={"cpu-x86_64": 1.0}, metavar="CLASS=W,...",
                   help=f"hardware classes and weights; classes: {', '.join(PROFILES)}")
    p.add_argument("--group", default="default", help="device group to enroll into")
    p.add_argument("--name-prefix", default="sim", help="device name prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=300.0, help="hard stop in seconds")
    p.add_argument("--rollout", help="watch this rollout id and stop when it completes or halts")
    p.add_argument("--start-rollout", metavar="MODEL@VERSION", help="create a rollout after enrolling")
    p.add_argument("--stages", default="10,50,100", help="stages (percent) for --start-rollout")
    p.add_argument("--max-failure-rate", type=float, default=0.05, help="halt threshold for --start-rollout")
    p.add_argument("--success-quota", type=float, default=1.0,
                   help="share of a stage that must commit before --start-rollout's next stage")
    p.add_argument("--min-devices-for-halt", type=int, default=1,
                   help="finished devices before --start-rollout's failure rate may halt it")
    p.add_argument("--json-out", type=Path, help="write the summary JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    for cls in args.hardware_mix:
        if cls not in PROFILES:
            raise ValueError(f"--hardware-mix class must be one of {sorted(PROFILES)}, got {cls!r}")
    if args.devices < 1 or args.workers < 1:
        raise ValueError(f"--devices and --workers must be >= 1, got {args.devices} and {args.workers}")
    if (args.rollout or args.start_rollout) and not args.api_token:
        raise ValueError("--rollout/--start-rollout need --api-token (an operator token)")
    return SimConfig(
        server=args.server.rstrip("/"), enroll_token=args.enroll_token, api_token=args.api_token,
        devices=args.devices, workers=args.workers, poll_interval_s=args.poll_interval,
        apply_delay_s=args.apply_delay, download=not args.no_download, verify=not args.no_verify, etag=not args.no_etag,
        failure_rate=args.failure_rate, version_failure_rates=args.version_failure_rates,
        failure_reason=args.failure_reason, hardware_mix=args.hardware_mix, group=args.group,
        name_prefix=args.name_prefix, seed=args.seed, duration_s=args.duration, rollout_id=args.rollout,
    )


def run_rollout(cfg: SimConfig, client: FleetClient, devices: list[SimDevice], *,
                start_rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run enrolled ``devices`` until the (started or given) rollout ends; returns the summary."""
    rollout_id = cfg.rollout_id
    if start_rollout is not None and cfg.api_token:
        rollout_id = client.create_rollout(cfg.api_token, start_rollout)["id"]
        log.info("started rollout %s", rollout_id)
    sim = Simulator(cfg, client, devices)
    watcher = None
    if rollout_id and cfg.api_token:
        watcher = RolloutWatcher(FleetClient(cfg.server, pool_size=1), cfg.api_token, rollout_id,
                                 interval_s=cfg.watch_interval_s, probe=sim.stats.snapshot)
        watcher.start()
    try:
        elapsed = sim.run(watcher)
    finally:
        if watcher is not None:
            watcher.close()
    return summarize(sim, elapsed, watcher)


def simulate(cfg: SimConfig, *, start_rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Enroll, optionally start a rollout, run the fleet until it ends; returns the summary."""
    client = FleetClient(cfg.server, pool_size=max(cfg.workers, cfg.enroll_workers))
    devices = build_devices(cfg)
    t0 = time.monotonic()
    enroll_all(client, cfg, devices)
    enroll_s = time.monotonic() - t0
    summary = run_rollout(cfg, client, devices, start_rollout=start_rollout)
    summary["enroll_s"] = round(enroll_s, 2)
    summary["enroll_rate"] = round(len(devices) / enroll_s, 1) if enroll_s else 0.0
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    start = None
    if args.start_rollout:
        model, sep, version = args.start_rollout.partition("@")
        if not sep:
            parser.error(f"--start-rollout must look like signs@1.1.0, got {args.start_rollout!r}")
        start = {"model": model, "version": version, "group": cfg.group,
                 "stages": [float(s) for s in args.stages.split(",")],
                 "max_failure_rate": args.max_failure_rate, "success_quota": args.success_quota,
                 "min_devices_for_halt": args.min_devices_for_halt}
    try:
        summary = simulate(cfg, start_rollout=start)
    except ApiError as e:
        log.error("server error: %s", e)
        return 1
    print_summary(summary)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        log.info("wrote %s", args.json_out)
    if "rollout" in summary and not summary["rollout"].get("ended", False):
        log.error("rollout did not end within --duration %.0f s", cfg.duration_s)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
