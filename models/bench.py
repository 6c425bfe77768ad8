"""The benchmark harness: MLPerf-style single-stream latency (contract §5).

Each query is timed alone (``time.perf_counter_ns`` around one call); the
warm-up queries are run and discarded; the run lasts at least
``min_queries`` queries *and* ``min_duration_s`` seconds, and stops at
``max_duration_s``. Percentiles use linear interpolation. A coefficient of
variation above 0.25 marks the run ``noisy`` (logged as a warning): the
machine was busy and the numbers deserve a rerun.

:func:`cpu_identity` records which CPU measured. Standard library + numpy.
This module does not load models; pass it any zero-argument callable
(``lambda: rt.run(batch)``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LatencyStats",
    "BenchConfig",
    "Interleaved",
    "measure",
    "measure_with",
    "measure_interleaved",
    "stats_from_samples",
    "NOISY_CV",
    "cpu_identity",
]

log = logging.getLogger(__name__)

NOISY_CV = 0.25


@dataclass(frozen=True)
class BenchConfig:
    """The keyword arguments of :func:`measure`, as one value to pass around."""

    warmup_queries: int = 10
    warmup_s: float = 0.0  # seconds of extra warm-up after the warm-up queries
    min_queries: int = 100
    min_duration_s: float = 2.0  # seconds
    max_duration_s: float = 60.0  # seconds; wins over min_queries


@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``n`` timed queries, in milliseconds."""

    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput_qps: float  # queries / wall time of the timed phase
    cv: float  # standard deviation / mean
    noisy: bool
    samples_ms: tuple[float, ...] = ()

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the raw samples only on request (they can be long)."""
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms) if samples else []
        return d

    def speedup_over(self, baseline: LatencyStats) -> float:
        """``baseline.p50 / self.p50`` (> 1 means this one is faster)."""
        return baseline.p50_ms / self.p50_ms if self.p50_ms > 0 else float("inf")


def stats_from_samples(samples_ms: Sequence[float], *, wall_s: float | None = None) -> LatencyStats:
    """Statistics of recorded per-query latencies (ms). Raises ``ValueError`` when empty."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples to summarise")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("latency samples must be finite and >= 0")
    mean = float(a.mean())
    cv = float(a.std() / mean) if mean > 0 else 0.0
    wall = float(wall_s) if wall_s else float(a.sum()) / 1e3
    p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50, 90, 95, 99]))
    return LatencyStats(
        n=int(a.size),
        mean_ms=mean,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        throughput_qps=a.size / wall if wall > 0 else float("inf"),
        cv=cv,
        noisy=cv > NOISY_CV,
        samples_ms=tuple(float(x) for x in a),
    )


def measure(
    fn: Callable[[], object],
    *,
    warmup_queries: int = 10,
    warmup_s: float = 0.0,
    min_queries: int = 100,
    min_duration_s: float = 2.0,
    max_duration_s: float = 60.0,
    label: str = "",
    clock: Callable[[], int] = time.perf_counter_ns,
) -> LatencyStats:
    """Time ``fn`` single-stream: warm up, then query until both minimums are met.

    ``clock`` returns nanoseconds (tests pass a fake). Raises ``ValueError``
    for impossible settings; whatever ``fn`` raises propagates.
    """
    if min_queries < 1:
        raise ValueError(f"min_queries must be >= 1, got {min_queries}")
    if warmup_queries < 0 or warmup_s < 0 or min_duration_s < 0:
        raise ValueError("warm-up counts and durations must be >= 0")
    if max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
    for _ in range(warmup_queries):
        fn()
    if warmup_s > 0:
        end = clock() + int(warmup_s * 1e9)
        while clock() < end:
            fn()
    samples: list[float] = []
    start = clock()
    min_end, max_end = start + int(min_duration_s * 1e9), start + int(max_duration_s * 1e9)
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        if (len(samples) >= min_queries and t1 >= min_end) or t1 >= max_end:
            break
    stats = stats_from_samples(samples, wall_s=(clock() - start) / 1e9)
    if stats.noisy:
        log.warning(
            "%s latency is noisy (cv %.2f > %.2f over %d queries): the host is busy, rerun for stable numbers",
            label or "benchmark",
            stats.cv,
            NOISY_CV,
            stats.n,
        )
    return stats


