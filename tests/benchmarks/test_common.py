"""benchmarks/common.py: scenarios interleaved round by round, and the intervals the tables print."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    # the benchmark scripts import it by name from their own folder; a test loads it from its file
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


common = _load()


@pytest.mark.parametrize(
    ("round_index", "expected"),
    [(0, ["a", "b", "c"]), (1, ["b", "c", "a"]), (2, ["c", "a", "b"]), (3, ["a", "b", "c"]), (7, ["b", "c", "a"])],
)
def test_rotated_starts_each_round_with_the_next_scenario(round_index: int, expected: list[str]) -> None:
    assert common.rotated(["a", "b", "c"], round_index) == expected


def test_run_rounds_runs_every_scenario_once_per_round_in_rotated_order() -> None:
    ran: list[str] = []
    handoffs: list[tuple[str, str | None]] = []
    counter = {"n": 0}

    def scenario(name: str) -> Callable[[], str]:
        def run() -> str:
            ran.append(name)
            counter["n"] += 1
            return f"{name}{counter['n']}"

        return run

    results = common.run_rounds(
        {"base": scenario("base"), "cand": scenario("cand")},
        3,
        between=lambda done, nxt: handoffs.append((done, nxt)),
    )
    assert ran == ["base", "cand", "cand", "base", "base", "cand"]
    assert [(r.round, r.position, r.scenario) for r in results] == [
        (0, 0, "base"),
        (0, 1, "cand"),
        (1, 0, "cand"),
        (1, 1, "base"),
        (2, 0, "base"),
        (2, 1, "cand"),
    ]
    assert common.by_scenario(results) == {"base": ["base1", "base4", "base5"], "cand": ["cand2", "cand3", "cand6"]}
    assert common.round_info(results) == [["base", "cand"], ["cand", "base"], ["base", "cand"]]
    assert handoffs[-1] == ("cand", None) and handoffs[0] == ("base", "cand") and len(handoffs) == 6


@pytest.mark.parametrize("rounds", [0, -1])
def test_run_rounds_refuses_no_rounds(rounds: int) -> None:
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        common.run_rounds({"a": lambda: 1}, rounds)


def test_run_rounds_refuses_no_scenarios() -> None:
    with pytest.raises(ValueError, match="no scenarios"):
        common.run_rounds({}, 2)


def test_mean_interval_is_the_student_t_interval() -> None:
    iv = common.mean_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n)
    assert iv.point == pytest.approx(2.0)
    assert (iv.low, iv.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    one = common.mean_interval([5.0])
    assert (one.point, one.low, one.high) == (5.0, 5.0, 5.0)


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [([], {}, "at least one"), ([1.0, math.nan], {}, "finite"), ([1.0, 2.0], {"confidence": 0.9}, "0.95")],
)
def test_mean_interval_refuses_bad_input(values: list[float], kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        common.mean_interval(values, **kwargs)


def test_median_interval_brackets_the_median_and_narrows_with_more_samples() -> None:
    few = common.median_interval([float(x) for x in range(1, 12)])
    many = common.median_interval([float(x % 11 + 1) for x in range(1100)])
    assert few.point == 6.0 and few.low <= 6.0 <= few.high
    assert many.low <= many.point <= many.high
    assert many.high - many.low < few.high - few.low
    with pytest.raises(ValueError, match="at least one"):
        common.median_interval([])


def test_parse_with_quick_sets_defaults_an_explicit_flag_still_wins() -> None:
    import argparse

    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.add_argument("--devices", type=int, default=10_000)
        p.add_argument("--quick", action="store_true")
        return p

    assert common.parse_with_quick(parser(), [], {"devices": 50}).devices == 10_000
    assert common.parse_with_quick(parser(), ["--quick"], {"devices": 50}).devices == 50
    assert common.parse_with_quick(parser(), ["--quick", "--devices", "7"], {"devices": 50}).devices == 7
