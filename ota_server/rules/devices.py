"""What a device may say of itself, bounded: its hardware profile (enrollment, ``PUT /hardware``).

:class:`models.hardware.HardwareProfile` checks the profile's types and keeps only its own
fields; this module bounds their sizes, since the server stores the profile with the device and
any one device is assumed hostile: strings are printable and at most :data:`MAX_TEXT`
characters, lists at most :data:`MAX_LIST` entries of at most :data:`MAX_ITEM` characters,
counts within range, and ``extra`` at most :data:`MAX_EXTRA` keys of scalar values. A value over
its limit is a :class:`~ota_server.errors.BadRequest` naming it (``hardware.cpu_features[3]``).

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models.hardware import HardwareProfile
from ota_server.errors import BadRequest

__all__ = ["MAX_EXTRA", "MAX_ITEM", "MAX_LIST", "MAX_MEMORY_MB", "MAX_TEXT", "MAX_CPUS", "check_profile"]

MAX_TEXT = 128  # characters of a hardware string (board, GPU name, versions) or an extra value
MAX_ITEM = 64  # characters of an execution provider or a CPU feature, or an extra key
MAX_LIST = 64  # execution providers, CPU features
MAX_EXTRA = 32  # keys of ``extra``
MAX_CPUS = 65_536
MAX_MEMORY_MB = 1 << 40

_TEXTS = (
    "arch",
    "accelerator",
    "board",
    "gpu_name",
    "compute_capability",
    "tensorrt_version",
    "jetpack_version",
    "cuda_version",
    "onnxruntime_version",
)


def _text(value: Any, where: str, limit: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        shown = repr(value)
        raise BadRequest(
            f"expected a printable string of 1-{limit} characters, got {shown[:80]}{'...' if len(shown) > 80 else ''}",
            field=where,
        )


def _count(value: int, where: str, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise BadRequest(f"expected an integer within [{lo}, {hi}], got {str(value)[:40]}", field=where)


def _extra(extra: Mapping[str, Any], where: str) -> None:
    if len(extra) > MAX_EXTRA:
        raise BadRequest(f"expected at most {MAX_EXTRA} keys, got {len(extra)}", field=where)
    for key, value in extra.items():
        _text(key, f"{where}.{str(key)[:MAX_ITEM]}", MAX_ITEM)
        at = f"{where}.{key}"
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > 1e15:
                raise BadRequest(f"expected a finite number within ±1e15, got {str(value)[:80]}", field=at)
            continue
        if isinstance(value, str):
            _text(value, at, MAX_TEXT)
            continue
        raise BadRequest(f"expected a string, a number, true, false or null, got {type(value).__name__}", field=at)


def check_profile(profile: HardwareProfile, where: str = "hardware") -> HardwareProfile:
    """``profile`` when every field is within its bound.

    Raises:
        BadRequest: a field over its limit; ``field`` names it, below ``where``.
    """
    prefix = f"{where}."
    for key in _TEXTS:
        value = getattr(profile, key)
        if value is not None:
            _text(value, f"{prefix}{key}", MAX_TEXT)
    for key in ("execution_providers", "cpu_features"):
        items = getattr(profile, key)
        if len(items) > MAX_LIST:
            raise BadRequest(f"expected at most {MAX_LIST} entries, got {len(items)}", field=f"{prefix}{key}")
        for i, item in enumerate(items):
            _text(item, f"{prefix}{key}[{i}]", MAX_ITEM)
    _count(profile.cpu_count, f"{prefix}cpu_count", 1, MAX_CPUS)
    _count(profile.memory_mb, f"{prefix}memory_mb", 0, MAX_MEMORY_MB)
    _extra(profile.extra, f"{prefix}extra")
    return profile
