"""What a benchmark ran on: CPU, GPU, runtimes, Jetson power mode and clocks, memory.

Everything here reads the host (``/proc``, ``nvpmodel -q``,
``jetson_clocks --show``, ONNX Runtime / TensorRT / pycuda when installed)
and never fails: a missing tool or library leaves its field ``None``. The
parsers of tool output are pure functions so they are tested on real text.

This module does not sample power over time (see :mod:`edge_agent.bench.tegrastats`).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

from models.hardware import detect_profile

__all__ = [
    "host_info",
    "parse_nvpmodel",
    "process_rss_mb",
    "peak_rss_mb",
    "gpu_memory_mb",
    "cpu_model",
]


def _run(cmd: list[str], *, timeout: float = 5.0) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (x86), ``Hardware``/``Model`` (ARM), else platform.processor()."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """``nvpmodel -q`` output → ``{"name": "MAXN", "id": 0}`` (missing parts are None)."""
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    mode_id = re.search(r"^\s*(\d+)\s*$", text, re.M)
    return {"name": name[1] if name else None, "id": int(mode_id[1]) if mode_id else None}


def process_rss_mb() -> float | None:
    """Current resident set size of this process (VmRSS), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gpu_memory_mb() -> dict[str, float] | None:
    """Device memory in use/total (MiB) through pycuda ``mem_get_info`` when present."""
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]

        cuda.init()
        ctx = cuda.Device(0).make_context()
        try:
            free, total = cuda.mem_get_info()
        finally:
            ctx.pop()
    except Exception:  # noqa: BLE001 - no pycuda, no driver, no GPU: not a GPU host
        return None
    return {"used_mb": (total - free) / 2**20, "total_mb": total / 2**20}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {
        "onnxruntime": None,
        "tensorrt": None,
        "opencv": None,
        "numpy": None,
    }
    for name, module in (
        ("onnxruntime", "onnxruntime"),
        ("tensorrt", "tensorrt"),
        ("opencv", "cv2"),
        ("numpy", "numpy"),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        out[name] = str(getattr(mod, "__version__", None))
    return out


def host_info() -> dict[str, Any]:
    """Everything a benchmark result needs to say where it was measured."""
    profile = detect_profile()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "arch": profile.arch,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "memory_mb": profile.memory_mb,
        "accelerator": profile.accelerator,
        "gpu": profile.gpu_name,
        "compute_capability": profile.compute_capability,
        "board": profile.board,
        "jetpack": profile.jetpack_version,
        "execution_providers": list(profile.execution_providers),
        "versions": _versions(),
        "power_mode": None,
        "clocks": None,
    }
    nvp = _run(["nvpmodel", "-q"])
    if nvp is not None:
        info["power_mode"] = parse_nvpmodel(nvp)
    clocks = _run(["jetson_clocks", "--show"])
    if clocks is not None:
        info["clocks"] = clocks.strip().splitlines()[:40]
    return info


def describe_host(info: dict[str, Any]) -> str:
    """One line: ``x86_64 Intel Xeon ... (2 cores) / onnxruntime 1.20.1``."""
    parts = [f"{info['arch']} {info['cpu_model']} ({info['cpu_count']} cores)"]
    if info.get("gpu"):
        parts.append(str(info["gpu"]))
    if info.get("board"):
        parts.append(str(info["board"]))
    if info.get("power_mode") and info["power_mode"].get("name"):
        parts.append(f"power mode {info['power_mode']['name']}")
    v = info.get("versions", {})
    parts.append(f"onnxruntime {v.get('onnxruntime')}" + (f", TensorRT {v['tensorrt']}" if v.get("tensorrt") else ""))
    return " / ".join(parts)
