"""Variant selection that noise cannot flip: the same checkpoint optimized idle and with a busy core.

The same trained checkpoint goes through ``edge-optimize`` (the real CLI, as
a subprocess, with the demo's flags) ``--runs`` times idle and ``--runs``
times while another process keeps one core busy (``python -c 'while True:
pass'``, spawned here), alternating idle and loaded. Each run's selection per
hardware class, the CPU-time speedup interval of INT8 over FP32 that decided
it (and the wall-time interval beside it), the busy process's CPU seconds and
the run's wall seconds are tabled. The selection must be the same in every
run: the script exits 1 otherwise.

Without ``--run`` a classifier is trained once with the demo's recipe
(``training/configs/demo-signs.yaml``: MobileNetV3-small, 64 px, 2-process
DDP) by ``edge-train`` and cached under ``bench-out/selection_stability/runs/``.

Prints the table and writes ``bench-out/selection_stability.json``.

    .venv/bin/python benchmarks/selection_stability.py --help
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.bench import cpu_identity
from models.procs import cpu_seconds, stop_process

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")
BUSY = "while True: pass"
# the demo's optimize flags (scripts/demo_steps.py), with modest sample counts
DEMO_FLAGS = (
    "--targets",
    "cpu,jetson-orin",
    "--calib-methods",
    "minmax",
    "--bench-seconds",
    "0.5",
    "--bench-queries",
    "20",
    "--quiet",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="trained run directory (default: train the demo's classifier once, cached)",
    )
    p.add_argument("--runs", type=int, default=5, help="optimizations per condition (idle, loaded)")
    p.add_argument("--eval-samples", type=int, default=200, help="held-out images per optimization")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration images per optimization")
    p.add_argument("--epochs", type=int, default=4, help="edge-train epochs when training the checkpoint")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    return p


def ensure_run(args: argparse.Namespace) -> Path:
    """``--run``, or the demo's classifier trained once with edge-train."""
    if args.run is not None:
        return Path(args.run)
    base = args.out / "selection_stability"
    run = base / "runs" / f"mobilenet_v3_small-64-3000-{args.epochs}"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    cmd = [
        sys.executable,
        "-m",
        "training",
        "--config",
        str(ROOT / "training" / "configs" / "demo-signs.yaml"),
        "--epochs",
        str(args.epochs),
        "--output",
        str(run.parent),
        "--name",
        run.name,
        "--threads",
        "1",
        "--cache-dir",
        str(base / "data"),
        "--no-progress",
    ]
    log.info("training: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run


def _spawn_busy() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy; returns once it has burnt CPU (it is really running)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
    deadline = time.monotonic() + 30.0
    while cpu_seconds([proc.pid]) < 0.2:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, grace_s=1.0)
            raise RuntimeError("the busy-loop process did not start burning CPU within 30 s")
        time.sleep(0.05)
    return proc


def optimize_once(run: Path, out: Path, *, version: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``edge-optimize`` subprocess; its selection and INT8 verdicts, and how long it took."""
    cmd = [
        str(Path(sys.executable).parent / "edge-optimize"),
        str(run),
        "--out",
        str(out),
        "--name",
        "signs",
        "--version",
        version,
        "--eval-samples",
        str(args.eval_samples),
        "--calib-samples",
        str(args.calib_samples),
        *DEMO_FLAGS,
    ]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"edge-optimize failed ({done.returncode}):\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "bundle.json").read_text())
    report = json.loads((out / "report.json").read_text())
    sel = report["selection"].get("cpu-x86_64", {})
    cpu = next((v for v in sel.get("evidence", []) if v["candidate"] == "onnx-int8"), None)
    wall = next((v for v in sel.get("wall", []) if v["candidate"] == "onnx-int8"), None)
    return {
        "selection": {hw: e["order"] for hw, e in manifest["selection"].items()},
        "int8_cpu": cpu,
        "int8_wall": wall,
        "seconds": round(seconds, 1),
    }


def _interval(v: dict[str, Any] | None) -> str:
    if v is None:
        return "—"
    i = v["speedup"]
    return f"{i['point']:.2f}x [{i['low']:.2f}, {i['high']:.2f}]"


def table(rows: Sequence[dict[str, Any]]) -> str:
    classes = sorted({hw for r in rows for hw in r["selection"]})
    width = {hw: max([len(hw)] + [len(" > ".join(r["selection"].get(hw, []))) for r in rows]) for hw in classes}
    head = (
        f"{'run':>3s}  {'load':6s}  "
        + "  ".join(f"{hw:{width[hw]}s}" for hw in classes)
        + f"  {'INT8 cpu speedup [95% CI]':26s}  {'INT8 wall speedup':22s}  {'busy cpu s':>10s}  {'wall s':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        sel = "  ".join(f"{' > '.join(r['selection'].get(hw, [])):{width[hw]}s}" for hw in classes)
        lines.append(
            f"{r['run']:3d}  {r['load']:6s}  {sel}  {_interval(r['int8_cpu']):26s}  "
            f"{_interval(r['int8_wall']):22s}  {r['busy_cpu_s']:10.1f}  {r['seconds']:6.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    run = ensure_run(args)
    work = Path(tempfile.mkdtemp(prefix="selection-stability-", dir=args.out))
    rows: list[dict[str, Any]] = []
    try:
        for i in range(2 * args.runs):
            load = "idle" if i % 2 == 0 else "loaded"
            busy = _spawn_busy() if load == "loaded" else None
            c0 = cpu_seconds([busy.pid]) if busy else 0.0
            try:
                row = optimize_once(run, work / f"run-{i}", version=f"1.0.{i}", args=args)
            finally:
                busy_cpu = cpu_seconds([busy.pid]) - c0 if busy else 0.0
                if busy:
                    stop_process(busy, grace_s=2.0)
            rows.append({"run": i + 1, "load": load, "busy_cpu_s": round(busy_cpu, 1), **row})
            log.info("run %d (%s): %s in %.1f s", i + 1, load, row["selection"].get("cpu-x86_64"), row["seconds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    selections = {json.dumps(r["selection"], sort_keys=True) for r in rows}
    same = len(selections) == 1
    print(table(rows))
    print(f"\ncheckpoint: {run}\nsame selection in all {len(rows)} runs: {'yes' if same else 'NO'}")
    result = {
        "meta": {
            "run": str(run),
            "flags": list(DEMO_FLAGS),
            "eval_samples": args.eval_samples,
            "calib_samples": args.calib_samples,
            "cpu": cpu_identity(),
            "same_selection": same,
        },
        "rows": rows,
    }
    path = args.out / "selection_stability.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
