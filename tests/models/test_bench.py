"""models.bench: single-stream measurement rules and statistics."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from models.bench import BenchConfig, measure, measure_with, stats_from_samples


class FakeClock:
    """A nanosecond clock that advances by a scripted amount on each query."""

    def __init__(self, step_ms: list[float], *, cycle: bool = True) -> None:
        self.now = 0
        self.steps = step_ms
        self.cycle = cycle
        self.calls = 0

    def __call__(self) -> int:
        return self.now

    def query(self) -> None:
        i = self.calls % len(self.steps) if self.cycle else min(self.calls, len(self.steps) - 1)
        self.now += int(self.steps[i] * 1e6)
        self.calls += 1


def test_warmup_queries_are_run_but_not_timed() -> None:
    clock = FakeClock([100.0] * 5 + [2.0], cycle=False)  # slow warm-up, then 2 ms per query
    stats = measure(clock.query, warmup_queries=5, min_queries=20, min_duration_s=0.0, clock=clock)
    assert clock.calls == 5 + stats.n
    assert stats.n == 20
    assert stats.max_ms == pytest.approx(2.0)


def test_runs_until_both_min_queries_and_min_duration() -> None:
    clock = FakeClock([10.0])
    stats = measure(clock.query, warmup_queries=0, min_queries=5, min_duration_s=1.0, clock=clock)
    assert stats.n == 100  # 1 s of 10 ms queries, more than min_queries
    stats = measure(clock.query, warmup_queries=0, min_queries=300, min_duration_s=1.0, clock=clock)
    assert stats.n == 300


def test_max_duration_wins_over_min_queries() -> None:
    clock = FakeClock([50.0])
    stats = measure(
        clock.query, warmup_queries=0, min_queries=1000, min_duration_s=0.0, max_duration_s=1.0, clock=clock
    )
    assert stats.n == 20


def test_statistics_match_numpy() -> None:
    rng = np.random.default_rng(1)
    samples = rng.gamma(4.0, 2.0, size=500)
    s = stats_from_samples(samples, wall_s=float(samples.sum()) / 1e3)
    assert s.p50_ms == pytest.approx(float(np.percentile(samples, 50)))
    assert s.p99_ms == pytest.approx(float(np.percentile(samples, 99)))
    assert s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    assert s.mean_ms == pytest.approx(float(samples.mean()))
    assert s.throughput_qps == pytest.approx(1e3 / samples.mean())
    assert s.cv == pytest.approx(float(samples.std() / samples.mean()))
    d = s.to_dict()
    assert d["samples_ms"] == [] and d["n"] == 500
    assert len(s.to_dict(samples=True)["samples_ms"]) == 500


def test_noisy_runs_are_flagged_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock([1.0, 1.0, 1.0, 9.0])
    with caplog.at_level(logging.WARNING, logger="models.bench"):
        stats = measure(clock.query, warmup_queries=0, min_queries=40, min_duration_s=0.0, clock=clock, label="tiny")
    assert stats.noisy and stats.cv > 0.25
    assert "tiny latency is noisy" in caplog.text
    steady = stats_from_samples([5.0, 5.1, 4.9, 5.0])
    assert not steady.noisy


def test_speedup_and_config() -> None:
    fast, slow = stats_from_samples([2.0, 2.0]), stats_from_samples([5.0, 5.0])
    assert fast.speedup_over(slow) == pytest.approx(2.5)
    calls = []
    stats = measure_with(lambda: calls.append(1), BenchConfig(warmup_queries=3, min_queries=7, min_duration_s=0.0))
    assert stats.n == 7 and len(calls) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_queries": 0}, "min_queries"),
        ({"warmup_queries": -1}, "warm-up"),
        ({"max_duration_s": 0}, "max_duration_s"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        measure(lambda: None, **kwargs)  # type: ignore[arg-type]


def test_empty_or_bad_samples_are_rejected() -> None:
    with pytest.raises(ValueError, match="no latency samples"):
        stats_from_samples([])
    with pytest.raises(ValueError, match="finite"):
        stats_from_samples([1.0, float("nan")])
