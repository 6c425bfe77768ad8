"""Run the demo N times on an idle host and N times with cores kept busy; tabulate pass/fail and wall time.

::

    python scripts/demo_repeat.py --runs 5                  # 5 idle + 5 loaded runs, interleaved
    python scripts/demo_repeat.py --runs 1 --busy 1         # one of each, one busy-loop process
    python scripts/demo_repeat.py --runs 3 -- --quick       # anything after -- goes to scripts/demo.py

Each run is ``scripts/demo.py --out OUT/<mode>-<n>`` (what ``make demo`` runs),
its output in ``OUT/<mode>-<n>.log``. A *loaded* run first starts ``--busy``
processes of ``python -c 'while True: pass'`` (each keeps one core busy, as
another job on a laptop or a CI runner would) and stops them when the demo
ends. Idle and loaded runs alternate, so a change in the host's other load
affects both modes alike. The host's 1-minute load average at the start of each
run is recorded too: "idle" means no busy loop of ours, not an idle machine.

Prints a table per run and per mode, and writes ``OUT/demo_repeat.json``.
Exit codes: 0 every run passed, 1 some run failed, 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.procs import stop_process

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"
MODES = ("idle", "loaded")


@dataclass
class RunResult:
    mode: str  # "idle" | "loaded"
    index: int  # 1-based within its mode
    exit_code: int
    wall_s: float
    load_avg_1m: float  # the host's load average when the run started
    out: str  # the demo's --out directory
    failed_checks: list[str] = field(default_factory=list)
    error: str = ""  # the demo's FAILED: line, if any

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def _failed_checks(out: Path) -> list[str]:
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    return [str(c.get("name")) for c in summary.get("checks", []) if not c.get("ok")]


def _error_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((x.strip()[:200] for x in reversed(lines) if x.startswith("FAILED")), "")


def run_once(
    mode: str, index: int, *, out_root: Path, demo_args: Sequence[str], busy: int, timeout_s: float
) -> RunResult:
    """One demo run, with ``busy`` busy-loop processes alive throughout when ``mode`` is loaded."""
    out = out_root / f"{mode}-{index}"
    log = out_root / f"{mode}-{index}.log"
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True, stdin=subprocess.DEVNULL)
        for _ in range(busy if mode == "loaded" else 0)
    ]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    try:
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), *demo_args],
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = 124
            finally:
                if proc.poll() is None:  # timed out or interrupted: the demo stops its own children
                    stop_process(proc, grace_s=30)
    finally:
        for p in loops:
            stop_process(p, grace_s=2)
    wall = time.monotonic() - t0
    return RunResult(
        mode=mode,
        index=index,
        exit_code=code,
        wall_s=round(wall, 1),
        load_avg_1m=round(load, 2),
        out=str(out),
        failed_checks=_failed_checks(out),
        error=_error_line(log),
    )


def mode_summary(results: Sequence[RunResult]) -> dict[str, dict[str, float | int]]:
    """Per mode: runs, passes, and the median / min / max wall time in seconds."""
    out: dict[str, dict[str, float | int]] = {}
    for mode in MODES:
        walls = [r.wall_s for r in results if r.mode == mode]
        if walls:
            out[mode] = {
                "runs": len(walls),
                "passed": sum(r.passed for r in results if r.mode == mode),
                "median_s": round(statistics.median(walls), 1),
                "min_s": min(walls),
                "max_s": max(walls),
            }
    return out


def render(results: Sequence[RunResult]) -> str:
    """Markdown tables: every run, then per mode."""
    lines = [
        "| run | mode | result | exit | wall s | load avg (1 min) at start | failed checks / error |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    for n, r in enumerate(results, 1):
        why = ", ".join(r.failed_checks) or r.error or "-"
        lines.append(
            f"| {n} | {r.mode} | {'PASS' if r.passed else 'FAIL'} | {r.exit_code} | {r.wall_s:.0f} | "
            f"{r.load_avg_1m:.2f} | {why} |"
        )
    lines += ["", "| mode | passed | median wall s | min | max |", "|---|---:|---:|---:|---:|"]
    for mode, s in mode_summary(results).items():
        lines.append(
            f"| {mode} | {s['passed']}/{s['runs']} | {s['median_s']:.0f} | {s['min_s']:.0f} | {s['max_s']:.0f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="demo_repeat.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Exit codes: 0 every run passed; 1 some run failed; 2 bad arguments.",
    )
    p.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    p.add_argument("--busy", type=int, default=1, help="busy-loop processes during a loaded run (default 1)")
    p.add_argument("--modes", default="idle,loaded", help="comma-separated, of idle,loaded (default both)")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-out" / "demo-repeat",
        help="where the runs' output directories and logs go (default bench-out/demo-repeat)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds after which one run counts as failed")
    p.add_argument("demo_args", nargs="*", help="arguments for scripts/demo.py (after --)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.runs < 1 or args.busy < 1 or not modes or any(m not in MODES for m in modes):
        parser.error(
            f"need --runs >= 1, --busy >= 1 and --modes from {list(MODES)}; got {args.runs}, "
            f"{args.busy}, {args.modes!r}"
        )
    if any(a == "--out" or a.startswith("--out=") for a in args.demo_args):
        parser.error("--out is set per run by demo_repeat.py; do not pass it to the demo")
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    try:
        for i in range(1, args.runs + 1):
            for mode in modes:
                print(f"run {len(results) + 1}/{args.runs * len(modes)}: {mode} #{i} ...", flush=True)
                r = run_once(
                    mode, i, out_root=args.out, demo_args=args.demo_args, busy=args.busy, timeout_s=args.timeout
                )
                results.append(r)
                print(f"  {'PASS' if r.passed else 'FAIL'} in {r.wall_s:.0f} s (exit {r.exit_code})", flush=True)
    except KeyboardInterrupt:
        print("interrupted: the runs so far follow", file=sys.stderr)
        print(render(results))
        return 130
    report = {
        "runs": [asdict(r) | {"passed": r.passed} for r in results],
        "by_mode": mode_summary(results),
        "busy_processes": args.busy,
        "demo_args": list(args.demo_args),
        "cpus": os.cpu_count(),
    }
    (args.out / "demo_repeat.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + render(results))
    print(f"\n{args.out / 'demo_repeat.json'}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