def measure_with(fn: Callable[[], object], config: BenchConfig, *, label: str = "") -> LatencyStats:
    """:func:`measure` with a :class:`BenchConfig`."""
    return measure(
        fn,
        warmup_queries=config.warmup_queries,
        warmup_s=config.warmup_s,
        min_queries=config.min_queries,
        min_duration_s=config.min_duration_s,
        max_duration_s=config.max_duration_s,
        label=label,
    )


@dataclass(frozen=True)
class Interleaved:
    """Per-query wall and thread-CPU times of one function timed round-robin with others."""

    label: str
    wall_ms: tuple[float, ...]
    cpu_ms: tuple[float, ...]  # CPU time of the calling thread during each query

    @property
    def wall(self) -> LatencyStats:
        return stats_from_samples(self.wall_ms)

    @property
    def cpu(self) -> LatencyStats:
        return stats_from_samples(self.cpu_ms)


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup_queries: int = 10,
    min_rounds: int = 100,
    min_duration_s: float = 2.0,
    max_duration_s: float = 60.0,
    wall_clock: Callable[[], int] = time.perf_counter_ns,
    cpu_clock: Callable[[], int] = time.thread_time_ns,
) -> dict[str, Interleaved]:
    """Time several functions round-robin: one query of each per round, the order rotated
    every round so that no function always runs first or after the same neighbour.

    Host drift (another process starting, thermal throttling) then hits every
    function alike, and round *i* of each forms a pair for
    :func:`models.stats.speedup_interval`. Thread CPU time counts only the time
    this thread ran, so a neighbour that steals the core inflates wall time but
    not CPU time; it measures single-threaded runtimes (``intra_op_threads=1``)
    exactly. Raises ``ValueError`` for impossible settings; what a function
    raises propagates.
    """
    if not fns:
        raise ValueError("nothing to measure")
    if min_rounds < 1 or warmup_queries < 0 or min_duration_s < 0 or max_duration_s <= 0:
        raise ValueError("need min_rounds >= 1, warm-up >= 0, min_duration_s >= 0 and max_duration_s > 0")
    labels = list(fns)
    for _ in range(warmup_queries):
        for label in labels:
            fns[label]()
    wall: dict[str, list[float]] = {k: [] for k in labels}
    cpu: dict[str, list[float]] = {k: [] for k in labels}
    start = wall_clock()
    min_end, max_end = start + int(min_duration_s * 1e9), start + int(max_duration_s * 1e9)
    rounds = 0
    while True:
        shift = rounds % len(labels)
        for label in labels[shift:] + labels[:shift]:
            c0, t0 = cpu_clock(), wall_clock()
            fns[label]()
            t1, c1 = wall_clock(), cpu_clock()
            wall[label].append((t1 - t0) / 1e6)
            cpu[label].append(max(c1 - c0, 1) / 1e6)  # a clock tick coarser than the query reads as 0
        rounds += 1
        now = wall_clock()
        if (rounds >= min_rounds and now >= min_end) or now >= max_end:
            break
    return {k: Interleaved(k, tuple(wall[k]), tuple(cpu[k])) for k in labels}


def cpu_identity() -> dict[str, Any]:
    """The CPU that measured, from Linux ``/proc/cpuinfo`` (empty where there is none).

    What decides INT8's gain on x86: the exact CPU (vendor family/model, clock) and its
    integer dot-product extensions — "AMD EPYC" alone covers CPUs whose INT8 kernels differ
    severalfold (AVX-512 VNNI / AVX-VNNI do 4 INT8 MACs per lane per instruction; plain AVX2
    goes through vpmaddubsw, whose throughput varies by core generation). Raises nothing."""
    info: dict[str, Any] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    first = text.split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for key, name in (
        ("model name", "model_name"),
        ("vendor_id", "vendor"),
        ("cpu family", "family"),
        ("model", "model"),
        ("stepping", "stepping"),
        ("cpu MHz", "mhz"),
    ):
        if key in fields:
            info[name] = fields[key]
    flags = set(fields.get("flags", "").split())
    info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return info
