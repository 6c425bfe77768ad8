"""The builder half of the fake ``tensorrt`` module (see :mod:`tests.models.fake_tensorrt`).

Mirrors the TensorRT 10 builder API the optimizer calls — ``Builder``,
``create_network(flags)``, ``OnnxParser.parse``, builder config with memory
pool limits, flags, optimization profiles and timing caches,
``build_serialized_network`` — and records every call so tests can assert
how the engine was configured. The "engine" it serializes is the runtime
fake's format, with weights from the parsed ONNX model's single Gemm.
"""

from __future__ import annotations

import types
from enum import IntEnum
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


class NetworkDefinitionCreationFlag(IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 5


class BuilderFlag(IntEnum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(IntEnum):
    WORKSPACE = 0


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.model: onnx.ModelProto | None = None


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
        try:
            model = onnx.load_from_string(data)
            onnx.checker.check_model(model)
        except Exception as e:  # noqa: BLE001 - mirrors TensorRT: errors are collected, parse returns False
            self.errors.append(_ParserError(f"ModelImporter.cpp: failed to parse ONNX: {e}"))
            return False
        self.network.model = model
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: tuple[int, ...], opt: tuple[int, ...], max: tuple[int, ...]) -> None:  # noqa: A002
        if not (all(a <= b for a, b in zip(min, opt, strict=True)) and all(a <= b for a, b in zip(opt, max, strict=True))):
            raise ValueError("min <= opt <= max violated")
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


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

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        from tests.models.fake_tensorrt import serialize_engine

        if network.model is None or not config.profiles:
            return None
        graph = network.model.graph
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        gemm = next((n for n in graph.node if n.op_type == "Gemm"), None)
        if gemm is None or gemm.input[1] not in inits:
            return None  # the fake only "compiles" the pooled-linear test models
        name, (_, _, mx) = next(iter(config.profiles[0].shapes.items()))
        return serialize_engine(np.asarray(inits[gemm.input[1]], np.float32), input_name=name,
                                output_name=graph.output[0].name, hw=mx[2], max_batch=mx[0])


def attach(trt: types.ModuleType) -> None:
    """Add the builder classes to the fake ``tensorrt`` module."""
    for obj in (Builder, OnnxParser, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType):
        setattr(trt, obj.__name__, obj)
