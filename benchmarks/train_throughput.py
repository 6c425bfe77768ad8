"""Training throughput: images/s with 1 vs N DDP processes, side by side in one run.

Each configuration is a real ``python -m training`` run (gloo on CPU) on the
same synthetic data; the figure is the mean training images/s (all ranks
together) of the epochs after the first, which has the synthetic cache warm.
Scaling efficiency = images/s with N processes / (N x images/s with 1).

    python benchmarks/train_throughput.py                 # 1 vs 2 processes
    python benchmarks/train_throughput.py --nprocs 1 2 4 --image-size 64

Prints a table and writes bench-out/train_throughput.json. Timings on a
shared machine are distorted by other load: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _run(nproc: int, args: argparse.Namespace, out: Path, cache: Path) -> dict[str, Any]:
    name = f"bench-{nproc}p"
    cmd = [
        sys.executable, "-m", "training", "--data", "synthetic-signs", "--arch", args.arch,
        "--image-size", str(args.image_size), "--train-size", str(args.train_size),
        "--val-size", "64", "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
        "--nproc-per-node", str(nproc), "--cache-dir", str(cache), "--output", str(out),
        "--name", name, "--no-progress",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{nproc}-process run failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    warm = rows[1:] or rows
    ips = sum(r["images_per_s"] for r in warm) / len(warm)
    return {
        "nproc": nproc,
        "images_per_s": ips,
        "epochs_timed": len(warm),
        "wall_s": wall,
        "per_epoch": [r["images_per_s"] for r in rows],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--nprocs",
        type=int,
        nargs="+",
        default=[1, 2],
        help="process counts to compare (first is the baseline)",
    )
    p.add_argument("--arch", default="mobilenet_v3_small")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--train-size", type=int, default=1024, help="images per epoch")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--epochs", type=int, default=3, help="the first (cache warm-up) is not timed")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--out", default="bench-out/train_throughput.json")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        for nproc in args.nprocs:
            print(f"running {nproc} process(es) ...", file=sys.stderr, flush=True)
            try:
                results.append(_run(nproc, args, Path(tmp), Path(tmp) / "cache"))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
    base = results[0]["images_per_s"] / results[0]["nproc"]
    for r in results:
        r["speedup"] = r["images_per_s"] / results[0]["images_per_s"]
        r["efficiency"] = r["images_per_s"] / (r["nproc"] * base)
    print(f"\ntraining throughput: {args.arch} @ {args.image_size}px, batch {args.batch_size}/process")
    print(f"{'procs':>5} {'images/s':>10} {'speedup':>8} {'efficiency':>10} {'wall s':>8}")
    for r in results:
        print(
            f"{r['nproc']:>5} {r['images_per_s']:>10.1f} {r['speedup']:>8.2f} "
            f"{r['efficiency']:>10.0%} {r['wall_s']:>8.1f}"
        )
    report = {
        "benchmark": "train_throughput",
        "config": vars(args),
        "host": platform.node(),
        "cpu_count": __import__("os").cpu_count(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
