"""Benchmark: a full staged rollout to 10,000 simulated devices against the real server.

Starts the OTA server as ``make demo`` does (``ota-server init``, tokens,
``ota-server serve`` under gunicorn on 127.0.0.1, SQLite; :mod:`ota_server.local`),
publishes tiny real bundles, enrolls the simulated fleet once
(``ota_server.client.simulator``), then runs staged rollouts one after the other
against the same fleet, one per mode and round — ``--rounds`` rounds, the order of
the modes rotated every round (``common.run_rounds``), so drift of the host's load
falls on both modes alike:

- **baseline** — naive polling: every poll carries a fresh nonce and no
  ``If-None-Match``, so the director signs a new assignment each time;
- **etag** — the contract's polling: a device keeps its nonce until it accepts
  an assignment and sends its last ETag, so unchanged polls are 304s.

For each it reports how long the staged rollout took (creation → completed),
the poll throughput the server sustained during it, poll latency percentiles,
per stage the devices, the time until the next stage and the polls and reports
per second meanwhile, and per route the requests the server answered with their
mean server-side time (from ``/metrics``) and the server's CPU time; with more
than one round, per mode the mean over the rounds with its 95 % interval (Student
t). It prints tables and writes ``bench-out/fleet_rollout.json``. Timings depend
on the host's load: compare the rows of one run. ``--quick`` is a short smoke run
(500 devices, 1 s polls).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import fmt_interval, mean_interval, parse_with_quick, rotated, run_rounds

from models.procs import cpu_seconds, process_tree, tail
from models.stats import Interval
from ota_server.client import ClientError, OtaClient, RolloutRequest
from ota_server.client.simulator import (
    SimConfig,
    build_devices,
    enroll_all,
    fleet_client,
    run_rollout,
)
from ota_server.client.watch import format_stage_table
from ota_server.errors import LocalServerError
from ota_server.local import LocalServer

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("fleet_rollout")

MODES = {"baseline": False, "etag": True}  # mode -> keep the nonce and send If-None-Match
_SAMPLE = re.compile(r"^edgefleet_http_(request_seconds_sum|request_seconds_count|requests_total)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet_rollout.py",
        description="Time a staged rollout to a large simulated fleet against the real OTA server, "
        "naive polling (baseline) vs nonce+ETag polling, side by side in one run.",
        epilog="Exit codes: 0 every rollout completed; 1 a rollout did not complete or the server failed.",
    )
    p.add_argument("--devices", type=int, default=10_000, help="simulated devices (default 10000)")
    p.add_argument(
        "--modes",
        default="baseline,etag",
        help=f"polling modes to run, in order, comma-separated; of {', '.join(MODES)}",
    )
    p.add_argument("--workers", type=int, default=48, help="client threads = pooled connections")
    p.add_argument("--server-workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--stages", default="1,10,50,100", help="rollout stages in percent")
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds between a device's polls")
    p.add_argument("--failure-rate", type=float, default=0.01, help="simulated failures per release")
    p.add_argument("--max-failure-rate", type=float, default=0.05, help="rollout halt threshold")
    p.add_argument(
        "--success-quota",
        type=float,
        default=0.9,
        help="share of a stage that must commit before the next stage (failures are expected)",
    )
    p.add_argument(
        "--min-devices-for-halt",
        type=int,
        default=100,
        help="finished devices before the failure rate may halt: with 1%% failures and a 5%% "
        "threshold, 50 halts a healthy rollout about once in 40 runs, 100 once in 1,700",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="rollouts per mode, the modes' order rotated each round (default 1)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: 500 devices, 1 s poll interval, 16 client threads, halts allowed after 50 devices",
    )
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds each rollout may take")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fleet_rollout.json", help="JSON output")
    return p


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ValueError(f"--modes must name some of {sorted(MODES)}, got {text!r}")
    return modes


def publish_tiny(server: LocalServer, work: Path, version: str) -> None:
    from models.tiny import make_bundle

    bundle = work / f"bench-{version}"
    make_bundle(bundle, name="bench", version=version, behaviour="ok")
    server.publish(bundle)


def scrape_routes(client: OtaClient) -> dict[str, dict[str, float]]:
    """Per ``METHOD route``: requests answered, their summed server-side seconds, and the count
    per status (``status:304``), from the server's Prometheus metrics (summed over workers)."""
    text = client.metrics()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        key = f"{labels.get('method')} {labels.get('route')}"
        kind = {"request_seconds_sum": "seconds", "request_seconds_count": "requests"}.get(m.group(1))
        slot = out.setdefault(key, {})
        name = kind or f"status:{labels.get('status')}"
        slot[name] = slot.get(name, 0.0) + float(m.group(3))
    return out


