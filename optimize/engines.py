"""TensorRT engine variants for the build host's own GPU class, when TensorRT is installed.

An engine only runs on the GPU architecture and TensorRT version it was
built with, so engines are built only for the hardware class of this host
(a Jetson Orin builds ``jetson-orin`` engines). Every other GPU class gets
the Q/DQ ONNX marked ``build_on_device`` and compiles it itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from models.bundle import Format, HardwareRequirements, InputForm, InputSpec, Precision
from models.hardware import detect_profile, hardware_class
from optimize.config import OptimizeConfig
from optimize.errors import EngineCompileError
from optimize.select import CLASS_ACCELERATOR
from optimize.tensorrt import TrtBuildConfig, build_engine, tensorrt_available
from optimize.variants import BuiltVariant

__all__ = ["build_engines"]


def build_engines(
    cfg: OptimizeConfig,
    built: list[BuiltVariant],
    spec: InputSpec,
    stage: Path,
    work: Path,
    note: Callable[[str], None],
) -> list[BuiltVariant]:
    """Engines from the Q/DQ INT8 and FP16 ONNX variants (and their frame-form twins: a uint8
    ``[N, H, W, 3]`` input) for this host's GPU class (or none)."""
    if not tensorrt_available():
        note("TensorRT not installed: GPU classes get the Q/DQ ONNX to build on the device")
        return []
    profile = detect_profile()
    hw = hardware_class(profile)
    if CLASS_ACCELERATOR[hw] == "cpu" or hw not in cfg.targets or not profile.compute_capability:
        note(f"no engine: this host is {hw}, targets are {list(cfg.targets)}")
        return []
    tensor_ids = ("onnx-int8-qdq", "onnx-fp16")
    sources = [b for b in built if b.id in tensor_ids or b.twin in tensor_ids]  # frame-form twins too
    out = []
    sm = profile.compute_capability.replace(".", "")
    for src in sorted(sources, key=lambda b: (b.precision is not Precision.INT8, b.input_form is InputForm.FRAME)):
        precision, frame = src.precision, src.input_form is InputForm.FRAME
        suffix = "-frame" if frame else ""
        engine = stage / f"model-{precision.value}-sm{sm}{suffix}.engine"
        tcfg = TrtBuildConfig(
            input_shape=(spec.height, spec.width, 3) if frame else (3, spec.height, spec.width),
            input_name=spec.name,
            precision=precision,
            dynamic_batch=spec.shape[0] is None,
            timing_cache=work / "timing.cache",
        )
        try:
            info = build_engine(src.path, engine, tcfg)
        except EngineCompileError as e:
            note(f"engine from {src.id} failed: {e}")
            continue
        req = HardwareRequirements(
            accelerators=(CLASS_ACCELERATOR[hw],),
            compute_capability=info.compute_capability,
            tensorrt_version=info.tensorrt_version,
        )
        out.append(
            BuiltVariant(
                f"trt-{precision.value}-sm{sm}{suffix}",
                engine,
                Format.TENSORRT_ENGINE,
                precision,
                req,
                {"source": src.id, "strongly_typed": info.strongly_typed, "tensorrt_version": info.tensorrt_version},
                engine_class=hw,
                input_form=src.input_form,
                twin=f"trt-{precision.value}-sm{sm}" if frame else None,
            )
        )
    tensor_engines = {b.id for b in out}
    for b in out:  # a frame engine whose tensor engine failed stands alone
        if b.twin is not None and b.twin not in tensor_engines:
            b.twin = None
    return out
