"""Prepare gate: load every staged variant in a child process, check it for NaNs, time them, choose one.

The agent never loads a new model in its own process first: it runs
``python -m edge_agent.update.prepare`` under resource limits (CPU seconds and
address space, ``resource.setrlimit``), so a model that crashes or runs away
with its runtime kills only the child. The child

1. opens each staged variant (the assigned one and its alternates, in the
   server's selection order) and checks it on sample frames: a variant that
   does not load, or gives NaN/inf, is disqualified with its reason, the
   others go on;
2. times the survivors *interleaved* (:func:`models.bench.measure_interleaved`:
   one query of each per round, the order rotated), so a neighbour stealing
   the core hits them all alike. Per-query thread CPU time decides for ONNX
   Runtime on the CPU; wall time when a GPU runtime is involved, whose work
   the calling thread's CPU clock does not see;
3. chooses (:func:`choose_variant`): the first survivor in the selection
   order, unless the interval rule (:func:`models.stats.prefer_faster`) finds
   another one faster by at least the selection's ``min_speedup`` — the
   fastest such. The chosen variant must still meet the latency budget.

The parent maps the child's fate to a :class:`~edge_agent.perception.GateResult`:

- the child printed a result → that result (``MODEL_LOAD_FAILED``,
  ``ENGINE_BUILD_FAILED``, ``NAN_OUTPUT``, ``LATENCY_OVER_BUDGET`` or passed),
  with the chosen variant's metrics and ``evidence = {"variant": chosen,
  "timing": [verdict, ...]}``; when every variant is disqualified, the first
  variant's reason;
- the child died by a signal (SIGSEGV, SIGXCPU, SIGKILL...) or exited
  non-zero without a result, or hung past the timeout → ``RUNTIME_CRASHED``.

Sample frames are synthetic (:func:`edge_agent.perception.samples.sample_frames`), the same in every run.
This module does not record the choice in the slot, nor decide what happens
next (see :mod:`edge_agent.update.gate` and :mod:`edge_agent.update.core`).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import ReasonCode, StopRequested
from edge_agent.perception import GateResult
from edge_agent.perception.runtimes import EngineOptions
from edge_agent.perception.samples import sample_frames
from edge_agent.stopping import STOP_POLL_S
from models.bundle import Gates
from models.hardware import HardwareProfile
from models.reasons import UnknownReasonCode
from models.stats import SpeedupVerdict, prefer_faster, quantile_lower_bound

if TYPE_CHECKING:
    import numpy as np

    from models.runtime import Model

__all__ = ["PrepareLimits", "VariantChoice", "check_in_child", "choose_variant", "evaluate", "main"]

log = logging.getLogger(__name__)
RESULT_PREFIX = "EDGEFLEET-PREPARE-RESULT "


@dataclass(frozen=True)
class PrepareLimits:
    timeout_s: float = 120.0  # wall clock for the whole child
    cpu_s: int = 60  # RLIMIT_CPU: CPU seconds before the kernel sends SIGXCPU
    memory_mb: int = 4096  # RLIMIT_AS of the child
    frames: int = 8  # NaN-check frames
    queries: int = 20  # latency queries (interleaved rounds when several variants are timed)
    duration_s: float = 1.0  # minimum latency measurement time


@dataclass(frozen=True)
class VariantChoice:
    """The variant to serve and the interval verdicts (each alternate against the preferred) behind it."""

    variant: str
    preferred: str
    verdicts: tuple[SpeedupVerdict, ...]

    @property
    def reason(self) -> str:
        if not self.verdicts:
            return f"{self.variant} is the only variant timed"
        if self.variant == self.preferred:
            return f"kept the server's preference {self.preferred}: " + "; ".join(v.reason for v in self.verdicts)
        won = next(v for v in self.verdicts if v.candidate == self.variant)
        return f"chose {self.variant} over {self.preferred}: {won.reason}"


def choose_variant(
    order: Sequence[str], samples: Mapping[str, Sequence[float]], *, min_speedup: float, metric: str
) -> VariantChoice:
    """Start from ``order[0]`` (the server's preference); switch only to a variant the interval rule
    prefers over it (lower confidence bound of the speedup >= ``min_speedup``), the fastest such.

    ``samples`` holds each variant's per-query times from one interleaved run (round *i* of each
    is a pair). Pure. Raises ``ValueError`` for an empty order or samples that
    :func:`models.stats.prefer_faster` refuses.
    """
    if not order:
        raise ValueError("no variant to choose from")
    preferred = order[0]
    verdicts = tuple(
        prefer_faster(preferred, samples[preferred], other, samples[other], min_speedup=min_speedup, metric=metric)
        for other in order[1:]
    )
    winners = [v for v in verdicts if v.preferred]
    chosen = max(winners, key=lambda v: v.interval.point).candidate if winners else preferred
    return VariantChoice(chosen, preferred, verdicts)


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


# --------------------------------------------------------------------------- the parent side


def check_in_child(
    bundle_dir: Path,
    variants: str | Sequence[str],
    gates: Gates,
    limits: PrepareLimits,
    *,
    min_speedup: float = 1.1,
    engines_dir: Path | None = None,
    profile: HardwareProfile | None = None,
    engine: EngineOptions | None = None,
    stop: threading.Event | None = None,
) -> GateResult:
    """Run the load / NaN / timing / choice check in a resource-limited child; never raises for model faults.

    ``variants`` are the staged variant ids in the server's selection order (one id: that variant
    alone); ``min_speedup`` the selection entry's. With ``engines_dir`` and a ``profile`` that has
    TensorRT, build-on-device variants get their engine built (and cached) there first. Raises
    :class:`StopRequested` (the child killed, nothing judged) when ``stop`` is set meanwhile.
    """
    ids = [variants] if isinstance(variants, str) else list(variants)
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.update.prepare",
        "--bundle",
        str(bundle_dir),
        *(arg for vid in ids for arg in ("--variant", vid)),
        "--gates",
        json.dumps({"latency_budget_ms": gates.latency_budget_ms, "max_nan_frames": gates.max_nan_frames}),
        "--min-speedup",
        str(min_speedup),
        "--frames",
        str(limits.frames),
        "--queries",
        str(limits.queries),
        "--duration",
        str(limits.duration_s),
        "--cpu-limit",
        str(limits.cpu_s),
        "--memory-limit",
        str(limits.memory_mb),
    ]
    if engines_dir is not None and profile is not None:
        cmd += ["--engines-dir", str(engines_dir), "--profile", json.dumps(profile.to_dict())]
        if engine is not None:
            cmd += ["--engine-options", json.dumps(engine.to_dict())]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    finished = _wait(proc, bundle_dir, limits, stop)
    if finished is None:
        return GateResult(False, ReasonCode.RUNTIME_CRASHED, f"model check hung: killed after {limits.timeout_s:.0f} s")
    stdout, stderr = finished
    if stop is not None and (stop.is_set() or proc.returncode == -signal.SIGTERM):
        # systemd signals the whole unit: a child killed with the agent is no verdict on the model
        raise StopRequested(f"stop requested during the model check of {bundle_dir.name}")
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX) and proc.returncode == 0:
            return _parse_result(line[len(RESULT_PREFIX) :], elapsed_s=time.monotonic() - started)
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    if proc.returncode < 0:
        why = f"runtime process killed by {_signal_name(proc.returncode)}"
        if -proc.returncode == signal.SIGXCPU:
            why += f" (CPU limit of {limits.cpu_s} s exceeded)"
        return GateResult(False, ReasonCode.RUNTIME_CRASHED, f"{why}; {tail}".strip("; "))
    return GateResult(
        False, ReasonCode.RUNTIME_CRASHED, f"runtime process exited {proc.returncode} without a result; {tail}"
    )


def _wait(
    proc: subprocess.Popen[str], bundle_dir: Path, limits: PrepareLimits, stop: threading.Event | None
) -> tuple[str, str] | None:
    """The child's (stdout, stderr), or None when it hung past the timeout (then killed)."""
    started = time.monotonic()
    while True:
        left = started + limits.timeout_s - time.monotonic()
        try:
            # short slices so that a stop request (SIGTERM to the agent) is noticed within STOP_POLL_S
            return proc.communicate(timeout=max(0.0, min(left, STOP_POLL_S) if stop is not None else left))
        except subprocess.TimeoutExpired:
            if stop is not None and stop.is_set():
                proc.kill()
                proc.communicate()
                raise StopRequested(f"stop requested during the model check of {bundle_dir.name}") from None
            if time.monotonic() - started >= limits.timeout_s:
                proc.kill()
                proc.communicate()
                return None