def route_deltas(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """What the server answered between two scrapes, busiest route first."""
    rows = []
    for key, now in after.items():
        then = before.get(key, {})
        delta = {k: now[k] - then.get(k, 0.0) for k in now}
        n = delta.get("requests", 0.0)
        if n <= 0:
            continue
        rows.append(
            {
                "route": key,
                "requests": int(n),
                "mean_ms": round(delta.get("seconds", 0.0) / n * 1e3, 2),
                "by_status": {
                    k.split(":", 1)[1]: int(v) for k, v in sorted(delta.items()) if k.startswith("status:") and v > 0
                },
            }
        )
    return sorted(rows, key=lambda r: -r["requests"])


QUICK = {"devices": 500, "poll_interval": 1.0, "workers": 16, "min_devices_for_halt": 50, "timeout": 300.0}
SUMMARY = ("rollout_s", "poll_rps", "poll_p50_ms", "server_cpu_s", "server_cpu_ms_per_request")  # per-mode means


def row(
    mode: str, summary: dict[str, Any], routes: list[dict[str, Any]], *, server_cpu_s: float, client_cpu_s: float
) -> dict[str, Any]:
    c = summary["counts"]
    ro = summary.get("rollout", {})
    timeline = summary.get("timeline", [])
    # creation → the watcher saw the end (the simulator's elapsed time also holds its shutdown)
    ended = timeline[-1]["t"] if ro.get("ended") and timeline else None
    requests = sum(r["requests"] for r in routes)
    return {
        "mode": mode,
        "rollout_status": ro.get("status"),
        "rollout_s": ended if ended is not None else summary["elapsed_s"],
        "polls": c.get("polls", 0),
        "poll_200": c.get("poll_200", 0),
        "poll_304": c.get("poll_304", 0),
        "errors": c.get("errors", 0),
        "poll_rps": summary["poll_throughput_rps"],
        "offered_poll_rps": summary["offered_poll_rps"],
        "poll_p50_ms": summary["poll_ms"]["p50"],
        "poll_p95_ms": summary["poll_ms"]["p95"],
        "poll_p99_ms": summary["poll_ms"]["p99"],
        "reports": c.get("reports", 0),
        "committed": c.get("committed", 0),
        "failed": c.get("failed", 0),
        "server_cpu_s": round(server_cpu_s, 1),
        "server_cpu_ms_per_request": round(server_cpu_s / requests * 1e3, 2) if requests else None,
        "client_cpu_s": round(client_cpu_s, 1),  # the simulator's own share of the host
        "stages": summary.get("stages", []),
        "routes": routes,
        "stage_times": [(e["t"], e["event"]) for e in summary.get("timeline", [])],
    }


def summarize_modes(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode, the mean of :data:`SUMMARY`'s figures over its rounds with 95 % intervals."""
    out = []
    for mode, runs in by_scenario_rows(rows).items():
        entry: dict[str, Any] = {"mode": mode, "rounds": len(runs)}
        for key in SUMMARY:
            values = [float(r[key]) for r in runs if r[key] is not None]
            if values:
                entry[key] = mean_interval(values).to_dict()
        out.append(entry)
    return out


def by_scenario_rows(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["mode"], []).append(r)
    return out


def print_tables(rows: Sequence[dict[str, Any]], *, devices: int, enroll_s: float) -> None:
    print(
        f"\nstaged rollout to {devices} simulated devices (enrollment took {enroll_s:.1f} s, "
        f"{devices / enroll_s:.0f}/s); numbers depend on this host's load\n"
    )
    cols = [
        ("round", 5, "d"),
        ("mode", 9, ""),
        ("rollout_status", 10, ""),
        ("rollout_s", 10, ".1f"),
        ("poll_rps", 9, ".1f"),
        ("poll_p50_ms", 11, ".1f"),
        ("poll_p95_ms", 11, ".1f"),
        ("polls", 8, "d"),
        ("poll_304", 8, "d"),
        ("errors", 6, "d"),
        ("committed", 9, "d"),
        ("failed", 6, "d"),
        ("server_cpu_s", 12, ".1f"),
        ("client_cpu_s", 12, ".1f"),
    ]
    print("  ".join(f"{name:>{width}}" for name, width, _ in cols))
    for r in rows:
        print(
            "  ".join(f"{format(r[name], spec) if r[name] is not None else '-':>{width}}" for name, width, spec in cols)
        )
    summary = summarize_modes(rows)
    if any(m["rounds"] > 1 for m in summary):
        print("\nper mode, mean over the rounds [95% CI, Student t]")
        for m in summary:
            cells = [f"{k} {fmt_interval(Interval(**m[k]), '.2f')}" for k in SUMMARY if k in m]
            print(f"  {m['mode']:<9} ({m['rounds']} rounds)  " + "  ".join(cells))
    for r in rows:
        print(
            f"\nround {r['round']}, {r['mode']}: per stage "
            "(polls/s and reports/s are the simulated fleet's while in the stage)"
        )
        print(format_stage_table(r["stages"]))
        print(
            f"round {r['round']}, {r['mode']}: server side, per route "
            "(mean ms = time in the server, queueing for a thread excluded)"
        )
        for route in r["routes"][:6]:
            statuses = ", ".join(f"{k}: {v}" for k, v in route["by_status"].items())
            print(f"  {route['route']:<48} {route['requests']:>8}  {route['mean_ms']:>8.2f} ms  ({statuses})")


def write_json(args: argparse.Namespace, rows: list[dict[str, Any]], *, enroll_s: float, stages: list[float]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "devices": args.devices,
                "enroll_s": round(enroll_s, 2),
                "server_workers": args.server_workers,
                "client_workers": args.workers,
                "poll_interval_s": args.poll_interval,
                "stages": stages,
                "load_average": list(os.getloadavg()),
                "rounds": args.rounds,
                "rows": rows,
                "summary": summarize_modes(rows),
            },
            indent=2,
        )
        + "\n"
    )


