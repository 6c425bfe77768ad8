"""Prepare gate: load a candidate in a child process, check it for NaNs, time it.

The agent never loads a new model in its own process first: it runs
``python -m edge_agent.prepare`` under resource limits (CPU seconds and
address space, ``resource.setrlimit``), so a model that crashes or runs away
with its runtime kills only the child. The parent maps the child's fate to a
:class:`~edge_agent.perception.GateResult`:

- the child printed a result → that result (``MODEL_LOAD_FAILED``,
  ``NAN_OUTPUT``, ``LATENCY_OVER_BUDGET`` or passed, with latency metrics);
- the child died by a signal (SIGSEGV, SIGXCPU, SIGKILL...) or exited
  non-zero without a result, or hung past the timeout → ``RUNTIME_CRASHED``.

Sample frames are synthetic (solid colours and noise), the same in every run.
This module does not decide what happens next (see :mod:`edge_agent.core`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import StopRequested
from edge_agent.perception import GateResult
from edge_agent.stopping import STOP_POLL_S
from models.bundle import Gates

if TYPE_CHECKING:
    import numpy as np

__all__ = ["PrepareLimits", "sample_frames", "check_in_child", "evaluate", "main"]

log = logging.getLogger(__name__)
RESULT_PREFIX = "EDGEFLEET-PREPARE-RESULT "


@dataclass(frozen=True)
class PrepareLimits:
    timeout_s: float = 120.0  # wall clock for the whole child
    cpu_s: int = 60  # RLIMIT_CPU: CPU seconds before the kernel sends SIGXCPU
    memory_mb: int = 4096  # RLIMIT_AS of the child
    frames: int = 8  # NaN-check frames
    queries: int = 20  # latency queries
    duration_s: float = 1.0  # minimum latency measurement time


def sample_frames(n: int, *, size: tuple[int, int] = (96, 128), seed: int = 0) -> list[np.ndarray]:
    """Deterministic uint8 BGR frames: primary colours, grey and noise."""
    import numpy as np  # lazily: the agent process needs numpy only when it checks a model

    rng = np.random.default_rng(seed)
    h, w = size
    frames: list[np.ndarray] = []
    colours = [(0, 0, 220), (0, 220, 0), (220, 0, 0), (128, 128, 128)]
    for i in range(n):
        if i % 5 == 4:
            frames.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        else:
            frame = np.empty((h, w, 3), dtype=np.uint8)
            frame[:] = colours[i % 4]
            noise = rng.integers(-20, 21, size=(h, w, 3))
            frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def _apply_limits(cpu_s: int, memory_mb: int) -> None:
    """Limit this (child) process before it loads a runtime; the kernel enforces them.

    Set by the child itself rather than with ``preexec_fn``, which is unsafe
    when the parent runs threads (the camera pipeline does).
    """
    import resource

    if cpu_s > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    if memory_mb > 0:
        as_bytes = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def check_in_child(
    bundle_dir: Path,
    variant_id: str,
    gates: Gates,
    limits: PrepareLimits,
    *,
    engine_out: Path | None = None,
    stop: threading.Event | None = None,
) -> GateResult:
    """Run the load / NaN / latency check in a resource-limited child; never raises for model faults.

    Raises :class:`StopRequested` (the child killed, nothing judged) when ``stop`` is set meanwhile.
    """
    cmd = [
        sys.executable, "-m", "edge_agent.prepare",
        "--bundle", str(bundle_dir), "--variant", variant_id,
        "--gates", json.dumps({"latency_budget_ms": gates.latency_budget_ms, "max_nan_frames": gates.max_nan_frames}),
        "--frames", str(limits.frames), "--queries", str(limits.queries), "--duration", str(limits.duration_s),
        "--cpu-limit", str(limits.cpu_s), "--memory-limit", str(limits.memory_mb),
    ]
    if engine_out is not None:
        cmd += ["--engine-out", str(engine_out)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    while True:
        left = started + limits.timeout_s - time.monotonic()
        try:
            # short slices so that a stop request (SIGTERM to the agent) is noticed within STOP_POLL_S
            stdout, stderr = proc.communicate(timeout=max(0.0, min(left, STOP_POLL_S) if stop is not None else left))
            break
        except subprocess.TimeoutExpired:
            if stop is not None and stop.is_set():
                proc.kill()
                proc.communicate()
                raise StopRequested(f"stop requested during the model check of {bundle_dir.name}") from None
            if time.monotonic() - started >= limits.timeout_s:
                proc.kill()
                proc.communicate()
                return GateResult(False, "RUNTIME_CRASHED",
                                  f"model check hung: killed after {limits.timeout_s:.0f} s")
    if stop is not None and (stop.is_set() or proc.returncode == -signal.SIGTERM):
        # systemd signals the whole unit: a child killed with the agent is no verdict on the model
        raise StopRequested(f"stop requested during the model check of {bundle_dir.name}")
    elapsed = time.monotonic() - started
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX) and proc.returncode == 0:
            data = json.loads(line[len(RESULT_PREFIX):])
            metrics = {k: float(v) for k, v in data.get("metrics", {}).items()}
            metrics["check_s"] = round(elapsed, 3)
            return GateResult(bool(data["passed"]), data.get("reason_code"), str(data.get("detail", "")), metrics)
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    if proc.returncode < 0:
        why = f"runtime process killed by {_signal_name(proc.returncode)}"
        if -proc.returncode == signal.SIGXCPU:
            why += f" (CPU limit of {limits.cpu_s} s exceeded)"
        return GateResult(False, "RUNTIME_CRASHED", f"{why}; {tail}".strip("; "))
    return GateResult(False, "RUNTIME_CRASHED", f"runtime process exited {proc.returncode} without a result; {tail}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def evaluate(bundle_dir: Path, variant_id: str, *, budget_ms: float, max_nan_frames: int, frames: int,
             queries: int, duration_s: float) -> dict[str, Any]:
    """The child's work: load, NaN check, latency. Returns the result dict."""
    from models.bench import measure
    from models.runtime import Model, ModelRuntimeError

    t0 = time.perf_counter()
    try:
        model = Model(bundle_dir, variant_id, threads=1)
    except ModelRuntimeError as e:
        return {"passed": False, "reason_code": "MODEL_LOAD_FAILED", "detail": str(e), "metrics": {}}
    load_ms = (time.perf_counter() - t0) * 1e3
    samples = sample_frames(frames)
    try:
        nan_frames = sum(1 for f in samples if model.predict(f).has_nan())
    except ModelRuntimeError as e:
        return {"passed": False, "reason_code": "MODEL_LOAD_FAILED", "detail": f"inference failed: {e}", "metrics": {}}
    metrics: dict[str, float] = {"load_ms": round(load_ms, 2), "nan_frames": nan_frames}
    if nan_frames > max_nan_frames:
        return {"passed": False, "reason_code": "NAN_OUTPUT", "metrics": metrics,
                "detail": f"{nan_frames} of {frames} sample frames gave NaN/inf outputs (allowed {max_nan_frames})"}
    frame = samples[0]
    stats = measure(lambda: model.predict(frame), warmup_queries=3, min_queries=queries,
                    min_duration_s=duration_s, max_duration_s=max(duration_s * 4, 5.0), label=model.name)
    metrics.update(p50_ms=round(stats.p50_ms, 3), p95_ms=round(stats.p95_ms, 3), p99_ms=round(stats.p99_ms, 3),
                   fps=round(stats.throughput_qps, 2))
    model.close()
    if stats.p95_ms > budget_ms:
        return {"passed": False, "reason_code": "LATENCY_OVER_BUDGET", "metrics": metrics,
                "detail": f"p95 {stats.p95_ms:.1f} ms is over the {budget_ms:.1f} ms budget"}
    return {"passed": True, "reason_code": None, "metrics": metrics,
            "detail": f"loaded in {load_ms:.0f} ms, p95 {stats.p95_ms:.1f} ms within {budget_ms:.1f} ms, no NaNs"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_agent.prepare",
        description="Child-process model check run by the agent: load a bundle variant, check sample "
        "frames for NaN/inf, measure latency; prints one result line. Exit 0 with a result, 2 on bad flags.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (a staged slot)")
    p.add_argument("--variant", required=True, help="variant id to load")
    p.add_argument("--gates", default="{}", help='JSON {"latency_budget_ms": .., "max_nan_frames": ..}')
    p.add_argument("--frames", type=int, default=8, help="sample frames for the NaN check")
    p.add_argument("--queries", type=int, default=20, help="latency queries")
    p.add_argument("--duration", type=float, default=1.0, help="minimum latency measurement seconds")
    p.add_argument("--engine-out", type=Path, default=None, help="build a TensorRT engine here first")
    p.add_argument("--cpu-limit", type=int, default=0, help="RLIMIT_CPU seconds for this process (0 = none)")
    p.add_argument("--memory-limit", type=int, default=0, help="RLIMIT_AS megabytes for this process (0 = none)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _apply_limits(args.cpu_limit, args.memory_limit)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    gates = json.loads(args.gates)
    if args.engine_out is not None:
        from edge_agent.errors import FatalError
        from edge_agent.slots import build_engine

        try:
            build_engine(args.bundle / _variant_file(args.bundle, args.variant), args.engine_out)
        except FatalError as e:
            result: dict[str, Any] = {"passed": False, "reason_code": e.reason.value, "detail": e.detail}
            print(RESULT_PREFIX + json.dumps(result), flush=True)
            return 0
    result = evaluate(
        args.bundle, args.variant, budget_ms=float(gates.get("latency_budget_ms", 1e9)),
        max_nan_frames=int(gates.get("max_nan_frames", 0)), frames=args.frames,
        queries=args.queries, duration_s=args.duration,
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def _variant_file(bundle: Path, variant_id: str) -> str:
    from models.bundle import read_bundle

    return read_bundle(bundle, verify=False).variant(variant_id).file


if __name__ == "__main__":
    sys.exit(main())
