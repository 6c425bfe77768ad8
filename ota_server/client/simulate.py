"""``edge-fleet-sim``: the fleet simulator's command line (engine: :mod:`ota_server.client.simulator`).

Parses the flags into a :class:`~ota_server.client.simulator.SimConfig`, enrolls the fleet,
optionally starts a rollout, runs until it ends and prints what happened (``--json-out`` also
writes it as JSON). Exit codes: 0 the watched rollout ended (or time ran out with none watched),
1 the server refused or was unreachable, 2 bad arguments, 3 the rollout did not end in time.
It needs the ``ctl`` extra and, unless ``--no-verify``, the ``cryptography`` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ota_server.client.errors import ClientError
from ota_server.client.schema import RolloutRequest
from ota_server.client.simulator import PROFILES, SimConfig, simulate
from ota_server.client.watch import format_stage_table

__all__ = ["build_parser", "config_from_args", "main", "print_summary"]

log = logging.getLogger("fleet_sim")

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_NOT_ENDED = 0, 1, 2, 3


def print_summary(summary: dict[str, Any]) -> None:
    """The figures of :func:`~ota_server.client.simulator.summarize`, a row each, then the
    rollout's timeline and per-stage table."""
    c = summary["counts"]
    rows = [
        ("elapsed", f"{summary['elapsed_s']:.1f} s"),
        (
            "polls (200 / 304 / errors)",
            f"{c.get('polls', 0)} ({c.get('poll_200', 0)} / {c.get('poll_304', 0)} / {c.get('errors', 0)})",
        ),
        (
            "poll throughput",
            f"{summary['poll_throughput_rps']:.1f} req/s (offered {summary['offered_poll_rps']:.1f} req/s)",
        ),
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
        prog="edge-fleet-sim",
        description="Simulate a fleet of lightweight devices against a real edgefleet OTA server: "
        "enroll, poll the director (nonce + ETag), check the signed assignment, download, report "
        "committed/failed at the rates given; watch a staged rollout advance or halt. Prints the "
        "poll throughput and latency, the outcomes and the time each stage took.",
        epilog="Exit codes: 0 the watched rollout ended (or time ran out with none watched), "
        "1 the server refused or could not be reached, 2 bad arguments, "
        "3 the rollout did not end within --duration.",
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
    p.add_argument(
        "--no-etag", action="store_true", help="naive polling: a fresh nonce and no If-None-Match on every poll"
    )
    p.add_argument("--failure-rate", type=float, default=0.0, help="failure probability per release")
    p.add_argument(
        "--version-failure-rates",
        type=_rates,
        default={},
        metavar="V=R,...",
        help="per-version failure probability, e.g. 1.2.0=1.0",
    )
    p.add_argument("--failure-reason", default="LOW_AGREEMENT", help="reason code of simulated failures")
    p.add_argument(
        "--hardware-mix",
        type=_rates,
        default={"cpu-x86_64": 1.0},
        metavar="CLASS=W,...",
        help=f"hardware classes and weights; classes: {', '.join(PROFILES)}",
    )
    p.add_argument("--group", default="default", help="device group to enroll into")
    p.add_argument("--name-prefix", default="sim", help="device name prefix")
    p.add_argument("--seed", type=int, default=0, help="seeds the hardware draw, outcomes and metrics")
    p.add_argument("--duration", type=float, default=300.0, help="hard stop in seconds")
    p.add_argument("--rollout", help="watch this rollout id and stop when it completes or halts")
    p.add_argument("--start-rollout", metavar="MODEL@VERSION", help="create a rollout after enrolling")
    p.add_argument("--stages", default="10,50,100", help="stages (percent) for --start-rollout")
    p.add_argument("--max-failure-rate", type=float, default=0.05, help="halt threshold for --start-rollout")
    p.add_argument(
        "--success-quota",
        type=float,
        default=1.0,
        help="share of a stage that must commit before --start-rollout's next stage",
    )
    p.add_argument(
        "--min-devices-for-halt",
        type=int,
        default=1,
        help="finished devices before --start-rollout's failure rate may halt it",
    )
    p.add_argument("--json-out", type=Path, help="write the summary JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs: every failed request")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The simulation the flags ask for; raises ``ValueError`` naming the flag."""
    for cls in args.hardware_mix:
        if cls not in PROFILES:
            raise ValueError(f"--hardware-mix class must be one of {sorted(PROFILES)}, got {cls!r}")
    if args.devices < 1 or args.workers < 1:
        raise ValueError(f"--devices and --workers must be >= 1, got {args.devices} and {args.workers}")
    if (args.rollout or args.start_rollout) and not args.api_token:
        raise ValueError("--rollout/--start-rollout need --api-token (an operator token)")
    return SimConfig(
        server=args.server.rstrip("/"),
        enroll_token=args.enroll_token,
        api_token=args.api_token,
        devices=args.devices,
        workers=args.workers,
        poll_interval_s=args.poll_interval,
        apply_delay_s=args.apply_delay,
        download=not args.no_download,
        verify=not args.no_verify,
        etag=not args.no_etag,
        failure_rate=args.failure_rate,
        version_failure_rates=args.version_failure_rates,
        failure_reason=args.failure_reason,
        hardware_mix=args.hardware_mix,
        group=args.group,
        name_prefix=args.name_prefix,
        seed=args.seed,
        duration_s=args.duration,
        rollout_id=args.rollout,
    )


def rollout_request(args: argparse.Namespace, cfg: SimConfig) -> RolloutRequest | None:
    """The rollout ``--start-rollout`` asks for (None without it); raises ``ValueError``."""
    if not args.start_rollout:
        return None
    model, sep, version = args.start_rollout.partition("@")
    if not sep or not model or not version:
        raise ValueError(f"--start-rollout must look like signs@1.1.0, got {args.start_rollout!r}")
    try:
        stages = [float(s) for s in args.stages.split(",")]
    except ValueError as e:
        raise ValueError(f"--stages must be comma-separated percentages like 10,50,100, got {args.stages!r}") from e
    return RolloutRequest(
        model=model,
        version=version,
        group=cfg.group,
        stages=stages,
        max_failure_rate=args.max_failure_rate,
        success_quota=args.success_quota,
        min_devices_for_halt=args.min_devices_for_halt,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation the flags ask for; bad flags exit through argparse (code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = config_from_args(args)
        start = rollout_request(args, cfg)
    except ValueError as e:
        parser.error(str(e))
    if cfg.verify and importlib.util.find_spec("cryptography") is None:
        parser.error(
            "checking the assignments' signatures needs the cryptography package "
            "(pip install cryptography), or pass --no-verify"
        )
    try:
        summary = simulate(cfg, start_rollout=start)
    except ClientError as e:
        log.error("server error: %s", e)
        return EXIT_SERVER
    print_summary(summary)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        log.info("wrote %s", args.json_out)
    if "rollout" in summary and not summary["rollout"].get("ended", False):
        log.error("rollout did not end within --duration %.0f s", cfg.duration_s)
        return EXIT_NOT_ENDED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
