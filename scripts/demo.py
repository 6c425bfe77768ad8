"""`make demo`: edgefleet end to end on one machine, with real processes.

1. train a road-sign classifier with 2-process DDP on synthetic data (``edge-train``);
2. optimize it into bundles 1.0.0 and 1.1.0, and a deliberately broken 1.2.0 whose
   classifier rows are rotated by one class (``edge-optimize``);
3. start the OTA server (gunicorn on 127.0.0.1, SQLite, keys in ``<out>/server``);
4. enroll a fleet of real ``edge-agent`` processes with different hardware
   profiles, each watching its own camera video, and install 1.0.0 on all of them;
5. roll 1.1.0 out in stages and show the stages advance as vehicles commit;
6. roll 1.2.0 out: the vehicles' shadow gates refuse it, the failure threshold
   halts the rollout, and no vehicle ends up running it;
7. write ``<out>/report.md``, ``summary.json`` and PNG charts.

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
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import demo_flow
from scripts.demo_procs import Processes, StepFailed, tail

log = logging.getLogger("demo")
ROOT = Path(__file__).resolve().parents[1]
MARKER = ".edgefleet-demo"


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    agents: int = 4
    quick: bool = False
    keep_running: bool = False
    port: int | None = None  # None = a free port
    train_config: Path = ROOT / "training" / "configs" / "demo-signs.yaml"
    poll_s: float = 1.0  # agent poll interval, seconds
    rollout_timeout_s: float = 300.0  # per rollout
    video_s: float = 12.0  # camera video length (files loop)
    camera_fps: float = 15.0  # video frame rate; agents capture at most this fast
    health_window_s: float | None = None  # agents' health watch after a swap; None = the bundle's gate
    stages: tuple[int, ...] = (25, 50, 100)
    max_failure_rate: float = 0.2
    latency_budget_ms: float = 250.0  # rollout gate: generous, this host is shared and CPU-only
    min_agreement: float | None = None  # None = the bundle's own gate (set by edge-optimize)


def prepare_out(out: Path) -> None:
    """Create (or clean a previous demo's) output directory; refuse a foreign non-empty one."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise StepFailed(f"{out} exists, is not empty and was not made by the demo; "
                             "choose another --out or remove it")
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
    p.add_argument("--out", type=Path, default=ROOT / "demo-out",
                   help="output directory (default demo-out/; a previous demo's output is replaced)")
    p.add_argument("--agents", type=int, default=None, help="vehicles to run (default 4; 2 with --quick)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the server and the agents running after the report, until Ctrl-C")
    p.add_argument("--quick", action="store_true",
                   help="reduced flow: tiny ready-made bundles instead of training and optimizing")
    p.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--rollout-timeout", type=float, default=300.0, help="seconds each rollout may take")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    agents = args.agents if args.agents is not None else (2 if args.quick else 4)
    if agents < 2:
        raise ValueError(f"--agents must be at least 2 (a staged rollout needs a fleet), got {agents}")
    return DemoConfig(
        out=args.out.resolve(), agents=agents, quick=args.quick, keep_running=args.keep_running,
        port=args.port, rollout_timeout_s=args.rollout_timeout,
        video_s=6.0 if args.quick else 12.0, stages=(50, 100) if args.quick else (25, 50, 100),
        camera_fps=30.0 if args.quick else 15.0, health_window_s=1.0 if args.quick else None,
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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
