"""The builder half of the fake ``tensorrt`` module (see :mod:`tests.models.fake_tensorrt`).

Mirrors the TensorRT 10 builder API — ``Builder``, ``create_network(flags)``,
``OnnxParser.parse`` / ``num_errors`` / ``get_error``, the network's inputs,
builder config with memory pool limits, flags, optimization profiles and
timing caches, ``build_serialized_network`` — and records every call so tests
can assert how the engine was configured. It checks what TensorRT checks: a
dynamic input needs an optimization profile whose shapes fit the network,
and a Q/DQ graph needs ``BuilderFlag.INT8`` unless the network is strongly
typed. A failed build logs an error to the builder's logger and returns
None, as TensorRT does. The plan it returns is the runtime fake's format:
the header and the parsed ONNX, which ONNX Runtime then runs.
"""

from __future__ import annotations

import hashlib
import types
from enum import IntEnum
from typing import Any

import onnx


class NetworkDefinitionCreationFlag(IntEnum):
    EXPLICIT_BATCH = 0  # deprecated and ignored in TensorRT 10
    STRONGLY_TYPED = 5


class BuilderFlag(IntEnum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(IntEnum):
    WORKSPACE = 0


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any = None) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype  # a fake_tensorrt.DataType, as TensorRT's ITensor.dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.model: onnx.ModelProto | None = None
        self.onnx: bytes = b""
        self._inputs: list[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self.network = network
        self.errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]

    def parse(self, data: bytes) -> bool:
        from tests.models.fake_tensorrt import onnx_tensors

        try:
            model = onnx.load_from_string(bytes(data))
            onnx.checker.check_model(model)
        except Exception as e:  # noqa: BLE001 - mirrors TensorRT: errors are collected, parse returns False
            self.errors.append(_ParserError(f"ModelImporter.cpp: failed to parse ONNX: {e}"))
            return False
        self.network.model, self.network.onnx = model, bytes(data)
        inputs, _ = onnx_tensors(model)
        from tests.models.fake_tensorrt import DataType

        self.network._inputs = [ITensor(t["name"], tuple(t["shape"]), DataType(t["dtype"])) for t in inputs]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: tuple[int, ...], opt: tuple[int, ...], max: tuple[int, ...]) -> None:  # noqa: A002
        if not (
            all(a <= b for a, b in zip(min, opt, strict=True)) and all(a <= b for a, b in zip(opt, max, strict=True))
        ):
            raise ValueError("min <= opt <= max violated")
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return b"TIMINGCACHE" + self.blob[-8:] + b"+1"


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> ITimingCache:
        return ITimingCache(bytes(blob))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class Builder:
    last: Builder | None = None

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.network: INetworkDefinition | None = None
        self.config: IBuilderConfig | None = None
        Builder.last = self

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self.network = INetworkDefinition(flags)
        return self.network

    def create_builder_config(self) -> IBuilderConfig:
        self.config = IBuilderConfig()
        return self.config

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, msg: str) -> None:
        from tests.models.fake_tensorrt import ILogger

        self.logger.log(ILogger.Severity.ERROR, msg)

    def _check(self, network: INetworkDefinition, config: IBuilderConfig) -> str | None:
        """TensorRT's refusal for this network and config, or None."""
        from tests.models.fake_tensorrt import STATE

        if STATE.fail_builds:
            return "Error Code 10: Internal Error (Could not find any implementation for node /Gemm)"
        profile = config.profiles[0].shapes if config.profiles else {}
        for t in network._inputs:
            if -1 in t.shape and t.name not in profile:
                return (
                    "Error Code 4: Network has dynamic or shape inputs, but no optimization profile has been defined."
                )
            for shape in profile.get(t.name, ()):
                if len(shape) != len(t.shape) or any(d not in (-1, s) for d, s in zip(t.shape, shape, strict=True)):
                    return f"Error Code 4: profile shape {list(shape)} does not fit input {t.name} {list(t.shape)}"
        assert network.model is not None
        qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in network.model.graph.node)
        typed = bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        if qdq and not typed and BuilderFlag.INT8 not in config.flags:
            return "Error Code 4: the network has Q/DQ layers (explicit quantization) but INT8 is not enabled"
        return None

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        from tests.models.fake_tensorrt import STATE, onnx_tensors, serialize_engine

        if network.model is None:
            self._error("Error Code 4: the network has no layers")
            return None
        refusal = self._check(network, config)
        if refusal is not None:
            self._error(refusal)
            return None
        inputs, outputs = onnx_tensors(network.model)
        profile = config.profiles[0].shapes if config.profiles else {}
        fixed = {t["name"]: [tuple(t["shape"])] * 3 for t in inputs if -1 not in t["shape"]}
        typed = bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        header = {
            "tensorrt_version": STATE.version,
            "gpu": STATE.gpu_name,
            "compute_capability": ".".join(map(str, STATE.compute_capability)),
            "inputs": inputs,
            "outputs": outputs,
            "profile": {k: [list(s) for s in v] for k, v in {**fixed, **profile}.items()},
            "flags": sorted(f.name for f in config.flags),
            "strongly_typed": typed,
            "onnx_sha256": hashlib.sha256(network.onnx).hexdigest(),
        }
        STATE.record(
            "build",
            onnx_sha256=header["onnx_sha256"],
            tensorrt_version=STATE.version,
            flags=header["flags"],
            profile=header["profile"],
        )
        return serialize_engine(network.onnx, header)


def attach(trt: types.ModuleType) -> None:
    """Add the builder classes to the fake ``tensorrt`` module."""
    for obj in (Builder, OnnxParser, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType):
        setattr(trt, obj.__name__, obj)