def run(args: argparse.Namespace, modes: list[str], work: Path) -> int:
    stages = [float(s) for s in args.stages.split(",")]
    with LocalServer.start(
        work / "server",
        workers=args.server_workers,
        roles=(),
        cwd=ROOT,
        log_path=work / "logs" / "server.log",
        start_timeout_s=180.0,
    ) as server:
        master = server.process.pid
        plan = [mode for r in range(args.rounds) for mode in rotated(modes, r)]
        versions = [f"1.{i + 1}.0" for i in range(len(plan))]
        for version in versions:
            publish_tiny(server, work, version)
        cfg = SimConfig(
            server=server.url,
            enroll_token=server.enrollment_credential(group="bench"),
            api_token=server.admin_token,
            devices=args.devices,
            workers=args.workers,
            poll_interval_s=args.poll_interval,
            apply_delay_s=1.0,
            failure_rate=args.failure_rate,
            duration_s=args.timeout,
            group="bench",
            name_prefix="bench",
            watch_interval_s=1.0,
        )
        client = fleet_client(cfg)
        devices = build_devices(cfg)
        t0 = time.monotonic()
        enroll_all(client, cfg, devices)
        enroll_s = time.monotonic() - t0
        rows: list[dict[str, Any]] = []
        next_version = iter(versions)

        def rollout(mode: str) -> dict[str, Any]:
            version = next(next_version)
            print(f"rollout of bench {version} ({mode} polling) ...", file=sys.stderr)
            body = RolloutRequest(
                model="bench",
                version=version,
                group="bench",
                stages=stages,
                max_failure_rate=args.max_failure_rate,
                success_quota=args.success_quota,
                min_devices_for_halt=args.min_devices_for_halt,
            )
            before, cpu0, own0 = scrape_routes(client), cpu_seconds(process_tree(master)), time.process_time()
            summary = run_rollout(replace(cfg, etag=MODES[mode]), client, devices, start_rollout=body)
            cpu, own = cpu_seconds(process_tree(master)) - cpu0, time.process_time() - own0
            routes = route_deltas(before, scrape_routes(client))
            result = row(mode, summary, routes, server_cpu_s=cpu, client_cpu_s=own)
            result["round"] = len(rows) // len(modes)
            result["version"] = version
            rows.append(result)
            ro = summary.get("rollout", {})
            if ro.get("status") not in ("completed", None):  # a halted rollout blocks the next one
                client.abort_rollout(ro["id"])
            write_json(args, rows, enroll_s=enroll_s, stages=stages)  # kept even if a later one is cut short
            return result

        run_rounds({mode: functools.partial(rollout, mode) for mode in modes}, args.rounds)
        if server.process.poll() is not None:
            print(tail(server.log_path), file=sys.stderr)
    print_tables(rows, devices=args.devices, enroll_s=enroll_s)
    print(f"\nwrote {args.out}")
    return 0 if all(r["rollout_status"] == "completed" for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_quick(parser, argv, QUICK)
    try:
        modes = parse_modes(args.modes)
    except ValueError as e:
        parser.error(str(e))
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        try:
            return run(args, modes, Path(tmp))
        except LocalServerError as e:
            print(f"FAILED: {e}\n{tail(e.log_path)}", file=sys.stderr)
            return 1
        except ClientError as e:  # a publish the server refused, or a server that stopped answering
            print(f"FAILED: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
