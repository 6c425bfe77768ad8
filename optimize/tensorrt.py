"""TensorRT 10 engine builds from the exported ONNX variants.

Explicit quantization: the INT8 engine is built from the TensorRT-flavoured
Q/DQ ONNX (:mod:`optimize.quantize`), so TensorRT takes the scales from the
graph rather than calibrating itself. Where the installed TensorRT offers it,
the network is *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
precisions come from the graph — Q/DQ → INT8, an FP16 ONNX → FP16); older
versions get the ``INT8``/``FP16`` builder flags instead. Dynamic batch gets
an optimization profile (min/opt/max), builds share a timing cache file, and
the engine comes from ``build_serialized_network``.

An engine is tied to the TensorRT version and the GPU architecture it was
built on: :func:`build_engine` reports both, and the bundle records them in
the variant's ``requires``. ``tensorrt``/``pycuda`` are imported lazily; on a
host without them :func:`tensorrt_available` is False and the optimizer ships
the Q/DQ ONNX marked ``build_on_device`` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bundle import Precision
from models.fsio import write_atomic
from optimize.errors import EngineCompileError

__all__ = ["TrtBuildConfig", "EngineInfo", "tensorrt_available", "gpu_compute_capability", "build_engine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrtBuildConfig:
    input_shape: tuple[int, int, int]  # the input without the batch: C, H, W, or H, W, C for a frame-form ONNX
    input_name: str = "input"
    precision: Precision = Precision.INT8  # INT8 = explicit Q/DQ, FP16, FP32
    min_batch: int = 1
    opt_batch: int = 1  # single-stream camera inference
    max_batch: int = 8
    dynamic_batch: bool = True
    workspace_mb: int = 1024  # builder scratch memory
    strongly_typed: bool = True  # when the TensorRT version has it
    timing_cache: Path | None = None  # shared between builds; created when missing


@dataclass(frozen=True)
class EngineInfo:
    path: Path
    tensorrt_version: str
    compute_capability: str | None
    strongly_typed: bool
    size: int


def tensorrt_available() -> bool:
    """Whether TensorRT and pycuda are importable here."""
    try:
        import pycuda.driver  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        import tensorrt  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_compute_capability(device: int = 0) -> str | None:
    """``"8.7"`` for the GPU TensorRT builds for, or None without pycuda/a GPU."""
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]

        cuda.init()
        major, minor = cuda.Device(device).compute_capability()
    except Exception:  # noqa: BLE001 - no pycuda, no driver or no GPU
        return None
    return f"{major}.{minor}"


def _import_trt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise EngineCompileError("TensorRT is not installed (pip install 'edgefleet[tensorrt]')") from e
    return trt


def _network(trt: Any, builder: Any, logger: Any, onnx_path: Path, config: TrtBuildConfig) -> tuple[Any, Any, bool]:
    flags = 0
    typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    strongly = bool(config.strongly_typed and typed_flag is not None)
    if strongly and typed_flag is not None:
        flags |= 1 << int(typed_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineCompileError(f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors) or 'unknown error'}")
    return network, parser, strongly


def _builder_config(trt: Any, builder: Any, config: TrtBuildConfig, strongly: bool) -> Any:
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if not strongly:
        if config.precision is Precision.INT8:
            cfg.set_flag(trt.BuilderFlag.INT8)  # Q/DQ scales in the graph: no calibrator needed
            cfg.set_flag(trt.BuilderFlag.FP16)  # layers left unquantized may still run in FP16
        elif config.precision is Precision.FP16:
            cfg.set_flag(trt.BuilderFlag.FP16)
    dims = tuple(config.input_shape)
    profile = builder.create_optimization_profile()
    if config.dynamic_batch:
        profile.set_shape(
            config.input_name, (config.min_batch, *dims), (config.opt_batch, *dims), (config.max_batch, *dims)
        )
    else:
        profile.set_shape(config.input_name, (1, *dims), (1, *dims), (1, *dims))
    cfg.add_optimization_profile(profile)
    return cfg


def build_engine(onnx_path: Path, engine_path: Path, config: TrtBuildConfig) -> EngineInfo:
    """Build and write a serialized engine. Raises :class:`EngineCompileError`."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
        network, _parser, strongly = _network(trt, builder, logger, onnx_path, config)
        cfg = _builder_config(trt, builder, config, strongly)
        cache_blob = config.timing_cache.read_bytes() if config.timing_cache and config.timing_cache.is_file() else b""
        cache = cfg.create_timing_cache(cache_blob)
        cfg.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, cfg)
    except EngineCompileError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError variants
        raise EngineCompileError(f"TensorRT failed to build {onnx_path.name}: {e}") from e
    if serialized is None:
        raise EngineCompileError(f"TensorRT failed to build {onnx_path.name} (see the TensorRT log above)")
    data = bytes(serialized)
    write_atomic(engine_path, data)
    if config.timing_cache is not None:
        write_atomic(config.timing_cache, bytes(cfg.get_timing_cache().serialize()))
    info = EngineInfo(engine_path, str(trt.__version__), gpu_compute_capability(), strongly, len(data))
    log.info(
        "built %s (TensorRT %s, sm %s, %s)",
        engine_path.name,
        info.tensorrt_version,
        info.compute_capability,
        "strongly typed" if strongly else config.precision.value,
    )
    return info
