"""``edge-agent``: enroll a device, run the update daemon, show status, roll back.

Exit codes: 0 success (for ``run --once``: nothing to do, or the update
committed), 1 the server refused or failed a request, 2 bad flags or an
unusable data directory, 3 ``run --once`` ended with the update refused,
failed or rolled back, 4 ``run --once`` hit a transient error (retry later).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edge_agent.config import AgentConfig, AgentPaths
from edge_agent.errors import ConfigError, EdgeAgentError, ServerError
from edge_agent.update.core import State

__all__ = ["main", "build_parser"]

log = logging.getLogger("edge_agent")
DEFAULT_DATA_DIR = Path("/var/lib/edgefleet-agent")
EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UPDATE_FAILED, EXIT_RETRY = 0, 1, 2, 3, 4


def _data_dir(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"agent state: identity, pinned keys, slots, journal (default {DEFAULT_DATA_DIR})",
    )


def _add_enroll(sub: Any) -> None:
    e = sub.add_parser("enroll", help="register this device and pin the trust anchors")
    _data_dir(e)
    e.add_argument("--server", required=True, help="OTA server base URL, e.g. https://ota.example.com")
    e.add_argument(
        "--token", required=True, help="enrollment credential from ota-server enroll-token create (ef_enroll_...)"
    )
    e.add_argument("--root", type=Path, help="image root.json from the provisioning dir (must match the server's)")
    e.add_argument("--director-key", type=Path, help="director.pub.json from the provisioning dir (must match)")
    e.add_argument("--name", help="device name (default: the data dir's name)")
    e.add_argument("--group", help="fleet group: must be the one the credential binds (default: the credential's)")
    e.add_argument(
        "--tag", action="append", help="device tag, repeatable: must be the credential's (default: the credential's)"
    )
    e.add_argument(
        "--hardware-profile",
        type=Path,
        help="JSON object of hardware-profile fields overriding detection (simulated devices)",
    )


def _add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="run the update daemon (SIGTERM stops it cleanly)")
    _data_dir(r)
    r.add_argument("--once", action="store_true", help="one cycle (flush, poll, update), then exit")
    r.add_argument("--poll-interval", type=float, default=30.0, help="seconds between polls (default 30)")
    r.add_argument("--health-window", type=float, help="seconds of health watch after a swap (default: gates)")
    r.add_argument(
        "--min-rate", type=float, default=1024.0, help="download watchdog: abort below this many bytes/s (default 1024)"
    )
    r.add_argument("--rate-window", type=float, default=5.0, help="download watchdog window, seconds (default 5)")
    r.add_argument(
        "--prepare-cpu-limit",
        type=int,
        default=60,
        help="CPU seconds the child-process model check may use (default 60)",
    )
    r.add_argument("--prepare-timeout", type=float, default=120.0, help="wall seconds of the model check")
    r.add_argument("--bench-queries", type=int, default=20, help="latency queries in the model check (default 20)")
    r.add_argument(
        "--bench-duration",
        type=float,
        default=1.0,
        help="minimum seconds of latency measurement in the model check (default 1)",
    )
    r.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        help="transient failures of one update before it is abandoned (default 5)",
    )
    r.add_argument(
        "--source",
        action="append",
        metavar="[NAME=]SOURCE",
        help="a camera (V4L2 /dev/videoN, file, rtsp://, GStreamer pipeline), optionally named: front=/dev/video0; "
        "repeat for several cameras (unnamed ones are cam0, cam1, ...); without any the agent runs headless",
    )
    r.add_argument(
        "--sources",
        type=Path,
        metavar="FILE",
        help="cameras from a JSON/YAML list of NAME=SOURCE strings or {name, source} objects (adds to --source)",
    )
    r.add_argument("--no-loop", action="store_true", help="with a file --source: stop at its end")
    r.add_argument("--results", type=Path, help="with --source: write per-frame results (JSON lines) here")
    r.add_argument(
        "--max-fps",
        type=float,
        default=None,
        help="with --source: cap the capture rate of each camera (frames/s; default: the source's rate)",
    )
    r.add_argument(
        "--max-batch",
        type=int,
        help="frames per inference (default: one per camera, within what the model takes); "
        "a model that cannot take it is refused",
    )
    r.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for the other cameras once one has a frame (default 5)",
    )
    r.add_argument(
        "--cpu-budget",
        type=int,
        help="cores for capture and inference (default: all this process may use); "
        "capture gets min(cameras, N // 2), ONNX Runtime the rest",
    )
    r.add_argument(
        "--engine-opt-batch",
        type=int,
        default=1,
        help="TensorRT engines built on the device are tuned for this batch (default 1)",
    )
    r.add_argument(
        "--engine-max-batch",
        type=int,
        default=8,
        help="the largest batch those engines accept, e.g. one frame per camera (default 8)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent",
        description="On-device update agent: polls the OTA server for a signed assignment, verifies it "
        "against the pinned director key and TUF image root, downloads (resumable), stages into an A/B "
        "slot, gates the candidate in a child process, swaps, watches its health, rolls back on regression.",
        epilog="Exit codes: 0 ok, 1 server error, 2 bad flags/data dir, 3 update refused/failed/rolled back "
        "(run --once), 4 transient error, retry later (run --once).",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_enroll(sub)
    _add_run(sub)
    s = sub.add_parser("status", help="show the active model, slot, last update and pending reports")
    _data_dir(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    b = sub.add_parser("rollback", help="switch back to the previous model now (reported as MANUAL_ROLLBACK)")
    _data_dir(b)
    return p


def _config(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        data_dir=args.data_dir,
        poll_interval_s=args.poll_interval,
        health_window_s=args.health_window,
        min_rate_bps=args.min_rate,
        rate_window_s=args.rate_window,
        prepare_cpu_limit_s=args.prepare_cpu_limit,
        prepare_timeout_s=args.prepare_timeout,
        bench_queries=args.bench_queries,
        bench_duration_s=args.bench_duration,
        max_attempts=args.max_attempts,
        engine_opt_batch=args.engine_opt_batch,
        engine_max_batch=args.engine_max_batch,
        pause=AgentConfig.pause_from_env(),
    ).validate()


def _enroll(args: argparse.Namespace) -> int:
    from edge_agent.link.identity import enroll

    overrides: dict[str, Any] = {}
    if args.hardware_profile:
        try:
            overrides = json.loads(args.hardware_profile.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--hardware-profile {args.hardware_profile}: {e}") from e
        if not isinstance(overrides, dict):
            raise ConfigError(f"--hardware-profile must hold a JSON object, got {type(overrides).__name__}")
    identity = enroll(
        AgentPaths(args.data_dir),
        server=args.server,
        token=args.token,
        name=args.name or args.data_dir.resolve().name,
        group=args.group,
        tags=args.tag,
        hardware_overrides=overrides,
        root_file=args.root,
        director_key_file=args.director_key,
    )
    print(
        f"enrolled {identity.device_id} ({identity.name}, group {identity.group}) with {identity.server}; "
        f"data in {args.data_dir}"
    )
    return EXIT_OK


def _camera_args(args: argparse.Namespace) -> list[str]:
    from edge_agent.perception.camera import read_sources_file

    sources = list(args.source or [])
    if args.sources is not None:
        sources += read_sources_file(args.sources)
    return sources


def _perception(args: argparse.Namespace, config: AgentConfig, stop: threading.Event) -> Any:
    # the camera stack is imported only when a camera is asked for
    from edge_agent.perception.camera import CameraError

    try:
        sources = _camera_args(args)
        if not sources:
            return None
        return _camera_perception(args, config, stop, sources)
    except CameraError as e:
        raise ConfigError(str(e)) from e


def _camera_perception(args: argparse.Namespace, config: AgentConfig, stop: threading.Event, sources: list[str]) -> Any:
    import functools

    from edge_agent.link.identity import load_identity, load_profile
    from edge_agent.perception.budget import apply_opencv_threads, split_cpu
    from edge_agent.perception.camera import parse_cameras
    from edge_agent.perception.runtimes import EngineOptions
    from edge_agent.perception.serving import CameraPerception

    if args.max_batch is not None and args.max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.batch_timeout_ms < 0:
        raise ConfigError(f"--batch-timeout-ms must be >= 0, got {args.batch_timeout_ms}")
    paths = config.paths
    # the profile the controller sees too: detection plus the overrides stored at enrollment
    profile = functools.cache(lambda: load_profile(load_identity(paths)))
    split = split_cpu(args.cpu_budget, len(parse_cameras(sources)))
    apply_opencv_threads(split)
    log.info("%s", split.describe())
    perception = CameraPerception.from_options(
        sources,
        loop=not args.no_loop,
        threads=split.inference,
        results_path=args.results,
        max_fps=args.max_fps,
        max_batch=args.max_batch,
        batch_timeout_ms=args.batch_timeout_ms,
        stop_requested=stop,
        engines_dir=paths.engines,
        profile=profile,
        engine=EngineOptions.of(config),
    )
    perception.probe()  # a source that does not open stops the agent now, not at the first update
    return perception


def _install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set ``stop``: the loop, the shadow run and the health watch all wait on it."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.update.daemon import build_agent

    stop = threading.Event()
    if not args.once:
        _install_stop_handlers(stop)
    config = _config(args)
    agent = build_agent(config, perception=_perception(args, config, stop), stop=stop)
    if args.once:
        agent.start()
        try:
            result = agent.run_once()
        finally:
            agent.perception.stop()
            agent.controller.outbox.close()
        state = result.record.state
        log.info(
            "cycle done: %s, %d reports sent, %d pending", state.value, result.reports_sent, result.reports_pending
        )
        if result.retry:
            return EXIT_RETRY
        return EXIT_UPDATE_FAILED if state in (State.FAILED, State.REFUSED, State.ROLLED_BACK) else EXIT_OK
    agent.run_forever(stop)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from edge_agent.update.daemon import status

    info = status(AgentConfig(data_dir=args.data_dir))
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    model = info["model"]
    last = info["last_update"] or {}
    print(f"device:          {info['device_id']} ({info['server']})")
    print(
        f"model:           {model['name']}@{model['version']} release {model['release']}"
        if model
        else "model:           none"
    )
    print(f"slot:            {info['slot'] or '-'} (previous: {info['previous_slot'] or '-'})")
    print(f"update state:    {info['update_state']}")
    if last.get("state"):
        why = f" ({last['reason']})" if last.get("reason") else ""
        print(
            f"last update:     release {last.get('release')} {last.get('version') or ''} → {last.get('state')}{why} "
            f"at {last.get('time')}"
        )
        if last.get("detail"):
            print(f"  why:           {last['detail']}")
    print(f"pending reports: {info['pending_reports']}")
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    from edge_agent.update.daemon import manual_rollback

    done = manual_rollback(AgentConfig(data_dir=args.data_dir))
    print(f"rolled back to slot {done['slot']}: {done['to']}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"enroll": _enroll, "run": _run, "status": _status, "rollback": _rollback}
    try:
        return commands[args.command](args)
    except ConfigError as e:
        log.error("%s", e)
        return EXIT_USAGE
    except ServerError as e:
        log.error("server: %s", e)
        return EXIT_SERVER
    except EdgeAgentError as e:
        log.error("%s", e)
        return EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
