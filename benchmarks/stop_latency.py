"""How fast the agent's waiting steps end on a stop request, and the capture rate a ``max_fps`` cap gives.

The tests check these as events (the stop cut the step short, the capture
thread waits out each 1/max_fps period); the figures are measured here:

1. stop latency, from ``stop.set()`` (what the SIGTERM handler does) to the
   step's return, for the health watch of an hour-long window and for the
   child-process model check (the child killed mid-measurement); each step is
   waited in a thread and the stop comes ``--settle`` seconds after it began;
2. capture rate of the pipeline on a synthetic source under each ``--caps``
   value, over ``--duration`` seconds, against the cap.

Scenarios are interleaved for ``--rounds`` rounds, the order rotated every
round, and each figure is reported as the median with the range over rounds.
Prints a table and writes ``bench-out/stop_latency.json``. Target: a stop
ends each step within ~2 s (the brief), well under the 10 s systemd gives
before SIGKILL; the capture rate stays at or under each cap.

    python benchmarks/stop_latency.py [--rounds 5] [--settle 1.0] [--caps 10 30] [--duration 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_agent.errors import StopRequested
from edge_agent.perception.camera import SourceKind, SourceSpec, SyntheticSource
from edge_agent.perception.health import HealthWatch
from edge_agent.perception.inference import load_model
from edge_agent.perception.pipeline import Pipeline, PipelineConfig
from edge_agent.update.prepare import PrepareLimits, check_in_child
from models.bundle import Gates
from models.tiny import make_bundle

ROOT = Path(__file__).resolve().parents[1]
GATES = Gates(latency_budget_ms=250.0)
# the model check would time 10^6 queries for at least an hour: only the stop ends it
ENDLESS = PrepareLimits(timeout_s=3600, cpu_s=3600, frames=4, queries=10**6, duration_s=3600)


def stop_latency_s(step: Callable[[threading.Event], object], settle_s: float) -> float:
    """Seconds from ``stop.set()`` to the return of ``step(stop)``, started ``settle_s`` before the stop."""
    stop, done = threading.Event(), threading.Event()
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(step(stop))
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome.append(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    if done.wait(settle_s):
        raise RuntimeError(f"the step ended before the stop request: {outcome}")
    t0 = time.perf_counter()
    stop.set()
    if not done.wait(120):
        raise RuntimeError("the step did not end within 120 s of the stop request")
    took = time.perf_counter() - t0
    if not isinstance(outcome[0], StopRequested):
        raise RuntimeError(f"the step ended with {outcome[0]!r}, not StopRequested")
    return took


def capture_fps(bundle: Path, cap: float, duration_s: float) -> float:
    """Frames captured per second by a pipeline on a synthetic source under ``max_fps=cap``."""
    model = load_model(bundle)
    pipe = Pipeline(SyntheticSource(SourceSpec(SourceKind.SYNTHETIC, "patterns")), model, PipelineConfig(max_fps=cap))
    try:
        pipe.start()
        time.sleep(0.5)  # warm-up
        before, t0 = pipe.counters.snapshot()["captured"], time.monotonic()
        time.sleep(duration_s)
        after, t1 = pipe.counters.snapshot()["captured"], time.monotonic()
    finally:
        pipe.stop()
        model.close()
    return (after - before) / (t1 - t0)


def _summary(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": list(values)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every scenario")
    p.add_argument("--settle", type=float, default=1.0, help="seconds a step runs before the stop request")
    p.add_argument("--caps", type=float, nargs="+", default=[10.0, 30.0], help="max_fps values to measure")
    p.add_argument("--duration", type=float, default=3.0, help="seconds each capture-rate run is counted")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out", help="output directory")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.settle <= 0 or args.duration <= 0 or any(c <= 0 for c in args.caps):
        p.error("--rounds must be >= 1 and --settle, --duration and every --caps value > 0")
    with tempfile.TemporaryDirectory() as d:
        bundle = Path(d) / "tiny"
        make_bundle(bundle)
        scenarios: dict[str, Callable[[], float]] = {
            "health watch": lambda: stop_latency_s(
                lambda stop: HealthWatch("tiny@1.0.0", GATES, baseline=None).wait(3600.0, stop=stop), args.settle
            ),
            "model check (child)": lambda: stop_latency_s(
                lambda stop: check_in_child(bundle, "onnx-fp32", GATES, ENDLESS, stop=stop), args.settle
            ),
        }
        for cap in args.caps:
            scenarios[f"capture at max_fps {cap:g}"] = functools.partial(capture_fps, bundle, cap, args.duration)
        names = list(scenarios)
        values: dict[str, list[float]] = {n: [] for n in names}
        order = []
        for r in range(args.rounds):
            rotated = names[r % len(names) :] + names[: r % len(names)]
            order.append(rotated)
            for name in rotated:
                values[name].append(scenarios[name]())
    rows = {n: _summary(v) for n, v in values.items()}
    print(f"{'scenario':<28} {'median':>9} {'min':>9} {'max':>9}  unit")
    for name, s in rows.items():
        unit = "frames/s" if name.startswith("capture") else "s to stop"
        print(f"{name:<28} {s['median']:>9.3f} {s['min']:>9.3f} {s['max']:>9.3f}  {unit}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "stop_latency.json"
    result = {
        "benchmark": "stop_latency",
        "rows": rows,
        "caps": args.caps,
        "round_order": order,
        "host": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
