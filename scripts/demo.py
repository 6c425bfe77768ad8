"""`make demo`: edgefleet end to end on one machine, with real processes.

1. write a camera video per vehicle and take calibration frames from them;
2. train a road-sign classifier with 2-process DDP on synthetic data (``edge-train``)
   and optimize it into bundle 1.0.0, calibrated on the camera frames (``edge-optimize
   --calib-data``); meanwhile 1.0.0 trains on in the background (more epochs, twice
   the images) to become 1.1.0;
3. start the OTA server (gunicorn on 127.0.0.1, SQLite, keys in ``<out>/server``),
   enroll a fleet of real ``edge-agent`` processes with different hardware profiles,
   each watching its own camera video, and install 1.0.0 on all of them;
4. optimize 1.1.0 against the published 1.0.0 and a deliberately broken 1.2.0 (1.1.0
   with its classifier rows rotated by one class) against the published 1.1.0
   (``--baseline-release``): each bundle says how often it should agree with the
   release it replaces;
5. roll 1.1.0 out in stages: every vehicle's shadow gate tests its live agreement
   with 1.0.0 against that expectation and accepts it;
6. roll 1.2.0 out: the vehicles' shadow gates refuse it, the failure threshold
   halts the rollout, and no vehicle ends up running it;
7. write ``<out>/report.md``, ``summary.json`` and PNG charts: both models' top-1,
   and each vehicle's gate decision with its evidence as the server holds it.

``--quick`` replaces training and optimizing with tiny ready-made bundles (the
flow the end-to-end test runs). Exit codes: 0 all checks passed, 1 a step or a
check failed (the failing process's log tail is printed), 2 bad arguments,
130 interrupted. Every child process is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import demo_flow
from demo_config import DemoConfig
from models.procs import Processes, StepFailed, tail

log = logging.getLogger("demo")
ROOT = Path(__file__).resolve().parents[1]
MARKER = ".edgefleet-demo"


def prepare_out(out: Path) -> None:
    """Create (or clean a previous demo's) output directory; refuse a foreign non-empty one."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise StepFailed(
                f"{out} exists, is not empty and was not made by the demo; choose another --out or remove it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/demo.py; removed and rebuilt on the next run\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="demo.py",
        description=(__doc__ or "").split("\n\n")[0] + " Trains, optimizes, serves, enrolls a fleet, rolls "
        "out a good and a bad release and reports what happened.",
        epilog="Exit codes: 0 all checks passed; 1 a step or a check failed; 2 bad arguments; 130 interrupted.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "demo-out",
        help="output directory (default demo-out/; a previous demo's output is replaced)",
    )
    p.add_argument("--agents", type=int, default=None, help="vehicles to run (default 4; 2 with --quick)")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the server and the agents running after the report, until Ctrl-C",
    )
    p.add_argument(
        "--quick", action="store_true", help="reduced flow: tiny ready-made bundles instead of training and optimizing"
    )
    p.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument(
        "--rollout-timeout",
        type=float,
        default=900.0,
        help="seconds after which a rollout that has not ended fails the demo (default 900)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    agents = args.agents if args.agents is not None else (2 if args.quick else 4)
    if agents < 2:
        raise ValueError(f"--agents must be at least 2 (a staged rollout needs a fleet), got {agents}")
    return DemoConfig(
        out=args.out.resolve(),
        agents=agents,
        quick=args.quick,
        keep_running=args.keep_running,
        port=args.port,
        rollout_timeout_s=args.rollout_timeout,
        video_s=6.0 if args.quick else 24.0,
        stages=(50, 100) if args.quick else (25, 50, 100),
        camera_fps=30.0 if args.quick else 15.0,
        health_window_s=1.0 if args.quick else 10.0,
    )


def run_demo(cfg: DemoConfig) -> int:
    """All steps in order; returns the exit code."""
    prepare_out(cfg.out)
    with Processes(cfg.out / "logs", cwd=ROOT) as procs:
        try:
            checks = demo_flow.run(cfg, procs)
        except StepFailed as e:
            print(f"\nFAILED: {e}", file=sys.stderr)
            if e.log_path is not None:
                print(f"--- last lines of {e.log_path}:\n{tail(e.log_path)}", file=sys.stderr)
            return 1
        if cfg.keep_running:
            demo_flow.wait_for_ctrl_c(cfg, procs)
    return 0 if all(ok for _, ok, _ in checks) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    t0 = time.monotonic()
    try:
        code = run_demo(cfg)
    except StepFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\ninterrupted: every demo process has been stopped", file=sys.stderr)
        code = 130
    wall = time.monotonic() - t0
    print(f"\ntotal wall time: {wall:.0f} s ({wall / 60:.1f} min) — exit code {code}")
    summary = cfg.out / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        data["wall_time_s"] = round(wall, 1)
        summary.write_text(json.dumps(data, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
