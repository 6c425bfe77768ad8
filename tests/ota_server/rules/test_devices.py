"""What a device says of itself is bounded: every hardware string, list and count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from models.hardware import HardwareProfile
from ota_server.errors import BadRequest
from ota_server.rules import devices as rd


def _profile(**fields: Any) -> dict[str, Any]:
    return {"arch": "x86_64", "accelerator": "cpu", "cpu_features": ["avx2"], **fields}


def _check(data: dict[str, Any]) -> HardwareProfile:
    return rd.check_profile(HardwareProfile.from_dict(data, "hardware"), "hardware")


def test_a_real_profile_and_the_largest_allowed_pass() -> None:
    assert _check(_profile()).arch == "x86_64"
    big = _profile(
        board="b" * rd.MAX_TEXT,
        execution_providers=["p" * rd.MAX_ITEM] * rd.MAX_LIST,
        cpu_features=["f" * rd.MAX_ITEM] * rd.MAX_LIST,
        cpu_count=rd.MAX_CPUS,
        memory_mb=rd.MAX_MEMORY_MB,
        extra={f"k{i}": "v" * rd.MAX_TEXT for i in range(rd.MAX_EXTRA)},
    )
    assert len(_check(big).extra) == rd.MAX_EXTRA


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"arch": "a" * (rd.MAX_TEXT + 1)}, "hardware.arch"),
        ({"board": "x" * 1_000_000}, "hardware.board"),
        ({"gpu_name": "bad\x00name"}, "hardware.gpu_name"),
        ({"onnxruntime_version": ""}, "hardware.onnxruntime_version"),
        ({"cpu_features": ["f"] * (rd.MAX_LIST + 1)}, "hardware.cpu_features"),
        ({"execution_providers": ["CPUExecutionProvider", "p" * (rd.MAX_ITEM + 1)]}, "hardware.execution_providers[1]"),
        ({"cpu_count": rd.MAX_CPUS + 1}, "hardware.cpu_count"),
        ({"memory_mb": -1}, "hardware.memory_mb"),
        ({"memory_mb": 10**400}, "hardware.memory_mb"),
        ({"extra": {f"k{i}": 1 for i in range(rd.MAX_EXTRA + 1)}}, "hardware.extra"),
        ({"extra": {"k": {"nested": [1, 2, 3]}}}, "hardware.extra.k"),
        ({"extra": {"k": "v" * (rd.MAX_TEXT + 1)}}, "hardware.extra.k"),
        ({"extra": {"k" * (rd.MAX_ITEM + 1): 1}}, "hardware.extra." + "k" * rd.MAX_ITEM),
    ],
)
def test_an_oversized_hardware_field_is_a_400_naming_it(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as e:
        _check(_profile(**fields))
    assert e.value.field == field and len(e.value.message) < 300


def test_the_put_hardware_body_is_named_body() -> None:
    check: Callable[[], Any] = lambda: rd.check_profile(  # noqa: E731
        HardwareProfile.from_dict(_profile(board="b" * 500), "body"), "body"
    )
    with pytest.raises(BadRequest) as e:
        check()
    assert e.value.field == "body.board"
