"""Fuzz the parsers longer than CI does; prints a table and writes ``bench-out/fuzz.json``.

Runs each atheris harness of ``tests/fuzz`` (the manifest parser, the assignment verifier, the
report-batch parser) for ``--seconds`` in its own process, one after the other, and reads
libFuzzer's final statistics: executions, executions per second, the coverage it reached (edges,
``cov``, and features, ``ft``), the corpus it grew. A crash — any exception but the parser's
documented error — stops that harness; its input is kept in ``--out/fuzz-artifacts/`` and the
benchmark exits 1. The corpora are kept in ``--out/fuzz-corpus/<harness>`` and reused by the next
run, so coverage builds up across runs.

    python benchmarks/fuzz.py --seconds 600
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("fuzz_manifest", "fuzz_assignment", "fuzz_reports")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_LAST = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def run_harness(name: str, seconds: int, out: Path, max_len: int) -> dict[str, Any]:
    """One harness for ``seconds``; its statistics (``crashes`` counts the inputs it kept)."""
    corpus = out / "fuzz-corpus" / name
    artifacts = out / "fuzz-artifacts" / name
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in artifacts.iterdir()}
    argv = [
        sys.executable,
        "-m",
        f"tests.fuzz.{name}",
        f"-max_total_time={seconds}",
        f"-max_len={max_len}",
        "-timeout=30",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    t0 = time.perf_counter()
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    wall = time.perf_counter() - t0
    log = run.stderr
    stats = {k: int(v) for k, v in _STAT.findall(log)}
    progress = _DONE.findall(log) or _LAST.findall(log)
    execs, cov, ft, corp = (int(x) for x in progress[-1]) if progress else (0, 0, 0, 0)
    execs = stats.get("number_of_executed_units", execs)
    kept = sorted(p.name for p in artifacts.iterdir() if p.name not in before)
    crashed = run.returncode != 0 or bool(kept)
    (out / "fuzz-artifacts" / f"{name}.log").write_text(log)
    return {
        "harness": name,
        "seconds": round(wall, 1),
        "executions": execs,
        "exec_per_s": round(execs / wall, 1) if wall else 0.0,
        "coverage_edges": cov,
        "features": ft,
        "corpus": corp,
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "crashes": len(kept) if kept else int(crashed),
        "artifacts": [str(artifacts / k) for k in kept],
        "exit_code": run.returncode,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=60, help="seconds per harness (default 60)")
    p.add_argument("--harness", action="append", choices=HARNESSES, help="only these (repeatable); default all")
    p.add_argument("--max-len", type=int, default=16384, help="largest input in bytes (default 16384)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_harness(h, args.seconds, args.out, args.max_len) for h in args.harness or HARNESSES]
    print(f"{'harness':<18}{'seconds':>8}{'executions':>12}{'exec/s':>9}{'cov':>6}{'ft':>6}{'corpus':>8}{'crashes':>9}")
    for r in rows:
        print(
            f"{r['harness']:<18}{r['seconds']:>8.0f}{r['executions']:>12}{r['exec_per_s']:>9.0f}"
            f"{r['coverage_edges']:>6}{r['features']:>6}{r['corpus']:>8}{r['crashes']:>9}"
        )
        for a in r["artifacts"]:
            print(f"  crash input: {a}")
    (args.out / "fuzz.json").write_text(json.dumps({"seconds_per_harness": args.seconds, "harnesses": rows}, indent=2))
    print(f"\nwrote {args.out / 'fuzz.json'}")
    return 1 if any(r["crashes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
