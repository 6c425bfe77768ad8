"""models.hardware: profiles, classes, can_run reasons and variant selection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from models.bundle import BundleError, HardwareRequirements, SelectionEntry
from models.hardware import (
    HardwareProfile,
    NoCompatibleVariant,
    can_run,
    detect_profile,
    hardware_class,
    runnable_variants,
    select_variant,
)
from tests.bundles import make_bundle, make_multi_bundle

ORIN = HardwareProfile(arch="aarch64", accelerator="jetson", compute_capability="8.7", tensorrt_version="10.3.0")


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (HardwareProfile(arch="x86_64"), "cpu-x86_64"),
        (HardwareProfile(arch="aarch64"), "cpu-aarch64"),
        (HardwareProfile(arch="x86_64", accelerator="cuda", compute_capability="8.9"), "cuda"),
        (ORIN, "jetson-orin"),
        (dataclasses.replace(ORIN, compute_capability="7.2"), "jetson-xavier"),
        (dataclasses.replace(ORIN, compute_capability="5.3"), "jetson-nano"),
    ],
)
def test_hardware_class(profile: HardwareProfile, expected: str) -> None:
    assert hardware_class(profile) == expected


def _variant(tmp_path: Path, **req: object):  # type: ignore[no-untyped-def]
    m = make_bundle(tmp_path)
    return dataclasses.replace(m.variants[0], requires=HardwareRequirements(**req))  # type: ignore[arg-type]


def test_can_run_names_what_is_missing(tmp_path: Path) -> None:
    assert can_run(_variant(tmp_path, accelerators=("jetson",)), ORIN) == (True, "ok")
    cases = [
        ({"accelerators": ("cuda",)}, "needs accelerator"),
        ({"accelerators": ("jetson",), "cpu_arch": ("x86_64",)}, "needs cpu arch"),
        ({"accelerators": ("jetson",), "cpu_features": ("avx2",)}, "needs cpu features ['avx2']"),
        ({"accelerators": ("jetson",), "min_compute_capability": "9.0"}, "compute capability >= 9.0"),
        ({"accelerators": ("jetson",), "compute_capability": "7.2"}, "engine built for compute capability 7.2"),
        ({"accelerators": ("jetson",), "tensorrt_version": "8.6.1"}, "engine built with TensorRT 8.6.1"),
        ({"accelerators": ("jetson",), "execution_providers": ("CUDAExecutionProvider",)}, "needs one of"),
    ]
    for req, why in cases:
        ok, reason = can_run(_variant(tmp_path, **req), ORIN)
        assert not ok and why in reason, (req, reason)
    ok, reason = can_run(
        _variant(tmp_path, accelerators=("cpu",), build_on_device=True), HardwareProfile(arch="x86_64")
    )
    assert not ok and "no TensorRT" in reason


def test_select_variant_follows_selection_and_explains_refusals(tmp_path: Path) -> None:
    m = make_bundle(tmp_path)
    cpu = HardwareProfile(arch="x86_64")
    assert select_variant(m, cpu).id == "onnx-fp32"
    jetson_only = dataclasses.replace(m.variants[0], requires=HardwareRequirements(accelerators=("jetson",)))
    m2 = dataclasses.replace(m, variants=(jetson_only,))
    with pytest.raises(NoCompatibleVariant, match="runs on cpu-x86_64 .*onnx-fp32: needs accelerator"):
        select_variant(m2, cpu)
    m3 = dataclasses.replace(m, selection={"cuda": SelectionEntry(order=("onnx-fp32",), reason="r")})
    assert select_variant(m3, cpu).id == "onnx-fp32"  # no entry for the class: manifest order


def test_runnable_variants_follow_the_selection_order_and_skip_what_cannot_run(tmp_path: Path) -> None:
    """The director assigns the first and offers the rest as alternates; the first is select_variant's pick."""
    variants = (("onnx-fp32", "ok"), ("onnx-int8", "ok"), ("onnx-fp16", "ok"))
    m = make_multi_bundle(tmp_path, variants=variants, order=("onnx-int8", "onnx-fp16", "onnx-fp32"))
    cpu = HardwareProfile(arch="x86_64")
    assert [v.id for v in runnable_variants(m, cpu)] == ["onnx-int8", "onnx-fp16", "onnx-fp32"]
    vnni_only = dataclasses.replace(m.variants[1], requires=HardwareRequirements(cpu_features=("avx512_vnni",)))
    m2 = dataclasses.replace(m, variants=(m.variants[0], vnni_only, m.variants[2]))
    assert [v.id for v in runnable_variants(m2, cpu)] == ["onnx-fp16", "onnx-fp32"]
    assert select_variant(m2, cpu).id == "onnx-fp16"
    vnni = HardwareProfile(arch="x86_64", cpu_features=("avx512_vnni",))
    assert [v.id for v in runnable_variants(m2, vnni)] == ["onnx-int8", "onnx-fp16", "onnx-fp32"]


def test_profile_round_trip_validation_and_detection() -> None:
    p = detect_profile(overrides={"board": None})
    assert p.arch and p.cpu_count >= 1 and "CPUExecutionProvider" in p.execution_providers
    assert HardwareProfile.from_dict(p.to_dict()) == p
    with pytest.raises(BundleError, match="hardware.accelerator"):
        HardwareProfile.from_dict({"arch": "x86_64", "accelerator": "tpu"})
    with pytest.raises(BundleError, match="hardware.compute_capability"):
        HardwareProfile.from_dict({"arch": "x86_64", "compute_capability": "eight"})
    with pytest.raises(BundleError, match="missing required field"):
        HardwareProfile.from_dict({})
