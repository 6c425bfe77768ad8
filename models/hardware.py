"""Hardware profiles, hardware classes and variant selection.

The agent reports a :class:`HardwareProfile` at enrollment and in heartbeats;
the director picks the bundle variant for a device with :func:`select_variant`
and the agent refuses a variant its hardware cannot run with :func:`can_run`.
Both sides call the same code, so they can never disagree.

Standard library only (ONNX Runtime and TensorRT versions are read lazily and
only if installed). This module does not measure anything.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.bundle import BundleError, Manifest, Variant, _clean, _Reader
from models.errors import ModelsError

__all__ = [
    "HARDWARE_CLASSES",
    "HardwareProfile",
    "NoCompatibleVariant",
    "detect_profile",
    "hardware_class",
    "can_run",
    "runnable_variants",
    "select_variant",
]

HARDWARE_CLASSES = ("cpu-x86_64", "cpu-aarch64", "cuda", "jetson-orin", "jetson-xavier", "jetson-nano")


class NoCompatibleVariant(ModelsError, LookupError):
    """No variant of the bundle can run on the given hardware profile."""


@dataclass(frozen=True)
class HardwareProfile:
    arch: str  # platform.machine(): x86_64, aarch64
    accelerator: str = "cpu"  # cpu | cuda | jetson
    board: str | None = None  # "NVIDIA Jetson AGX Orin Developer Kit"
    gpu_name: str | None = None
    compute_capability: str | None = None  # "8.7"
    tensorrt_version: str | None = None
    jetpack_version: str | None = None
    cuda_version: str | None = None
    onnxruntime_version: str | None = None
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    cpu_features: tuple[str, ...] = ()
    cpu_count: int = 1
    memory_mb: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(self))

    @classmethod
    def from_dict(cls, data: Any, path: str = "hardware") -> HardwareProfile:
        r = _Reader(data, path)
        accelerator = r.str("accelerator", optional=True) or "cpu"
        if accelerator not in ("cpu", "cuda", "jetson"):
            raise r.fail("accelerator", f"must be one of ['cpu', 'cuda', 'jetson'], got {accelerator!r}")
        cc = r.str("compute_capability", optional=True)
        if cc is not None and not re.match(r"^\d+\.\d+$", cc):
            raise r.fail("compute_capability", f"must look like '8.7', got {cc!r}")
        return cls(
            arch=r.str("arch"),
            accelerator=accelerator,
            board=r.str("board", optional=True),
            gpu_name=r.str("gpu_name", optional=True),
            compute_capability=cc,
            tensorrt_version=r.str("tensorrt_version", optional=True),
            jetpack_version=r.str("jetpack_version", optional=True),
            cuda_version=r.str("cuda_version", optional=True),
            onnxruntime_version=r.str("onnxruntime_version", optional=True),
            execution_providers=r.strs("execution_providers", optional=True) or ("CPUExecutionProvider",),
            cpu_features=r.strs("cpu_features", optional=True),
            cpu_count=int(r.int("cpu_count", optional=True) or 1),
            memory_mb=int(r.int("memory_mb", optional=True) or 0),
            extra=r.dict("extra"),
        )


def _version_tuple(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    return tuple(int(x) for x in re.findall(r"\d+", text))


def hardware_class(profile: HardwareProfile) -> str:
    """The selection key of a profile: one of :data:`HARDWARE_CLASSES`."""
    if profile.accelerator == "jetson":
        cc = _version_tuple(profile.compute_capability)
        if cc >= (8, 7):
            return "jetson-orin"
        if cc >= (7, 2):
            return "jetson-xavier"
        return "jetson-nano"
    if profile.accelerator == "cuda":
        return "cuda"
    return "cpu-aarch64" if profile.arch in ("aarch64", "arm64") else "cpu-x86_64"


def can_run(variant: Variant, profile: HardwareProfile) -> tuple[bool, str]:
    """Whether ``profile`` can run ``variant``; the reason names what is missing."""
    req = variant.requires
    if profile.accelerator not in req.accelerators:
        return False, f"needs accelerator {list(req.accelerators)}, device has {profile.accelerator!r}"
    if req.cpu_arch and profile.arch not in req.cpu_arch:
        return False, f"needs cpu arch {list(req.cpu_arch)}, device is {profile.arch!r}"
    missing = [f for f in req.cpu_features if f not in profile.cpu_features]
    if missing:
        return False, f"needs cpu features {missing}"
    if req.execution_providers and not set(req.execution_providers) & set(profile.execution_providers):
        return False, f"needs one of {list(req.execution_providers)}, device has {list(profile.execution_providers)}"
    if req.min_compute_capability and _version_tuple(profile.compute_capability) < _version_tuple(
        req.min_compute_capability
    ):
        return (
            False,
            f"needs compute capability >= {req.min_compute_capability}, device has {profile.compute_capability}",
        )
    if req.compute_capability and profile.compute_capability != req.compute_capability:
        return (
            False,
            f"engine built for compute capability {req.compute_capability}, device has {profile.compute_capability}",
        )
    if (
        req.tensorrt_version
        and _version_tuple(profile.tensorrt_version)[:2] != _version_tuple(req.tensorrt_version)[:2]
    ):
        return False, f"engine built with TensorRT {req.tensorrt_version}, device has {profile.tensorrt_version}"
    if req.build_on_device and not profile.tensorrt_version:
        return False, "variant is built into a TensorRT engine on the device, which has no TensorRT"
    return True, "ok"


def runnable_variants(manifest: Manifest, profile: HardwareProfile) -> tuple[Variant, ...]:
    """Every variant of the manifest this profile can run, in the order of its hardware class's selection.

    The first is the preferred variant (:func:`select_variant`); the director assigns it and lists the
    others as alternates, which the device times against it. Falls back to manifest order (FP32 ONNX
    first by convention) when the class has no selection entry. Raises :class:`NoCompatibleVariant`
    with every refusal reason when none can run.
    """
    hw = hardware_class(profile)
    entry = manifest.selection.get(hw)
    order = list(entry.order) if entry else [v.id for v in manifest.variants]
    runnable: list[Variant] = []
    reasons = []
    for vid in order:
        try:
            variant = manifest.variant(vid)
        except BundleError:
            continue
        ok, why = can_run(variant, profile)
        if ok:
            runnable.append(variant)
        else:
            reasons.append(f"{vid}: {why}")
    if not runnable:
        raise NoCompatibleVariant(
            f"no variant of {manifest.name}@{manifest.version} runs on {hw} ({'; '.join(reasons) or 'no variants'})"
        )
    return tuple(runnable)


def select_variant(manifest: Manifest, profile: HardwareProfile) -> Variant:
    """The manifest's preferred variant for this profile's hardware class that it can run.

    The first of :func:`runnable_variants`; raises :class:`NoCompatibleVariant` as it does.
    """
    return runnable_variants(manifest, profile)[0]


# --------------------------------------------------------------------------- detection


def _cpu_features() -> tuple[str, ...]:
    wanted = (
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "neon",
        "asimd",
        "asimddp",
    )
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in wanted if f in flags)


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _jetson_info() -> tuple[str | None, str | None]:
    """(board model, L4T/JetPack release) on a Jetson, else (None, None)."""
    model_file = Path("/proc/device-tree/model")
    release = Path("/etc/nv_tegra_release")
    board = model_file.read_text(errors="replace").strip("\x00\n ") if model_file.exists() else None
    if board and "jetson" not in board.lower():
        board = None
    jetpack = None
    if release.exists():
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release.read_text(errors="replace"))
        if m:
            jetpack = f"L4T {m[1]}.{m[2]}"
    return board, jetpack


def detect_profile(*, overrides: Mapping[str, Any] | None = None) -> HardwareProfile:
    """Read this host's profile (ONNX Runtime / TensorRT / pycuda only if installed)."""
    data: dict[str, Any] = {
        "arch": platform.machine() or "unknown",
        "accelerator": "cpu",
        "cpu_features": list(_cpu_features()),
        "cpu_count": os.cpu_count() or 1,
        "memory_mb": _memory_mb(),
    }
    try:
        import onnxruntime as ort

        data["onnxruntime_version"] = ort.__version__
        data["execution_providers"] = list(ort.get_available_providers())
    except ImportError:
        data["execution_providers"] = []
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]

        data["tensorrt_version"] = str(trt.__version__)
    except ImportError:
        pass
    board, jetpack = _jetson_info()
    if board:
        data.update(accelerator="jetson", board=board, jetpack_version=jetpack)
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]

        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        data.update(gpu_name=dev.name(), compute_capability=f"{major}.{minor}")
        data["cuda_version"] = ".".join(str(x) for x in cuda.get_version())
        if data["accelerator"] == "cpu":
            data["accelerator"] = "cuda"
    except Exception:  # noqa: BLE001 - no pycuda, no driver or no GPU: a CPU host
        pass
    if overrides:
        data.update(overrides)
    return HardwareProfile.from_dict(data)
