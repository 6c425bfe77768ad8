"""Benchmark: a full staged rollout to 10,000 simulated devices against the real server.

Starts the OTA server as ``make demo`` does (``ota-server init``, tokens,
``ota-server serve`` under gunicorn on 127.0.0.1, SQLite), publishes tiny real
bundles, enrolls the simulated fleet once (``scripts/fleet_sim.py``), then runs
two staged rollouts one after the other against the same fleet:

- **baseline** — naive polling: every poll carries a fresh nonce and no
  ``If-None-Match``, so the director signs a new assignment each time;
- **etag** — the contract's polling: a device keeps its nonce until it accepts
  an assignment and sends its last ETag, so unchanged polls are 304s.

For each it reports how long the staged rollout took (creation → completed),
the poll throughput the server sustained during it, poll latency percentiles
and the request counts; prints a table and writes ``bench-out/fleet_rollout.json``.
Timings depend on the host's load: compare the two rows of one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import demo_steps  # noqa: E402
from scripts.demo_procs import Processes, StepFailed, tail  # noqa: E402
from scripts.fleet_http import FleetClient  # noqa: E402
from scripts.fleet_sim import SimConfig, build_devices, enroll_all, run_rollout  # noqa: E402

log = logging.getLogger("fleet_rollout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet_rollout.py",
        description="Time a staged rollout to a large simulated fleet against the real OTA server, "
        "naive polling (baseline) vs nonce+ETag polling, side by side in one run.",
        epilog="Exit codes: 0 both rollouts completed; 1 a rollout did not complete or the server failed.",
    )
    p.add_argument("--devices", type=int, default=10_000, help="simulated devices (default 10000)")
    p.add_argument("--workers", type=int, default=48, help="client threads = pooled connections")
    p.add_argument("--server-workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--stages", default="1,10,50,100", help="rollout stages in percent")
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds between a device's polls")
    p.add_argument("--failure-rate", type=float, default=0.01, help="simulated failures per release")
    p.add_argument("--max-failure-rate", type=float, default=0.05, help="rollout halt threshold")
    p.add_argument("--success-quota", type=float, default=0.9,
                   help="share of a stage that must commit before the next stage (failures are expected)")
    p.add_argument("--min-devices-for-halt", type=int, default=50,
                   help="finished devices before the failure rate may halt (a 1%% failure rate "
                   "would otherwise halt on the first unlucky device)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds each rollout may take")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fleet_rollout.json", help="JSON output")
    return p


def publish_tiny(procs: Processes, server: demo_steps.Server, work: Path, version: str) -> None:
    from tests.bundles import make_bundle

    bundle = work / f"bench-{version}"
    make_bundle(bundle, name="bench", version=version, behaviour="ok")
    demo_steps.publish(procs, server, bundle, version)


def row(mode: str, summary: dict[str, Any]) -> dict[str, Any]:
    c = summary["counts"]
    return {
        "mode": mode,
        "rollout_status": summary.get("rollout", {}).get("status"),
        "rollout_s": summary["elapsed_s"],
        "polls": c.get("polls", 0),
        "poll_200": c.get("poll_200", 0),
        "poll_304": c.get("poll_304", 0),
        "errors": c.get("errors", 0),
        "poll_rps": summary["poll_throughput_rps"],
        "poll_p50_ms": summary["poll_ms"]["p50"],
        "poll_p95_ms": summary["poll_ms"]["p95"],
        "poll_p99_ms": summary["poll_ms"]["p99"],
        "committed": c.get("committed", 0),
        "failed": c.get("failed", 0),
        "stage_times": [(e["t"], e["event"]) for e in summary.get("timeline", [])],
    }


def print_table(rows: Sequence[dict[str, Any]], *, devices: int, enroll_s: float) -> None:
    print(f"\nstaged rollout to {devices} simulated devices (enrollment took {enroll_s:.1f} s, "
          f"{devices / enroll_s:.0f}/s); numbers depend on this host's load\n")
    cols = [("mode", 9, ""), ("rollout_status", 10, ""), ("rollout_s", 10, ".1f"), ("poll_rps", 9, ".1f"),
            ("poll_p50_ms", 11, ".1f"), ("poll_p95_ms", 11, ".1f"), ("polls", 8, "d"), ("poll_304", 8, "d"),
            ("errors", 6, "d"), ("committed", 9, "d"), ("failed", 6, "d")]
    print("  ".join(f"{name:>{width}}" for name, width, _ in cols))
    for r in rows:
        print("  ".join(f"{format(r[name], spec) if r[name] is not None else '-':>{width}}"
                        for name, width, spec in cols))
    if len(rows) == 2 and rows[0]["rollout_s"]:
        print(f"\netag vs baseline: rollout time x{rows[1]['rollout_s'] / rows[0]['rollout_s']:.2f}, "
              f"poll throughput x{rows[1]['poll_rps'] / max(rows[0]['poll_rps'], 1e-9):.2f}")
    for r in rows:
        print(f"\n{r['mode']} stage timeline:")
        for t, event in r["stage_times"]:
            print(f"  t={t:7.1f}s  {event}")


def write_json(args: argparse.Namespace, rows: list[dict[str, Any]], *, enroll_s: float,
               stages: list[float]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"devices": args.devices, "enroll_s": round(enroll_s, 2),
                                    "server_workers": args.server_workers, "client_workers": args.workers,
                                    "poll_interval_s": args.poll_interval, "stages": stages,
                                    "rows": rows}, indent=2) + "\n")


def run(args: argparse.Namespace, work: Path) -> int:
    stages = [float(s) for s in args.stages.split(",")]
    with Processes(work / "logs", cwd=ROOT) as procs:
        server = demo_steps.start_server(procs, work / "server", workers=args.server_workers)
        for version in ("1.1.0", "1.2.0"):
            publish_tiny(procs, server, work, version)
        cfg = SimConfig(server=server.url, enroll_token=server.enroll_token, api_token=server.admin_token,
                        devices=args.devices, workers=args.workers, poll_interval_s=args.poll_interval,
                        apply_delay_s=1.0, failure_rate=args.failure_rate, duration_s=args.timeout,
                        group="bench", name_prefix="bench", watch_interval_s=2.0)
        client = FleetClient(server.url, pool_size=args.workers)
        devices = build_devices(cfg)
        t0 = time.monotonic()
        enroll_all(client, cfg, devices)
        enroll_s = time.monotonic() - t0
        rows = []
        for mode, version, etag in (("baseline", "1.1.0", False), ("etag", "1.2.0", True)):
            print(f"rollout of bench {version} ({mode} polling) ...", file=sys.stderr)
            body = {"model": "bench", "version": version, "group": "bench", "stages": stages,
                    "max_failure_rate": args.max_failure_rate, "success_quota": args.success_quota,
                    "min_devices_for_halt": args.min_devices_for_halt}
            summary = run_rollout(replace(cfg, etag=etag), client, devices, start_rollout=body)
            rows.append(row(mode, summary))
            ro = summary.get("rollout", {})
            if ro.get("status") not in ("completed", None):  # a halted rollout blocks the next one
                client.post_json(f"/api/v1/rollouts/{ro['id']}/abort", {}, server.admin_token)
            write_json(args, rows, enroll_s=enroll_s, stages=stages)  # kept even if a later mode is cut short
        if procs.children and not procs.children[0].alive:
            print(tail(procs.children[0].log_path), file=sys.stderr)
    print_table(rows, devices=args.devices, enroll_s=enroll_s)
    print(f"\nwrote {args.out}")
    return 0 if all(r["rollout_status"] == "completed" for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        try:
            return run(args, Path(tmp))
        except StepFailed as e:
            print(f"FAILED: {e}\n{tail(e.log_path)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