def _parse_result(text: str, *, elapsed_s: float) -> GateResult:
    data = json.loads(text)
    metrics = {k: float(v) for k, v in data.get("metrics", {}).items()}
    metrics["check_s"] = round(elapsed_s, 3)
    code = data.get("reason_code")
    try:
        reason = ReasonCode.parse(code) if code else None
    except UnknownReasonCode as e:
        return GateResult(False, ReasonCode.RUNTIME_CRASHED, f"model check answered {e}")
    evidence = data.get("evidence")
    return GateResult(
        bool(data["passed"]),
        reason,
        str(data.get("detail", "")),
        metrics,
        dict(evidence) if isinstance(evidence, Mapping) else {},
    )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --------------------------------------------------------------------------- the child side


@dataclass
class _Checked:
    """A variant that loaded and gave finite outputs on the sample frames."""

    model: Model
    load_ms: float
    nan_frames: int


def _refusal(reason: ReasonCode, detail: str, metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
    return {"passed": False, "reason_code": reason.value, "detail": detail, "metrics": dict(metrics or {})}


def _open_variant(
    bundle_dir: Path,
    variant_id: str,
    *,
    engines_dir: Path | None,
    profile: HardwareProfile | None,
    engine: EngineOptions | None = None,
) -> Model:
    """Open one staged variant as it will serve (:func:`edge_agent.perception.runtimes.open_staged`): a
    build-on-device variant as the TensorRT engine built (or found in the cache) on this device.

    Raises ``ModelRuntimeError``: ``EngineBuildError`` when the engine cannot be built, another
    ``ModelRuntimeError`` when the variant does not load.
    """
    from models.runtime import Model

    if engines_dir is None or profile is None:  # a bare check (edge-bench, tests): the variant file itself
        return Model(bundle_dir, variant_id, threads=1)
    from edge_agent.perception.runtimes import open_staged

    return open_staged(bundle_dir, variant_id, engines_dir=engines_dir, profile=profile, threads=1, engine=engine)


def _check_variant(
    bundle_dir: Path,
    variant_id: str,
    samples: Sequence[np.ndarray],
    *,
    max_nan_frames: int,
    engines_dir: Path | None,
    profile: HardwareProfile | None,
    engine: EngineOptions | None = None,
) -> _Checked | dict[str, Any]:
    """Load one variant and check it on the sample frames; a refusal dict disqualifies it."""
    from models.runtime import ModelRuntimeError
    from models.runtime.errors import EngineBuildError

    t0 = time.perf_counter()
    try:
        model = _open_variant(bundle_dir, variant_id, engines_dir=engines_dir, profile=profile, engine=engine)
    except EngineBuildError as e:
        return _refusal(ReasonCode.ENGINE_BUILD_FAILED, str(e))
    except ModelRuntimeError as e:
        return _refusal(ReasonCode.MODEL_LOAD_FAILED, str(e))
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        nan_frames = sum(1 for f in samples if model.predict(f).has_nan())
    except ModelRuntimeError as e:
        model.close()
        return _refusal(ReasonCode.MODEL_LOAD_FAILED, f"inference failed: {e}")
    metrics = {"load_ms": round(load_ms, 2), "nan_frames": float(nan_frames)}
    if nan_frames > max_nan_frames:
        model.close()
        return _refusal(
            ReasonCode.NAN_OUTPUT,
            f"{nan_frames} of {len(samples)} sample frames gave NaN/inf outputs (allowed {max_nan_frames})",
            metrics,
        )
    return _Checked(model, load_ms, nan_frames)


def _on_gpu(model: Model) -> bool:
    """Whether the model's work runs outside the calling thread's CPU clock (a GPU runtime)."""
    from models.runtime.onnxrt import OrtRuntime

    runtime = model.runtime
    if isinstance(runtime, OrtRuntime):
        return runtime.providers[:1] != ("CPUExecutionProvider",)
    return True


def evaluate(
    bundle_dir: Path,
    variant_ids: str | Sequence[str],
    *,
    budget_ms: float,
    max_nan_frames: int,
    frames: int,
    queries: int,
    duration_s: float,
    min_speedup: float = 1.1,
    engines_dir: Path | None = None,
    profile: HardwareProfile | None = None,
    engine: EngineOptions | None = None,
) -> dict[str, Any]:
    """The child's work: check each variant, time the survivors interleaved, choose. Returns the result dict."""
    ids = [variant_ids] if isinstance(variant_ids, str) else list(variant_ids)
    samples = sample_frames(frames)
    checked: dict[str, _Checked] = {}
    refused: dict[str, dict[str, Any]] = {}
    try:
        for vid in ids:
            outcome = _check_variant(
                bundle_dir,
                vid,
                samples,
                max_nan_frames=max_nan_frames,
                engines_dir=engines_dir,
                profile=profile,
                engine=engine,
            )
            if isinstance(outcome, _Checked):
                checked[vid] = outcome
            else:
                refused[vid] = outcome
        if not checked:
            first = refused[ids[0]]
            return {**first, "detail": f"{ids[0]}: {first['detail']}{_refused_note(ids[1:], refused)}"}
        return _time_and_choose(
            checked,
            samples[0],
            refused,
            budget_ms=budget_ms,
            queries=queries,
            duration_s=duration_s,
            min_speedup=min_speedup,
        )
    finally:
        for c in checked.values():
            c.model.close()


def _refused_note(ids: Sequence[str], refused: Mapping[str, Mapping[str, Any]]) -> str:
    notes = [f"{vid} ({refused[vid]['reason_code']}: {refused[vid]['detail']})" for vid in ids if vid in refused]
    return f"; not served: {'; '.join(notes)}" if notes else ""


def _time_and_choose(
    checked: Mapping[str, _Checked],
    frame: np.ndarray,
    refused: Mapping[str, Mapping[str, Any]],
    *,
    budget_ms: float,
    queries: int,
    duration_s: float,
    min_speedup: float,
) -> dict[str, Any]:
    from models.bench import measure_interleaved
    from models.runtime import ModelRuntimeError

    fns = {vid: (lambda m=c.model: m.predict(frame)) for vid, c in checked.items()}
    try:
        timed = measure_interleaved(
            fns,
            warmup_queries=3,
            min_rounds=queries,
            min_duration_s=duration_s,
            max_duration_s=max(duration_s * 4, 5.0),
        )
    except ModelRuntimeError as e:
        return _refusal(ReasonCode.MODEL_LOAD_FAILED, f"inference failed while timing: {e}")
    metric = "wall" if any(_on_gpu(c.model) for c in checked.values()) else "cpu"
    per_query = {vid: (t.wall_ms if metric == "wall" else t.cpu_ms) for vid, t in timed.items()}
    choice = choose_variant(list(checked), per_query, min_speedup=min_speedup, metric=metric)
    chosen, stats = checked[choice.variant], timed[choice.variant].wall
    metrics = {
        "load_ms": round(chosen.load_ms, 2),
        "nan_frames": float(chosen.nan_frames),
        "p50_ms": round(stats.p50_ms, 3),
        "p95_ms": round(stats.p95_ms, 3),
        "p99_ms": round(stats.p99_ms, 3),
        "fps": round(stats.throughput_qps, 2),
        "variants_timed": float(len(checked)),
    }
    evidence = {"variant": choice.variant, "timing": [v.to_dict() for v in choice.verdicts]}
    why = choice.reason + _refused_note(list(refused), refused)
    p95_low = quantile_lower_bound(timed[choice.variant].wall_ms, 0.95, confidence=0.95)
    if p95_low is not None and p95_low > budget_ms:  # the p95's lower confidence bound, not the point
        return {
            **_refusal(
                ReasonCode.LATENCY_OVER_BUDGET,
                f"{choice.variant}: p95 {stats.p95_ms:.1f} ms is over the "
                f"{budget_ms:.1f} ms budget (lower confidence bound {p95_low:.1f} ms; {why})",
                metrics,
            ),
            "evidence": evidence,
        }
    return {
        "passed": True,
        "reason_code": None,
        "metrics": metrics,
        "evidence": evidence,
        "detail": f"{choice.variant}: loaded in {chosen.load_ms:.0f} ms, p95 {stats.p95_ms:.1f} ms within "
        f"{budget_ms:.1f} ms, no NaNs; {why}",
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_agent.update.prepare",
        description="Child-process model check run by the agent: load each staged variant of a bundle, check "
        "sample frames for NaN/inf, time the variants interleaved and choose the one to serve; prints one result "
        "line. Exit 0 with a result, 2 on bad flags.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (a staged slot)")
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        help="variant id to check (repeat: the server's selection order, preferred first)",
    )
    p.add_argument("--gates", default="{}", help='JSON {"latency_budget_ms": .., "max_nan_frames": ..}')
    p.add_argument(
        "--min-speedup",
        type=float,
        default=1.1,
        help="an alternate replaces the preferred variant only when the lower confidence bound of "
        "its speedup is at least this",
    )
    p.add_argument("--frames", type=int, default=8, help="sample frames for the NaN check")
    p.add_argument("--queries", type=int, default=20, help="latency queries (interleaved rounds)")
    p.add_argument("--duration", type=float, default=1.0, help="minimum latency measurement seconds")
    p.add_argument("--engines-dir", type=Path, default=None, help="TensorRT engine cache (with --profile)")
    p.add_argument("--profile", default=None, help="the device's hardware profile as JSON (with --engines-dir)")
    p.add_argument(
        "--engine-options",
        default=None,
        help='how engines are built, JSON {"batch": [min, opt, max], "workspace_mb": ..}',
    )
    p.add_argument("--cpu-limit", type=int, default=0, help="RLIMIT_CPU seconds for this process (0 = none)")
    p.add_argument("--memory-limit", type=int, default=0, help="RLIMIT_AS megabytes for this process (0 = none)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _apply_limits(args.cpu_limit, args.memory_limit)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    gates = json.loads(args.gates)
    profile = HardwareProfile.from_dict(json.loads(args.profile)) if args.profile else None
    result = evaluate(
        args.bundle,
        args.variant,
        budget_ms=float(gates.get("latency_budget_ms", 1e9)),
        max_nan_frames=int(gates.get("max_nan_frames", 0)),
        frames=args.frames,
        queries=args.queries,
        duration_s=args.duration,
        min_speedup=args.min_speedup,
        engines_dir=args.engines_dir,
        profile=profile,
        engine=EngineOptions.from_dict(json.loads(args.engine_options)) if args.engine_options else None,
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
