"""Shared helpers of the benchmark scripts: scenarios run round by round, and intervals of what they measured.

A benchmark that compares scenarios (a baseline and a candidate, several polling modes) runs
them *interleaved*: every round runs each scenario once, and the order rotates from one round
to the next, so a change of the host's load during the run (another job starting, a core
throttled) falls on every scenario alike instead of on whichever ran last.
:func:`run_rounds` does that and keeps each result with its round; :func:`mean_interval`
(Student's t over the per-round values) and :func:`median_interval` (a bootstrap over
per-query samples) give the per-scenario confidence intervals the tables print, and
:func:`models.stats.speedup_interval` the interval of a ratio of two interleaved scenarios.

Per-query interleaving inside one process (one query of each function per round) is
:func:`models.bench.measure_interleaved`; this module is for scenarios too long or too
stateful for that (a staged rollout, a load run against a server, a video pipeline).
No I/O here, and nothing to run: ``make bench`` runs every script in this folder, and
running this one prints what it is for and exits 0.

    from common import run_rounds, mean_interval   # scripts in benchmarks/ import it by name
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from models.stats import Interval

__all__ = [
    "RoundResult",
    "by_scenario",
    "fmt_interval",
    "mean_interval",
    "median_interval",
    "parse_with_quick",
    "rotated",
    "round_info",
    "run_rounds",
]

T = TypeVar("T")

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (no scipy on these hosts)
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class RoundResult(Generic[T]):
    """What one scenario returned in one round, and where it ran in that round's order."""

    round: int  # 0-based
    position: int  # 0 = ran first in its round
    scenario: str
    value: T


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` rotated left by ``round_index``: round 0 runs them as given, round 1 starts with
    the second, and so on, so no scenario always runs first or after the same neighbour."""
    if not names:
        return []
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


def run_rounds(
    scenarios: Mapping[str, Callable[[], T]],
    rounds: int,
    *,
    between: Callable[[str, str | None], None] | None = None,
) -> list[RoundResult[T]]:
    """Run every scenario once per round, in :func:`rotated` order, for ``rounds`` rounds.

    ``between(done, next_name)`` runs after each scenario (``next_name`` is None after the last
    of the whole run): a place for untimed work one scenario leaves for the next, like warming a
    cache it replaced. Results come back in the order they were measured. Raises ``ValueError``
    for no scenarios or ``rounds < 1``; what a scenario raises propagates.
    """
    if not scenarios:
        raise ValueError("no scenarios to run")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(scenarios)
    plan = [(r, pos, name) for r in range(rounds) for pos, name in enumerate(rotated(names, r))]
    results: list[RoundResult[T]] = []
    for k, (r, pos, name) in enumerate(plan):
        results.append(RoundResult(r, pos, name, scenarios[name]()))
        if between is not None:
            between(name, plan[k + 1][2] if k + 1 < len(plan) else None)
    return results


def by_scenario(results: Sequence[RoundResult[T]]) -> dict[str, list[T]]:
    """Each scenario's values in round order (the first scenario's first)."""
    out: dict[str, list[T]] = {}
    for res in sorted(results, key=lambda x: x.round):
        out.setdefault(res.scenario, []).append(res.value)
    return out


def round_info(results: Sequence[RoundResult[Any]]) -> list[list[str]]:
    """The order the scenarios ran in, one list per round (for a benchmark's JSON)."""
    rounds: dict[int, list[RoundResult[Any]]] = {}
    for res in results:
        rounds.setdefault(res.round, []).append(res)
    return [[x.scenario for x in sorted(rounds[r], key=lambda x: x.position)] for r in sorted(rounds)]


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> Interval:
    """The mean of per-round ``values`` with its Student-t interval (one value: low = high = it).

    Raises ``ValueError`` on no values, a non-finite one, or a confidence other than 0.95 (the
    t table this module carries).
    """
    if not values:
        raise ValueError("need at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite, got {list(values)!r}")
    if confidence != 0.95:
        raise ValueError(f"confidence must be 0.95, got {confidence}")
    mean = statistics.fmean(values)
    n = len(values)
    if n == 1:
        return Interval(mean, mean, mean, confidence)
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, confidence)


def median_interval(
    samples: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """The median of per-query ``samples`` with its bootstrap (percentile) interval.

    Raises ``ValueError`` on no samples, a non-finite one, a confidence outside (0, 1) or fewer
    than 100 resamples.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("need at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 4_000_000 // x.size)  # resamples drawn at once: bounded memory for long runs
    medians = np.concatenate(
        [
            np.median(x[rng.integers(0, x.size, size=(min(per_chunk, resamples - k), x.size))], axis=1)
            for k in range(0, resamples, per_chunk)
        ]
    )
    tail = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(medians, [tail, 1.0 - tail]))
    return Interval(float(np.median(x)), low, high, confidence)


def parse_with_quick(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, Any]
) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick`` (a flag the parser defines) the ``quick`` values become
    the defaults first, so a flag given explicitly still wins over them."""
    first, _ = parser.parse_known_args(argv)
    if first.quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)


def fmt_interval(iv: Interval, spec: str = ".2f") -> str:
    """``12.34 [11.90, 12.80]``: a table cell."""
    return f"{format(iv.point, spec)} [{format(iv.low, spec)}, {format(iv.high, spec)}]"


if __name__ == "__main__":
    print(__doc__.split("\n\n")[0] + "\n(a module the other benchmarks import; nothing to run)")
    sys.exit(0)
