"""The tegrastats parser against real lines from several Jetson generations, and the sampler
against a real subprocess replaying them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from edge_agent.bench.tegrastats import TegrastatsSampler, parse_line, summarize

DATA = Path(__file__).parent.parent / "data"


def _lines() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    board = ""
    for line in (DATA / "tegrastats_samples.txt").read_text().splitlines():
        if line.startswith("# Jetson") or line.startswith("# DRIVE"):
            board = line[2:].split(",")[0].split(" |")[0]
            out[board] = []
        elif line and not line.startswith("#"):
            out[board].append(line)
    return out


LINES = _lines()


def test_every_generation_is_in_the_sample_file() -> None:
    assert set(LINES) == {
        "Jetson TX1",
        "Jetson Nano",
        "Jetson Xavier NX",
        "Jetson AGX Orin dev kit",
        "DRIVE Orin / Jetson Orin",
    }


def test_tx1_shared_cpu_frequency_and_old_engine_names() -> None:
    s = parse_line(LINES["Jetson TX1"][1])
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (
        3607,
        3983,
        873,
        8192,
    )
    assert s.cpu_load_pct == (17.0, 11.0, 65.0, 0.0)
    assert s.cpu_freq_mhz == (1734, 1734, 1734, 1734)
    assert (s.emc_load_pct, s.emc_freq_mhz, s.gpu_load_pct, s.gpu_freq_mhz) == (1.0, 1600, 39.0, 76)
    assert s.rails_mw == {} and s.power_mw is None


def test_nano_unitless_rails_and_temperatures() -> None:
    s = parse_line(LINES["Jetson Nano"][0])
    assert s.ram_used_mb == 1766 and s.cpu_freq_mhz == (1224,) * 4
    assert s.cpu_mean_load_pct == pytest.approx((24 + 15 + 13 + 10) / 4)
    assert (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_load_pct) == (0.0, None, 0.0)
    assert s.temps_c == {
        "PLL": 21.0,
        "CPU": 25.0,
        "PMIC": 100.0,
        "GPU": 23.5,
        "AO": 33.5,
        "thermal": 24.5,
    }
    assert s.rails_mw == {
        "POM_5V_IN": (2545.0, 2547.0),
        "POM_5V_GPU": (0.0, 0.0),
        "POM_5V_CPU": (549.0, 529.0),
    }
    assert s.power_mw == 2545.0


def test_xavier_offline_cores_gpu_array_and_mw_rails() -> None:
    s = parse_line(LINES["Jetson Xavier NX"][0])
    assert s.cpu_load_pct == (3.0, 7.0, 1.0, 0.0, None, None)
    assert s.cpu_freq_mhz == (1904, 1906, 1905, 1907, None, None)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, 510)
    assert s.temps_c["GPU"] == 37.5 and s.temps_c["AUX"] == 39.0
    assert s.rails_mw["VDD_IN"] == (5079.0, 5079.0) and s.power_mw == 5079.0
    assert set(s.rails_mw) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_orin_timestamp_triple_rails_and_lowercase_sensors() -> None:
    s = parse_line(LINES["Jetson AGX Orin dev kit"][0])
    assert (s.ram_used_mb, s.ram_total_mb) == (20642, 62817)
    assert len(s.cpu_load_pct) == 12 and s.cpu_load_pct[0] == 23.0
    assert (s.emc_load_pct, s.emc_freq_mhz, s.gpu_load_pct, s.gpu_freq_mhz) == (
        3.0,
        3199,
        12.0,
        1300,
    )
    assert s.temps_c["cpu"] == pytest.approx(52.968) and s.temps_c["gpu"] == pytest.approx(47.625)
    assert s.rails_mw == {
        "VDD_GPU_SOC": (5139.0, 5139.0),
        "VDD_CPU_CV": (3268.0, 3268.0),
        "VIN_SYS_5V0": (5500.0, 5500.0),
    }
    assert s.power_mw == 5500.0


def test_driveos_orin_line_without_rails() -> None:
    s = parse_line(LINES["DRIVE Orin / Jetson Orin"][0])
    assert s.emc_load_pct is None and s.emc_freq_mhz == 2133
    assert s.temps_c["tj"] == 41.0 and s.temps_c["Tdiode"] == 30.75
    assert s.power_mw is None


def test_garbage_yields_an_empty_sample_not_an_error() -> None:
    s = parse_line("tegrastats: permission denied")
    assert s.ram_used_mb is None and s.rails_mw == {} and s.cpu_load_pct == ()


def test_summary_over_generations() -> None:
    samples = [parse_line(x) for lines in LINES.values() for x in lines]
    summary = summarize(samples)
    assert summary["samples"] == 6
    assert summary["power_max_mw"] == 5500.0
    assert summary["power_mean_mw"] == pytest.approx((2545 + 5079 + 5500) / 3)
    assert summary["temp_max_c"] == 100.0


def test_sampler_runs_a_subprocess_and_parses_its_lines() -> None:
    sampler = TegrastatsSampler(interval_ms=20, command=[sys.executable, str(DATA / "fake_tegrastats.py")])
    assert sampler.available()
    with sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    samples = sampler.samples
    assert len(samples) >= 8
    assert samples[0].ram_used_mb == 3468 and samples[2].power_mw == 2545.0
    assert sampler._proc is None  # stopped and reaped


def test_sampler_without_tegrastats_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    sampler = TegrastatsSampler()
    assert not sampler.available()
    with pytest.raises(FileNotFoundError, match="tegrastats is not on PATH"):
        sampler.start()
