"""Build a TensorRT 10 engine from an ONNX file, on the machine that will run it.

An engine is specific to the TensorRT version and the GPU it was built on, so
a device that receives a "build on device" variant (a Q/DQ INT8 or an FP16
ONNX) compiles it itself::

    spec = EngineSpec(input_name="input", input_shape=(3, 224, 224),
                      batch=BatchProfile(opt=1, max=8), precision=Precision.INT8)
    plan = build_serialized_engine(onnx_bytes, spec, source="model.int8.onnx")

The network is created with ``create_network(0)`` (explicit batch is the only
mode in TensorRT 10), parsed with ``OnnxParser``, and built with
``build_serialized_network`` under one optimization profile for the dynamic
batch axis (min / opt / max). Precision comes from the builder flags: a Q/DQ
graph gets ``BuilderFlag.INT8`` (explicit quantization: the scales are in the
graph, no calibrator) plus ``FP16`` for the layers left unquantized, an FP16
ONNX gets ``FP16``. :func:`gpu_identity` names the GPU the engine is for.

``tensorrt`` and ``pycuda`` are imported lazily. This module does not cache
engines (the agent does, :mod:`edge_agent.perception.engines`) nor run them
(:mod:`models.runtime.tensorrt`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from models.bundle import Precision
from models.runtime.errors import BackendUnavailable, EngineBuildError

__all__ = ["BatchProfile", "EngineSpec", "GpuIdentity", "gpu_identity", "build_serialized_engine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (``min``..``max``) and the one it is tuned for (``opt``)."""

    min: int = 1
    opt: int = 1  # one camera frame per inference
    max: int = 8  # the newest frame of up to 8 cameras in one batch

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @property
    def tag(self) -> str:
        """``"b1-1-8"``: part of an engine's cache key."""
        return f"b{self.min}-{self.opt}-{self.max}"


@dataclass(frozen=True)
class EngineSpec:
    """What to build: the input tensor, its batch profile, the precision and the builder's memory."""

    input_name: str
    input_shape: tuple[int, int, int]  # C, H, W (the batch axis is the profile's); a uint8 [N, H, W, C] frame-form
    # input is matched as H, W, C
    batch: BatchProfile = field(default_factory=BatchProfile)
    precision: Precision = Precision.INT8  # INT8 = explicit Q/DQ, FP16, FP32
    workspace_mb: int = 1024  # builder scratch memory


@dataclass(frozen=True)
class GpuIdentity:
    name: str  # "Orin (nvgpu)"
    compute_capability: str  # "8.7"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """The GPU TensorRT builds for. Raises :class:`BackendUnavailable` without pycuda or a GPU."""
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise BackendUnavailable("pycuda is not installed (pip install 'edgefleet[tensorrt]')") from e
    try:
        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return GpuIdentity(str(dev.name()), f"{major}.{minor}")
    except Exception as e:  # noqa: BLE001 - pycuda raises its own error family
        raise BackendUnavailable(f"no usable CUDA device {device}: {e}") from e


def _import_trt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise EngineBuildError("TensorRT is not installed on this device (pip install 'edgefleet[tensorrt]')") from e
    return trt


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the error messages, so a failed build can say why."""

    class _Collecting(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif int(severity) <= int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)

    return _Collecting()


def _why(logger: Any) -> str:
    errors = getattr(logger, "errors", [])
    return f": {'; '.join(errors[-3:])}" if errors else ""


def _parse(trt: Any, builder: Any, logger: Any, onnx: bytes, spec: EngineSpec, source: str) -> Any:
    network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {source}: {'; '.join(errors) or 'unknown error'}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    if names != [spec.input_name]:
        raise EngineBuildError(f"{source} must have the single input {spec.input_name!r}, has {names}")
    dims = tuple(int(d) for d in inputs[0].shape)
    c, h, w = spec.input_shape
    # a frame-form variant takes the resized uint8 frame [batch, H, W, C] and transposes in the graph
    frame = inputs[0].dtype == trt.DataType.UINT8 and len(dims) == 4 and dims[3] == c != dims[1]
    want_shape = (h, w, c) if frame else (c, h, w)
    if len(dims) != 4 or any(d not in (-1, want) for d, want in zip(dims[1:], want_shape, strict=True)):
        raise EngineBuildError(
            f"{source} input {spec.input_name!r} is {list(dims)}; "
            f"the bundle says [batch, {', '.join(map(str, want_shape))}]"
        )
    if dims[0] != -1 and not spec.batch.min == spec.batch.max == dims[0]:
        raise EngineBuildError(
            f"{source} has a fixed batch of {dims[0]}; the profile asks for {spec.batch.min}..{spec.batch.max}"
        )
    return network, want_shape


def _config(trt: Any, builder: Any, spec: EngineSpec, sample_shape: tuple[int, int, int]) -> Any:
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    if spec.precision is Precision.INT8:
        cfg.set_flag(trt.BuilderFlag.INT8)  # Q/DQ scales in the graph: no calibrator
        cfg.set_flag(trt.BuilderFlag.FP16)  # layers outside the Q/DQ pairs may run in FP16
    elif spec.precision is Precision.FP16:
        cfg.set_flag(trt.BuilderFlag.FP16)
    b = spec.batch
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, (b.min, *sample_shape), (b.opt, *sample_shape), (b.max, *sample_shape))
    cfg.add_optimization_profile(profile)
    return cfg


def build_serialized_engine(onnx: bytes, spec: EngineSpec, *, source: str = "<onnx>") -> bytes:
    """The serialized engine (a "plan") for ``onnx``. Raises :class:`EngineBuildError`.

    ``source`` names the file in messages. TensorRT missing, a parse error, an
    input that does not match ``spec`` and a failed build all raise.
    """
    trt = _import_trt()
    logger = _make_logger(trt)
    try:
        builder = trt.Builder(logger)
        network, sample_shape = _parse(trt, builder, logger, onnx, spec, source)
        serialized = builder.build_serialized_network(network, _config(trt, builder, spec, sample_shape))
    except EngineBuildError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError/ValueError variants
        raise EngineBuildError(f"TensorRT failed to build {source}: {e}{_why(logger)}") from e
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {source}{_why(logger) or ' (no error logged)'}")
    data = bytes(serialized)
    log.info("built a TensorRT %s engine from %s (%s, %d bytes)", trt.__version__, source, spec.batch.tag, len(data))
    return data
