"""Parse NVIDIA Jetson ``tegrastats`` lines, and sample them from a running ``tegrastats``.

``tegrastats`` prints one line per interval; its fields changed across
Jetson generations, and this parser reads them all:

- TX1 (L4T 28): ``RAM 3468/3983MB (lfb 48x4MB) ... cpu [17%,13%,29%,5%]@408 EMC 1%@408 GR3D 3%@76``
- TX2 / Nano (L4T 32): ``CPU [24%@1224,...] EMC_FREQ 0% GR3D_FREQ 0% ... PLL@21C ... POM_5V_IN 2545/2547``
  (power rails in mW without a unit, ``current/average``);
- Xavier (L4T 32-35): ``GR3D_FREQ 0%@[510] ... GPU@37.5C ... VDD_IN 5079mW/5079mW``;
- Orin (L4T 35-36+): ``cpu@52.968C ... tj@41C ... VDD_GPU_SOC 5139mW/5139mW[/max] VIN_SYS_5V0 ...``.

The pure parser (:func:`parse_line`) never raises on an unknown field; it
returns what it recognised. :class:`TegrastatsSampler` runs
``tegrastats --interval MS`` as a subprocess and parses its lines in a
thread; this module does not depend on any third-party Jetson library.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TegraSample", "parse_line", "summarize", "TegrastatsSampler", "INPUT_RAILS"]

log = logging.getLogger(__name__)

# the rail that measures the whole module's input, by generation (first match wins)
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VIN")

_TIMESTAMP = re.compile(r"^\s*\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB(?: \(lfb (\d+)x(\d+)([kM])B\))?")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?")
_CPU_PER_CORE = re.compile(r"\bCPU \[([^\]]*)\]", re.I)
_CPU_SHARED_FREQ = re.compile(r"\bcpu \[([^\]]*)\]@(\d+)", re.I)
_ENGINE = re.compile(r"\b(EMC_FREQ|EMC|GR3D_FREQ|GR3D) (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line. Missing fields are None / empty."""

    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    cpu_load_pct: tuple[float | None, ...] = ()  # per core; None = core off
    cpu_freq_mhz: tuple[int | None, ...] = ()
    emc_load_pct: float | None = None
    emc_freq_mhz: int | None = None
    gpu_load_pct: float | None = None
    gpu_freq_mhz: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)  # sensor → °C
    rails_mw: dict[str, tuple[float, float]] = field(default_factory=dict)  # rail → (current, average)

    @property
    def power_mw(self) -> float | None:
        """Current module input power (the generation's input rail), or None."""
        for rail in INPUT_RAILS:
            if rail in self.rails_mw:
                return self.rails_mw[rail][0]
        return None

    @property
    def cpu_mean_load_pct(self) -> float | None:
        on = [x for x in self.cpu_load_pct if x is not None]
        return sum(on) / len(on) if on else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ram_used_mb": self.ram_used_mb,
            "ram_total_mb": self.ram_total_mb,
            "swap_used_mb": self.swap_used_mb,
            "swap_total_mb": self.swap_total_mb,
            "cpu_load_pct": list(self.cpu_load_pct),
            "cpu_freq_mhz": list(self.cpu_freq_mhz),
            "emc_load_pct": self.emc_load_pct,
            "emc_freq_mhz": self.emc_freq_mhz,
            "gpu_load_pct": self.gpu_load_pct,
            "gpu_freq_mhz": self.gpu_freq_mhz,
            "temps_c": dict(self.temps_c),
            "rails_mw": {k: list(v) for k, v in self.rails_mw.items()},
            "power_mw": self.power_mw,
        }


def _cpus(line: str) -> tuple[tuple[float | None, ...], tuple[int | None, ...]]:
    shared = _CPU_SHARED_FREQ.search(line)
    if shared:  # TX1 style: cpu [17%,13%,...]@408
        loads = tuple(_pct(x) for x in shared[1].split(","))
        return loads, tuple(int(shared[2]) if x is not None else None for x in loads)
    m = _CPU_PER_CORE.search(line)
    if not m:
        return (), ()
    loads_l: list[float | None] = []
    freqs: list[int | None] = []
    for core in m[1].split(","):
        load, _, freq = core.strip().partition("@")
        loads_l.append(_pct(load))
        freqs.append(int(freq) if freq.isdigit() else None)
    return tuple(loads_l), tuple(freqs)


def _pct(text: str) -> float | None:
    text = text.strip().rstrip("%")
    try:
        return float(text)
    except ValueError:
        return None  # "off"


def _engines(line: str) -> dict[str, tuple[float | None, int | None]]:
    out: dict[str, tuple[float | None, int | None]] = {}
    for m in _ENGINE.finditer(line):
        name = "EMC" if m[1].startswith("EMC") else "GR3D"
        freqs = [int(f) for f in (m[3] or "").split(",") if f]
        out.setdefault(name, (float(m[2]) if m[2] else None, max(freqs) if freqs else None))
    return out


def parse_line(line: str) -> TegraSample:
    """Parse one tegrastats line (any generation); unknown fields are ignored."""
    line = _TIMESTAMP.sub("", line.strip())
    ram, swap = _RAM.search(line), _SWAP.search(line)
    loads, freqs = _cpus(line)
    engines = _engines(line)
    temps = {m[1]: float(m[2]) for m in _TEMP.finditer(line)}
    rails = {m[1]: (float(m[2]), float(m[3])) for m in _RAIL.finditer(line) if m[1] not in _NOT_RAILS}
    emc = engines.get("EMC", (None, None))
    gr3d = engines.get("GR3D", (None, None))
    return TegraSample(
        ram_used_mb=int(ram[1]) if ram else None,
        ram_total_mb=int(ram[2]) if ram else None,
        swap_used_mb=int(swap[1]) if swap else None,
        swap_total_mb=int(swap[2]) if swap else None,
        cpu_load_pct=loads,
        cpu_freq_mhz=freqs,
        emc_load_pct=emc[0],
        emc_freq_mhz=emc[1],
        gpu_load_pct=gr3d[0],
        gpu_freq_mhz=gr3d[1],
        temps_c=temps,
        rails_mw=rails,
    )


def summarize(samples: Sequence[TegraSample]) -> dict[str, float | None]:
    """Mean/max input power, mean GPU load, max temperature and RAM over a run."""

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    power = [s.power_mw for s in samples if s.power_mw is not None]
    gpu = [s.gpu_load_pct for s in samples if s.gpu_load_pct is not None]
    temps = [t for s in samples for t in s.temps_c.values() if t > -40]  # -256C = sensor off
    ram = [float(s.ram_used_mb) for s in samples if s.ram_used_mb is not None]
    return {
        "samples": float(len(samples)),
        "power_mean_mw": mean(power),
        "power_max_mw": max(power) if power else None,
        "gpu_load_mean_pct": mean(gpu),
        "temp_max_c": max(temps) if temps else None,
        "ram_used_max_mb": max(ram) if ram else None,
    }


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and collects parsed samples.

    ``command`` defaults to the ``tegrastats`` on PATH; :meth:`available`
    says whether there is one. Use as a context manager around the measured work.
    """

    def __init__(self, *, interval_ms: int = 500, command: Sequence[str] | None = None) -> None:
        if interval_ms < 10:
            raise ValueError(f"interval_ms must be >= 10, got {interval_ms}")
        self.interval_ms = interval_ms
        exe = shutil.which("tegrastats")
        self.command = list(command) if command else ([exe] if exe else [])
        self.samples: list[TegraSample] = []
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def available(self) -> bool:
        return bool(self.command)

    def start(self) -> None:
        if not self.command:
            raise FileNotFoundError("tegrastats is not on PATH (not a Jetson, or L4T tools missing)")
        try:
            self._proc = subprocess.Popen(
                [*self.command, "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as e:
            raise FileNotFoundError(f"cannot run {self.command[0]}: {e}") from e
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for raw in proc.stdout:
            line = raw.strip()
            if line:
                self.lines.append(line)
                self.samples.append(parse_line(line))

    def stop(self) -> list[TegraSample]:
        """Stop the subprocess (SIGTERM, then SIGKILL) and return every parsed sample."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        return list(self.samples)

    def __enter__(self) -> TegrastatsSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
